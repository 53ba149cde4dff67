//! The admin HTTP server every service runs beside its own API:
//! `GET /metrics` (Prometheus text format), `GET /health/live` (the process runs) and
//! `GET /health/ready` (the service can do its job: 200, or 503 with the reason).
//!
//! Readiness is also a metric, the gauge `ponte_ready` (1 ready, 0 not), so that the alerts
//! read it from the services themselves rather than from Kubernetes. It has no label: a process
//! runs one service, and the scrape's `job` and `pod` name it (no metric here carries a global
//! label).
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::RuntimeError;

/// Readiness of a service, set by the service, read by `/health/ready` and exported as the
/// gauge `ponte_ready` (1 ready, 0 not; 0 from construction until the first
/// [`Readiness::set_ready`]). A process makes one, after the metrics recorder is installed
/// (`telemetry::init_metrics`), and shares clones of it.
#[derive(Debug, Clone)]
pub struct Readiness {
    state: Arc<Mutex<Result<(), String>>>,
}

impl Default for Readiness {
    fn default() -> Self {
        metrics::gauge!("ponte_ready").set(0.0);
        Self {
            state: Arc::new(Mutex::new(Err("starting".to_owned()))),
        }
    }
}

impl Readiness {
    pub fn set_ready(&self) {
        self.set(Ok(()));
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.set(Err(reason.into()));
    }

    /// Sets the state and the gauge under the lock, so that two threads changing readiness at
    /// once leave the gauge saying what `/health/ready` says.
    fn set(&self, state: Result<(), String>) {
        let ready = state.is_ok();
        match self.state.lock() {
            Ok(mut s) => {
                *s = state;
                metrics::gauge!("ponte_ready").set(if ready { 1.0 } else { 0.0 });
            }
            // `get` answers not ready from now on; so does the gauge.
            Err(_) => metrics::gauge!("ponte_ready").set(0.0),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// The value of the unlabelled series `name` in a Prometheus text exposition.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series == name).then(|| value.parse().ok()).flatten()
        })
    }

    #[test]
    fn the_ready_gauge_follows_readiness_from_construction() {
        // A recorder of this thread only: the test sees its own gauge, whatever runs beside it.
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let readiness = Readiness::default();
            assert_eq!(sample(&handle.render(), "ponte_ready"), Some(0.0));
            // A clone is the same readiness.
            readiness.clone().set_ready();
            assert_eq!(readiness.get(), Ok(()));
            assert_eq!(sample(&handle.render(), "ponte_ready"), Some(1.0));
            readiness.set_not_ready("broker: all brokers down");
            assert_eq!(sample(&handle.render(), "ponte_ready"), Some(0.0));
            readiness.set_ready();
            assert_eq!(sample(&handle.render(), "ponte_ready"), Some(1.0));
        });
    }

    /// `GET path` on `addr`: the status code and the body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    }

    #[tokio::test]
    async fn metrics_says_what_health_ready_says() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let _local = metrics::set_default_local_recorder(&recorder);
        let readiness = Readiness::default();
        let shutdown = CancellationToken::new();
        let addr = serve_admin(
            "127.0.0.1:0",
            recorder.handle(),
            readiness.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let ready_gauge = |text: &str| sample(text, "ponte_ready");

        assert_eq!(
            get(addr, "/health/ready").await,
            (503, "not ready: starting\n".to_owned())
        );
        assert_eq!(ready_gauge(&get(addr, "/metrics").await.1), Some(0.0));

        readiness.set_ready();
        assert_eq!(
            get(addr, "/health/ready").await,
            (200, "ready\n".to_owned())
        );
        assert_eq!(ready_gauge(&get(addr, "/metrics").await.1), Some(1.0));

        readiness.set_not_ready("no partitions assigned yet");
        assert_eq!(get(addr, "/health/ready").await.0, 503);
        assert_eq!(ready_gauge(&get(addr, "/metrics").await.1), Some(0.0));
        shutdown.cancel();
    }
}
