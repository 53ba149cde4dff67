//! How `ponte query` and `ponte ingest` reach a running service: TLS with the deployment's CA,
//! a client certificate (mutual TLS) and/or a bearer token (docs/security.md).
use std::path::PathBuf;

use anyhow::Context as _;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A caller's credentials. An `https://` address uses TLS, checked against `--ca`.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ClientCreds {
    /// CA bundle (PEM) the server's certificate must chain to.
    #[arg(
        long = "ca",
        env = "PONTE_CLIENT_CA",
        global = true,
        value_name = "PEM"
    )]
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; with --key.
    #[arg(
        long = "cert",
        env = "PONTE_CLIENT_CERT",
        global = true,
        value_name = "PEM"
    )]
    pub(crate) cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(
        long = "key",
        env = "PONTE_CLIENT_KEY",
        global = true,
        value_name = "PEM"
    )]
    pub(crate) key: Option<PathBuf>,
    /// File holding an OAuth2 bearer token (JWT), sent as `Authorization: Bearer <token>`.
    #[arg(
        long = "token-file",
        env = "PONTE_CLIENT_TOKEN_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub(crate) token_file: Option<PathBuf>,
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{what} {}", path.display()))
}

impl ClientCreds {
    /// `https` when a CA is given, else `http` (a plaintext, `insecure = true` service).
    pub(crate) fn scheme(&self) -> &'static str {
        if self.ca.is_some() { "https" } else { "http" }
    }

    /// The bearer token, trimmed, if a token file is given.
    pub(crate) fn token(&self) -> anyhow::Result<Option<String>> {
        self.token_file
            .as_ref()
            .map(|p| {
                let bytes = read(p, "token file")?;
                Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
            })
            .transpose()
    }

    fn identity_pem(&self) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Ok(Some((
                read(c, "client certificate")?,
                read(k, "client key")?,
            ))),
            (None, None) => Ok(None),
            _ => anyhow::bail!("--cert and --key go together"),
        }
    }

    /// An HTTP client with these credentials.
    pub(crate) fn http_client(&self) -> anyhow::Result<reqwest::Client> {
        let mut b = reqwest::Client::builder().use_rustls_tls();
        if let Some(ca) = &self.ca {
            let pem = read(ca, "CA bundle")?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("CA bundle {}", ca.display()))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        if let Some((mut cert, key)) = self.identity_pem()? {
            cert.push(b'\n');
            cert.extend_from_slice(&key);
            b = b.identity(reqwest::Identity::from_pem(&cert).context("client certificate")?);
        }
        if let Some(token) = self.token()? {
            let mut headers = reqwest::header::HeaderMap::new();
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("token file: not a header value")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
            b = b.default_headers(headers);
        }
        b.build().context("building the HTTP client")
    }

    /// A gRPC channel to `addr` (`https://host:port` for TLS) with these credentials, and the
    /// `authorization` metadata value to send with every call.
    pub(crate) async fn grpc(
        &self,
        addr: &str,
    ) -> anyhow::Result<(Channel, Option<MetadataValue<tonic::metadata::Ascii>>)> {
        let mut ep = Endpoint::from_shared(addr.to_owned())
            .with_context(|| format!("gRPC address {addr}"))?;
        if addr.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca, "CA bundle")?));
            }
            if let Some((cert, key)) = self.identity_pem()? {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            ep = ep.tls_config(tls).context("TLS configuration")?;
        }
        let channel = ep
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let auth = self
            .token()?
            .map(|t| {
                MetadataValue::try_from(format!("Bearer {t}"))
                    .context("token file: not a metadata value")
            })
            .transpose()?;
        Ok((channel, auth))
    }
}
