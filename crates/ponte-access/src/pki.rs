//! A development PKI: the certificates behind `ponte pki dev --out DIR`.
//!
//! Why: mutual TLS on every listener (issue 14) must be as easy to run locally as plaintext was,
//! so one call writes a local CA, a server certificate and a client certificate for every
//! principal the demo and the tests need, each already naming its principal the way
//! [`crate::tls`] reads it.
//!
//! # What [`generate_dev`] writes into DIR
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca-key.pem` | the local CA (CN "Ponte development CA"), valid 3,652 days (10 years) |
//! | `server.pem`, `server-key.pem` | the listeners' certificate for `localhost`, `127.0.0.1` and `::1` |
//! | `<name>.pem`, `<name>-key.pem` | one client certificate per principal of [`DEV_CLIENTS`] |
//! | `jwks.json`, `token-signing-key.pem` | a JWKS with one ES256 key (`kid` [`crate::token::dev::DEV_KID`]) and its private key, for bearer tokens ([`crate::token::dev::DevSigner`] signs them) |
//! | `policy.toml` | an access policy granting each principal above its rights ([`crate::policy::dev_policy_toml`]) |
//!
//! Leaf certificates are valid 365 days (1 year). Every validity period starts five minutes
//! before generation, to tolerate a little clock skew. Keys are ECDSA P-256, written as PEM
//! PKCS#8 with mode 0600 (on Unix); certificates are PEM. A client certificate names its
//! principal in a URI subject alternative name `urn:ponte:principal:<name>` ([`principal_uri`])
//! and carries `<name>` as its subject CN; it may only be used for client authentication, the
//! server certificate only for server authentication.
//!
//! The clients are the three sector systems (`education`, `health`, `assistance`), sample query
//! clients (`federal`, `state-sp` for São Paulo, UF 35, and `municipality-3550308` for the
//! municipality of São Paulo) and an `operator`. What each may do is not in its certificate:
//! the access policy grants it to the principal.
//!
//! # What this module must never do
//!
//! - Never be the PKI of a real deployment: the CA's private key lies next to the certificates
//!   it signed, unprotected. Production certificates come from the deployment's own CA.
//! - Never overwrite a non-empty directory unless asked (`force`), and never delete a file it
//!   did not write.
//! - Never log or return a private key: keys go only to their 0600 files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::AccessError;
use crate::tls::Principal;

/// The prefix of every development principal's URI: `urn:ponte:principal:<name>`.
pub const PRINCIPAL_URI_PREFIX: &str = "urn:ponte:principal:";

/// How long the development CA is valid: 10 years.
pub const CA_VALIDITY: Duration = Duration::days(3652);

/// How long a development server or client certificate is valid: 1 year.
pub const LEAF_VALIDITY: Duration = Duration::days(365);

/// How far before generation every validity period starts (clock skew).
const BACKDATE: Duration = Duration::minutes(5);

/// The names the server certificate is valid for.
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The URI naming the development principal `name`: `urn:ponte:principal:<name>`.
pub fn principal_uri(name: &str) -> String {
    format!("{PRINCIPAL_URI_PREFIX}{name}")
}

/// What a development client stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// A sector's national system, sending records to its adapter.
    SectorSystem,
    /// A downstream system reading the compliance view.
    QueryClient,
    /// An operator of the deployment.
    Operator,
    /// An instance of a service calling another instance of it (the reconciler's peer reads).
    Peer,
}

/// One client certificate [`generate_dev`] issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevClientSpec {
    /// The principal's short name: file stem, subject CN and the tail of its URI.
    pub name: &'static str,
    /// What the client stands for.
    pub kind: ClientKind,
    /// One line for people: what the client is meant to be (its rights come from the policy).
    pub purpose: &'static str,
}

/// Every client certificate [`generate_dev`] issues, in order.
pub const DEV_CLIENTS: [DevClientSpec; 8] = [
    DevClientSpec {
        name: "education",
        kind: ClientKind::SectorSystem,
        purpose: "the education system (school attendance)",
    },
    DevClientSpec {
        name: "health",
        kind: ClientKind::SectorSystem,
        purpose: "the health system (health conditionalities)",
    },
    DevClientSpec {
        name: "assistance",
        kind: ClientKind::SectorSystem,
        purpose: "the social assistance system (registry, SCFV, follow-up, appeals, households)",
    },
    DevClientSpec {
        name: "federal",
        kind: ClientKind::QueryClient,
        purpose: "a sample query client meant for federal scope",
    },
    DevClientSpec {
        name: "state-sp",
        kind: ClientKind::QueryClient,
        purpose: "a sample query client meant for the state of São Paulo (UF 35)",
    },
    DevClientSpec {
        name: "municipality-3550308",
        kind: ClientKind::QueryClient,
        purpose: "a sample query client meant for the municipality of São Paulo (IBGE 3550308)",
    },
    DevClientSpec {
        name: "operator",
        kind: ClientKind::Operator,
        purpose: "an operator of the deployment",
    },
    DevClientSpec {
        name: "reconciler",
        kind: ClientKind::Peer,
        purpose: "the reconciler's instances, reading each other's partitions (peer reads)",
    },
];

/// A certificate file and its private key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The PEM certificate.
    pub cert: PathBuf,
    /// The PEM private key (mode 0600).
    pub key: PathBuf,
}

/// A client certificate [`generate_dev`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevClient {
    /// What it was issued as.
    pub spec: DevClientSpec,
    /// The principal its certificate names (its URI SAN).
    pub principal: Principal,
    /// Its files.
    pub files: CertFiles,
}

/// What [`generate_dev`] wrote, for the CLI to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPkiManifest {
    /// The output directory.
    pub dir: PathBuf,
    /// The CA: `ca.pem` is the bundle listeners check clients against (and clients trust).
    pub ca: CertFiles,
    /// The listeners' certificate.
    pub server: CertFiles,
    /// The names the server certificate is valid for.
    pub server_names: Vec<String>,
    /// One per [`DEV_CLIENTS`] entry, in that order.
    pub clients: Vec<DevClient>,
    /// When the CA expires.
    pub ca_not_after: OffsetDateTime,
    /// When the server and client certificates expire.
    pub leaf_not_after: OffsetDateTime,
    /// The JWKS bearer tokens are checked against.
    pub jwks: PathBuf,
    /// The private key that signs development bearer tokens (mode 0600).
    pub token_signing_key: PathBuf,
    /// The access policy for the principals above.
    pub policy: PathBuf,
}

/// Writes the development PKI into `dir` (created if missing, mode 0700 on Unix). Refuses a
/// directory that exists and is not empty unless `force`; with `force`, overwrites the files it
/// writes and leaves any other file alone. All keys and certificates are generated before the
/// first file is written.
pub fn generate_dev(dir: &Path, force: bool) -> Result<DevPkiManifest, AccessError> {
    prepare_dir(dir, force)?;

    let now = OffsetDateTime::now_utc();
    let not_before = now - BACKDATE;
    let ca_not_after = now + CA_VALIDITY;
    let leaf_not_after = now + LEAF_VALIDITY;

    let ca = Authority::new("Ponte development CA", not_before, ca_not_after)?;
    let mut outputs = vec![("ca".to_string(), ca.cert_pem.clone(), ca.key_pem.clone())];

    let server_sans = SERVER_NAMES
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => dns_san(n),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let server = ca.issue(&LeafSpec {
        sans: server_sans,
        common_name: Some("localhost"),
        usage: ExtendedKeyUsagePurpose::ServerAuth,
        not_before,
        not_after: leaf_not_after,
    })?;
    outputs.push(("server".to_string(), server.cert_pem, server.key_pem));

    let mut clients = Vec::with_capacity(DEV_CLIENTS.len());
    for spec in DEV_CLIENTS {
        let uri = principal_uri(spec.name);
        let issued = ca.issue(&LeafSpec {
            sans: vec![uri_san(&uri)?],
            common_name: Some(spec.name),
            usage: ExtendedKeyUsagePurpose::ClientAuth,
            not_before,
            not_after: leaf_not_after,
        })?;
        outputs.push((spec.name.to_string(), issued.cert_pem, issued.key_pem));
        clients.push(DevClient {
            spec,
            principal: Principal::new(uri)?,
            files: files_of(dir, spec.name),
        });
    }

    let signer = crate::token::dev::DevSigner::generate(crate::token::dev::DEV_KID)?;
    let (jwks, token_signing_key, policy) = (
        dir.join("jwks.json"),
        dir.join("token-signing-key.pem"),
        dir.join("policy.toml"),
    );

    for (stem, cert_pem, key_pem) in &outputs {
        let files = files_of(dir, stem);
        write_new(&files.cert, cert_pem.as_bytes(), false)?;
        write_new(&files.key, key_pem.as_bytes(), true)?;
    }
    write_new(&jwks, signer.jwks_json().as_bytes(), false)?;
    write_new(
        &token_signing_key,
        signer.private_key_pem().as_bytes(),
        true,
    )?;
    write_new(&policy, crate::policy::dev_policy_toml().as_bytes(), false)?;

    Ok(DevPkiManifest {
        dir: dir.to_path_buf(),
        ca: files_of(dir, "ca"),
        server: files_of(dir, "server"),
        server_names: SERVER_NAMES.iter().map(|n| n.to_string()).collect(),
        clients,
        ca_not_after,
        leaf_not_after,
        jwks,
        token_signing_key,
        policy,
    })
}

fn files_of(dir: &Path, stem: &str) -> CertFiles {
    CertFiles {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}-key.pem")),
    }
}

fn pki_error(what: &str, e: impl std::fmt::Display) -> AccessError {
    AccessError::Pki(format!("{what}: {e}"))
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> AccessError {
    AccessError::File {
        path: path.display().to_string(),
        reason: format!("{what}: {e}"),
    }
}

fn dns_san(name: &str) -> Result<SanType, AccessError> {
    name.try_into()
        .map(SanType::DnsName)
        .map_err(|e| pki_error(&format!("DNS name {name:?}"), e))
}

fn uri_san(uri: &str) -> Result<SanType, AccessError> {
    uri.try_into()
        .map(SanType::URI)
        .map_err(|e| pki_error(&format!("URI {uri:?}"), e))
}

fn prepare_dir(dir: &Path, force: bool) -> Result<(), AccessError> {
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(io_error(
            dir,
            "cannot write the development PKI here",
            std::io::Error::other("not a directory"),
        )),
        Ok(_) => {
            let mut entries = fs::read_dir(dir).map_err(|e| io_error(dir, "cannot list", e))?;
            if entries.next().is_some() && !force {
                return Err(AccessError::File {
                    path: dir.display().to_string(),
                    reason: "the directory is not empty; refusing to overwrite it without force"
                        .into(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder
                .create(dir)
                .map_err(|e| io_error(dir, "cannot create", e))
        }
        Err(e) => Err(io_error(dir, "cannot inspect", e)),
    }
}

/// Writes `contents` into a freshly created `path` (an existing file or link there is removed
/// first, so nothing is written through a link and a key never inherits wider permissions).
fn write_new(path: &Path, contents: &[u8], private: bool) -> Result<(), AccessError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(path, "cannot replace", e)),
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if private { 0o600 } else { 0o644 });
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(path)
        .map_err(|e| io_error(path, "cannot create", e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(path, "cannot write", e))
}

/// What one leaf certificate holds.
#[derive(Debug)]
struct LeafSpec<'a> {
    sans: Vec<SanType>,
    common_name: Option<&'a str>,
    usage: ExtendedKeyUsagePurpose,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// A certificate and its key, both PEM.
#[derive(Debug)]
struct Issued {
    cert_pem: String,
    key_pem: String,
}

/// A CA able to sign leaf certificates.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No key material, ever.
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    fn new(
        common_name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Authority, AccessError> {
        let key = KeyPair::generate().map_err(|e| pki_error("generating the CA key", e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Ponte (development only)");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .self_signed(&key)
            .map_err(|e| pki_error("signing the CA certificate", e))?;
        Ok(Authority {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    fn issue(&self, spec: &LeafSpec<'_>) -> Result<Issued, AccessError> {
        let key = KeyPair::generate().map_err(|e| pki_error("generating a key", e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = spec.common_name {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = spec.sans.clone();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![spec.usage.clone()];
        params.use_authority_key_identifier_extension = true;
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| pki_error("signing a certificate", e))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A CA for tests that need certificates the development PKI does not make (expired ones,
/// other names).
#[cfg(test)]
#[allow(clippy::unwrap_used, unreachable_pub)]
pub(crate) mod test_support {
    use std::path::Path;

    use rcgen::{ExtendedKeyUsagePurpose, SanType};
    use time::OffsetDateTime;

    use super::{Authority, Issued, LeafSpec, files_of, write_new};
    use crate::AccessError;

    /// A test CA.
    #[derive(Debug)]
    pub struct TestCa(Authority);

    /// A certificate and key issued by a [`TestCa`].
    #[derive(Debug)]
    pub struct TestCert(Issued);

    impl TestCa {
        pub fn new(common_name: &str) -> Result<TestCa, AccessError> {
            let now = OffsetDateTime::now_utc();
            Authority::new(common_name, now - super::BACKDATE, now + super::CA_VALIDITY).map(TestCa)
        }

        /// Writes `<stem>.pem` and `<stem>-key.pem`.
        pub fn write(&self, dir: &Path, stem: &str) {
            TestCert(Issued {
                cert_pem: self.0.cert_pem.clone(),
                key_pem: self.0.key_pem.clone(),
            })
            .write(dir, stem);
        }

        /// A leaf with these names and usage, valid for a year from now unless `validity`.
        pub fn leaf(
            &self,
            sans: Vec<SanType>,
            common_name: Option<&str>,
            usage: ExtendedKeyUsagePurpose,
            validity: Option<(OffsetDateTime, OffsetDateTime)>,
        ) -> TestCert {
            let now = OffsetDateTime::now_utc();
            let (not_before, not_after) =
                validity.unwrap_or((now - super::BACKDATE, now + super::LEAF_VALIDITY));
            TestCert(
                self.0
                    .issue(&LeafSpec {
                        sans,
                        common_name,
                        usage,
                        not_before,
                        not_after,
                    })
                    .unwrap(),
            )
        }
    }

    impl TestCert {
        /// Writes `<stem>.pem` and `<stem>-key.pem`.
        pub fn write(&self, dir: &Path, stem: &str) {
            let files = files_of(dir, stem);
            write_new(&files.cert, self.0.cert_pem.as_bytes(), false).unwrap();
            write_new(&files.key, self.0.key_pem.as_bytes(), true).unwrap();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::tls::testkit::{client, handshake};
    use crate::tls::{ClientAuth, TlsConfig, principal_from_cert, principal_from_peer};

    fn listener(pki: &DevPkiManifest) -> TlsConfig {
        TlsConfig {
            cert_file: Some(pki.server.cert.clone()),
            key_file: Some(pki.server.key.clone()),
            client_ca_file: Some(pki.ca.cert.clone()),
            client_auth: ClientAuth::Required,
            insecure: false,
        }
    }

    #[test]
    fn writes_every_file_with_private_keys_readable_by_the_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let pki = generate_dev(&dir, false).unwrap();
        assert_eq!(pki.dir, dir);
        assert_eq!(pki.clients.len(), DEV_CLIENTS.len());
        assert_eq!(pki.server_names, ["localhost", "127.0.0.1", "::1"]);

        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut expected = vec![
            "jwks.json".to_owned(),
            "policy.toml".to_owned(),
            "token-signing-key.pem".to_owned(),
        ];
        for stem in ["ca", "server"]
            .into_iter()
            .chain(DEV_CLIENTS.iter().map(|c| c.name))
        {
            expected.push(format!("{stem}.pem"));
            expected.push(format!("{stem}-key.pem"));
        }
        expected.sort();
        assert_eq!(names, expected);

        for client in &pki.clients {
            assert_eq!(
                client.principal.as_str(),
                format!("urn:ponte:principal:{}", client.spec.name)
            );
            let chain = crate::tls::load_certs(&client.files.cert).unwrap();
            assert_eq!(principal_from_cert(&chain[0]).unwrap(), client.principal);
        }
        let state_sp = pki
            .clients
            .iter()
            .find(|c| c.spec.name == "state-sp")
            .unwrap();
        assert_eq!(state_sp.spec.kind, ClientKind::QueryClient);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let keys = [&pki.ca, &pki.server]
                .into_iter()
                .chain(pki.clients.iter().map(|c| &c.files));
            for files in keys {
                let mode = fs::metadata(&files.key).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", files.key.display());
            }
            let dir_mode = fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(dir_mode & 0o077, 0, "the directory is private");
        }

        // The token material and the policy belong together: a token the signing key signs
        // validates against the JWKS, and the policy grants its principal what it should.
        let pem = fs::read_to_string(&pki.token_signing_key).unwrap();
        let signer =
            crate::token::dev::DevSigner::from_pkcs8_pem(crate::token::dev::DEV_KID, &pem).unwrap();
        let token = signer
            .sign_for(
                &principal_uri("federal"),
                crate::token::dev::DEV_ISSUER,
                crate::token::dev::DEV_AUDIENCE,
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        let validator =
            crate::token::Validator::load(&crate::token::TokenConfig::dev(&pki.jwks)).unwrap();
        assert_eq!(
            validator.validate(&token).unwrap(),
            principal_uri("federal")
        );
        let policy = crate::policy::Policy::load(&pki.policy).unwrap();
        assert!(
            policy
                .may_send(
                    &principal_uri("education"),
                    crate::policy::Adapter::Education,
                    crate::policy::RecordKind::Attendance
                )
                .is_ok()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&pki.token_signing_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let days = |t: OffsetDateTime| (t - OffsetDateTime::now_utc()).whole_days();
        assert!((3651..=3652).contains(&days(pki.ca_not_after)));
        assert!((364..=365).contains(&days(pki.leaf_not_after)));
    }

    #[test]
    fn the_clients_are_the_principals_of_the_development_policy() {
        let names: Vec<&str> = DEV_CLIENTS.iter().map(|c| c.name).collect();
        assert_eq!(names, crate::policy::DEV_PRINCIPALS);
        for name in names {
            assert_eq!(principal_uri(name), crate::policy::dev_principal(name));
        }
    }

    #[test]
    fn refuses_a_non_empty_directory_unless_forced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("notes.txt"), "mine").unwrap();
        let err = generate_dev(dir, false).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        assert!(!dir.join("ca.pem").exists());

        // An empty existing directory is fine without force.
        let empty = tempfile::tempdir().unwrap();
        generate_dev(empty.path(), false).unwrap();

        let first = generate_dev(dir, true).unwrap();
        let ca_before = fs::read(&first.ca.cert).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&first.ca.key, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let second = generate_dev(dir, true).unwrap();
        assert_ne!(fs::read(&second.ca.cert).unwrap(), ca_before, "a new CA");
        assert_eq!(fs::read_to_string(dir.join("notes.txt")).unwrap(), "mine");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&second.ca.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "a replaced key is 0600 again");
        }

        let file = dir.join("notes.txt");
        let err = generate_dev(&file, true).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[tokio::test]
    async fn the_generated_server_and_clients_shake_hands_and_name_their_principals() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = generate_dev(tmp.path(), false).unwrap();
        let server = crate::tls::server_config(&listener(&pki)).unwrap();
        for (server_name, holder) in [
            ("localhost", &pki.clients[0]),
            ("127.0.0.1", &pki.clients[4]),
            ("::1", &pki.clients[6]),
        ] {
            let out = handshake(
                server.clone(),
                client(
                    &pki.ca.cert,
                    Some((&holder.files.cert, &holder.files.key)),
                    &[b"h2"],
                ),
                server_name,
            )
            .await;
            let chain = out.server.unwrap();
            let principal = principal_from_peer(chain.as_deref()).unwrap();
            assert_eq!(principal.as_ref(), Some(&holder.principal), "{server_name}");
        }
    }

    #[tokio::test]
    async fn a_client_of_a_second_development_ca_is_refused() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        let pki = generate_dev(ours.path(), false).unwrap();
        let other = generate_dev(theirs.path(), false).unwrap();
        let stranger = &other.clients[0];
        let out = handshake(
            crate::tls::server_config(&listener(&pki)).unwrap(),
            // The client trusts our server; only its own certificate is foreign.
            client(
                &pki.ca.cert,
                Some((&stranger.files.cert, &stranger.files.key)),
                &[],
            ),
            "localhost",
        )
        .await;
        // Both development CAs carry the same subject name, so the verifier finds the issuer by
        // name and then refuses the signature.
        let err = out.server.unwrap_err();
        assert!(err.contains("invalid peer certificate"), "{err}");
    }
}
