//! Who is calling, and the policy that says what they may do.
//!
//! A caller is authenticated by exactly one of, in this order:
//! 1. an `Authorization: Bearer <JWT>` header (gRPC metadata `authorization`), when bearer
//!    tokens are configured: the token's principal claim names the caller. A token that does not
//!    validate is refused even when a client certificate was also presented: a gateway that
//!    forwards a bad token must not fall back to its own identity.
//! 2. the verified client certificate of the TLS connection (SAN URI, else subject CN).
//! 3. with `tls.insecure = true` and `access.anonymous_principal` set: that principal.
//!
//! Nothing else gets in: no credentials is HTTP 401 / gRPC `UNAUTHENTICATED`.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use ponte_access::policy::{Limits, Policy, SharedPolicy};
use ponte_access::token::{TokenError, Validator};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::listener::PeerInfo;
use crate::{AccessConfig, EdgeError};

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A client certificate (mutual TLS).
    Certificate,
    /// An OAuth2 bearer token.
    Bearer,
    /// Nothing: the anonymous principal of an insecure listener.
    Anonymous,
}

impl AuthMethod {
    /// For logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Certificate => "certificate",
            AuthMethod::Bearer => "bearer",
            AuthMethod::Anonymous => "anonymous",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The principal's name as the policy knows it.
    pub principal: Arc<str>,
    /// How it was authenticated.
    pub method: AuthMethod,
}

/// Why a caller is not authenticated. The message never holds a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unauthenticated {
    #[error(
        "no credentials: present a client certificate issued by the deployment's CA, or an \
         `Authorization: Bearer` token"
    )]
    NoCredentials,
    #[error("bearer tokens are not accepted here (access.tokens is not configured)")]
    TokensNotAccepted,
    #[error("the Authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("{0}")]
    BadToken(#[from] TokenError),
}

impl Unauthenticated {
    /// A metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Unauthenticated::NoCredentials => "no_credentials",
            Unauthenticated::TokensNotAccepted => "tokens_not_accepted",
            Unauthenticated::NotBearer => "not_bearer",
            Unauthenticated::BadToken(TokenError::Expired) => "token_expired",
            Unauthenticated::BadToken(_) => "bad_token",
        }
    }
}

/// Why a request was refused for load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    #[error("too many requests of this principal in flight ({0} at most); retry later")]
    Principal(u32),
    #[error("too many requests in flight at this listener ({0} at most); retry later")]
    Listener(usize),
}

impl Busy {
    /// A metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Busy::Principal(_) => "principal_busy",
            Busy::Listener(_) => "listener_busy",
        }
    }
}

/// Where refusals at the edge are recorded besides their metric: the audit log.
pub trait RefusalAudit: Send + Sync + std::fmt::Debug {
    /// Records, without holding up the refusal, that `principal` (empty when it could not be
    /// authenticated) was refused at `endpoint` of `listener` for `reason`.
    fn refused(&self, listener: &str, principal: &str, reason: &str, endpoint: &str);
}

/// Held while a request runs; dropping it frees the caller's slots.
#[derive(Debug)]
pub struct Permit {
    _listener: OwnedSemaphorePermit,
    _principal: Option<OwnedSemaphorePermit>,
}

/// The edge of one service: its authentication, the policy in force and its limits.
#[derive(Debug)]
pub struct Gate {
    listener: &'static str,
    policy: SharedPolicy,
    policy_file: PathBuf,
    tokens_config: Option<ponte_access::token::TokenConfig>,
    tokens: RwLock<Option<Arc<Validator>>>,
    anonymous: Option<Arc<str>>,
    known_conditionalities: Vec<String>,
    listener_slots: Arc<Semaphore>,
    max_listener: usize,
    principal_slots: Slots,
    watch_slots: Slots,
    retry_after_secs: u64,
    refusals: std::sync::OnceLock<Arc<dyn RefusalAudit>>,
}

/// Semaphores per (principal, limit).
type Slots = Mutex<HashMap<(Arc<str>, u32), Arc<Semaphore>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Gate {
    /// Loads the policy and the JWKS of `cfg` for the listener `listener` (a metric label).
    /// `insecure`: whether the listener is plaintext (the anonymous principal needs it).
    /// `known_conditionalities`: the rule set's, checked against the policy (empty: not checked).
    pub fn new(
        listener: &'static str,
        cfg: &AccessConfig,
        insecure: bool,
        known_conditionalities: &[&str],
    ) -> Result<Gate, EdgeError> {
        if cfg.policy_file.as_os_str().is_empty() {
            return Err(EdgeError::Config(
                "access.policy_file is not set: every caller is checked against an access \
                 policy (docs/security.md; `ponte pki dev` writes one for local runs)"
                    .into(),
            ));
        }
        let policy = Policy::load(&cfg.policy_file)?;
        let known: Vec<String> = known_conditionalities
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        if !known.is_empty() {
            policy.check_conditionalities(known_conditionalities)?;
        }
        let anonymous = match (cfg.anonymous_principal.as_str(), insecure) {
            ("", _) => None,
            (name, true) => {
                tracing::warn!(
                    listener,
                    principal = name,
                    "callers without credentials act as access.anonymous_principal"
                );
                Some(Arc::from(name))
            }
            (_, false) => {
                return Err(EdgeError::Config(
                    "access.anonymous_principal is only allowed on an insecure listener \
                     (tls.insecure = true)"
                        .into(),
                ));
            }
        };
        let tokens = cfg
            .tokens
            .as_ref()
            .map(Validator::load)
            .transpose()?
            .map(Arc::new);
        Ok(Gate {
            listener,
            policy: SharedPolicy::new(policy),
            policy_file: cfg.policy_file.clone(),
            tokens_config: cfg.tokens.clone(),
            tokens: RwLock::new(tokens),
            anonymous,
            known_conditionalities: known,
            listener_slots: Arc::new(Semaphore::new(cfg.max_concurrent_requests.max(1))),
            max_listener: cfg.max_concurrent_requests.max(1),
            principal_slots: Mutex::default(),
            watch_slots: Mutex::default(),
            retry_after_secs: cfg.retry_after_secs,
            refusals: std::sync::OnceLock::new(),
        })
    }

    /// The listener's name (metric label).
    pub fn listener(&self) -> &'static str {
        self.listener
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.current()
    }

    /// Records every refusal of this edge in `audit` from now on (set once).
    pub fn record_refusals(&self, audit: Arc<dyn RefusalAudit>) {
        let _ = self.refusals.set(audit);
    }

    /// A refusal decided by a caller of this gate, for the audit log (its metric is counted
    /// where it is decided).
    pub fn refused(&self, principal: &str, reason: &str, endpoint: &str) {
        if let Some(a) = self.refusals.get() {
            a.refused(self.listener, principal, reason, endpoint);
        }
    }

    /// A caller refused by the policy at `endpoint`: counted and recorded.
    pub fn forbidden(&self, principal: &str, endpoint: &str) {
        metrics::counter!("ponte_access_refused_total", "listener" => self.listener, "reason" => "forbidden")
            .increment(1);
        self.refused(principal, "forbidden", endpoint);
    }

    /// Seconds a refused client is told to wait.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_secs
    }

    /// Authenticates a request from its connection and its `Authorization` value.
    pub fn authenticate(
        &self,
        peer: Option<&PeerInfo>,
        authorization: Option<&[u8]>,
    ) -> Result<Caller, Unauthenticated> {
        let result = self.authenticate_inner(peer, authorization);
        if let Err(e) = &result {
            metrics::counter!("ponte_access_refused_total", "listener" => self.listener, "reason" => e.reason())
                .increment(1);
        }
        result
    }

    fn authenticate_inner(
        &self,
        peer: Option<&PeerInfo>,
        authorization: Option<&[u8]>,
    ) -> Result<Caller, Unauthenticated> {
        if let Some(value) = authorization {
            let value = std::str::from_utf8(value).map_err(|_| Unauthenticated::NotBearer)?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or(Unauthenticated::NotBearer)?;
            let validator = self
                .tokens
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .ok_or(Unauthenticated::TokensNotAccepted)?;
            let principal = validator.validate(token)?;
            return Ok(Caller {
                principal: Arc::from(principal),
                method: AuthMethod::Bearer,
            });
        }
        if let Some(p) = peer.and_then(|p| p.certificate.as_ref()) {
            return Ok(Caller {
                principal: Arc::from(p.as_str()),
                method: AuthMethod::Certificate,
            });
        }
        match &self.anonymous {
            Some(name) => Ok(Caller {
                principal: Arc::clone(name),
                method: AuthMethod::Anonymous,
            }),
            None => Err(Unauthenticated::NoCredentials),
        }
    }

    fn busy(&self, reason: &'static str) {
        metrics::counter!("ponte_access_refused_total", "listener" => self.listener, "reason" => reason)
            .increment(1);
    }

    /// A slot for one request of `caller`: the listener's and the principal's limit (from the
    /// policy; a principal the policy does not know has no slot of its own and is refused by
    /// the rights check after this).
    pub fn admit(&self, caller: &Caller) -> Result<Permit, Busy> {
        let listener = Arc::clone(&self.listener_slots)
            .try_acquire_owned()
            .map_err(|_| {
                self.busy("listener_busy");
                Busy::Listener(self.max_listener)
            })?;
        let principal = match self.policy.current().limits(&caller.principal) {
            Some(Limits {
                max_concurrent_requests: max,
                ..
            }) => {
                let sem = Self::slots(&self.principal_slots, &caller.principal, max);
                Some(sem.try_acquire_owned().map_err(|_| {
                    self.busy("principal_busy");
                    Busy::Principal(max)
                })?)
            }
            None => None,
        };
        Ok(Permit {
            _listener: listener,
            _principal: principal,
        })
    }

    /// A slot for one `WatchChanges` stream of `principal` (its `max_watch_streams`), held for
    /// the stream's life.
    pub fn admit_watch(&self, principal: &str) -> Result<OwnedSemaphorePermit, Busy> {
        let max = self
            .policy
            .current()
            .limits(principal)
            .map_or(0, |l| l.max_watch_streams);
        let sem = Self::slots(&self.watch_slots, principal, max);
        sem.try_acquire_owned().map_err(|_| {
            self.busy("watch_streams");
            Busy::Principal(max)
        })
    }

    fn slots(map: &Slots, principal: &str, max: u32) -> Arc<Semaphore> {
        // Keyed by the limit too: a reload that changes it starts a fresh count.
        Arc::clone(
            lock(map)
                .entry((Arc::from(principal), max))
                .or_insert_with(|| Arc::new(Semaphore::new(max as usize))),
        )
    }

    /// Reads the policy file (and the JWKS, when tokens are configured) again. On an error the
    /// policy and keys in force stay, and the error says why.
    pub fn reload(&self) -> Result<(), EdgeError> {
        let policy = Policy::load(&self.policy_file)?;
        if !self.known_conditionalities.is_empty() {
            let known: Vec<&str> = self
                .known_conditionalities
                .iter()
                .map(String::as_str)
                .collect();
            policy.check_conditionalities(&known)?;
        }
        let tokens = self
            .tokens_config
            .as_ref()
            .map(Validator::load)
            .transpose()?;
        self.policy.replace(policy);
        if let Some(v) = tokens {
            *self.tokens.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(v));
        }
        Ok(())
    }

    /// Reloads on SIGHUP and when the policy or JWKS file's modification time changes (checked
    /// every `check` interval), until `shutdown`. Every attempt is counted in
    /// `ponte_access_policy_reloads_total{result}` and logged.
    pub fn spawn_reloader(self: &Arc<Self>, check: Duration, shutdown: CancellationToken) {
        let gate = Arc::clone(self);
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup = match tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::hangup(),
            ) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; the policy reloads only on file change");
                    None
                }
            };
            let mut seen = gate.stamps();
            let mut tick = tokio::time::interval(check.max(Duration::from_millis(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let why = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        let now = gate.stamps();
                        if now == seen { continue; }
                        seen = now;
                        "file changed"
                    }
                    Some(()) = async {
                        #[cfg(unix)]
                        { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } }
                        #[cfg(not(unix))]
                        { std::future::pending::<Option<()>>().await }
                    } => "SIGHUP",
                };
                match gate.reload() {
                    Ok(()) => {
                        metrics::counter!("ponte_access_policy_reloads_total", "result" => "ok")
                            .increment(1);
                        tracing::info!(listener = gate.listener, trigger = why, policy = %gate.policy_file.display(), "access policy reloaded");
                    }
                    Err(e) => {
                        metrics::counter!("ponte_access_policy_reloads_total", "result" => "error")
                            .increment(1);
                        tracing::error!(listener = gate.listener, trigger = why, error = %e, "access policy NOT reloaded; the previous one stays in force");
                    }
                }
            }
        });
    }

    fn stamps(&self) -> Vec<Option<SystemTime>> {
        let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut v = vec![mtime(&self.policy_file)];
        if let Some(t) = &self.tokens_config {
            v.push(mtime(&t.jwks_file));
        }
        v
    }
}
