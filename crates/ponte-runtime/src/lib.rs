//! What every Ponte service process shares, so that all of them are configured, observed and
//! stopped the same way:
//!
//! - [`config`]: layered configuration — compiled-in defaults, then a TOML file, then
//!   `PONTE__SECTION__KEY` environment variables.
//! - [`telemetry`]: `tracing` logs (text or JSON) and the Prometheus recorder.
//! - [`admin`]: the admin HTTP server with `/metrics`, `/health/live` and `/health/ready`.
//! - [`shutdown`]: one cancellation token tripped by SIGTERM or Ctrl-C.
//! - [`http`]: small pieces every HTTP API shares (trace ids).
//!
//! Nothing here knows what a service does.
pub mod admin;
pub mod config;
pub mod http;
pub mod shutdown;
pub mod telemetry;

pub use admin::{Readiness, serve_admin, spawn_readiness_probe};
pub use config::{ConfigError, load};
pub use shutdown::shutdown_token;

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("telemetry: {0}")]
    Telemetry(String),
}
