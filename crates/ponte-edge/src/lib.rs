//! Ponte's service edges: everything between a caller's TCP connection and a handler that knows
//! who is calling and what it may do. The adapters' HTTP APIs and the reconciler's gRPC API use
//! the same pieces, so TLS, authentication, rights and limits behave the same everywhere:
//!
//! - [`listener`]: a TCP listener that completes TLS handshakes (with a deadline) and names the
//!   client certificate's principal; or plaintext when configured `insecure = true`, which warns
//!   at start and sets `ponte_listener_insecure{listener}` to 1.
//! - [`gate`]: who the caller is (mutual TLS or an OAuth2 bearer token) and the access policy
//!   in force (reloaded on SIGHUP and when the file changes), with per-principal and per-listener
//!   request limits.
//! - [`http`]: an HTTP/1.1 server over the listener with header and body read deadlines, and the
//!   middleware answering 401 / 429 before any handler runs.
//! - [`grpc`]: the same decisions for tonic handlers (`UNAUTHENTICATED`, `PERMISSION_DENIED`,
//!   `RESOURCE_EXHAUSTED`).
//!
//! The rules are in `docs/security.md`.
pub mod csv;
pub mod gate;
pub mod grpc;
pub mod http;
#[cfg(feature = "ingest")]
pub mod ingest;
pub mod json;
pub mod listener;

use std::path::PathBuf;
use std::time::Duration;

pub use gate::{AuthMethod, Caller, Gate, RefusalAudit};
pub use listener::{Conn, EdgeListener, PeerInfo};
pub use ponte_access::policy::{Adapter, Grant, RecordKind, Rpc, SourceSystem};
pub use ponte_access::tls::TlsConfig;
use serde::Deserialize;

/// The `[access]` section of the configuration: how callers are authenticated and what
/// limits every listener of the process applies. (The listener's TLS is the `[tls]` section.)
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// The access policy file (TOML, docs/security.md). Required.
    pub policy_file: PathBuf,
    /// OAuth2 bearer tokens: off unless this section is given.
    #[serde(default)]
    pub tokens: Option<ponte_access::token::TokenConfig>,
    /// With `tls.insecure = true` only: callers without credentials act as this principal of
    /// the policy (benchmarks and local experiments). Empty: every caller must authenticate.
    #[serde(default)]
    pub anonymous_principal: String,
    /// How long a client has to complete the TLS handshake, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// How long a client has to send a request's headers, in milliseconds.
    pub header_read_timeout_ms: u64,
    /// Longest pause while a request body is being received, in milliseconds.
    pub body_idle_timeout_ms: u64,
    /// Requests in flight at once on one listener, all principals together; more get 429 /
    /// `RESOURCE_EXHAUSTED`. Per-principal limits are in the policy.
    pub max_concurrent_requests: usize,
    /// Seconds a client refused for too many requests is told to wait (`Retry-After`).
    pub retry_after_secs: u64,
    /// How often the policy file is checked for changes, in seconds (SIGHUP reloads at once).
    pub reload_check_secs: u64,
}

impl AccessConfig {
    /// The deadlines of [`http::serve`].
    pub fn timeouts(&self) -> http::Timeouts {
        http::Timeouts {
            header_read: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            body_idle: Duration::from_millis(self.body_idle_timeout_ms.max(1)),
        }
    }

    /// The TLS handshake deadline.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms.max(1))
    }
}

/// Errors while setting an edge up.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Access(#[from] ponte_access::AccessError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("access: {0}")]
    Config(String),
}
