//! Bearer tokens against a JWKS file: what is accepted and every way a token is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ponte_access::token::dev::{DEV_AUDIENCE, DEV_ISSUER, DevSigner, jwks_json, unix_now};
use ponte_access::token::{TokenConfig, TokenError, Validator};
use serde_json::{Map, Value, json};

const PRINCIPAL: &str = "urn:ponte:principal:state-sp";

struct Setup {
    _dir: tempfile::TempDir,
    signer: DevSigner,
    validator: Validator,
    jwks: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let signer = DevSigner::generate("k1").unwrap();
    let path = dir.path().join("jwks.json");
    let jwks = signer.jwks_json();
    std::fs::write(&path, &jwks).unwrap();
    let validator = Validator::load(&TokenConfig::dev(&path)).unwrap();
    Setup {
        _dir: dir,
        signer,
        validator,
        jwks,
    }
}

fn claims(exp_offset: i64) -> Map<String, Value> {
    let now = unix_now() as i64;
    let Value::Object(m) = json!({
        "sub": PRINCIPAL,
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "iat": now,
        "exp": now + exp_offset,
    }) else {
        unreachable!()
    };
    m
}

fn with(mut m: Map<String, Value>, key: &str, value: Value) -> Map<String, Value> {
    m.insert(key.to_owned(), value);
    m
}

fn without(mut m: Map<String, Value>, key: &str) -> Map<String, Value> {
    m.remove(key);
    m
}

/// Asserts the refusal and that its message carries no part of the token.
fn refused(s: &Setup, token: &str) -> TokenError {
    let e = s.validator.validate(token).unwrap_err();
    let text = format!("{e} {e:?}");
    for part in token.split('.').filter(|p| p.len() > 8) {
        assert!(!text.contains(part), "error {text} repeats the token");
    }
    e
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

#[test]
fn a_valid_es256_token_names_its_principal() {
    let s = setup();
    let token = s
        .signer
        .sign_for(
            PRINCIPAL,
            DEV_ISSUER,
            DEV_AUDIENCE,
            Duration::from_secs(300),
        )
        .unwrap();
    assert_eq!(s.validator.validate(&token).unwrap(), PRINCIPAL);
    // An audience list naming Ponte among others is accepted.
    let token = s
        .signer
        .sign(&with(claims(300), "aud", json!(["other", DEV_AUDIENCE])))
        .unwrap();
    assert_eq!(s.validator.validate(&token).unwrap(), PRINCIPAL);
    let kids: Vec<_> = s.validator.key_ids().collect();
    assert_eq!(kids, [("k1", "ES256")]);
}

#[test]
fn expiry_with_leeway() {
    let s = setup();
    // Expired 30 s ago: inside the default 60 s leeway.
    let token = s.signer.sign(&claims(-30)).unwrap();
    assert!(s.validator.validate(&token).is_ok());
    let token = s.signer.sign(&claims(-120)).unwrap();
    assert_eq!(refused(&s, &token), TokenError::Expired);
    let token = s.signer.sign(&without(claims(300), "exp")).unwrap();
    assert_eq!(refused(&s, &token), TokenError::MissingClaim("exp"));
    let token = s
        .signer
        .sign(&with(claims(300), "nbf", json!(unix_now() + 3600)))
        .unwrap();
    assert_eq!(refused(&s, &token), TokenError::NotYetValid);
}

#[test]
fn wrong_audience_and_issuer() {
    let s = setup();
    let token = s
        .signer
        .sign(&with(claims(300), "aud", json!("urn:someone-else")))
        .unwrap();
    assert_eq!(refused(&s, &token), TokenError::WrongAudience);
    let token = s.signer.sign(&without(claims(300), "aud")).unwrap();
    assert_eq!(refused(&s, &token), TokenError::MissingClaim("aud"));
    let token = s
        .signer
        .sign(&with(claims(300), "iss", json!("https://evil.example")))
        .unwrap();
    assert_eq!(refused(&s, &token), TokenError::WrongIssuer);
    let token = s.signer.sign(&without(claims(300), "iss")).unwrap();
    assert_eq!(refused(&s, &token), TokenError::MissingClaim("iss"));
}

#[test]
fn unknown_kid_and_another_key() {
    let s = setup();
    let stranger = DevSigner::generate("k2").unwrap();
    let token = stranger.sign(&claims(300)).unwrap();
    assert_eq!(
        refused(&s, &token),
        TokenError::UnknownKid {
            kid: "k2".to_owned()
        }
    );
    // Signed by another key under our kid.
    let impostor = DevSigner::generate("k1").unwrap();
    let token = impostor.sign(&claims(300)).unwrap();
    assert_eq!(refused(&s, &token), TokenError::BadSignature);
    // Claims changed after signing.
    let token = s.signer.sign(&claims(300)).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(&Value::Object(with(
            claims(300),
            "sub",
            json!("urn:ponte:principal:federal")
        ))),
        parts[2]
    );
    assert_eq!(refused(&s, &forged), TokenError::BadSignature);
    // No kid at all.
    let header = Header::new(Algorithm::ES256);
    let der_token = {
        let pem = s.signer.private_key_pem();
        jsonwebtoken::encode(
            &header,
            &claims(300),
            &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(refused(&s, &der_token), TokenError::MissingKid);
}

#[test]
fn alg_none_is_refused() {
    let s = setup();
    for alg in ["none", "None", "NONE"] {
        let token = format!(
            "{}.{}.",
            b64(&json!({"alg": alg, "kid": "k1", "typ": "JWT"})),
            b64(&Value::Object(claims(300)))
        );
        assert_eq!(
            refused(&s, &token),
            TokenError::UnsupportedAlgorithm {
                alg: alg.to_owned()
            }
        );
    }
}

#[test]
fn hs256_with_the_public_key_as_secret_is_refused() {
    let s = setup();
    // Algorithm confusion: an attacker signs with HMAC using public material as the secret.
    let jwk: Value = serde_json::from_str(&s.jwks).unwrap();
    let x = jwk["keys"][0]["x"].as_str().unwrap().to_owned();
    let secrets: Vec<Vec<u8>> = vec![
        s.jwks.as_bytes().to_vec(),
        URL_SAFE_NO_PAD.decode(&x).unwrap(),
        serde_json::to_vec(&jwk["keys"][0]).unwrap(),
    ];
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        for secret in &secrets {
            let mut header = Header::new(alg);
            header.kid = Some("k1".to_owned());
            let token =
                jsonwebtoken::encode(&header, &claims(300), &EncodingKey::from_secret(secret))
                    .unwrap();
            assert!(matches!(
                refused(&s, &token),
                TokenError::UnsupportedAlgorithm { .. }
            ));
        }
    }
}

#[test]
fn other_algorithms_and_malformed_tokens() {
    let s = setup();
    for alg in ["ES384", "RS512", "PS256", "EdDSA", ""] {
        let token = format!(
            "{}.{}.c2ln",
            b64(&json!({"alg": alg, "kid": "k1"})),
            b64(&Value::Object(claims(300)))
        );
        assert!(
            matches!(refused(&s, &token), TokenError::UnsupportedAlgorithm { .. }),
            "{alg}"
        );
    }
    let payload = b64(&Value::Object(claims(300)));
    let cases = [
        String::new(),
        "abc".to_owned(),
        "a.b".to_owned(),
        "a.b.c.d".to_owned(),
        format!("!!!.{payload}.sig"),
        format!("{}.{payload}.sig", URL_SAFE_NO_PAD.encode(b"not json")),
        format!("{}.{payload}.sig", b64(&json!({"kid": "k1"}))),
        format!("{}.{payload}.sig", b64(&json!({"alg": 5, "kid": "k1"}))),
        format!(
            "{}.{payload}.sig",
            b64(&json!({"alg": "ES256", "kid": "k1", "crit": ["exp"]}))
        ),
        "x".repeat(20_000),
    ];
    for token in &cases {
        assert!(
            matches!(refused(&s, token), TokenError::Malformed(_)),
            "{token:.40}"
        );
    }
    // Well-formed header, signature not base64url.
    let token = format!(
        "{}.{payload}.@@@",
        b64(&json!({"alg": "ES256", "kid": "k1"}))
    );
    assert!(matches!(
        refused(&s, &token),
        TokenError::Malformed(_) | TokenError::BadSignature
    ));
}

#[test]
fn principal_claim_is_configurable_and_required() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, &s.jwks).unwrap();
    let mut cfg = TokenConfig::dev(&path);
    cfg.principal_claim = "client_id".to_owned();
    let v = Validator::load(&cfg).unwrap();
    let token = s
        .signer
        .sign(&with(
            claims(300),
            "client_id",
            json!("urn:ponte:principal:federal"),
        ))
        .unwrap();
    assert_eq!(v.validate(&token).unwrap(), "urn:ponte:principal:federal");
    let token = s.signer.sign(&claims(300)).unwrap();
    assert_eq!(
        v.validate(&token).unwrap_err(),
        TokenError::MissingPrincipal {
            claim: "client_id".to_owned()
        }
    );
    for sub in [json!(""), json!(7), json!("a\nb")] {
        let token = s.signer.sign(&with(claims(300), "sub", sub)).unwrap();
        assert!(matches!(
            refused(&s, &token),
            TokenError::MissingPrincipal { .. }
        ));
    }
}

fn rsa_setup() -> (tempfile::TempDir, Validator, EncodingKey, DevSigner) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let rsa_jwks: Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("test-only-rsa.jwks.json")).unwrap(),
    )
    .unwrap();
    let ec = DevSigner::generate("ec").unwrap();
    let both = json!({"keys": [rsa_jwks["keys"][0], ec.jwk()]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, serde_json::to_string(&both).unwrap()).unwrap();
    let validator = Validator::load(&TokenConfig::dev(&path)).unwrap();
    let pem = std::fs::read(data.join("test-only-rsa-key.pem")).unwrap();
    (dir, validator, EncodingKey::from_rsa_pem(&pem).unwrap(), ec)
}

#[test]
fn rs256_tokens_and_key_type_confusion() {
    let (_dir, v, rsa, ec) = rsa_setup();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-rsa".to_owned());
    let token = jsonwebtoken::encode(&header, &claims(300), &rsa).unwrap();
    assert_eq!(v.validate(&token).unwrap(), PRINCIPAL);
    let mut keys: Vec<_> = v.key_ids().collect();
    keys.sort_unstable();
    assert_eq!(keys, [("ec", "ES256"), ("test-rsa", "RS256")]);

    // An RS256 token naming the EC key, and an ES256 token naming the RSA key.
    header.kid = Some("ec".to_owned());
    let token = jsonwebtoken::encode(&header, &claims(300), &rsa).unwrap();
    assert!(matches!(
        v.validate(&token).unwrap_err(),
        TokenError::AlgorithmNotForKey { .. }
    ));
    let mut claims_ = claims(300);
    claims_.insert("x".into(), json!(1));
    let ec_token = ec.sign(&claims_).unwrap();
    assert_eq!(v.validate(&ec_token).unwrap(), PRINCIPAL);
    let parts: Vec<&str> = ec_token.split('.').collect();
    let relabelled = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "ES256", "kid": "test-rsa"})),
        parts[1],
        parts[2]
    );
    assert!(matches!(
        v.validate(&relabelled).unwrap_err(),
        TokenError::AlgorithmNotForKey { .. }
    ));
}

fn load_err(jwks: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks).unwrap();
    Validator::load(&TokenConfig::dev(&path))
        .unwrap_err()
        .to_string()
}

#[test]
fn jwks_and_configuration_checks() {
    let ec = DevSigner::generate("k1").unwrap();
    let jwk = ec.jwk();
    assert!(load_err("{}").contains("not a JWKS"));
    assert!(load_err(r#"{"keys": []}"#).contains("no RS256 or ES256 signing key"));
    let oct = json!({"keys": [jwk, {"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]});
    assert!(load_err(&oct.to_string()).contains("symmetric (oct) key"));
    let dup = json!({"keys": [jwk, jwk]});
    assert!(load_err(&dup.to_string()).contains("used by an earlier key"));
    let mut short = jwk.clone();
    short["x"] = json!("AAAA");
    assert!(load_err(&json!({"keys": [short]}).to_string()).contains("32 bytes"));
    let small_rsa = json!({"keys": [{"kty": "RSA", "kid": "r", "n": URL_SAFE_NO_PAD.encode([0xff_u8; 128]), "e": "AQAB"}]});
    assert!(load_err(&small_rsa.to_string()).contains("2048 bits"));
    // Keys that cannot be used are skipped; the usable one remains.
    let mut enc = jwk.clone();
    enc["use"] = json!("enc");
    enc["kid"] = json!("e1");
    let mut p384 = jwk.clone();
    p384["crv"] = json!("P-384");
    p384["kid"] = json!("p384");
    let mut nokid = jwk.clone();
    nokid.as_object_mut().unwrap().remove("kid");
    let okp = json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "AAAA"});
    let mixed = json!({"keys": [enc, p384, nokid, okp, jwk]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, mixed.to_string()).unwrap();
    let v = Validator::load(&TokenConfig::dev(&path)).unwrap();
    assert_eq!(v.key_ids().collect::<Vec<_>>(), [("k1", "ES256")]);
    // The Debug of a validator or a signer shows no key material.
    let debug = format!("{v:?} {ec:?}");
    assert!(!debug.contains(jwk["x"].as_str().unwrap()), "{debug}");
    assert!(!debug.contains("PRIVATE"), "{debug}");

    let mut cfg = TokenConfig::dev(&path);
    cfg.leeway_secs = 3600;
    assert!(
        Validator::load(&cfg)
            .unwrap_err()
            .to_string()
            .contains("leeway_secs")
    );
    let mut cfg = TokenConfig::dev(&path);
    cfg.audience.clear();
    assert!(Validator::load(&cfg).is_err());
    let cfg = TokenConfig::dev(&dir.path().join("missing.json"));
    assert!(
        Validator::load(&cfg)
            .unwrap_err()
            .to_string()
            .contains("missing.json")
    );
}

#[test]
fn config_rejects_unknown_keys_and_has_defaults() {
    let cfg: TokenConfig = toml::from_str(
        "jwks_file = \"/etc/ponte/jwks.json\"\nissuer = \"https://idp\"\naudience = \"ponte\"\n",
    )
    .unwrap();
    assert_eq!(cfg.principal_claim, "sub");
    assert_eq!(cfg.leeway_secs, 60);
    let e = toml::from_str::<TokenConfig>(
        "jwks_file = \"j\"\nissuer = \"i\"\naudience = \"a\"\nleeway = 5\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `leeway`"), "{e}");
}

#[test]
fn dev_signer_round_trips_through_pem_and_jwks_of_several_keys() {
    let a = DevSigner::generate("a").unwrap();
    let pem = a.private_key_pem();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let again = DevSigner::from_pkcs8_pem("a", &pem).unwrap();
    assert_eq!(again.jwk(), a.jwk());
    assert!(DevSigner::from_pkcs8_pem("a", "nothing").is_err());
    assert!(DevSigner::generate("").is_err());

    let b = DevSigner::generate("b").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks_json(&[&a, &b])).unwrap();
    let v = Validator::load(&TokenConfig::dev(&path)).unwrap();
    for s in [&again, &b] {
        let token = s
            .sign_for(PRINCIPAL, DEV_ISSUER, DEV_AUDIENCE, Duration::from_secs(60))
            .unwrap();
        assert_eq!(v.validate(&token).unwrap(), PRINCIPAL);
    }
}
