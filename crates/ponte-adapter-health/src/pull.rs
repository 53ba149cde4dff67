//! Pull mode: polls a FHIR server's search API for each configured resource type,
//! `GET <base>/<Type>?_lastUpdated=ge<watermark>&_sort=_lastUpdated&_count=<n>&_include=<Type>:patient`,
//! follows the `next` links, publishes every page through the same mapping as pushed bundles,
//! and moves the durable watermark only after the page is acknowledged by the broker.
//!
//! It never publishes a page it could not fully store, and never advances past one: when the
//! broker or the server fails, the cycle stops and the next one starts from the last stored
//! watermark. `next` links must stay on the configured server (same origin).
use std::path::Path;
use std::time::{Duration, SystemTime};

use ponte_bus::ingest::{IngestReport, Origin};
// Where pages go: the [`Ingestor`] in production, a recorder in tests.
use ponte_edge::ingest::Sink;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::fhir::{BundleSource, EntryOutcome, ParsedBundle, parse_bundle};
use crate::record::{MappingConfig, parse_instant};
use crate::service::{ADAPTER, items_of};
use crate::watermark::{Mark, WatermarkError, WatermarkFile};

/// The `[health_adapter.pull]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullConfig {
    /// Base URL of the FHIR server (`https://fhir.example/r4`); empty turns pull mode off.
    pub base_url: String,
    /// Source system of the records pulled from that server (the first part of their record
    /// ids). Pushed records take theirs from the caller's principal in the access policy;
    /// pulled ones have no caller, so the operator who configures the server names it here.
    pub source_system: String,
    /// Resource types searched, in this order.
    pub resource_types: Vec<String>,
    /// Seconds between polling cycles.
    pub interval_secs: u64,
    /// `_count` asked of the server per page.
    pub page_size: u32,
    /// File keeping the watermark (created on first use).
    pub watermark_file: String,
    /// Lower bound of `_lastUpdated` before any watermark exists (FHIR instant); empty reads
    /// everything.
    pub since: String,
    /// Timeout of one HTTP request to the server.
    pub request_timeout_secs: u64,
    /// Optional `Authorization` header value sent to the server (e.g. `Bearer …`); empty sends
    /// none. Prefer the environment variable over a file for it.
    #[serde(default)]
    pub authorization: String,
}

/// Why a polling cycle stopped.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("pull configuration: {0}")]
    Config(String),
    #[error("FHIR server: {0}")]
    Server(String),
    #[error("FHIR server sent an unusable page ({url}): {reason}")]
    Page { url: String, reason: String },
    #[error("bus did not acknowledge a page: {0}")]
    Bus(String),
    #[error(transparent)]
    Watermark(#[from] WatermarkError),
}

impl PullError {
    fn error_type(&self) -> &'static str {
        match self {
            PullError::Config(_) => "config",
            PullError::Server(_) => "server",
            PullError::Page { .. } => "page",
            PullError::Bus(_) => "bus",
            PullError::Watermark(_) => "watermark",
        }
    }
}

/// What one cycle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleReport {
    pub pages: usize,
    pub accepted: usize,
    pub rejected: usize,
    /// Entries skipped because they were published before at the watermark instant.
    pub skipped: usize,
}

/// The poller: one server, its watermark file.
#[derive(Debug)]
pub struct Poller {
    client: reqwest::Client,
    base: reqwest::Url,
    cfg: PullConfig,
    mapping: MappingConfig,
    source_system: String,
    topic: String,
    watermark: WatermarkFile,
}

impl Poller {
    /// Checks the configuration and opens the watermark file.
    pub fn new(
        cfg: &PullConfig,
        mapping: MappingConfig,
        source_system: &str,
        topic: &str,
    ) -> Result<Poller, PullError> {
        let mut base_str = cfg.base_url.clone();
        if !base_str.ends_with('/') {
            base_str.push('/');
        }
        let base = reqwest::Url::parse(&base_str)
            .map_err(|e| PullError::Config(format!("pull.base_url {:?}: {e}", cfg.base_url)))?;
        if !cfg.since.is_empty() && parse_instant(&cfg.since).is_none() {
            return Err(PullError::Config(format!(
                "pull.since {:?} is not a FHIR instant (2025-01-01T00:00:00Z)",
                cfg.since
            )));
        }
        for t in &cfg.resource_types {
            if !matches!(t.as_str(), "Immunization" | "Observation" | "Encounter") {
                return Err(PullError::Config(format!(
                    "pull.resource_types: {t:?} is not one of Immunization, Observation, Encounter"
                )));
            }
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.request_timeout_secs.max(1)))
            .build()
            .map_err(|e| PullError::Config(e.to_string()))?;
        Ok(Poller {
            client,
            base,
            cfg: cfg.clone(),
            mapping,
            source_system: source_system.to_owned(),
            topic: topic.to_owned(),
            watermark: WatermarkFile::open(Path::new(&cfg.watermark_file))?,
        })
    }

    /// The current watermark of one resource type.
    pub fn mark(&self, rtype: &str) -> Option<&Mark> {
        self.watermark.current.types.get(rtype)
    }

    /// Polls every `interval_secs` until `stop` is cancelled.
    pub async fn run<S: Sink>(mut self, sink: S, stop: CancellationToken) {
        tracing::info!(base = %self.base, types = ?self.cfg.resource_types, "pull mode on");
        loop {
            match self.cycle(&sink).await {
                Ok(r) if r.pages > 0 => tracing::info!(?r, "pull cycle done"),
                Ok(_) => {}
                Err(e) => {
                    metrics::counter!("ponte_health_pull_errors_total", "error_type" => e.error_type())
                        .increment(1);
                    tracing::warn!(error = %e, "pull cycle stopped; retrying from the stored watermark");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(self.cfg.interval_secs.max(1))) => {}
            }
        }
    }

    /// One pass over every resource type.
    pub async fn cycle<S: Sink>(&mut self, sink: &S) -> Result<CycleReport, PullError> {
        let mut report = CycleReport::default();
        for rtype in self.cfg.resource_types.clone() {
            self.pull_type(sink, &rtype, &mut report).await?;
        }
        Ok(report)
    }

    fn first_url(&self, rtype: &str) -> Result<reqwest::Url, PullError> {
        let mut url = self
            .base
            .join(rtype)
            .map_err(|e| PullError::Config(e.to_string()))?;
        let since = self
            .mark(rtype)
            .map(|m| m.last_updated.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| self.cfg.since.clone());
        {
            let mut q = url.query_pairs_mut();
            if !since.is_empty() {
                q.append_pair("_lastUpdated", &format!("ge{since}"));
            }
            q.append_pair("_sort", "_lastUpdated")
                .append_pair("_count", &self.cfg.page_size.max(1).to_string())
                .append_pair("_include", &format!("{rtype}:patient"));
        }
        Ok(url)
    }

    async fn fetch(&self, url: &reqwest::Url) -> Result<Vec<u8>, PullError> {
        let mut req = self
            .client
            .get(url.clone())
            .header("accept", "application/fhir+json");
        if !self.cfg.authorization.is_empty() {
            req = req.header("authorization", &self.cfg.authorization);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| PullError::Server(format!("GET {url}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(PullError::Server(format!("GET {url}: HTTP {status}")));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| PullError::Server(format!("GET {url}: {e}")))?;
        Ok(bytes.to_vec())
    }

    async fn pull_type<S: Sink>(
        &mut self,
        sink: &S,
        rtype: &str,
        report: &mut CycleReport,
    ) -> Result<(), PullError> {
        let mut url = self.first_url(rtype)?;
        let mut mark = self.mark(rtype).cloned().unwrap_or_default();
        let mut sorted = true;
        let mut page_no = 0usize;
        loop {
            page_no += 1;
            let body = self.fetch(&url).await?;
            let now = SystemTime::now();
            let mut parsed = parse_bundle(
                &body,
                &self.mapping,
                &self.source_system,
                BundleSource::Search,
                now,
            )
            .map_err(|e| PullError::Page {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
            let before = parsed.entries.len();
            let mark_at = parse_instant(&mark.last_updated);
            parsed.entries.retain(|e| {
                !(!e.included
                    && mark_at.is_some()
                    && e.last_updated.as_deref().and_then(parse_instant) == mark_at
                    && mark.ids_at.contains(&e.label))
            });
            report.skipped += before - parsed.entries.len();

            let items = items_of(&parsed, &self.topic, |i| {
                format!("{rtype} search page {page_no} entry {}", i + 1)
            });
            let ingested = if items.is_empty() {
                IngestReport::default()
            } else {
                // The adapter itself fetched these: the sender is the pull of this source, the
                // page its request.
                let request = uuid::Uuid::new_v4().simple().to_string();
                let sender = format!("pull:{}", self.source_system);
                let endpoint = format!("pull {rtype} search page {page_no}");
                let origin = Origin {
                    source_system: &self.source_system,
                    sender: &sender,
                    request_id: &request,
                    trace_id: &request,
                    endpoint: &endpoint,
                };
                sink.ingest(&origin, items, now)
                    .await
                    .map_err(|f| PullError::Bus(f.error.to_string()))?
            };
            report.pages += 1;
            report.accepted += ingested.accepted;
            report.rejected += ingested.rejected.len();
            metrics::counter!("ponte_health_pull_pages_total", "adapter" => ADAPTER, "resource_type" => rtype.to_owned())
                .increment(1);

            sorted &= advance(&mut mark, &parsed);
            // With pages in `_lastUpdated` order every stored page is a safe restart point;
            // if the server does not sort, only the end of the whole search is.
            if sorted && !mark.last_updated.is_empty() {
                self.watermark.store(rtype, mark.clone())?;
            }
            let Some(next) = parsed.next.as_deref() else {
                break;
            };
            let next = url.join(next).map_err(|e| PullError::Page {
                url: url.to_string(),
                reason: format!("next link {next:?}: {e}"),
            })?;
            if next.origin() != self.base.origin() {
                return Err(PullError::Page {
                    url: url.to_string(),
                    reason: format!("next link {next} leaves the configured server"),
                });
            }
            if next == url {
                break;
            }
            url = next;
        }
        if !sorted && !mark.last_updated.is_empty() {
            tracing::warn!(
                rtype,
                "the FHIR server did not return pages in _lastUpdated order; watermark stored at the end of the search"
            );
            self.watermark.store(rtype, mark)?;
        }
        Ok(())
    }
}

/// Moves `mark` over a page's matches; false when the page was not in `_lastUpdated` order.
fn advance(mark: &mut Mark, page: &ParsedBundle) -> bool {
    let mut sorted = true;
    let mut current = parse_instant(&mark.last_updated);
    let mut prev: Option<SystemTime> = None;
    for e in page.entries.iter().filter(|e| !e.included) {
        if matches!(e.outcome, EntryOutcome::Identity(_)) {
            continue;
        }
        let Some((s, t)) = e
            .last_updated
            .as_deref()
            .and_then(|s| parse_instant(s).map(|t| (s, t)))
        else {
            continue;
        };
        if prev.is_some_and(|p| t < p) {
            sorted = false;
        }
        prev = Some(t);
        match current {
            Some(c) if t < c => {}
            Some(c) if t == c => {
                mark.ids_at.insert(e.label.clone());
            }
            _ => {
                current = Some(t);
                mark.last_updated = s.to_owned();
                mark.ids_at = [e.label.clone()].into();
            }
        }
    }
    sorted
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Query, State};
    use axum::routing::get;
    use ponte_bus::BusError;
    use serde_json::{Value, json};

    use super::*;
    use ponte_bus::ingest::{IngestFailure, Item};
    use std::future::Future;

    /// A fake FHIR server: a list of Observations, searched by `_lastUpdated=ge…`, sorted, in
    /// pages of `_count` with `next` links carrying an offset.
    #[derive(Default)]
    struct Fhir {
        observations: Vec<Value>,
        queries: Vec<HashMap<String, String>>,
    }

    type Shared = Arc<Mutex<Fhir>>;

    async fn search(
        State(s): State<Shared>,
        Query(q): Query<HashMap<String, String>>,
    ) -> axum::Json<Value> {
        let mut f = s.lock().unwrap();
        f.queries.push(q.clone());
        let ge = q
            .get("_lastUpdated")
            .and_then(|v| v.strip_prefix("ge"))
            .and_then(parse_instant);
        let mut hits: Vec<&Value> = f
            .observations
            .iter()
            .filter(|o| {
                let t = parse_instant(o["meta"]["lastUpdated"].as_str().unwrap()).unwrap();
                ge.is_none_or(|g| t >= g)
            })
            .collect();
        hits.sort_by_key(|o| parse_instant(o["meta"]["lastUpdated"].as_str().unwrap()).unwrap());
        let count: usize = q.get("_count").unwrap().parse().unwrap();
        let offset: usize = q.get("_offset").map(|o| o.parse().unwrap()).unwrap_or(0);
        let page: Vec<Value> = hits
            .iter()
            .skip(offset)
            .take(count)
            .map(|o| json!({"resource": o, "search": {"mode": "match"}}))
            .collect();
        let mut bundle = json!({"resourceType": "Bundle", "type": "searchset", "entry": page});
        if offset + count < hits.len() {
            let mut next = q.clone();
            next.insert("_offset".into(), (offset + count).to_string());
            let qs: Vec<String> = next
                .iter()
                .map(|(k, v)| format!("{k}={}", v.replace('+', "%2B").replace(':', "%3A")))
                .collect();
            bundle["link"] =
                json!([{"relation": "next", "url": format!("Observation?{}", qs.join("&"))}]);
        }
        axum::Json(bundle)
    }

    fn observation(id: &str, grams: u32, last_updated: &str) -> Value {
        json!({
            "resourceType": "Observation", "id": id, "status": "final",
            "meta": {"versionId": "1", "lastUpdated": last_updated},
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"identifier": {"system": "http://rnds.saude.gov.br/fhir/r4/NamingSystem/cpf", "value": "52998224725"}},
            "effectiveDateTime": "2025-03-01",
            "valueQuantity": {"value": grams, "system": "http://unitsofmeasure.org", "code": "g"}
        })
    }

    #[derive(Default)]
    struct Recorder {
        ids: Mutex<Vec<String>>,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Sink for Recorder {
        fn ingest(
            &self,
            _origin: &Origin<'_>,
            items: Vec<Item>,
            _received: SystemTime,
        ) -> impl Future<Output = Result<IngestReport, IngestFailure>> + Send {
            let fail = self.fail.load(std::sync::atomic::Ordering::SeqCst);
            let mut accepted = 0;
            if !fail {
                for i in &items {
                    if let Item::Accepted(a) = i {
                        self.ids.lock().unwrap().push(a.event.record_id.clone());
                        accepted += 1;
                    }
                }
            }
            async move {
                if fail {
                    Err(IngestFailure {
                        acknowledged: 0,
                        error: BusError::Unavailable("down".into()),
                    })
                } else {
                    Ok(IngestReport {
                        accepted,
                        rejected: Vec::new(),
                    })
                }
            }
        }
    }

    async fn serve(state: Shared) -> String {
        let app = Router::new()
            .route("/fhir/Observation", get(search))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/fhir")
    }

    use axum::Router;

    fn cfg(base: &str, wm: &Path) -> PullConfig {
        PullConfig {
            base_url: base.to_owned(),
            source_system: "health".to_owned(),
            resource_types: vec!["Observation".into()],
            interval_secs: 1,
            page_size: 2,
            watermark_file: wm.display().to_string(),
            since: String::new(),
            request_timeout_secs: 5,
            authorization: String::new(),
        }
    }

    #[tokio::test]
    async fn pages_are_followed_and_a_restart_neither_skips_nor_re_floods() {
        let fhir: Shared = Arc::default();
        fhir.lock().unwrap().observations = vec![
            observation("a", 10_000, "2025-03-01T10:00:00Z"),
            observation("b", 11_000, "2025-03-01T11:00:00Z"),
            observation("c", 12_000, "2025-03-01T12:00:00-03:00"),
        ];
        let base = serve(fhir.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let wm = dir.path().join("health-pull.json");
        let sink = Recorder::default();

        let mut poller =
            Poller::new(&cfg(&base, &wm), MappingConfig::default(), "health", "t").unwrap();
        let r = poller.cycle(&sink).await.unwrap();
        assert_eq!(
            (r.pages, r.accepted),
            (2, 3),
            "two pages of two, next link followed"
        );
        assert_eq!(
            *sink.ids.lock().unwrap(),
            [
                "health:Observation/a",
                "health:Observation/b",
                "health:Observation/c"
            ]
        );
        assert_eq!(
            poller.mark("Observation").unwrap().last_updated,
            "2025-03-01T12:00:00-03:00"
        );

        // "Restart": a new poller from the same file publishes nothing again.
        drop(poller);
        let mut poller =
            Poller::new(&cfg(&base, &wm), MappingConfig::default(), "health", "t").unwrap();
        let r = poller.cycle(&sink).await.unwrap();
        assert_eq!((r.accepted, r.skipped), (0, 1));
        let last = fhir.lock().unwrap().queries.last().cloned().unwrap();
        assert_eq!(last["_lastUpdated"], "ge2025-03-01T12:00:00-03:00");
        assert_eq!(last["_include"], "Observation:patient");

        // A resource updated in the very instant of the watermark is not skipped; one updated
        // later is not either; while the broker is down nothing advances.
        fhir.lock()
            .unwrap()
            .observations
            .push(observation("d", 13_000, "2025-03-01T15:00:00Z"));
        fhir.lock()
            .unwrap()
            .observations
            .push(observation("e", 14_000, "2025-03-02T00:00:00Z"));
        sink.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(poller.cycle(&sink).await, Err(PullError::Bus(_))));
        assert_eq!(
            poller.mark("Observation").unwrap().last_updated,
            "2025-03-01T12:00:00-03:00"
        );
        sink.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        let r = poller.cycle(&sink).await.unwrap();
        assert_eq!(r.accepted, 2);
        let ids = sink.ids.lock().unwrap().clone();
        assert_eq!(ids.len(), 5, "{ids:?}");
        assert_eq!(&ids[3..], ["health:Observation/d", "health:Observation/e"]);
    }

    #[tokio::test]
    async fn next_links_to_another_server_are_refused() {
        async fn evil() -> axum::Json<Value> {
            axum::Json(json!({"resourceType": "Bundle", "type": "searchset",
                "link": [{"relation": "next", "url": "http://198.51.100.1/fhir/Observation?page=2"}]}))
        }
        let app = Router::new().route("/fhir/Observation", get(evil));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let dir = tempfile::tempdir().unwrap();
        let mut poller = Poller::new(
            &cfg(&format!("http://{addr}/fhir"), &dir.path().join("w")),
            MappingConfig::default(),
            "health",
            "t",
        )
        .unwrap();
        let err = poller.cycle(&Recorder::default()).await.unwrap_err();
        assert!(
            err.to_string().contains("leaves the configured server"),
            "{err}"
        );
    }

    #[test]
    fn bad_configuration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg("http://127.0.0.1:1/fhir", &dir.path().join("w"));
        c.resource_types = vec!["Patient".into()];
        assert!(Poller::new(&c, MappingConfig::default(), "h", "t").is_err());
        let mut c = cfg("not a url", &dir.path().join("w"));
        c.since = "yesterday".into();
        assert!(Poller::new(&c, MappingConfig::default(), "h", "t").is_err());
    }
}
