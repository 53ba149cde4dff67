//! `GetPerson` at a fixed rate from this process: the same calls ghz makes, from a client that
//! costs the shared cores less. On this benchmark's 2 cores ghz spends 160–200 µs of CPU per
//! call — twice the server — so its percentiles are mostly its own and the scheduler's
//! (docs/benchmarks.md, "Point reads on the worker"). This client is tonic and prost, as a
//! Rust caller of Ponte would be. ghz stays the reference; this shows what the server answers
//! with when the load generator does not take half of the machine.
//!
//! Open loop: call `i` is due at `start + i / rate` and is sent then, whether or not earlier
//! calls were answered (no fixed pool of workers to run out). Its latency is taken from the
//! moment it was sent to its answer, as ghz takes it, and also from the moment it was due —
//! which adds the client's own lag (tokio's timer wakes it about once a millisecond, so calls
//! leave in small bursts, and later when the cores are busy) and bounds the first from above;
//! how many sends were late, and the latest, are printed beside.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ponte_proto::compliance::v1::GetPersonRequest;
use ponte_proto::compliance::v1::compliance_service_client::ComplianceServiceClient;
use tonic::transport::{Channel, Endpoint};

/// What to send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// Calls per second.
    pub(crate) rate: u32,
    /// For how long.
    pub(crate) seconds: u32,
    /// HTTP/2 connections the calls are spread over, in turn.
    pub(crate) connections: u32,
}

/// What came back.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) pace: Pace,
    /// Latencies of the calls answered OK, from their sending, sorted.
    pub(crate) ok: Vec<Duration>,
    /// The same calls' latencies from when they were due, sorted: with the client's own lag.
    pub(crate) ok_from_due: Vec<Duration>,
    /// Failed calls by gRPC code.
    pub(crate) errors: BTreeMap<String, u64>,
    /// From the first call due to the last answer.
    pub(crate) wall: Duration,
    /// The latest a call was sent after it was due.
    pub(crate) max_send_lag: Duration,
    /// Calls sent more than 1 ms after they were due.
    pub(crate) late_sends: u64,
    /// This process's CPU over the run (it does nothing else meanwhile).
    pub(crate) client_cpu: Option<f64>,
    /// The server's CPU over the run.
    pub(crate) server_cpu: Option<f64>,
}

impl Outcome {
    fn calls(&self) -> u64 {
        self.ok.len() as u64 + self.errors.values().sum::<u64>()
    }

    /// One line per figure, as the bench prints them.
    pub(crate) fn report(&self) -> String {
        let show = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.2} ms", ms(d)));
        let calls = self.calls().max(1) as f64;
        let per_call =
            |cpu: Option<f64>| cpu.map_or("-".to_owned(), |s| format!("{:.0} µs", s * 1e6 / calls));
        format!(
            "  {} calls at {}/s for {} s over {} connections: {} OK, errors {:?}, {:.0} answered/s\n  \
             p50 {} p90 {} p99 {} p99.9 {} slowest {}\n  \
             from when due (the client's lag included): p50 {} p99 {} p99.9 {}\n  \
             sends late by more than 1 ms: {} (the latest {:.2} ms after due)\n  \
             CPU per call: this client {}, the server {}\n",
            self.calls(),
            self.pace.rate,
            self.pace.seconds,
            self.pace.connections,
            self.ok.len(),
            self.errors,
            self.ok.len() as f64 / self.wall.as_secs_f64().max(1e-9),
            show(quantile(&self.ok, 0.50)),
            show(quantile(&self.ok, 0.90)),
            show(quantile(&self.ok, 0.99)),
            show(quantile(&self.ok, 0.999)),
            show(self.ok.last().copied()),
            show(quantile(&self.ok_from_due, 0.50)),
            show(quantile(&self.ok_from_due, 0.99)),
            show(quantile(&self.ok_from_due, 0.999)),
            self.late_sends,
            ms(self.max_send_lag),
            per_call(self.client_cpu),
            per_call(self.server_cpu),
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile of `sorted` (nearest rank, as [`crate::e2e::nearest_rank`]), `None` when
/// empty.
fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    (!sorted.is_empty()).then(|| crate::e2e::nearest_rank(sorted, q))
}

/// The time call `i` of a run started at `start` is due at `rate` calls per second.
fn due(start: Instant, i: u64, rate: u32) -> Instant {
    start + Duration::from_nanos(i * 1_000_000_000 / u64::from(rate))
}

/// `GetPerson` on `addr` (plaintext) for `nis` in turn at `pace`; `servers` are the serving
/// processes (the instance asked, and the instances it asks), for their CPU.
pub(crate) async fn get_person(
    addr: &str,
    nis: &[String],
    pace: Pace,
    servers: &[u32],
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!nis.is_empty(), "no NIS to ask for");
    anyhow::ensure!(
        pace.rate > 0 && pace.connections > 0,
        "a rate and a connection"
    );
    let mut clients: Vec<ComplianceServiceClient<Channel>> = Vec::new();
    for _ in 0..pace.connections {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        clients.push(ComplianceServiceClient::new(channel));
    }
    let total = u64::from(pace.rate) * u64::from(pace.seconds);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client_cpu = crate::e2e::cpu_seconds(std::process::id());
    let server_cpu = (!servers.is_empty())
        .then(|| crate::e2e::cpu_seconds_of(servers))
        .flatten();
    let start = Instant::now();
    let (mut max_send_lag, mut late_sends) = (Duration::ZERO, 0);
    for i in 0..total {
        let at = due(start, i, pace.rate);
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
        let lag = at.elapsed();
        max_send_lag = max_send_lag.max(lag);
        late_sends += u64::from(lag > Duration::from_millis(1));
        let mut client = clients[(i % clients.len() as u64) as usize].clone();
        let nis = nis[(i % nis.len() as u64) as usize].clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let answer = client.get_person(GetPersonRequest { nis }).await;
            let _ = tx.send(
                answer
                    .map(|_| (sent.elapsed(), at.elapsed()))
                    .map_err(|s| s.code()),
            );
        });
    }
    drop(tx);
    let (mut ok, mut ok_from_due, mut errors) = (
        Vec::with_capacity(total as usize),
        Vec::with_capacity(total as usize),
        BTreeMap::new(),
    );
    while let Some(answer) = rx.recv().await {
        match answer {
            Ok((latency, from_due)) => {
                ok.push(latency);
                ok_from_due.push(from_due);
            }
            Err(code) => *errors.entry(format!("{code:?}")).or_insert(0) += 1,
        }
    }
    let wall = start.elapsed();
    ok.sort_unstable();
    ok_from_due.sort_unstable();
    let since = |before: Option<f64>, pids: &[u32]| {
        Some(crate::e2e::cpu_seconds_of(pids).filter(|_| !pids.is_empty())? - before?)
    };
    Ok(Outcome {
        pace,
        ok,
        ok_from_due,
        errors,
        wall,
        max_send_lag,
        late_sends,
        client_cpu: since(client_cpu, &[std::process::id()]),
        server_cpu: since(server_cpu, servers),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&v, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&v, 0.999), Some(Duration::from_millis(100)));
        assert_eq!(quantile(&v, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn calls_are_due_evenly_from_the_start() {
        let start = Instant::now();
        assert_eq!(due(start, 0, 5000), start);
        assert_eq!(due(start, 1, 5000), start + Duration::from_micros(200));
        assert_eq!(due(start, 5000, 5000), start + Duration::from_secs(1));
        assert_eq!(due(start, 3, 3), start + Duration::from_secs(1));
    }
}
