//! Who may call Ponte, and what they may do (issue 14, "Trust at the edges").
//!
//! - [`tls`]: rustls server configurations for every listener, with the deployment's CA bundle
//!   checking client certificates (mutual TLS), and the principal a certificate names.
//! - [`token`]: OAuth2 bearer tokens (JWT, RS256/ES256) validated offline against a JWKS file,
//!   for clients behind an API gateway.
//! - [`policy`]: the access policy file — per principal, what it may send and what it may read.
//! - [`pki`]: a development PKI (`ponte pki dev`): a local CA, server and client certificates,
//!   a JWKS with its signing key and a matching policy file.
//!
//! Pure of the services: nothing here listens or connects; the services use these pieces at
//! their edges. Never logs a token or a private key.

pub mod pki;
pub mod policy;
pub mod tls;
pub mod token;

/// Errors of the access layer. Variants are only ever added.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A file (certificate, key, CA bundle, JWKS, policy) could not be read or parsed.
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    /// The TLS configuration cannot be built from what was given.
    #[error("TLS: {0}")]
    Tls(String),
    /// Generating development certificates or keys failed.
    #[error("development PKI: {0}")]
    Pki(String),
    /// The access policy is inconsistent (the message names the principal and the key).
    #[error("access policy: {0}")]
    Policy(String),
    /// The bearer-token configuration is invalid, or signing a development token failed.
    #[error("bearer tokens: {0}")]
    Token(String),
}
