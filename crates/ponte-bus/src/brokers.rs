//! Whether a Kafka client still knows a broker to talk to.
//!
//! librdkafka (2.10 and later, up to the 2.12.1 this crate builds) drops every broker a metadata
//! response does not list, the bootstrap servers included. A broker that is shutting down or
//! starting, and so fenced, answers metadata with no broker at all; a client that receives such
//! an answer when every broker is down has nothing left to connect to, and its re-bootstrap
//! only runs when brokers it knows go down — none left to. The client then never reconnects,
//! and says nothing: a group consumer stays out of its group (issue 15: the reconciler silent
//! for minutes after a single broker's restart, `no broker available for coordinator query`
//! in librdkafka's `cgrp` debug log; librdkafka issue #5301). Only a new client gets the
//! bootstrap servers back.
//!
//! [`BrokerWatch`] reads each statistics report (`statistics.interval.ms`) and remembers since
//! when the client has known no broker but its logical ones (group and transaction
//! coordinators, which are handles, not connections): the owner replaces the client once that
//! has lasted long enough to be no passing state.
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a client may know no broker before its owner takes it for lost for good and
/// replaces it: statistics come every 5 s, and the broker list can be empty for a moment while
/// librdkafka re-bootstraps; a lost client stays so.
pub const LOST_AFTER: Duration = Duration::from_secs(30);

/// Destroys a replaced (or abandoned) client on a thread of its own: destroying a librdkafka
/// client may wait for its threads and outstanding requests, which must not hold up a runtime
/// worker, and the runtime's blocking pool is waited for at shutdown.
pub fn destroy_aside<C: Send + 'static>(client: C) {
    std::thread::spawn(move || drop(client));
}

/// Counts the replacement of the client labelled `client` (`ponte_bus_clients_replaced_total`).
pub fn replaced(client: &str) {
    metrics::counter!("ponte_bus_clients_replaced_total", "client" => client.to_owned())
        .increment(1);
}

/// Since when a client has known no broker, from its statistics.
#[derive(Debug, Default)]
pub struct BrokerWatch {
    /// When a report first showed no broker (reset by one that shows any).
    lost_since: Mutex<Option<Instant>>,
}

/// Brokers of a statistics report the client can connect to: those of its bootstrap servers
/// and those it learned from metadata. Logical brokers (coordinators) and the internal one are
/// not connections of their own.
pub fn usable_brokers(statistics: &rdkafka::Statistics) -> usize {
    statistics
        .brokers
        .values()
        .filter(|b| matches!(b.source.as_str(), "learned" | "configured"))
        .count()
}

impl BrokerWatch {
    /// Records a statistics report, as of `now`.
    pub fn observe(&self, client: &str, statistics: &rdkafka::Statistics, now: Instant) {
        let usable = usable_brokers(statistics);
        metrics::gauge!("ponte_bus_client_brokers", "client" => client.to_owned())
            .set(usable as f64);
        let mut since = self
            .lost_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match (usable, *since) {
            (0, None) => {
                tracing::warn!(
                    client,
                    "the Kafka client knows no broker any more (dropped by a metadata answer that listed none): replaced if it lasts"
                );
                *since = Some(now);
            }
            (0, Some(_)) => {}
            (_, _) => *since = None,
        }
    }

    /// How long the client has known no broker, as of `now`; `None` while it knows one.
    pub fn lost_for(&self, now: Instant) -> Option<Duration> {
        self.lost_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|t| now.saturating_duration_since(t))
    }

    /// How long the client has known no broker, as of `now`, once that has lasted
    /// [`LOST_AFTER`] and the client is taken for lost for good; `None` before. What an owner
    /// asks before replacing its client.
    pub fn lost(&self, now: Instant) -> Option<Duration> {
        self.lost_for(now).filter(|l| *l >= LOST_AFTER)
    }
}

/// What every Ponte client's context keeps to know whether the client still knows a broker:
/// its [`BrokerWatch`], its label in metrics and the tests' stand-in ([`ForgetBrokers`]). On
/// its own, the context of a client watched for that and nothing else (librdkafka's default
/// behaviour otherwise). The client's configuration must set `statistics.interval.ms`.
#[derive(Debug)]
pub struct Watched {
    client: String,
    brokers: BrokerWatch,
    forgets_brokers: Option<ForgetBrokers>,
}

impl Watched {
    /// The context of the client labelled `client` in metrics (its client id and kind, e.g.
    /// `ponte-reconciler-read/consumer`).
    pub fn new(client: &str) -> Result<Self, crate::BusError> {
        Ok(Self {
            client: client.to_owned(),
            brokers: BrokerWatch::default(),
            forgets_brokers: ForgetBrokers::from_env(client)?,
        })
    }

    /// The client's label in metrics.
    pub fn client(&self) -> &str {
        &self.client
    }

    /// How long the client has known no broker once it is taken for lost
    /// ([`BrokerWatch::lost`]).
    pub fn lost(&self, now: Instant) -> Option<Duration> {
        self.brokers.lost(now)
    }

    /// What a client's context does with each statistics report: the brokers taken out when
    /// the tests' stand-in says so, then the report observed as of now.
    pub fn report(&self, statistics: &mut rdkafka::Statistics) {
        if self
            .forgets_brokers
            .as_ref()
            .is_some_and(ForgetBrokers::forgets)
        {
            statistics.brokers.clear();
        }
        self.brokers
            .observe(&self.client, statistics, Instant::now());
    }
}

impl rdkafka::ClientContext for Watched {
    fn stats(&self, mut statistics: rdkafka::Statistics) {
        self.report(&mut statistics);
    }
}

impl rdkafka::consumer::ConsumerContext for Watched {}

/// The system tests' stand-in for a client librdkafka left without brokers, which a single
/// broker's restart gives only now and then: with `PONTE_TEST_FORGET_BROKERS=<client>:<n>`,
/// the first client of the process labelled `<client>` (its client id and kind, e.g.
/// `ponte-reconciler/consumer`, `ponte-education/idempotent`) has the brokers of its
/// statistics reports from the `n`-th on taken out, so its owner sees a client that knows none
/// ([`BrokerWatch`]) and replaces it. The client itself goes on working: what is tested is the
/// replacement. Clients created after the first are left alone.
#[derive(Debug)]
pub struct ForgetBrokers {
    from_report: u64,
    reports: std::sync::atomic::AtomicU64,
}

/// The clients given the stand-in so far.
static FORGETTING: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl ForgetBrokers {
    /// The stand-in for the client labelled `client`, when `PONTE_TEST_FORGET_BROKERS` names it
    /// and no client of that label has had it yet.
    pub fn from_env(client: &str) -> Result<Option<Self>, crate::BusError> {
        let Ok(spec) = std::env::var("PONTE_TEST_FORGET_BROKERS") else {
            return Ok(None);
        };
        let parsed = spec
            .rsplit_once(':')
            .and_then(|(c, n)| Some((c, n.parse::<u64>().ok()?)));
        let Some((named, from_report)) = parsed else {
            return Err(crate::BusError::Config(format!(
                "PONTE_TEST_FORGET_BROKERS: {spec:?} is not <client>:<count>"
            )));
        };
        if named != client {
            return Ok(None);
        }
        let mut given = FORGETTING.lock().unwrap_or_else(PoisonError::into_inner);
        if given.iter().any(|c| c == client) {
            return Ok(None);
        }
        given.push(client.to_owned());
        Ok(Some(Self {
            from_report,
            reports: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// Counts a statistics report; true when its brokers are to be taken out.
    pub fn forgets(&self) -> bool {
        self.reports
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1
            >= self.from_report
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A statistics report holding brokers of the given sources.
    fn report(sources: &[&str]) -> rdkafka::Statistics {
        let mut s = rdkafka::Statistics::default();
        for (i, source) in sources.iter().enumerate() {
            s.brokers.insert(
                format!("b{i}"),
                rdkafka::statistics::Broker {
                    source: (*source).to_owned(),
                    state: "DOWN".to_owned(),
                    ..Default::default()
                },
            );
        }
        s
    }

    #[test]
    fn only_bootstrap_and_learned_brokers_are_connections() {
        assert_eq!(
            usable_brokers(&report(&["learned", "logical", "logical"])),
            1
        );
        assert_eq!(usable_brokers(&report(&["configured", "learned"])), 2);
        assert_eq!(usable_brokers(&report(&["logical", "internal"])), 0);
        assert_eq!(usable_brokers(&report(&[])), 0);
    }

    #[test]
    fn a_client_without_brokers_is_timed_from_the_first_report_that_shows_it() {
        let watch = BrokerWatch::default();
        let t0 = Instant::now();
        watch.observe("c", &report(&["learned", "logical"]), t0);
        assert_eq!(watch.lost_for(t0), None);
        // All of them down still counts as knowing them: they come back by themselves.
        watch.observe("c", &report(&["learned"]), t0);
        assert_eq!(watch.lost_for(t0), None);

        let lost = t0 + Duration::from_secs(5);
        watch.observe("c", &report(&["logical"]), lost);
        watch.observe("c", &report(&["logical"]), lost + Duration::from_secs(5));
        assert_eq!(
            watch.lost_for(lost + Duration::from_secs(30)),
            Some(Duration::from_secs(30)),
            "timed from the first report without brokers"
        );

        assert_eq!(watch.lost(lost + Duration::from_secs(29)), None, "not yet");
        assert_eq!(
            watch.lost(lost + Duration::from_secs(30)),
            Some(LOST_AFTER),
            "lost for good"
        );

        watch.observe(
            "c",
            &report(&["configured", "logical"]),
            lost + Duration::from_secs(31),
        );
        assert_eq!(watch.lost(lost + Duration::from_secs(60)), None);
        assert_eq!(watch.lost_for(lost + Duration::from_secs(40)), None);
    }
}
