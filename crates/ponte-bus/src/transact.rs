//! A transactional producer: everything sent between [`Transactional::begin`] and
//! [`Transactional::commit`] — to any topic and partition, consumed offsets included — becomes
//! visible to `read_committed` consumers at once, or never.
//!
//! The offsets are committed for the consumer group with the group's generation (Kafka's
//! KIP-447): a member the group has moved on from — stalled past its session or poll interval,
//! its partitions handed to another member — gets its commit refused and the transaction
//! aborted, so it cannot write over what the new owner restored. A transaction left open by a
//! crashed or stalled process is aborted by the broker after `transaction.timeout.ms`, or at
//! once when a process starts with the same transactional id.
//!
//! The broker's acknowledgements of a transaction's messages are counted by the producer's
//! context ([`Reports`]) rather than each delivered through a future of its own: a future is a
//! channel, a boxed sender and a wake-up per message, and an epoch sends tens of thousands.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::Message as _;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::KafkaConfig;

/// Why a transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// The transaction was aborted (or must be: see [`Transactional::abort`]); nothing of it is
    /// visible. The producer can run the next one. Typical causes: a send the broker refused,
    /// a timeout, or an offset commit refused because the group has moved on (`fenced`).
    #[error("transaction aborted: {reason}")]
    Aborted { reason: String, fenced: bool },
    /// The producer cannot go on (another producer took its transactional id, or the broker
    /// timed the transaction out and bumped its epoch: `fenced`): it must be created anew.
    #[error("transactional producer failed for good: {reason}")]
    Fatal { reason: String, fenced: bool },
}

impl TxError {
    pub fn aborted(reason: impl Into<String>) -> Self {
        Self::Aborted {
            reason: reason.into(),
            fenced: false,
        }
    }

    pub fn fatal(reason: impl Into<String>) -> Self {
        Self::Fatal {
            reason: reason.into(),
            fenced: false,
        }
    }

    /// Classifies a producer error of operation `what`.
    pub fn of(what: &str, e: &KafkaError) -> Self {
        use rdkafka::types::RDKafkaErrorCode as C;
        let code = match e {
            KafkaError::Transaction(t) => Some(t.code()),
            other => other.rdkafka_error_code(),
        };
        // Refusals that mean another member or producer has taken over: the group's
        // generation moved on, the member was removed or replaced, or the producer's epoch
        // was bumped (its transaction timed out, or its id was registered again).
        let fenced = matches!(
            code,
            Some(
                C::IllegalGeneration
                    | C::UnknownMemberId
                    | C::FencedInstanceId
                    | C::InvalidProducerEpoch
                    | C::ProducerFenced
                    | C::Fenced
            )
        );
        let reason = format!("{what}: {e}");
        match e {
            KafkaError::Transaction(t) if t.is_fatal() => Self::Fatal { reason, fenced },
            // Refused because another transactional call is still in progress: this producer
            // cannot go on, and its replacement's registration aborts what it left open.
            _ if code == Some(C::Conflict) => Self::Fatal { reason, fenced },
            _ => Self::Aborted { reason, fenced },
        }
    }

    /// True when the group or the transaction coordinator refused this producer because another
    /// member or producer has taken over.
    pub fn is_fenced(&self) -> bool {
        match self {
            Self::Aborted { fenced, .. } | Self::Fatal { fenced, .. } => *fenced,
        }
    }

    /// True when the producer must be replaced.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Fatal { .. })
    }
}

/// Where the broker put a message: its partition and offset.
pub type Position = (i32, i64);

/// The delivery reports of the open transaction's messages, as the producer's polling thread
/// receives them. A message's delivery opaque carries the transaction's number and the
/// message's (half a word each), so a late report of an aborted transaction's message is told
/// apart from the next transaction's.
#[derive(Debug, Default)]
struct Reports {
    /// The open transaction's number (wrapping at half a word).
    transaction: AtomicUsize,
    /// Messages handed to the producer in the open transaction (they are sent from one
    /// thread at a time).
    sent: AtomicUsize,
    state: Mutex<ReportState>,
    /// Woken when every message sent so far is reported.
    all_reported: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct ReportState {
    /// Each reported message's number and position, in the order reported.
    positions: Vec<(usize, Position)>,
    /// How many were reported, failures included.
    reported: usize,
    /// The first failed delivery.
    failure: Option<KafkaError>,
}

/// Half the bits of a delivery opaque: the message's number, below the transaction's.
const HALF: u32 = usize::BITS / 2;
const LOW: usize = (1 << HALF) - 1;

impl Reports {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReportState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new transaction: its messages are numbered from 0, and reports of the last one's
    /// are ignored from now on.
    fn begin(&self) {
        let mut state = self.lock();
        let next = (self.transaction.load(Ordering::Acquire) + 1) & LOW;
        self.transaction.store(next, Ordering::Release);
        state.positions.clear();
        state.reported = 0;
        state.failure = None;
        self.sent.store(0, Ordering::Release);
    }

    /// The next message's number, counted as sent, and its delivery opaque.
    fn next(&self) -> Result<(usize, usize), TxError> {
        let number = self.sent.load(Ordering::Acquire);
        if number >= LOW {
            return Err(TxError::aborted(format!(
                "more than {LOW} messages in one transaction"
            )));
        }
        // Counted before the producer has it: its report may come at once.
        self.sent.store(number + 1, Ordering::Release);
        Ok((
            number,
            (self.transaction.load(Ordering::Acquire) << HALF) | number,
        ))
    }

    /// The message `number` was not queued after all: it will not be reported.
    fn not_sent(&self, number: usize) {
        self.sent.store(number, Ordering::Release);
    }

    /// The broker's report of the message sent with `opaque`.
    fn report(&self, opaque: usize, result: Result<Position, &KafkaError>) {
        let mut state = self.lock();
        if opaque >> HALF != self.transaction.load(Ordering::Acquire) {
            return;
        }
        match result {
            Ok(position) => state.positions.push((opaque & LOW, position)),
            Err(e) => {
                if state.failure.is_none() {
                    state.failure = Some(e.clone());
                }
            }
        }
        state.reported += 1;
        if state.reported == self.sent.load(Ordering::Acquire) {
            self.all_reported.notify_one();
        }
    }

    /// Waits until every message sent is reported; each one's position by its number. A
    /// report still missing `within` from now fails the transaction (`publish::overdue`).
    async fn acknowledged(&self, within: Duration) -> Result<Vec<Position>, TxError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let woken = self.all_reported.notified();
            let unreported = {
                let mut state = self.lock();
                if let Some(e) = &state.failure {
                    return Err(TxError::of("send", e));
                }
                let sent = self.sent.load(Ordering::Acquire);
                if state.reported >= sent {
                    let mut positions = vec![(-1, -1); sent];
                    for (number, position) in state.positions.drain(..) {
                        if let Some(p) = positions.get_mut(number) {
                            *p = position;
                        }
                    }
                    return Ok(positions);
                }
                (sent - state.reported, sent)
            };
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                let (missing, sent) = unreported;
                return Err(TxError::aborted(crate::publish::overdue(
                    "transactional",
                    missing,
                    sent,
                    within,
                )));
            }
        }
    }
}

/// The producer's context: counts the delivery reports ([`Reports`]) and watches whether the
/// client still knows a broker ([`crate::brokers`]).
#[derive(Debug)]
struct Context {
    reports: Reports,
    /// Labelled with the client id and `/transactional`.
    brokers: crate::brokers::Watched,
}

impl ClientContext for Context {
    fn stats(&self, mut statistics: rdkafka::Statistics) {
        self.brokers.report(&mut statistics);
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        self.reports.report(
            opaque,
            match result {
                Ok(m) => Ok((m.partition(), m.offset())),
                Err((e, _)) => Err(e),
            },
        );
    }
}

/// One transactional producer (one transactional id).
pub struct Transactional {
    producer: ThreadedProducer<Context>,
    id: String,
    timeout: Duration,
    /// How long [`Transactional::acknowledged`] waits for a report (`publish::overdue`).
    reports_within: Duration,
    /// An abort that timed out (the broker unreachable): librdkafka goes on with it in the
    /// background and refuses every other transactional call ("Conflicting
    /// abort_transaction API call is already in progress") until `abort_transaction` is
    /// called again and finishes, which [`Transactional::begin`] does first.
    abort_unfinished: AtomicBool,
}

impl std::fmt::Debug for Transactional {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactional")
            .field("id", &self.id)
            .finish()
    }
}

impl Transactional {
    /// Creates the producer and registers `transactional_id` with the coordinator, which aborts
    /// a transaction the id's previous holder left open. Blocks up to `op_timeout`.
    /// `transaction_timeout` bounds how long a transaction may stay open before the broker
    /// aborts it.
    pub fn new(
        kafka: &KafkaConfig,
        client_id: &str,
        transactional_id: &str,
        transaction_timeout: Duration,
        op_timeout: Duration,
    ) -> Result<Self, TxError> {
        let txn_ms = transaction_timeout.as_millis().max(1000);
        // librdkafka refuses a message timeout above the transaction's.
        let msg_ms = u128::from(kafka.message_timeout_ms).min(txn_ms);
        let mut cfg = kafka.client_config(client_id);
        cfg.set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", txn_ms.to_string())
            .set("message.timeout.ms", msg_ms.to_string())
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("batch.size", (1 << 20).to_string())
            // Statistics only for whether the client still knows a broker
            // ([`Transactional::brokers_lost`]).
            .set("statistics.interval.ms", "5000");
        for (k, v) in &kafka.properties {
            cfg.set(k, v);
        }
        let reports_within = crate::publish::reports_within(&cfg);
        let producer: ThreadedProducer<Context> = cfg
            .create_with_context(Context {
                reports: Reports::default(),
                brokers: crate::brokers::Watched::new(&format!("{client_id}/transactional"))
                    .map_err(|e| TxError::fatal(e.to_string()))?,
            })
            .map_err(|e| TxError::fatal(format!("creating the producer: {e}")))?;
        producer
            .init_transactions(op_timeout)
            .map_err(|e| TxError::of("init_transactions", &e))?;
        Ok(Self {
            producer,
            id: transactional_id.to_owned(),
            timeout: op_timeout,
            reports_within,
            abort_unfinished: AtomicBool::new(false),
        })
    }

    /// How long the client has known no broker at all, as of `now` (statistics every 5 s),
    /// once that has lasted [`crate::brokers::LOST_AFTER`]; `None` before, and while it knows
    /// one, even one that is down. Such a producer never reconnects: it must be replaced
    /// ([`crate::brokers`]).
    pub fn brokers_lost(&self, now: std::time::Instant) -> Option<Duration> {
        self.producer.context().brokers.lost(now)
    }

    /// The client's label in metrics: its client id and `/transactional`.
    pub fn client(&self) -> &str {
        self.producer.context().brokers.client()
    }

    /// The transactional id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts a transaction; its messages are numbered from 0 ([`Transactional::send`]).
    /// An earlier abort that timed out is finished first, blocking up to the operation
    /// timeout ([`Transactional::abort_unfinished`]): while it cannot be, the transaction is
    /// not begun and the error is an abort's, to be tried again. Any other transactional call
    /// still in progress fails it for good ([`TxError::of`]).
    pub fn begin(&self) -> Result<(), TxError> {
        // An error that leaves nothing unfinished and is not fatal: nothing was left to abort.
        if self.abort_unfinished()
            && let Err(e) = self.abort_transaction()
        {
            let err = TxError::of("abort_transaction (an earlier one resumed)", &e);
            if self.abort_unfinished() || err.is_fatal() {
                return Err(err);
            }
        }
        self.producer.context().reports.begin();
        self.producer
            .begin_transaction()
            .map_err(|e| TxError::of("begin_transaction", &e))
    }

    /// True when an abort timed out and has not been finished since: the next
    /// [`Transactional::begin`] blocks to finish it (otherwise it does not block).
    pub fn abort_unfinished(&self) -> bool {
        self.abort_unfinished.load(Ordering::Acquire)
    }

    /// Queues one message of the open transaction (to `partition`, or by key when `None`; a
    /// tombstone when `payload` is `None`) and returns its number in the transaction: 0, 1, …
    /// in the order sent. [`Transactional::acknowledged`] gives where the broker put it — not
    /// yet visible: that takes the commit.
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<usize, TxError> {
        let reports = &self.producer.context().reports;
        let (number, opaque) = reports.next()?;
        let mut record = crate::publish::record(topic, key, payload, headers, partition, opaque);
        // A full local queue is waited out (it drains as the broker acknowledges), bounded by
        // the operation timeout from the first refusal.
        let mut deadline = None;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(number),
                Err((KafkaError::MessageProduction(code), r))
                    if code == rdkafka::types::RDKafkaErrorCode::QueueFull
                        && std::time::Instant::now()
                            < *deadline.get_or_insert_with(|| {
                                std::time::Instant::now() + self.timeout
                            }) =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                    record = r;
                }
                Err((e, _)) => {
                    reports.not_sent(number);
                    return Err(TxError::of("send", &e));
                }
            }
        }
    }

    /// Waits until the broker has acknowledged every message of the open transaction, and
    /// returns each one's partition and offset by its number. A failed delivery (the broker
    /// refused it, or the message timed out) fails the transaction, and so does a report
    /// overdue (`publish::overdue`).
    pub async fn acknowledged(&self) -> Result<Vec<Position>, TxError> {
        self.producer
            .context()
            .reports
            .acknowledged(self.reports_within)
            .await
    }

    /// Adds the consumed `offsets` (next offsets to read) to the transaction, for the group
    /// and generation in `group`.
    pub fn send_offsets(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), TxError> {
        self.producer
            .send_offsets_to_transaction(offsets, group, self.timeout)
            .map_err(|e| TxError::of("send_offsets_to_transaction", &e))
    }

    /// Commits the open transaction. On an error it is aborted here when it can be; a
    /// [`TxError::Fatal`] producer must be replaced.
    pub fn commit(&self) -> Result<(), TxError> {
        let mut attempts = 0;
        loop {
            match self.producer.commit_transaction(self.timeout) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(t)) if t.is_retriable() && attempts < 3 => {
                    attempts += 1;
                }
                Err(e) => {
                    let err = TxError::of("commit_transaction", &e);
                    if !err.is_fatal() {
                        self.abort();
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Aborts the open transaction, if any (best effort: a producer that cannot abort is
    /// fenced or failed, and its transaction is aborted by the broker). An abort that times
    /// out goes on in librdkafka's background and is finished before the next transaction
    /// begins ([`Transactional::begin`]).
    pub fn abort(&self) {
        if let Err(e) = self.abort_transaction() {
            if self.abort_unfinished() {
                tracing::warn!(error = %e, timeout = ?self.timeout, "abort_transaction did not finish in time; finished before the next transaction begins");
            } else {
                tracing::debug!(error = %e, "abort_transaction");
            }
        }
    }

    /// Calls `abort_transaction` and remembers whether it was left unfinished: timed out and
    /// going on in the background, which librdkafka finishes only when it is called again
    /// ("resumable").
    fn abort_transaction(&self) -> Result<(), KafkaError> {
        let result = self.producer.abort_transaction(self.timeout);
        let unfinished = matches!(&result, Err(KafkaError::Transaction(t)) if t.is_retriable());
        self.abort_unfinished.store(unfinished, Ordering::Release);
        result
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use rdkafka::types::RDKafkaErrorCode as C;

    use super::*;

    #[test]
    fn a_call_refused_while_another_is_in_progress_fails_the_producer_for_good() {
        let e = TxError::of(
            "begin_transaction",
            &KafkaError::MessageProduction(C::Conflict),
        );
        assert!(e.is_fatal(), "{e}");
        assert!(!e.is_fenced());
        let timed_out = TxError::of("send", &KafkaError::MessageProduction(C::MessageTimedOut));
        assert!(!timed_out.is_fatal(), "{timed_out}");
    }

    #[test]
    fn refusals_of_a_member_or_producer_taken_over_are_fenced_and_others_are_not() {
        for code in [
            C::IllegalGeneration,
            C::UnknownMemberId,
            C::FencedInstanceId,
            C::InvalidProducerEpoch,
            C::ProducerFenced,
            C::Fenced,
        ] {
            let e = TxError::of("send", &KafkaError::MessageProduction(code));
            assert!(e.is_fenced(), "{code:?}");
            assert!(
                !e.is_fatal(),
                "a send error aborts the transaction, {code:?}"
            );
        }
        for code in [C::QueueFull, C::MessageTimedOut, C::NotEnoughReplicas] {
            let e = TxError::of("send", &KafkaError::MessageProduction(code));
            assert!(!e.is_fenced(), "{code:?}");
        }
        assert!(TxError::fatal("gone").is_fatal());
        assert!(!TxError::aborted("timed out").is_fenced());
    }

    /// Runs `f` to completion on a current-thread runtime.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    #[test]
    fn positions_come_back_by_message_number_whatever_order_they_are_reported_in() {
        let reports = Reports::default();
        reports.begin();
        let sent: Vec<(usize, usize)> = (0..4).map(|_| reports.next().unwrap()).collect();
        assert_eq!(
            sent.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        for (n, opaque) in [sent[2], sent[0], sent[3], sent[1]] {
            reports.report(opaque, Ok((n as i32 % 2, 100 + n as i64)));
        }
        let positions = block_on(reports.acknowledged(WITHIN)).unwrap();
        assert_eq!(positions, [(0, 100), (1, 101), (0, 102), (1, 103)]);
    }

    #[test]
    fn acknowledged_waits_for_the_last_report() {
        let reports = std::sync::Arc::new(Reports::default());
        reports.begin();
        let (_, first) = reports.next().unwrap();
        let (_, second) = reports.next().unwrap();
        reports.report(first, Ok((0, 7)));
        let late = std::sync::Arc::clone(&reports);
        let reporter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            late.report(second, Ok((0, 8)));
        });
        let positions = block_on(reports.acknowledged(WITHIN)).unwrap();
        assert_eq!(positions, [(0, 7), (0, 8)]);
        reporter.join().unwrap();
    }

    #[test]
    fn a_late_report_of_an_earlier_transaction_counts_for_nothing() {
        let reports = Reports::default();
        reports.begin();
        let (_, aborted) = reports.next().unwrap();
        // The transaction is aborted before its message is reported; the next one begins.
        reports.begin();
        let (n, opaque) = reports.next().unwrap();
        assert_eq!(n, 0);
        reports.report(aborted, Err(&KafkaError::MessageProduction(C::PurgeQueue)));
        reports.report(aborted, Ok((3, 999)));
        reports.report(opaque, Ok((1, 5)));
        assert_eq!(block_on(reports.acknowledged(WITHIN)).unwrap(), [(1, 5)]);
    }

    /// Long enough for any report these tests send.
    const WITHIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_report_that_never_comes_fails_the_transaction_instead_of_holding_it_for_ever() {
        let reports = Reports::default();
        reports.begin();
        let (_, reported) = reports.next().unwrap();
        let _never = reports.next().unwrap();
        reports.report(reported, Ok((0, 1)));
        let err = block_on(reports.acknowledged(Duration::from_millis(50))).unwrap_err();
        assert!(!err.is_fatal() && !err.is_fenced(), "{err}");
        assert!(
            err.to_string().contains("1 of 2 messages"),
            "names what is missing: {err}"
        );
    }

    #[test]
    fn a_failed_delivery_fails_the_transaction_and_a_message_not_queued_is_not_waited_for() {
        let reports = Reports::default();
        reports.begin();
        let (_, ok) = reports.next().unwrap();
        let (n, _) = reports.next().unwrap();
        reports.not_sent(n);
        reports.report(ok, Ok((0, 1)));
        assert_eq!(block_on(reports.acknowledged(WITHIN)).unwrap(), [(0, 1)]);

        reports.begin();
        let (_, refused) = reports.next().unwrap();
        let (_, delivered) = reports.next().unwrap();
        reports.report(
            refused,
            Err(&KafkaError::MessageProduction(C::MessageTimedOut)),
        );
        reports.report(delivered, Ok((0, 2)));
        let err = block_on(reports.acknowledged(WITHIN)).unwrap_err();
        assert!(!err.is_fatal() && err.to_string().contains("send"), "{err}");
    }
}
