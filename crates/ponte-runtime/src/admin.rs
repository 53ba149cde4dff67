//! The admin HTTP server every service runs beside its own API:
//! `GET /metrics` (Prometheus text format), `GET /health/live` (the process runs) and
//! `GET /health/ready` (the service can do its job: 200, or 503 with the reason).
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::RuntimeError;

/// Readiness of a service, set by the service, read by `/health/ready`.
#[derive(Debug, Clone)]
pub struct Readiness {
    state: Arc<Mutex<Result<(), String>>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new(Err("starting".to_owned()))),
        }
    }
}

impl Readiness {
    pub fn set_ready(&self) {
        if let Ok(mut s) = self.state.lock() {
            *s = Ok(());
        }
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        if let Ok(mut s) = self.state.lock() {
            *s = Err(reason.into());
        }
    }

    pub fn get(&self) -> Result<(), String> {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| Err("readiness lock poisoned".to_owned()))
    }
}

#[derive(Clone)]
struct AdminState {
    prometheus: PrometheusHandle,
    readiness: Readiness,
}

async fn metrics(State(s): State<AdminState>) -> String {
    s.prometheus.render()
}

async fn live() -> &'static str {
    "live\n"
}

async fn ready(State(s): State<AdminState>) -> (StatusCode, String) {
    match s.readiness.get() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// Runs `check` now and every `every` until `shutdown`, on a blocking thread, and keeps
/// `readiness` in step with its answer (`Err(reason)` → not ready, with that reason). Adapters
/// use it so that a load balancer stops sending pushes they could not store.
pub fn spawn_readiness_probe<F>(
    readiness: Readiness,
    shutdown: CancellationToken,
    every: std::time::Duration,
    check: F,
) where
    F: Fn() -> Result<(), String> + Clone + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let c = check.clone();
            match tokio::task::spawn_blocking(c).await {
                Ok(Ok(())) => readiness.set_ready(),
                Ok(Err(reason)) => readiness.set_not_ready(reason),
                Err(e) => readiness.set_not_ready(format!("probe: {e}")),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}

/// Binds the admin server on `addr` and serves it until `shutdown` is cancelled. Returns the
/// bound address (useful with port 0) once listening.
pub async fn serve_admin(
    addr: &str,
    prometheus: PrometheusHandle,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<SocketAddr, RuntimeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RuntimeError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| RuntimeError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(AdminState {
            prometheus,
            readiness,
        });
    tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    tracing::info!(%local, "admin endpoint listening (/metrics, /health/live, /health/ready)");
    Ok(local)
}
