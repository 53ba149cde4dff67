//! TLS for Ponte's listeners, and the principal a client certificate names.
//!
//! Why: the adapters' HTTP listeners and the gRPC API carry the school attendance and health data
//! of children; issue 14 requires TLS on every listener and lets a caller authenticate with a
//! client certificate checked against the deployment's CA bundle (mutual TLS). This module turns a
//! service's `[…tls]` configuration section ([`TlsConfig`]) into a rustls [`ServerConfig`] and
//! reads the principal out of a verified client certificate ([`principal_from_cert`]).
//!
//! # Configuration
//!
//! ```toml
//! [tls]                                      # wherever a service embeds a listener's TlsConfig
//! cert_file = "/etc/ponte/server.pem"        # PEM certificate chain, leaf first
//! key_file = "/etc/ponte/server-key.pem"     # PEM private key: PKCS#8, PKCS#1 or SEC1
//! client_ca_file = "/etc/ponte/ca.pem"       # PEM CA bundle that client certificates chain to
//! client_auth = "required"                   # "required" (default) | "optional" | "none"
//! insecure = false                           # true: plaintext, no TLS at all
//! ```
//!
//! - `client_auth = "required"` (the default): a client without a certificate from the bundle
//!   fails the handshake.
//! - `"optional"`: a client may connect without a certificate (it must then present a bearer
//!   token, which the service checks); a certificate it does present must still chain to the
//!   bundle, or the handshake fails.
//! - `"none"`: no client certificate is asked for (a listener that only takes bearer tokens);
//!   `client_ca_file` must then be left out.
//! - `insecure = true`: the listener runs plaintext. [`server_config`] refuses such a
//!   configuration — plaintext is a separate path the service takes explicitly after asking
//!   [`TlsConfig::is_insecure`]; on that path the service logs a `tracing::warn!` naming the
//!   listener and sets the gauge `ponte_listener_insecure{listener="…"}` to 1 (this crate has
//!   no metrics of its own).
//!
//! Only the `ring` crypto provider is used, passed explicitly (never the process-wide default),
//! with rustls' safe default protocol versions (TLS 1.2 and 1.3).
//!
//! # Who a certificate names
//!
//! The principal of a client certificate is, in this order:
//! 1. the first subject alternative name of type URI, exactly as written
//!    (`urn:ponte:principal:education`, `spiffe://ponte/sector/education`);
//! 2. if the certificate has no URI SAN, the first common name (CN) of its subject, exactly as
//!    written.
//!
//! Nothing is stripped or rewritten: the access policy names principals with the same string.
//! A certificate with neither, or whose name is empty or holds control characters, names no
//! principal and is refused. DNS, IP and e-mail SANs are never used as a principal.
//!
//! # What this module must never do
//!
//! - Never fall back to plaintext or to "any client" on its own: every relaxation is an explicit
//!   configuration value.
//! - Never read a principal from a certificate the handshake did not verify: call
//!   [`principal_from_cert`] only with `peer_certificates()` of an established connection.
//! - Never log or put into an error the contents of a private key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;
use x509_parser::extensions::GeneralName;

use crate::AccessError;

/// Whether a listener asks for a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Every client must present a certificate that chains to `client_ca_file` (the default).
    #[default]
    Required,
    /// A client may present such a certificate; without one it must authenticate otherwise
    /// (a bearer token). A certificate that does not chain to the bundle still fails.
    Optional,
    /// No client certificate is asked for; callers authenticate with bearer tokens only.
    None,
}

/// The TLS section of one listener's configuration. Every field has a default: nothing set means
/// "TLS with required client certificates", which fails to build until the files are given.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain of the listener, leaf first. Required unless `insecure`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1). Required unless `insecure`.
    pub key_file: Option<PathBuf>,
    /// PEM bundle of the CAs that client certificates must chain to. Required when
    /// `client_auth` is `required` (the default) or `optional`; must be absent with `none`.
    pub client_ca_file: Option<PathBuf>,
    /// Whether client certificates are required, optional or not asked for. Default `required`.
    pub client_auth: ClientAuth,
    /// Plaintext listener, no TLS. Default `false`. The service must warn and set
    /// `ponte_listener_insecure{listener}` when it is `true` (see the module documentation).
    pub insecure: bool,
}

impl TlsConfig {
    /// `true` when the listener is configured to run plaintext (`insecure = true`). A service
    /// checks this first: [`server_config`] refuses insecure configurations.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }
}

/// An application protocol a listener offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2 (`h2`): what gRPC needs.
    H2,
    /// HTTP/1.1 (`http/1.1`).
    Http11,
}

impl Alpn {
    /// The protocol's ALPN identifier.
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http11 => b"http/1.1",
        }
    }
}

/// The name a verified client certificate (or, elsewhere, a token) gives its holder; see the
/// module documentation for how it is read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal(String);

impl Principal {
    /// A principal named `name`. Fails when the name is empty or holds control characters.
    pub fn new(name: impl Into<String>) -> Result<Principal, AccessError> {
        let name = name.into();
        if name.trim().is_empty() {
            return Err(AccessError::Tls(
                "a principal name must not be empty".into(),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(AccessError::Tls(format!(
                "a principal name must not hold control characters: {name:?}"
            )));
        }
        Ok(Principal(name))
    }

    /// The principal's name, exactly as the certificate wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The rustls server configuration of a TLS listener, offering `h2` and `http/1.1` in ALPN
/// (in that order). See [`server_config_with_alpn`] to offer something else.
pub fn server_config(config: &TlsConfig) -> Result<Arc<ServerConfig>, AccessError> {
    server_config_with_alpn(config, &[Alpn::H2, Alpn::Http11])
}

/// The rustls server configuration of a TLS listener offering `alpn` (in order of preference;
/// empty: no ALPN). Fails for an insecure configuration, and names the file and the reason
/// when a certificate, key or CA bundle cannot be used.
pub fn server_config_with_alpn(
    config: &TlsConfig,
    alpn: &[Alpn],
) -> Result<Arc<ServerConfig>, AccessError> {
    if config.insecure {
        return Err(AccessError::Tls(
            "the listener is configured insecure (insecure = true): it runs plaintext and has \
             no TLS configuration"
                .into(),
        ));
    }
    let cert_file = config.cert_file.as_deref().ok_or_else(|| {
        AccessError::Tls("cert_file is not set (set it, or insecure = true for plaintext)".into())
    })?;
    let key_file = config.key_file.as_deref().ok_or_else(|| {
        AccessError::Tls("key_file is not set (set it, or insecure = true for plaintext)".into())
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let chain = load_certs(cert_file)?;
    let key = load_private_key(key_file)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_error(key_file, format!("not a usable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown`: the key cannot tell its public half; the handshake will fail if they differ.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(file_error(
                key_file,
                format!(
                    "the private key does not belong to the certificate in {}",
                    cert_file.display()
                ),
            ));
        }
        Err(e) => {
            return Err(file_error(
                cert_file,
                format!("the leaf certificate is unusable: {e}"),
            ));
        }
    }

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| AccessError::Tls(format!("protocol versions: {e}")))?;
    let builder = match (config.client_auth, config.client_ca_file.as_deref()) {
        (ClientAuth::None, None) => builder.with_no_client_auth(),
        (ClientAuth::None, Some(ca)) => {
            return Err(AccessError::Tls(format!(
                "client_ca_file ({}) is set but client_auth = \"none\": set client_auth to \
                 \"required\" or \"optional\", or remove client_ca_file",
                ca.display()
            )));
        }
        (auth, None) => {
            return Err(AccessError::Tls(format!(
                "client_auth = \"{}\" needs client_ca_file, the CA bundle client certificates \
                 chain to",
                if auth == ClientAuth::Required {
                    "required"
                } else {
                    "optional"
                }
            )));
        }
        (auth, Some(ca_file)) => {
            let roots = load_roots(ca_file)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| file_error(ca_file, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    server.alpn_protocols = alpn.iter().map(|p| p.id().to_vec()).collect();
    Ok(Arc::new(server))
}

/// The principal a client certificate names (the rule is in the module documentation). Call it
/// with the leaf of a chain the handshake verified.
pub fn principal_from_cert(cert: &CertificateDer<'_>) -> Result<Principal, AccessError> {
    let (rest, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| AccessError::Tls(format!("client certificate is not X.509: {e}")))?;
    if !rest.is_empty() {
        return Err(AccessError::Tls(
            "client certificate has trailing bytes after its DER encoding".into(),
        ));
    }
    let san = parsed.subject_alternative_name().map_err(|e| {
        AccessError::Tls(format!(
            "client certificate has an unreadable subject alternative name: {e}"
        ))
    })?;
    let first_uri = san.and_then(|ext| {
        ext.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
    });
    if let Some(uri) = first_uri {
        return Principal::new(uri).map_err(|e| {
            AccessError::Tls(format!(
                "client certificate's first URI SAN is unusable: {e}"
            ))
        });
    }
    match parsed.subject().iter_common_name().next() {
        Some(cn) => {
            let cn = cn.as_str().map_err(|e| {
                AccessError::Tls(format!(
                    "client certificate's subject CN is not a readable string: {e}"
                ))
            })?;
            Principal::new(cn).map_err(|e| {
                AccessError::Tls(format!("client certificate's subject CN is unusable: {e}"))
            })
        }
        None => Err(AccessError::Tls(
            "client certificate names no principal: it has neither a URI subject alternative \
             name nor a subject CN"
                .into(),
        )),
    }
}

/// The principal of a connection's verified client certificate chain (`peer_certificates()` of
/// an established rustls connection): `None` when the client presented no certificate (only
/// possible with `client_auth = "optional"` or `"none"`).
pub fn principal_from_peer(
    peer_certificates: Option<&[CertificateDer<'_>]>,
) -> Result<Option<Principal>, AccessError> {
    match peer_certificates.and_then(<[_]>::first) {
        Some(leaf) => principal_from_cert(leaf).map(Some),
        None => Ok(None),
    }
}

/// The crypto provider this crate uses (ring), for clients and tests built alongside.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(path: &Path, reason: impl Into<String>) -> AccessError {
    AccessError::File {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, AccessError> {
    std::fs::read(path).map_err(|e| file_error(path, format!("cannot read: {e}")))
}

/// The PEM certificates of `path`, in file order; at least one.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, AccessError> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            path,
            "no certificate found (expected PEM \"CERTIFICATE\" blocks)",
        ));
    }
    for (i, cert) in certs.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(cert.as_ref()) {
            return Err(file_error(
                path,
                format!("certificate {} is not valid X.509: {e}", i + 1),
            ));
        }
    }
    Ok(certs)
}

fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, AccessError> {
    let bytes = read_file(path)?;
    // The key's bytes never enter the error: only the parser's kind of failure does.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let reason = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key found (expected a PEM PKCS#8 \"PRIVATE KEY\", PKCS#1 \"RSA \
                 PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\" block)"
                    .to_string()
            }
            _ => "not a readable PEM private key".to_string(),
        };
        file_error(path, reason)
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore, AccessError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in load_certs(path)?.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("CA certificate {} is unusable: {e}", i + 1)))?;
    }
    Ok(roots)
}

/// Handshakes over an in-memory pipe, for this module's tests and the PKI's.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]
pub(crate) mod testkit {
    use std::path::Path;
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, RootCertStore, ServerConfig};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// What each side of a handshake saw.
    #[derive(Debug)]
    pub struct Outcome {
        /// The server's result: the client's certificate chain, or the error.
        pub server: Result<Option<Vec<CertificateDer<'static>>>, String>,
        /// The ALPN protocol the server agreed on.
        pub alpn: Option<Vec<u8>>,
    }

    /// A client trusting `ca_pem`, presenting `identity` (certificate and key PEM files) if given.
    pub fn client(
        ca_pem: &Path,
        identity: Option<(&Path, &Path)>,
        alpn: &[&[u8]],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_pem).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = ClientConfig::builder_with_provider(super::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_file(key).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// One handshake between `server` and `client` (connecting to `server_name`), then one byte
    /// each way so that a rejection the server sends after the client's last flight is seen.
    pub async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        server_name: &str,
    ) -> Outcome {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server_side = async move {
            match TlsAcceptor::from(server).accept(server_io).await {
                Ok(mut tls) => {
                    let (_, conn) = tls.get_ref();
                    let chain = conn.peer_certificates().map(<[_]>::to_vec);
                    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
                    let mut byte = [0u8; 1];
                    let _ = tls.read_exact(&mut byte).await;
                    let _ = tls.write_all(b"y").await;
                    let _ = tls.shutdown().await;
                    (Ok(chain), alpn)
                }
                Err(e) => (Err(e.to_string()), None),
            }
        };
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        let client_side = async move {
            if let Ok(mut tls) = TlsConnector::from(client).connect(name, client_io).await {
                let _ = tls.write_all(b"x").await;
                let mut byte = [0u8; 1];
                let _ = tls.read_exact(&mut byte).await;
            }
        };
        let ((server, alpn), ()) = tokio::join!(server_side, client_side);
        Outcome { server, alpn }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::{Path, PathBuf};

    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType,
    };
    use time::{Duration, OffsetDateTime};

    use super::testkit::{client, handshake};
    use super::*;
    use crate::pki::test_support::TestCa;

    /// A CA and a server certificate for `localhost` in `dir`, and the server's configuration.
    fn setup(dir: &Path, auth: ClientAuth) -> (TestCa, TlsConfig) {
        let ca = TestCa::new("Ponte test CA").unwrap();
        ca.write(dir, "ca");
        ca.leaf(
            vec![SanType::DnsName("localhost".try_into().unwrap())],
            Some("localhost"),
            ExtendedKeyUsagePurpose::ServerAuth,
            None,
        )
        .write(dir, "server");
        let config = TlsConfig {
            cert_file: Some(dir.join("server.pem")),
            key_file: Some(dir.join("server-key.pem")),
            client_ca_file: (auth != ClientAuth::None).then(|| dir.join("ca.pem")),
            client_auth: auth,
            insecure: false,
        };
        (ca, config)
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        )
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused_when_client_auth_is_required() {
        let dir = tempfile::tempdir().unwrap();
        let (_ca, config) = setup(dir.path(), ClientAuth::Required);
        let server = server_config(&config).unwrap();
        let out = handshake(
            server,
            client(&dir.path().join("ca.pem"), None, &[]),
            "localhost",
        )
        .await;
        let err = out.server.unwrap_err();
        assert!(err.contains("certificate"), "{err}");
    }

    #[tokio::test]
    async fn optional_client_auth_admits_a_client_without_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (_ca, config) = setup(dir.path(), ClientAuth::Optional);
        let server = server_config(&config).unwrap();
        let out = handshake(
            server,
            client(&dir.path().join("ca.pem"), None, &[]),
            "localhost",
        )
        .await;
        let chain = out.server.unwrap();
        assert_eq!(principal_from_peer(chain.as_deref()).unwrap(), None);
    }

    #[tokio::test]
    async fn a_certificate_from_another_ca_is_refused_even_when_optional() {
        for auth in [ClientAuth::Required, ClientAuth::Optional] {
            let dir = tempfile::tempdir().unwrap();
            let (_ca, config) = setup(dir.path(), auth);
            let other = TestCa::new("Another CA").unwrap();
            other
                .leaf(
                    vec![uri("urn:ponte:principal:education")],
                    Some("education"),
                    ExtendedKeyUsagePurpose::ClientAuth,
                    None,
                )
                .write(dir.path(), "stranger");
            let (cert, key) = paths(dir.path(), "stranger");
            let out = handshake(
                server_config(&config).unwrap(),
                client(&dir.path().join("ca.pem"), Some((&cert, &key)), &[]),
                "localhost",
            )
            .await;
            let err = out.server.unwrap_err();
            assert!(err.to_lowercase().contains("issuer"), "{auth:?}: {err}");
        }
    }

    #[tokio::test]
    async fn an_expired_client_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, config) = setup(dir.path(), ClientAuth::Required);
        let now = OffsetDateTime::now_utc();
        ca.leaf(
            vec![uri("urn:ponte:principal:education")],
            Some("education"),
            ExtendedKeyUsagePurpose::ClientAuth,
            Some((now - Duration::days(30), now - Duration::days(1))),
        )
        .write(dir.path(), "expired");
        let (cert, key) = paths(dir.path(), "expired");
        let out = handshake(
            server_config(&config).unwrap(),
            client(&dir.path().join("ca.pem"), Some((&cert, &key)), &[]),
            "localhost",
        )
        .await;
        let err = out.server.unwrap_err();
        assert!(err.to_lowercase().contains("expired"), "{err}");
    }

    #[tokio::test]
    async fn a_certificate_for_server_authentication_only_cannot_stand_in_for_a_client() {
        let dir = tempfile::tempdir().unwrap();
        let (_ca, config) = setup(dir.path(), ClientAuth::Required);
        let (cert, key) = paths(dir.path(), "server");
        let out = handshake(
            server_config(&config).unwrap(),
            client(&dir.path().join("ca.pem"), Some((&cert, &key)), &[]),
            "localhost",
        )
        .await;
        let err = out.server.unwrap_err();
        assert!(err.contains("invalid peer certificate"), "{err}");
    }

    #[tokio::test]
    async fn a_valid_client_certificate_names_its_first_san_uri() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, config) = setup(dir.path(), ClientAuth::Required);
        ca.leaf(
            vec![
                SanType::DnsName("education.example".try_into().unwrap()),
                uri("spiffe://ponte/sector/education"),
                uri("urn:ponte:principal:other"),
            ],
            Some("some-cn"),
            ExtendedKeyUsagePurpose::ClientAuth,
            None,
        )
        .write(dir.path(), "education");
        let (cert, key) = paths(dir.path(), "education");
        let out = handshake(
            server_config(&config).unwrap(),
            client(
                &dir.path().join("ca.pem"),
                Some((&cert, &key)),
                &[b"h2", b"http/1.1"],
            ),
            "localhost",
        )
        .await;
        let chain = out.server.unwrap();
        let principal = principal_from_peer(chain.as_deref()).unwrap().unwrap();
        assert_eq!(principal.as_str(), "spiffe://ponte/sector/education");
        assert_eq!(out.alpn.as_deref(), Some(&b"h2"[..]));
    }

    #[tokio::test]
    async fn without_a_san_uri_the_principal_is_the_subject_cn() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, config) = setup(dir.path(), ClientAuth::Required);
        ca.leaf(
            vec![SanType::DnsName("health.example".try_into().unwrap())],
            Some("health-system"),
            ExtendedKeyUsagePurpose::ClientAuth,
            None,
        )
        .write(dir.path(), "health");
        let (cert, key) = paths(dir.path(), "health");
        let out = handshake(
            server_config(&config).unwrap(),
            client(
                &dir.path().join("ca.pem"),
                Some((&cert, &key)),
                &[b"http/1.1"],
            ),
            "localhost",
        )
        .await;
        let chain = out.server.unwrap().unwrap();
        assert_eq!(
            principal_from_cert(&chain[0]).unwrap().as_str(),
            "health-system"
        );
        assert_eq!(out.alpn.as_deref(), Some(&b"http/1.1"[..]));
    }

    #[test]
    fn a_certificate_without_uri_san_or_cn_names_no_principal() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["x.example".to_string()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Ponte");
        let cert = params.self_signed(&key).unwrap();
        let err = principal_from_cert(cert.der()).unwrap_err().to_string();
        assert!(err.contains("names no principal"), "{err}");
        let err = principal_from_cert(&CertificateDer::from(vec![1u8, 2, 3]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not X.509"), "{err}");
    }

    #[test]
    fn a_missing_or_garbage_key_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let (_ca, mut config) = setup(dir.path(), ClientAuth::Required);

        let missing = dir.path().join("nowhere-key.pem");
        config.key_file = Some(missing.clone());
        let err = server_config(&config).unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(err.contains("cannot read"), "{err}");

        let garbage = dir.path().join("garbage-key.pem");
        std::fs::write(&garbage, b"this is not a key\n\x00\x01\x02").unwrap();
        config.key_file = Some(garbage.clone());
        let err = server_config(&config).unwrap_err().to_string();
        assert!(err.contains(&garbage.display().to_string()), "{err}");
        assert!(err.contains("no private key found"), "{err}");

        let truncated = dir.path().join("truncated-key.pem");
        std::fs::write(
            &truncated,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        config.key_file = Some(truncated.clone());
        let err = server_config(&config).unwrap_err().to_string();
        assert!(err.contains(&truncated.display().to_string()), "{err}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, mut config) = setup(dir.path(), ClientAuth::Required);
        ca.leaf(
            vec![],
            Some("other"),
            ExtendedKeyUsagePurpose::ServerAuth,
            None,
        )
        .write(dir.path(), "other");
        config.key_file = Some(dir.path().join("other-key.pem"));
        let err = server_config(&config).unwrap_err().to_string();
        assert!(err.contains("does not belong"), "{err}");
    }

    #[test]
    fn missing_or_garbage_certificate_and_ca_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (_ca, config) = setup(dir.path(), ClientAuth::Required);
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        for field in ["cert", "ca"] {
            let mut c = config.clone();
            match field {
                "cert" => c.cert_file = Some(garbage.clone()),
                _ => c.client_ca_file = Some(garbage.clone()),
            }
            let err = server_config(&c).unwrap_err().to_string();
            assert!(err.contains(&garbage.display().to_string()), "{err}");
            assert!(err.contains("no certificate found"), "{err}");
        }
    }

    #[test]
    fn inconsistent_or_insecure_configurations_build_no_server_config() {
        let dir = tempfile::tempdir().unwrap();
        let (_ca, config) = setup(dir.path(), ClientAuth::Required);

        let insecure = TlsConfig {
            insecure: true,
            ..config.clone()
        };
        assert!(insecure.is_insecure());
        assert!(!config.is_insecure());
        assert!(server_config(&insecure).is_err());

        let no_ca = TlsConfig {
            client_ca_file: None,
            ..config.clone()
        };
        let err = server_config(&no_ca).unwrap_err().to_string();
        assert!(err.contains("needs client_ca_file"), "{err}");

        let ca_but_none = TlsConfig {
            client_auth: ClientAuth::None,
            ..config.clone()
        };
        let err = server_config(&ca_but_none).unwrap_err().to_string();
        assert!(err.contains("client_auth = \"none\""), "{err}");

        let err = server_config(&TlsConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cert_file is not set"), "{err}");

        let server_only = TlsConfig {
            client_ca_file: None,
            client_auth: ClientAuth::None,
            ..config
        };
        let built = server_config_with_alpn(&server_only, &[]).unwrap();
        assert!(built.alpn_protocols.is_empty());
    }

    #[test]
    fn the_configuration_reads_from_toml_with_defaults_and_refuses_unknown_keys() {
        let config: TlsConfig = toml::from_str(
            "cert_file = \"s.pem\"\nkey_file = \"s-key.pem\"\nclient_ca_file = \"ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(config.client_auth, ClientAuth::Required);
        assert!(!config.insecure);
        let config: TlsConfig = toml::from_str("client_auth = \"optional\"").unwrap();
        assert_eq!(config.client_auth, ClientAuth::Optional);
        let config: TlsConfig = toml::from_str("insecure = true").unwrap();
        assert!(config.is_insecure());
        assert!(toml::from_str::<TlsConfig>("cert = \"s.pem\"").is_err());
        assert!(toml::from_str::<TlsConfig>("client_auth = \"sometimes\"").is_err());
    }

    #[test]
    fn principal_names_must_be_printable_and_non_empty() {
        assert!(Principal::new("").is_err());
        assert!(Principal::new("  ").is_err());
        assert!(Principal::new("a\nb").is_err());
        assert_eq!(
            Principal::new("urn:ponte:principal:x").unwrap().to_string(),
            "urn:ponte:principal:x"
        );
    }
}
