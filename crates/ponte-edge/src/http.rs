//! HTTP/1.1 over an [`EdgeListener`](crate::EdgeListener), with deadlines, and the middleware
//! every adapter puts in front of its handlers.
//!
//! Deadlines: a client has `header_read` to send a request's headers, and may pause at most
//! `body_idle` while sending its body (a slowloris connection is closed either way; a slow but
//! steady upload is not). Only the time spent waiting for the client counts: while a handler
//! waits for the broker, the body deadline does not run.
//!
//! Middleware, in order: [`authenticate`] (401 without valid credentials, 429 + `Retry-After`
//! over the listener's or the principal's limit) then, per route, [`may_send`] (403 outside the
//! principal's rights, before the body is read, so nothing is published or dead-lettered).
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use http::{HeaderValue, StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use ponte_access::policy::{Adapter, RecordKind, SourceSystem};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service as _;

use crate::gate::{Caller, Gate};
use crate::listener::Conn;

/// The deadlines of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Time to receive a request's headers.
    pub header_read: Duration,
    /// Longest pause while receiving a body.
    pub body_idle: Duration,
}

/// Serves `app` on the connections of `incoming` until `shutdown`, then lets requests in
/// progress finish (at most `drain`) and returns.
pub async fn serve(
    incoming: impl Stream<Item = std::io::Result<Conn>> + Send,
    app: Router,
    timeouts: Timeouts,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let tracker = TaskTracker::new();
    let mut incoming = std::pin::pin!(incoming);
    loop {
        let conn = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = incoming.next() => match c {
                Some(Ok(c)) => c,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        let peer = conn.peer().clone();
        let app = app.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(peer.clone());
                let mut app = app.clone();
                let req = req.map(|b| IdleBody::new(b, timeouts.body_idle));
                async move { app.call(req).await }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Some(timeouts.header_read));
            let conn = builder.serve_connection(TokioIo::new(conn), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!("requests still in progress after the drain deadline; closing them");
    }
}

/// The body read deadline (see the module documentation).
#[derive(Debug, thiserror::Error)]
#[error("the client sent no body data for {0:?} (access.body_idle_timeout_ms)")]
pub struct BodyIdle(Duration);

/// A request body that fails when the client pauses longer than the idle deadline.
struct IdleBody {
    inner: Incoming,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    waiting: bool,
}

impl IdleBody {
    fn new(inner: Incoming, idle: Duration) -> Self {
        IdleBody {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
        }
    }
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if !this.waiting {
            // The deadline runs from when the handler asks for more, not from the last frame.
            this.sleep.as_mut().reset(Instant::now() + this.idle);
            this.waiting = true;
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    metrics::counter!("ponte_http_body_timeouts_total").increment(1);
                    Poll::Ready(Some(Err(Box::new(BodyIdle(this.idle)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The JSON error answer of the edge: the adapters' answer shape with nothing accepted.
pub fn refusal(status: StatusCode, error: &str) -> Response {
    let body = serde_json::json!({ "accepted": 0, "rejected": [], "error": error });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Middleware: authenticates the caller (401), takes its request slots (429 + Retry-After) and
/// puts the [`Caller`] into the request's extensions.
pub async fn authenticate(State(gate): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let endpoint = format!("{} {}", req.method(), req.uri().path());
    let peer = req.extensions().get::<crate::PeerInfo>().cloned();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let caller = match gate.authenticate(peer.as_ref(), authorization.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            gate.refused("", e.reason(), &endpoint);
            let mut resp = refusal(StatusCode::UNAUTHORIZED, &e.to_string());
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    };
    let permit = match gate.admit(&caller) {
        Ok(p) => p,
        Err(busy) => {
            gate.refused(&caller.principal, busy.reason(), &endpoint);
            let mut resp = refusal(StatusCode::TOO_MANY_REQUESTS, &busy.to_string());
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(gate.retry_after_secs()),
            );
            return resp;
        }
    };
    req.extensions_mut().insert(caller);
    let resp = next.run(req).await;
    drop(permit);
    resp
}

/// What a request may send, put into its extensions by [`may_send`].
#[derive(Debug, Clone)]
pub struct Sender {
    /// The caller.
    pub principal: Arc<str>,
    /// The source system every record of the request carries (from the policy).
    pub source_system: SourceSystem,
    /// This request's id, drawn here: stamped on every record it brings
    /// ([`ponte_bus::ingest::Origin`]) and answered in the `x-request-id` header.
    pub request_id: Arc<str>,
    /// What was called: `POST /v1/attendance`.
    pub endpoint: Arc<str>,
}

#[cfg(feature = "ingest")]
impl Sender {
    /// The origin of the records of this request, for [`ponte_bus::ingest::Ingestor::ingest`].
    pub fn origin<'a>(&'a self, trace_id: &'a str) -> ponte_bus::ingest::Origin<'a> {
        ponte_bus::ingest::Origin {
            source_system: self.source_system.as_str(),
            sender: &self.principal,
            request_id: &self.request_id,
            trace_id,
            endpoint: &self.endpoint,
        }
    }
}

/// The header that tells a sender the id of its request (the records it brought carry it).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Middleware factory: only callers the policy lets send `kind` records to `adapter` reach the
/// handler; others get 403 (nothing is read, published or dead-lettered).
pub fn may_send(
    gate: Arc<Gate>,
    adapter: Adapter,
    kind: RecordKind,
) -> impl Fn(Request, Next) -> Pin<Box<dyn Future<Output = Response> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |mut req: Request, next: Next| {
        let gate = Arc::clone(&gate);
        Box::pin(async move {
            let Some(caller) = req.extensions().get::<Caller>().cloned() else {
                return refusal(StatusCode::UNAUTHORIZED, "not authenticated");
            };
            match gate.policy().may_send(&caller.principal, adapter, kind) {
                Ok(source_system) => {
                    let request_id: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
                    let endpoint: Arc<str> =
                        format!("{} {}", req.method(), req.uri().path()).into();
                    req.extensions_mut().insert(Sender {
                        principal: caller.principal,
                        source_system,
                        request_id: Arc::clone(&request_id),
                        endpoint,
                    });
                    let mut resp = next.run(req).await;
                    if let Ok(v) = HeaderValue::from_str(&request_id) {
                        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
                    }
                    resp
                }
                Err(denied) => {
                    gate.forbidden(
                        &caller.principal,
                        &format!("{} {}", req.method(), req.uri().path()),
                    );
                    tracing::info!(principal = %caller.principal, %adapter, %kind, "request refused: outside the principal's rights");
                    refusal(StatusCode::FORBIDDEN, &denied.to_string())
                }
            }
        })
    }
}

/// Wraps `router` in the edge: authentication and limits for every route.
pub fn guard(router: Router, gate: Arc<Gate>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(gate, authenticate))
}

/// Runs one HTTP API at `listen` until `shutdown`: binds it (TLS per `tls`, offering HTTP/1.1),
/// puts `app` behind [`guard`], reloads the policy on SIGHUP or change, and serves with the
/// deadlines of `access`. Requests in progress at shutdown get `drain` to finish.
pub async fn run(
    gate: Arc<Gate>,
    listen: &str,
    tls: &ponte_access::tls::TlsConfig,
    access: &crate::AccessConfig,
    app: Router,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), crate::EdgeError> {
    let listener = crate::EdgeListener::bind(
        gate.listener(),
        listen,
        tls,
        &[ponte_access::tls::Alpn::Http11],
        access.handshake_timeout(),
    )
    .await?;
    let addr = listener
        .local_addr()
        .map_err(|source| crate::EdgeError::Bind {
            addr: listen.to_owned(),
            source,
        })?;
    tracing::info!(
        listener = gate.listener(),
        %addr,
        tls = listener.is_tls(),
        tokens = access.tokens.is_some(),
        policy = %access.policy_file.display(),
        "listening"
    );
    gate.spawn_reloader(
        Duration::from_secs(access.reload_check_secs.max(1)),
        shutdown.clone(),
    );
    let incoming = listener.incoming(shutdown.clone());
    serve(
        incoming,
        guard(app, gate),
        access.timeouts(),
        shutdown,
        drain,
    )
    .await;
    Ok(())
}
