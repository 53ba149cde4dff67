//! OAuth2 bearer tokens (JWT) validated offline against a JWKS file, for clients behind an API
//! gateway.
//!
//! A token is accepted only when all of these hold:
//! - its header names `RS256` or `ES256` (`none`, `HS*`, `PS*`, `ES384`, … are refused before
//!   anything else is looked at) and a `kid` that is in the JWKS file, and the key of that `kid`
//!   is of that algorithm (an RSA key for RS256, a P-256 key for ES256);
//! - its signature verifies with that key;
//! - it carries `exp`, `iss` and `aud`; `exp` (and `nbf` when present) hold with the configured
//!   leeway, `iss` is the configured issuer and `aud` names the configured audience;
//! - the principal claim (`sub` unless configured otherwise) is a non-empty string.
//!
//! The principal is that claim's value, looked up in the access policy ([`crate::policy`]).
//! Errors are typed ([`TokenError`]) and never contain the token; nothing here logs a token or a
//! key. [`dev`] makes an ES256 signing key, its JWKS and tokens for local runs and tests.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::AccessError;

/// Longest token accepted, in bytes; a longer one is malformed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest `leeway_secs` a configuration may give.
pub const MAX_LEEWAY_SECS: u64 = 300;
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

fn default_principal_claim() -> String {
    "sub".to_owned()
}

fn default_leeway_secs() -> u64 {
    60
}

/// Where the keys are and what a token must say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The JWKS file (`{"keys": [...]}`) with the issuer's public signing keys, each with a
    /// `kid`. Read at [`Validator::load`]; load again to pick up a rotated file.
    pub jwks_file: PathBuf,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The audience every token's `aud` must name (Ponte's API identifier at the issuer).
    pub audience: String,
    /// The claim that names the principal; `sub` by default.
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (at most [`MAX_LEEWAY_SECS`]); 60
    /// by default.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
}

/// Why a token was refused. Never contains the token or any part of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWS compact serialization this validator reads (wrong shape, bad base64 or JSON,
    /// too long, a `crit` header, a missing `alg`, a claim of the wrong type).
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's algorithm is not RS256 or ES256.
    #[error("token algorithm {alg} is not accepted (RS256 and ES256 only)")]
    UnsupportedAlgorithm {
        /// The algorithm named, if it is a short name; `?` otherwise.
        alg: String,
    },
    /// The header's algorithm is not the one of the key its `kid` selects.
    #[error("token algorithm {alg} does not match key {kid:?} ({key_alg})")]
    AlgorithmNotForKey {
        /// The header's algorithm.
        alg: &'static str,
        /// The key's id.
        kid: String,
        /// The key's algorithm.
        key_alg: &'static str,
    },
    /// The header has no `kid`.
    #[error("token has no key id (kid)")]
    MissingKid,
    /// The `kid` is not in the JWKS file.
    #[error("token key id {kid:?} is not in the JWKS")]
    UnknownKid {
        /// The key id, if it is a short printable one; `?` otherwise.
        kid: String,
    },
    /// The signature does not verify with the key.
    #[error("token signature does not verify")]
    BadSignature,
    /// `exp` is past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("token issuer is not the configured one")]
    WrongIssuer,
    /// `aud` does not name the configured audience.
    #[error("token audience does not name this service")]
    WrongAudience,
    /// A required claim (`exp`, `iss`, `aud`) is missing or not of its type.
    #[error("token has no valid {0} claim")]
    MissingClaim(&'static str),
    /// The principal claim is missing, not a string, empty or not printable.
    #[error("token has no usable principal claim {claim:?}")]
    MissingPrincipal {
        /// The configured claim.
        claim: String,
    },
}

/// Repeats attacker-controlled header text only when it is short and plain.
fn echo(text: &str) -> String {
    let plain = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '+'));
    if plain {
        text.to_owned()
    } else {
        "?".to_owned()
    }
}

/// A verification key from the JWKS and the one algorithm it verifies.
#[derive(Clone)]
struct Key {
    alg: Algorithm,
    key: DecodingKey,
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "other",
    }
}

/// Validates bearer tokens against the keys of one JWKS file.
#[derive(Clone)]
pub struct Validator {
    keys: BTreeMap<String, Key>,
    issuer: String,
    audience: String,
    principal_claim: String,
    leeway_secs: u64,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|(kid, k)| format!("{kid} ({})", alg_name(k.alg)))
            .collect();
        f.debug_struct("Validator")
            .field("keys", &keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("principal_claim", &self.principal_claim)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<serde_json::Value>,
    kid: Option<serde_json::Value>,
    crit: Option<serde_json::Value>,
}

impl Validator {
    /// Reads the JWKS file of `cfg` and checks the configuration.
    pub fn load(cfg: &TokenConfig) -> Result<Validator, AccessError> {
        let path = cfg.jwks_file.display().to_string();
        let text = std::fs::read_to_string(&cfg.jwks_file).map_err(|e| AccessError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Validator::from_jwks_str(cfg, &path, &text)
    }

    /// Like [`Validator::load`], with the JWKS given as text (`name` is named in errors);
    /// `cfg.jwks_file` is not read.
    pub fn from_jwks_str(
        cfg: &TokenConfig,
        name: &str,
        jwks: &str,
    ) -> Result<Validator, AccessError> {
        if cfg.issuer.is_empty() {
            return Err(AccessError::Token("issuer must not be empty".to_owned()));
        }
        if cfg.audience.is_empty() {
            return Err(AccessError::Token("audience must not be empty".to_owned()));
        }
        if cfg.principal_claim.is_empty() {
            return Err(AccessError::Token(
                "principal_claim must not be empty".to_owned(),
            ));
        }
        if cfg.leeway_secs > MAX_LEEWAY_SECS {
            return Err(AccessError::Token(format!(
                "leeway_secs {} is more than {MAX_LEEWAY_SECS}",
                cfg.leeway_secs
            )));
        }
        Ok(Validator {
            keys: parse_jwks(name, jwks)?,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            principal_claim: cfg.principal_claim.clone(),
            leeway_secs: cfg.leeway_secs,
        })
    }

    /// The key ids this validator accepts, with their algorithms.
    pub fn key_ids(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.keys
            .iter()
            .map(|(kid, k)| (kid.as_str(), alg_name(k.alg)))
    }

    /// Checks `token` (without the `Bearer ` prefix) and returns the principal it names.
    pub fn validate(&self, token: &str) -> Result<String, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("longer than the limit"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not three dot-separated parts"));
        };
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Malformed("header is not base64url"))?;
        let header: RawHeader = serde_json::from_slice(&header)
            .map_err(|_| TokenError::Malformed("header is not a JSON object"))?;
        let alg = match header.alg {
            Some(serde_json::Value::String(a)) => a,
            Some(_) => return Err(TokenError::Malformed("alg is not a string")),
            None => return Err(TokenError::Malformed("no alg in the header")),
        };
        let alg = match alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => {
                return Err(TokenError::UnsupportedAlgorithm { alg: echo(other) });
            }
        };
        if header.crit.is_some() {
            return Err(TokenError::Malformed(
                "crit header parameters are not supported",
            ));
        }
        let kid = match header.kid {
            Some(serde_json::Value::String(k)) => k,
            Some(_) => return Err(TokenError::Malformed("kid is not a string")),
            None => return Err(TokenError::MissingKid),
        };
        let Some(key) = self.keys.get(&kid) else {
            return Err(TokenError::UnknownKid { kid: echo(&kid) });
        };
        if key.alg != alg {
            return Err(TokenError::AlgorithmNotForKey {
                alg: alg_name(alg),
                kid: echo(&kid),
                key_alg: alg_name(key.alg),
            });
        }

        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = self.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_audience(&[self.audience.as_str()]);

        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.key,
            &validation,
        )
        .map_err(|e| map_error(e.kind()))?;

        let principal = data
            .claims
            .get(&self.principal_claim)
            .and_then(serde_json::Value::as_str)
            .filter(|p| !p.is_empty() && p.len() <= 1024 && !p.chars().any(char::is_control))
            .ok_or_else(|| TokenError::MissingPrincipal {
                claim: self.principal_claim.clone(),
            })?;
        Ok(principal.to_owned())
    }
}

fn map_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => TokenError::BadSignature,
        // The key was accepted at load; a key ring refuses now cannot verify anything.
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => {
            TokenError::BadSignature
        }
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(match c.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            "aud" => "aud",
            _ => "required",
        }),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => TokenError::UnsupportedAlgorithm {
            alg: "?".to_owned(),
        },
        ErrorKind::Base64(_) => TokenError::Malformed("a part is not base64url"),
        ErrorKind::Json(_) => {
            TokenError::Malformed("claims are not a JSON object of the right types")
        }
        ErrorKind::Utf8(_) => TokenError::Malformed("claims are not UTF-8"),
        _ => TokenError::Malformed("not a JWT"),
    }
}

// ---------------------------------------------------------------------------------------------
// JWKS
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Map<String, serde_json::Value>>,
}

fn parse_jwks(name: &str, text: &str) -> Result<BTreeMap<String, Key>, AccessError> {
    let bad = |reason: String| AccessError::File {
        path: name.to_owned(),
        reason,
    };
    let raw: RawJwks = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "not a JWKS (a JSON object with a `keys` array): {e}"
        ))
    })?;
    let mut keys = BTreeMap::new();
    for (i, jwk) in raw.keys.iter().enumerate() {
        let field = |f: &str| jwk.get(f).and_then(serde_json::Value::as_str);
        let kty = field("kty").unwrap_or_default();
        let Some(kid) = field("kid").filter(|k| !k.is_empty()) else {
            tracing::warn!(jwks = name, index = i, kty, "JWKS key without kid skipped");
            continue;
        };
        let at = |reason: &str| bad(format!("keys[{i}] (kid {kid:?}): {reason}"));
        if kty == "oct" {
            return Err(at(
                "a symmetric (oct) key has no place in a JWKS of verification keys: remove it",
            ));
        }
        if field("use").is_some_and(|u| u != "sig") {
            tracing::warn!(
                jwks = name,
                kid,
                "JWKS key not for signatures (use) skipped"
            );
            continue;
        }
        let alg = field("alg");
        let key = match kty {
            "RSA" => {
                if alg.is_some_and(|a| a != "RS256") {
                    tracing::warn!(
                        jwks = name,
                        kid,
                        alg,
                        "JWKS key with an algorithm other than RS256/ES256 skipped"
                    );
                    continue;
                }
                let (Some(n), Some(e)) = (field("n"), field("e")) else {
                    return Err(at("an RSA key needs n and e"));
                };
                let n_bytes = URL_SAFE_NO_PAD
                    .decode(n)
                    .map_err(|_| at("n is not base64url"))?;
                URL_SAFE_NO_PAD
                    .decode(e)
                    .map_err(|_| at("e is not base64url"))?;
                let significant = n_bytes.iter().skip_while(|&&b| b == 0).count();
                if significant * 8 < MIN_RSA_BITS {
                    return Err(at(&format!(
                        "the RSA modulus is shorter than {MIN_RSA_BITS} bits"
                    )));
                }
                Key {
                    alg: Algorithm::RS256,
                    key: DecodingKey::from_rsa_components(n, e)
                        .map_err(|_| at("not a usable RSA key"))?,
                }
            }
            "EC" => {
                if field("crv") != Some("P-256") || alg.is_some_and(|a| a != "ES256") {
                    tracing::warn!(
                        jwks = name,
                        kid,
                        alg,
                        "JWKS EC key other than P-256/ES256 skipped"
                    );
                    continue;
                }
                let (Some(x), Some(y)) = (field("x"), field("y")) else {
                    return Err(at("an EC key needs x and y"));
                };
                for (c, v) in [("x", x), ("y", y)] {
                    let len = URL_SAFE_NO_PAD
                        .decode(v)
                        .map_err(|_| at(&format!("{c} is not base64url")))?
                        .len();
                    if len != 32 {
                        return Err(at(&format!("{c} of a P-256 key is 32 bytes, not {len}")));
                    }
                }
                Key {
                    alg: Algorithm::ES256,
                    key: DecodingKey::from_ec_components(x, y)
                        .map_err(|_| at("not a usable P-256 key"))?,
                }
            }
            other => {
                tracing::warn!(
                    jwks = name,
                    kid,
                    kty = other,
                    "JWKS key of an unsupported type skipped"
                );
                continue;
            }
        };
        if keys.insert(kid.to_owned(), key).is_some() {
            return Err(at("this kid is used by an earlier key too"));
        }
    }
    if keys.is_empty() {
        return Err(bad(
            "no RS256 or ES256 signing key with a kid: no token could be accepted".to_owned(),
        ));
    }
    Ok(keys)
}

/// An ES256 signing key, its JWKS and tokens, for local runs and tests only: `ponte pki dev`
/// and the test clients. A deployment's tokens come from its own issuer.
pub mod dev {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    use crate::AccessError;

    /// The issuer of development tokens.
    pub const DEV_ISSUER: &str = "urn:ponte:dev-issuer";
    /// The audience of development tokens: Ponte's API.
    pub const DEV_AUDIENCE: &str = "urn:ponte:api";
    /// The key id of the development signing key.
    pub const DEV_KID: &str = "ponte-dev-es256";

    const PEM_LABEL: &str = "PRIVATE KEY";

    /// An ES256 (P-256) private key with its key id. Its `Debug` shows the key id only.
    pub struct DevSigner {
        kid: String,
        pkcs8: Vec<u8>,
        x: String,
        y: String,
    }

    impl std::fmt::Debug for DevSigner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("DevSigner")
                .field("kid", &self.kid)
                .finish_non_exhaustive()
        }
    }

    fn err(what: &str) -> AccessError {
        AccessError::Token(format!("development signing key: {what}"))
    }

    impl DevSigner {
        /// A new random key with key id `kid`.
        pub fn generate(kid: &str) -> Result<DevSigner, AccessError> {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| err("generating a P-256 key failed"))?;
            DevSigner::from_pkcs8_der(kid, pkcs8.as_ref())
        }

        /// The key of a PKCS#8 DER document.
        pub fn from_pkcs8_der(kid: &str, der: &[u8]) -> Result<DevSigner, AccessError> {
            if kid.is_empty() {
                return Err(err("the key id must not be empty"));
            }
            let rng = SystemRandom::new();
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                .map_err(|_| err("not a PKCS#8 P-256 private key"))?;
            // Uncompressed point: 0x04, x (32 bytes), y (32 bytes).
            let point = pair.public_key().as_ref();
            if point.len() != 65 || point[0] != 4 {
                return Err(err("unexpected public key encoding"));
            }
            Ok(DevSigner {
                kid: kid.to_owned(),
                pkcs8: der.to_vec(),
                x: URL_SAFE_NO_PAD.encode(&point[1..33]),
                y: URL_SAFE_NO_PAD.encode(&point[33..65]),
            })
        }

        /// The key of a PEM `PRIVATE KEY` (PKCS#8) document, as [`DevSigner::private_key_pem`]
        /// writes it.
        pub fn from_pkcs8_pem(kid: &str, pem: &str) -> Result<DevSigner, AccessError> {
            let begin = format!("-----BEGIN {PEM_LABEL}-----");
            let end = format!("-----END {PEM_LABEL}-----");
            let body = pem
                .split_once(&begin)
                .and_then(|(_, rest)| rest.split_once(&end))
                .map(|(body, _)| body)
                .ok_or_else(|| err("no PEM PRIVATE KEY block"))?;
            let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            let der = STANDARD
                .decode(b64)
                .map_err(|_| err("the PEM block is not base64"))?;
            DevSigner::from_pkcs8_der(kid, &der)
        }

        /// The key id.
        pub fn kid(&self) -> &str {
            &self.kid
        }

        /// The private key as PEM (PKCS#8). A secret: write it with owner-only permissions.
        pub fn private_key_pem(&self) -> String {
            let b64 = STANDARD.encode(&self.pkcs8);
            let mut out = format!("-----BEGIN {PEM_LABEL}-----\n");
            for line in b64.as_bytes().chunks(64) {
                out.push_str(&String::from_utf8_lossy(line));
                out.push('\n');
            }
            out.push_str(&format!("-----END {PEM_LABEL}-----\n"));
            out
        }

        /// The public key as a JWK (`kty`, `crv`, `x`, `y`, `kid`, `alg`, `use`).
        pub fn jwk(&self) -> serde_json::Value {
            serde_json::json!({
                "kty": "EC",
                "crv": "P-256",
                "x": self.x,
                "y": self.y,
                "kid": self.kid,
                "alg": "ES256",
                "use": "sig",
            })
        }

        /// A JWKS file's text holding this key's public half.
        pub fn jwks_json(&self) -> String {
            jwks_json(&[self])
        }

        /// Signs `claims` (a JSON object) as an ES256 JWT with this key's `kid`.
        pub fn sign(
            &self,
            claims: &serde_json::Map<String, serde_json::Value>,
        ) -> Result<String, AccessError> {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8))
                .map_err(|_| err("signing failed"))
        }

        /// A token for `principal` (`sub`) from `issuer` to `audience`, valid from now for
        /// `valid_for`.
        pub fn sign_for(
            &self,
            principal: &str,
            issuer: &str,
            audience: &str,
            valid_for: Duration,
        ) -> Result<String, AccessError> {
            let now = unix_now();
            let mut claims = serde_json::Map::new();
            claims.insert("sub".into(), principal.into());
            claims.insert("iss".into(), issuer.into());
            claims.insert("aud".into(), audience.into());
            claims.insert("iat".into(), now.into());
            claims.insert("exp".into(), now.saturating_add(valid_for.as_secs()).into());
            self.sign(&claims)
        }
    }

    /// A JWKS file's text holding the public halves of `signers` (e.g. the current and the next
    /// key while rotating).
    pub fn jwks_json(signers: &[&DevSigner]) -> String {
        let keys: Vec<serde_json::Value> = signers.iter().map(|s| s.jwk()).collect();
        let mut text = serde_json::to_string_pretty(&serde_json::json!({ "keys": keys }))
            .unwrap_or_else(|_| "{\"keys\":[]}".to_owned());
        text.push('\n');
        text
    }

    /// Seconds since the Unix epoch, now.
    pub fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

impl TokenConfig {
    /// A configuration for the development issuer ([`dev::DEV_ISSUER`], [`dev::DEV_AUDIENCE`])
    /// reading `jwks_file`.
    pub fn dev(jwks_file: &Path) -> TokenConfig {
        TokenConfig {
            jwks_file: jwks_file.to_path_buf(),
            issuer: dev::DEV_ISSUER.to_owned(),
            audience: dev::DEV_AUDIENCE.to_owned(),
            principal_claim: default_principal_claim(),
            leeway_secs: default_leeway_secs(),
        }
    }
}
