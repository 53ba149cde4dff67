//! What the adapters' ingest endpoints share once a request is let in: how the outcome of
//! publishing its records ([`ponte_bus::ingest::Ingestor`]) becomes a status and an answer, and
//! CSV uploads, read with [`crate::csv`] and published chunk by chunk.
//!
//! Status codes (every adapter, every format):
//! - `200`: every valid record is acknowledged by the broker; invalid ones, if any, are listed
//!   (position, field, reason) and are on the dead-letter topic.
//! - `422`: nothing was valid; everything is listed and dead-lettered.
//! - `400`: the body as a whole cannot be read (not JSON, a CSV header that cannot be read, an
//!   empty CSV upload, a body that broke off). What could be dead-lettered was.
//! - `413`: larger than the configured limit. `415`: CSV in a charset other than UTF-8.
//! - `503` + `Retry-After`: the broker did not acknowledge; sending the same body again is
//!   harmless (records carry stable ids and versions). `500`: the broker refused for good.
//!
//! JSON answers are `{accepted, rejected, error}` ([`Answer`]); CSV answers add
//! `rejected_total` and `lines`, and list rejections by line ([`CsvAnswer`]).
//!
//! A CSV upload is published chunk by chunk while it is read: a chunk goes out when it holds
//! `chunk_records` records, or when its first record has waited `chunk_linger` (so a slowly
//! trickled upload reaches the view in about the linger, not after thousands of lines), and the
//! records of a chunk are stamped (`Event.ingest_time`) with the time that chunk is published.
use std::future::Future;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use ponte_bus::ingest::{
    Accepted, IngestFailure, IngestReport, Ingestor, Item, Origin, Rejected, Rejection,
};
use ponte_bus::publish::timestamp;
use ponte_bus::{BusError, Publisher};
use ponte_runtime::Readiness;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::csv::{CsvError, Reader, Record};

/// Media type of every answer but the health adapter's FHIR ones.
pub const JSON: &str = "application/json";

/// What is wrong with one record, as an adapter's validation says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The field at fault, or `record` when the record as a whole is malformed.
    pub field: String,
    /// Low-cardinality class: `malformed`, `invalid_identifier`, `invalid_value`…
    pub error_type: String,
    /// What rule failed, for a person to act on.
    pub reason: String,
}

impl Fault {
    pub fn new(
        field: impl Into<String>,
        error_type: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            error_type: error_type.into(),
            reason: reason.into(),
        }
    }

    /// A record that does not have the layout's shape.
    pub fn malformed(reason: impl Into<String>) -> Self {
        Self::new("record", "malformed", reason)
    }

    /// The record at `position` (`body`, `record 3`, `line 17`, `entry 2`), rejected with its
    /// bytes as received (the ingestor caps what the dead letter keeps).
    pub fn item(self, position: impl Into<String>, original: Vec<u8>, content_type: &str) -> Item {
        Item::Rejected(Rejected {
            position: position.into(),
            field: self.field,
            error_type: self.error_type,
            reason: self.reason,
            original,
            content_type: content_type.to_owned(),
        })
    }
}

/// Where the records of a JSON body are: `body` for a single record, `record N` (1-based) in
/// an array.
pub fn json_position(single: bool, index: usize) -> String {
    if single {
        "body".to_owned()
    } else {
        format!("record {}", index + 1)
    }
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, answer: &T) -> Response {
    let body = serde_json::to_vec(answer).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, JSON)], body).into_response()
}

/// Most rejected records a JSON answer lists: a 16 MiB array of bad records would otherwise be
/// answered with a larger body than it came with. All are counted and dead-lettered.
pub const MAX_LISTED_JSON_REJECTIONS: usize = 1000;

/// The answer of a JSON request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// Records acknowledged by the broker.
    pub accepted: usize,
    /// The rejected records (all are on the dead-letter topic), the first
    /// [`MAX_LISTED_JSON_REJECTIONS`] of them.
    pub rejected: Vec<Rejection>,
    /// Every rejected record, when more were rejected than listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_total: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Answer {
    /// What an ingest stored.
    pub fn of(report: IngestReport) -> Self {
        let total = report.rejected.len();
        let mut rejected = report.rejected;
        rejected.truncate(MAX_LISTED_JSON_REJECTIONS);
        Self {
            accepted: report.accepted,
            rejected,
            rejected_total: (total > MAX_LISTED_JSON_REJECTIONS).then_some(total),
            error: None,
        }
    }

    /// Nothing stored, and why.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            error: Some(message.into()),
            ..Self::default()
        }
    }

    pub fn respond(&self, status: StatusCode) -> Response {
        json(status, self)
    }
}

/// The status of a request whose records were all stored: `400` when the body was not
/// readable at all (it was dead-lettered whole), `422` when nothing in it was valid, else
/// `200`.
pub fn status_of(report: &IngestReport, malformed_body: bool) -> StatusCode {
    if malformed_body {
        StatusCode::BAD_REQUEST
    } else if report.accepted == 0 && !report.rejected.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    }
}

/// The answer to a JSON request whose records were all stored.
pub fn answer(report: IngestReport, malformed_body: bool) -> Response {
    let status = status_of(&report, malformed_body);
    Answer::of(report).respond(status)
}

/// The status when the broker did not acknowledge: `503` when retrying can work, else `500`.
pub fn unavailable_status(err: &BusError) -> StatusCode {
    if err.is_retryable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// Adds `Retry-After` to a response about `err` when retrying can work.
pub fn with_retry_after(mut resp: Response, err: &BusError, retry_after_secs: u64) -> Response {
    if err.is_retryable() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    }
    resp
}

/// The answer to a JSON request the broker did not acknowledge.
pub fn unavailable(err: &BusError, retry_after_secs: u64) -> Response {
    let answer = Answer::error(format!(
        "the bus did not acknowledge the batch ({err}); nothing in it is guaranteed stored: \
         send it again (records carry stable ids, a repeat is harmless)"
    ));
    with_retry_after(
        answer.respond(unavailable_status(err)),
        err,
        retry_after_secs,
    )
}

/// What the `Content-Type` says a body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyType {
    /// JSON, or no `Content-Type`.
    Json,
    /// `text/csv` or `application/csv`, in UTF-8.
    Csv,
    /// CSV in another charset.
    CsvNotUtf8(String),
}

/// Reads the `Content-Type`.
pub fn body_type(headers: &HeaderMap) -> BodyType {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return BodyType::Json;
    };
    let mut parts = ct.split(';').map(str::trim);
    let media = parts.next().unwrap_or("").to_ascii_lowercase();
    if media != "text/csv" && media != "application/csv" {
        return BodyType::Json;
    }
    for p in parts {
        if let Some((k, v)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("charset")
        {
            let v = v.trim().trim_matches('"');
            if !v.eq_ignore_ascii_case("utf-8") && !v.eq_ignore_ascii_case("utf8") {
                return BodyType::CsvNotUtf8(v.to_owned());
            }
        }
    }
    BodyType::Csv
}

/// The `415` to CSV in another charset than UTF-8.
pub fn csv_not_utf8(charset: &str) -> Response {
    Answer::error(format!("charset {charset:?}: CSV uploads must be UTF-8"))
        .respond(StatusCode::UNSUPPORTED_MEDIA_TYPE)
}

// ---------------------------------------------------------------------------------------------
// CSV uploads
// ---------------------------------------------------------------------------------------------

/// Where the records of an upload are published: the adapter's [`Ingestor`] (tests use their
/// own).
pub trait Sink: Send + Sync {
    /// Publishes one chunk; see [`Ingestor::ingest`].
    fn ingest(
        &self,
        origin: &Origin<'_>,
        items: Vec<Item>,
        received: SystemTime,
    ) -> impl Future<Output = Result<IngestReport, IngestFailure>> + Send;
}

impl Sink for Ingestor {
    fn ingest(
        &self,
        origin: &Origin<'_>,
        items: Vec<Item>,
        received: SystemTime,
    ) -> impl Future<Output = Result<IngestReport, IngestFailure>> + Send {
        Ingestor::ingest(self, origin, items, received)
    }
}

/// Runs an adapter's API at `listen` until `shutdown`: readiness follows the broker (a load
/// balancer should not send pushes the adapter cannot store), the API serves behind the edge
/// ([`crate::http::run`]), and once it stopped readiness goes down. The caller then flushes
/// its producer ([`flush`]).
#[allow(clippy::too_many_arguments)]
pub async fn serve_adapter(
    gate: std::sync::Arc<crate::Gate>,
    listen: &str,
    tls: &ponte_access::tls::TlsConfig,
    access: &crate::AccessConfig,
    app: axum::Router,
    publisher: &Publisher,
    readiness: &Readiness,
    shutdown: CancellationToken,
) -> Result<(), crate::EdgeError> {
    let probe = publisher.clone();
    ponte_runtime::spawn_readiness_probe(
        readiness.clone(),
        shutdown.clone(),
        Duration::from_secs(5),
        move || {
            probe
                .check_connected(Duration::from_secs(3))
                .map_err(|e| format!("broker: {e}"))
        },
    );
    crate::http::run(
        gate,
        listen,
        tls,
        access,
        app,
        shutdown,
        Duration::from_secs(30),
    )
    .await?;
    readiness.set_not_ready("shutting down");
    Ok(())
}

/// Waits (off the async runtime, at most 10 s) until everything `publisher` sent is
/// acknowledged or failed: the last step of an adapter's shutdown.
pub async fn flush(publisher: &Publisher) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let p = publisher.clone();
    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(10))).await??;
    Ok(())
}

/// An adapter's CSV layout: what its header may name, and what a row becomes. The dialect
/// itself is [`crate::csv`]'s.
pub trait CsvLayout {
    /// What the header says about the columns.
    type Header: Send;
    /// Reads the header's names (`delimiter` is the file's); `Err` refuses the file.
    fn header(&self, names: &[String], delimiter: u8) -> Result<Self::Header, String>;
    /// Maps one row (as many cells as the header has names, or not: the layout checks) to the
    /// record to publish. Its event's `ingest_time` is replaced by the time its chunk is
    /// published (see [`CsvUpload::run`]).
    fn row(&self, header: &Self::Header, cells: &[String]) -> Result<Accepted, Fault>;
}

/// How an adapter takes CSV uploads.
#[derive(Debug, Clone)]
pub struct CsvSettings {
    /// The adapter's configuration section, named in messages (`education_adapter`).
    pub section: &'static str,
    /// Largest upload, in bytes (`max_csv_bytes`). Uploads are streamed: this bounds the time
    /// and bus volume of one request, not memory.
    pub max_bytes: u64,
    /// Longest record kept; a longer one is rejected with its first bytes.
    pub max_record_bytes: usize,
    /// The setting giving `max_record_bytes`, when it is one (`max_csv_line_bytes`).
    pub max_record_setting: Option<&'static str>,
    /// Records published per chunk: the memory bound of an upload.
    pub chunk_records: usize,
    /// Longest a chunk's first record waits for the chunk to fill (`csv_chunk_linger_ms`):
    /// then the chunk is published as it is, even while the client is still sending (or has
    /// stalled). Zero publishes what each read of the body brought.
    pub chunk_linger: Duration,
    /// Most rejected records listed in an answer; all are counted and dead-lettered.
    pub max_listed_rejections: usize,
    /// Seconds a client is told to wait when the broker did not acknowledge.
    pub retry_after_secs: u64,
}

/// What a CSV answer lists about one rejected record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CsvRejection {
    /// 1-based line the record starts on (the header is line 1, blank lines count).
    pub line: u64,
    /// `line N`, as in the dead letter.
    pub position: String,
    pub field: String,
    pub error_type: String,
    pub reason: String,
}

/// The answer to a CSV upload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CsvAnswer {
    /// Records acknowledged by the broker.
    pub accepted: usize,
    /// The first `max_listed_rejections` rejected records.
    pub rejected: Vec<CsvRejection>,
    /// Every rejected record, listed or not (all are dead-lettered).
    pub rejected_total: usize,
    /// Lines read, header and blank lines included.
    pub lines: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One CSV upload: who sent it and where it goes.
#[derive(Debug)]
pub struct CsvUpload<'a, S> {
    pub sink: &'a S,
    pub settings: &'a CsvSettings,
    /// The `adapter` label of metrics.
    pub adapter: &'static str,
    /// Who sent it, in which request.
    pub origin: Origin<'a>,
    /// When the request came in: the start of the records' stamps, and the `received_time` of
    /// its dead letters.
    pub received: SystemTime,
}

impl<S: Sink> CsvUpload<'_, S> {
    /// Reads `body` record by record and publishes it in chunks of `chunk_records`, or fewer
    /// once the chunk's first record has waited `chunk_linger`; the answer comes once every
    /// chunk is acknowledged. The first record is the header: one that `layout` cannot read
    /// refuses the file (`400`, the header dead-lettered). Any other record that cannot be read
    /// or mapped is rejected alone, by its line. Where the chunks end changes nothing in the
    /// answer but when its records are stored.
    ///
    /// The valid records of a chunk are stamped (`Event.ingest_time`) with the time the chunk
    /// is published: `received` plus the time since the upload began, on the monotonic clock,
    /// so stamps never go backwards within an upload. Dead letters keep `received`.
    pub async fn run<L: CsvLayout + Sync>(
        &self,
        layout: &L,
        headers: &HeaderMap,
        body: Body,
    ) -> Response {
        let s = self.settings;
        let mut up = Progress {
            upload: self,
            started: Instant::now(),
            items: Vec::with_capacity(s.chunk_records.min(4096)),
            since: None,
            pending: Vec::new(),
            answer: CsvAnswer::default(),
        };
        let mut stream = body.into_data_stream();
        // A declared size over the limit is refused before anything is parsed or published.
        if content_length(headers).is_some_and(|len| len > s.max_bytes) {
            self.refused("too_large");
            linger(&mut stream, 0, s.max_bytes).await;
            return up.respond(StatusCode::PAYLOAD_TOO_LARGE, Some(self.too_large()));
        }

        let mut reader = Reader::new(s.max_record_bytes);
        let mut records = Vec::new();
        let mut header: Option<L::Header> = None;
        let mut received: u64 = 0;
        loop {
            // A chunk whose first record has waited the linger is published before more is
            // read: a slow (or stalled) client does not hold back what it already sent.
            if up.lingered()
                && let Err(e) = up.flush().await
            {
                drain(&mut stream, received, s.max_bytes).await;
                return up.unavailable(&e);
            }
            let next = match up.deadline() {
                Some(deadline) => match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(next) => next,
                    // Nothing came within the linger: publish (above), then wait on.
                    Err(_) => continue,
                },
                None => stream.next().await,
            };
            let ended = match next {
                Some(Ok(bytes)) => {
                    received += bytes.len() as u64;
                    if received > s.max_bytes {
                        // Sent without a declared size: what came before the limit is
                        // published and counted; the rest is not read.
                        self.refused("too_large");
                        let error = format!(
                            "{}; the lines before line {} were read and are counted here, \
                             nothing after them",
                            self.too_large(),
                            reader.lines() + 1
                        );
                        linger(&mut stream, received, s.max_bytes).await;
                        return up.finish(StatusCode::PAYLOAD_TOO_LARGE, error).await;
                    }
                    reader.push(&bytes, &mut records);
                    false
                }
                Some(Err(e)) => {
                    // The client stopped sending or sent a broken body.
                    let error = format!("request body could not be read: {e}");
                    return up.finish(StatusCode::BAD_REQUEST, error).await;
                }
                None => {
                    reader.finish(&mut records);
                    true
                }
            };
            for record in records.drain(..) {
                up.answer.lines = record.last_line;
                let Some(h) = &header else {
                    match self.header(layout, &record, reader.delimiter()) {
                        Ok(h) => header = Some(h),
                        Err(reason) => {
                            // Without its header no line can be read: the header is
                            // dead-lettered and the file refused.
                            self.refused("bad_header");
                            let error = format!(
                                "header (line {}): {reason}; no line after it was read",
                                record.line
                            );
                            up.reject(record, Fault::new("header", "malformed", reason));
                            drain(&mut stream, received, s.max_bytes).await;
                            return up.finish(StatusCode::BAD_REQUEST, error).await;
                        }
                    }
                    continue;
                };
                up.row(layout, h, record);
                if up.items.len() >= s.chunk_records
                    && let Err(e) = up.flush().await
                {
                    drain(&mut stream, received, s.max_bytes).await;
                    return up.unavailable(&e);
                }
            }
            up.answer.lines = reader.lines();
            if ended {
                break;
            }
        }
        if let Err(e) = up.flush().await {
            return up.unavailable(&e);
        }
        if header.is_none() {
            self.refused("empty");
            let error = "empty body: a CSV upload starts with its header line".to_owned();
            return up.respond(StatusCode::BAD_REQUEST, Some(error));
        }
        let status = if up.answer.accepted == 0 && up.answer.rejected_total > 0 {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        up.respond(status, None)
    }

    fn header<L: CsvLayout>(
        &self,
        layout: &L,
        record: &Record,
        delimiter: Option<u8>,
    ) -> Result<L::Header, String> {
        match &record.fields {
            Ok(names) => layout.header(names, delimiter.unwrap_or(b',')),
            Err(e) => Err(self.reason(e)),
        }
    }

    /// Why a record cannot be read, naming the setting that limits a record's size.
    fn reason(&self, e: &CsvError) -> String {
        let CsvError::TooLong { max, lines } = e else {
            return e.to_string();
        };
        let s = self.settings;
        let mut reason = format!("record longer than {max} bytes");
        if let Some(setting) = s.max_record_setting {
            reason.push_str(&format!(" ({}.{setting})", s.section));
        }
        reason.push_str("; only its first bytes are kept in the dead letter");
        if *lines > 1 {
            reason.push_str(&format!(
                "; it runs over {lines} lines: is a quote that opens a field never closed?"
            ));
        }
        reason
    }

    fn too_large(&self) -> String {
        format!(
            "request body larger than {} bytes ({}.max_csv_bytes); split the file",
            self.settings.max_bytes, self.settings.section
        )
    }

    fn refused(&self, reason: &'static str) {
        metrics::counter!(
            "ponte_adapter_requests_refused_total",
            "adapter" => self.adapter,
            "reason" => reason
        )
        .increment(1);
    }
}

/// An upload in progress: the chunk being filled and the answer so far.
struct Progress<'u, 'a, S> {
    upload: &'u CsvUpload<'a, S>,
    /// When the upload began (with `upload.received`, the clock of the stamps).
    started: Instant,
    items: Vec<Item>,
    /// When the first record of the chunk being filled was read.
    since: Option<Instant>,
    /// Rejections of the chunk being filled; reported once the chunk is acknowledged.
    pending: Vec<CsvRejection>,
    answer: CsvAnswer,
}

impl<S: Sink> Progress<'_, '_, S> {
    fn row<L: CsvLayout>(&mut self, layout: &L, header: &L::Header, record: Record) {
        let mapped = match &record.fields {
            Ok(cells) => layout.row(header, cells),
            Err(e) => Err(Fault::malformed(self.upload.reason(e))),
        };
        match mapped {
            Ok(accepted) => self.push(Item::Accepted(accepted)),
            Err(fault) => self.reject(record, fault),
        }
    }

    fn push(&mut self, item: Item) {
        if self.items.is_empty() {
            self.since = Some(Instant::now());
        }
        self.items.push(item);
    }

    /// When the chunk being filled is due, if it lingers (a linger too long to add up is
    /// none: the chunk waits to fill).
    fn deadline(&self) -> Option<Instant> {
        self.since
            .and_then(|t| t.checked_add(self.upload.settings.chunk_linger))
    }

    /// Whether the chunk being filled has waited its linger.
    fn lingered(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// The wall-clock time now: the request's `received` plus the monotonic time since.
    fn now(&self) -> SystemTime {
        self.upload.received + self.started.elapsed()
    }

    fn reject(&mut self, record: Record, fault: Fault) {
        let position = format!("line {}", record.line);
        self.pending.push(CsvRejection {
            line: record.line,
            position: position.clone(),
            field: fault.field.clone(),
            error_type: fault.error_type.clone(),
            reason: fault.reason.clone(),
        });
        self.push(fault.item(position, record.raw, "text/csv"));
    }

    /// Publishes the chunk, its records stamped with the time now, and waits for the broker;
    /// only then are its records reported.
    async fn flush(&mut self) -> Result<(), BusError> {
        self.since = None;
        if self.items.is_empty() {
            return Ok(());
        }
        let mut items = std::mem::take(&mut self.items);
        let stamp = timestamp(self.now());
        for item in &mut items {
            if let Item::Accepted(a) = item {
                a.event.ingest_time = Some(stamp);
            }
        }
        let u = self.upload;
        match u.sink.ingest(&u.origin, items, u.received).await {
            Ok(report) => {
                self.answer.accepted += report.accepted;
                for r in self.pending.drain(..) {
                    self.answer.rejected_total += 1;
                    if self.answer.rejected.len() < u.settings.max_listed_rejections {
                        self.answer.rejected.push(r);
                    }
                }
                Ok(())
            }
            Err(failure) => {
                self.pending.clear();
                Err(failure.error)
            }
        }
    }

    /// Publishes what is pending, then answers `status` with `error`.
    async fn finish(mut self, status: StatusCode, error: String) -> Response {
        match self.flush().await {
            Ok(()) => self.respond(status, Some(error)),
            Err(e) => self.unavailable(&e),
        }
    }

    fn respond(mut self, status: StatusCode, error: Option<String>) -> Response {
        self.answer.error = error;
        tracing::info!(
            trace_id = %self.upload.origin.trace_id,
            adapter = self.upload.adapter,
            lines = self.answer.lines,
            accepted = self.answer.accepted,
            rejected = self.answer.rejected_total,
            status = status.as_u16(),
            "csv upload answered"
        );
        json(status, &self.answer)
    }

    fn unavailable(self, err: &BusError) -> Response {
        let retry_after = self.upload.settings.retry_after_secs;
        let error = format!(
            "the bus did not acknowledge a chunk ({err}); lines counted in `accepted` are \
             stored, the rest are not guaranteed: send the whole file again (records carry \
             stable ids, a repeat is harmless)"
        );
        let resp = self.respond(unavailable_status(err), Some(error));
        with_retry_after(resp, err, retry_after)
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The largest body an adapter's JSON routes read (`max_body_bytes`): a request extension
/// ([`axum::Extension`]) that [`BoundedBody`] reads.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Why a body was not read whole.
#[derive(Debug)]
pub enum BodyError {
    /// Larger than the limit: what came after it was read on and dropped ([`linger`]).
    TooLarge,
    /// The connection failed or the client stopped sending.
    Unreadable(axum::Error),
}

/// Reads a request body whole, up to `limit` bytes. A larger body is refused only after what
/// the client keeps sending was read on for a moment ([`linger`]): refusing it unread, as
/// axum's body limit does, closes the connection under a client still writing, which then
/// sees "broken pipe" instead of the 413.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut stream = body.into_data_stream();
    let mut read: Vec<u8> = Vec::new();
    while let Some(next) = stream.next().await {
        let bytes = next.map_err(BodyError::Unreadable)?;
        if read.len() + bytes.len() > limit {
            linger(&mut stream, (read.len() + bytes.len()) as u64, limit as u64).await;
            return Err(BodyError::TooLarge);
        }
        read.extend_from_slice(&bytes);
    }
    Ok(Bytes::from(read))
}

/// A JSON route's body, read with [`read_body`] up to the route's [`BodyLimit`]. Refused as
/// axum's own limit refuses (413 or 400, plain text), so an adapter's answer mapping applies.
#[derive(Debug)]
pub struct BoundedBody(pub Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for BoundedBody {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, _: &S) -> Result<Self, Response> {
        let Some(BodyLimit(limit)) = req.extensions().get::<BodyLimit>().copied() else {
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "the route has no body limit (BodyLimit extension)",
            )
                .into_response());
        };
        match read_body(req.into_body(), limit).await {
            Ok(bytes) => Ok(BoundedBody(bytes)),
            Err(BodyError::TooLarge) => {
                Err((StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded").into_response())
            }
            Err(BodyError::Unreadable(e)) => Err((
                StatusCode::BAD_REQUEST,
                format!("request body could not be read: {e}"),
            )
                .into_response()),
        }
    }
}

/// How long a refused upload's body is read on ([`linger`]) before the answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Reads and discards what a client keeps sending after its upload was refused as too large —
/// up to the limit once more, for [`REFUSAL_LINGER`] at most — before the answer goes out. An
/// answer sent while the client is still writing its body is followed by the connection's
/// close, and the client (hyper, curl) sees its write fail ("broken pipe") instead of the 413
/// telling it why: the system test of the assistance adapter did, now and then, with the cores
/// busy. A body larger than twice the limit is still cut off.
async fn linger(
    stream: &mut (impl futures::Stream<Item = Result<Bytes, axum::Error>> + Unpin),
    received: u64,
    limit: u64,
) {
    let _ = tokio::time::timeout(
        REFUSAL_LINGER,
        drain(stream, received, limit.saturating_mul(2)),
    )
    .await;
}

/// Reads and discards the rest of a body (up to the size limit), so that a client still
/// sending reads the answer instead of a reset connection.
async fn drain(
    stream: &mut (impl futures::Stream<Item = Result<Bytes, axum::Error>> + Unpin),
    mut received: u64,
    limit: u64,
) {
    while let Some(Ok(bytes)) = stream.next().await {
        received += bytes.len() as u64;
        if received > limit {
            break;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::{Value, json};

    use super::*;
    use crate::csv::Columns;

    #[test]
    fn a_json_answer_lists_at_most_the_cap_and_counts_them_all() {
        let rejection = |i: usize| Rejection {
            position: format!("record {i}"),
            field: "nis".into(),
            error_type: "invalid_identifier".into(),
            reason: "check digit".into(),
        };
        let few = Answer::of(IngestReport {
            accepted: 1,
            rejected: (1..=3).map(rejection).collect(),
        });
        assert_eq!(few.rejected.len(), 3);
        let v = serde_json::to_value(&few).unwrap();
        assert!(v.get("rejected_total").is_none(), "{v}");

        let many = Answer::of(IngestReport {
            accepted: 0,
            rejected: (1..=MAX_LISTED_JSON_REJECTIONS + 500)
                .map(rejection)
                .collect(),
        });
        assert_eq!(many.rejected.len(), MAX_LISTED_JSON_REJECTIONS);
        assert_eq!(many.rejected[0].position, "record 1");
        assert_eq!(
            serde_json::to_value(&many).unwrap()["rejected_total"],
            json!(MAX_LISTED_JSON_REJECTIONS + 500)
        );
    }

    /// Records what it is given; fails the chunk numbered `fail_at` (0-based) as unavailable.
    #[derive(Debug, Default)]
    struct Fake {
        chunks: Mutex<Vec<Vec<Item>>>,
        fail_at: Option<usize>,
    }

    impl Sink for Fake {
        fn ingest(
            &self,
            _origin: &Origin<'_>,
            items: Vec<Item>,
            _received: SystemTime,
        ) -> impl Future<Output = Result<IngestReport, IngestFailure>> + Send {
            let mut chunks = self.chunks.lock().unwrap();
            let result = if self.fail_at == Some(chunks.len()) {
                Err(IngestFailure {
                    acknowledged: 0,
                    error: BusError::Unavailable("brokers down".into()),
                })
            } else {
                let mut report = IngestReport::default();
                for item in &items {
                    match item {
                        Item::Accepted(_) => report.accepted += 1,
                        Item::Rejected(r) => report.rejected.push(Rejection {
                            position: r.position.clone(),
                            field: r.field.clone(),
                            error_type: r.error_type.clone(),
                            reason: r.reason.clone(),
                        }),
                    }
                }
                Ok(report)
            };
            chunks.push(items);
            std::future::ready(result)
        }
    }

    impl Fake {
        fn published(&self) -> Vec<Item> {
            self.chunks.lock().unwrap().concat()
        }

        /// Each chunk published so far: the keys of its records, the positions of its
        /// rejections.
        fn names(&self) -> Vec<Vec<String>> {
            let chunks = self.chunks.lock().unwrap();
            chunks
                .iter()
                .map(|c| {
                    c.iter()
                        .map(|i| match i {
                            Item::Accepted(a) => a.key.clone(),
                            Item::Rejected(r) => r.position.clone(),
                        })
                        .collect()
                })
                .collect()
        }

        /// The stamps of each chunk's records.
        fn stamps(&self) -> Vec<Vec<SystemTime>> {
            let chunks = self.chunks.lock().unwrap();
            chunks
                .iter()
                .map(|c| {
                    c.iter()
                        .filter_map(|i| match i {
                            Item::Accepted(a) => {
                                let t = a.event.ingest_time.unwrap();
                                Some(
                                    SystemTime::UNIX_EPOCH
                                        + Duration::new(
                                            t.seconds.try_into().unwrap(),
                                            t.nanos.try_into().unwrap(),
                                        ),
                                )
                            }
                            Item::Rejected(_) => None,
                        })
                        .collect()
                })
                .collect()
        }
    }

    /// Rows of `nis` and a whole number `n`.
    struct Layout;

    impl CsvLayout for Layout {
        type Header = Columns;

        fn header(&self, names: &[String], _delimiter: u8) -> Result<Columns, String> {
            Columns::new(names, &["nis", "n"], &["nis", "n"])
        }

        fn row(&self, header: &Columns, cells: &[String]) -> Result<Accepted, Fault> {
            let mut key = String::new();
            for (name, value) in header.cells(cells).map_err(Fault::malformed)? {
                match name {
                    "nis" => key = value.to_owned(),
                    _ => {
                        value.parse::<u32>().map_err(|_| {
                            Fault::new("n", "invalid_value", format!("{value:?} is not a number"))
                        })?;
                    }
                }
            }
            Ok(Accepted {
                topic: "records".into(),
                key,
                event: Default::default(),
            })
        }
    }

    fn settings() -> CsvSettings {
        CsvSettings {
            section: "test_adapter",
            max_bytes: 1000,
            max_record_bytes: 40,
            max_record_setting: Some("max_csv_line_bytes"),
            chunk_records: 2,
            // Never reached by the bodies that are there at once (their chunks end by count);
            // the linger tests set their own.
            chunk_linger: Duration::from_secs(3600),
            max_listed_rejections: 2,
            retry_after_secs: 7,
        }
    }

    struct Reply {
        status: u16,
        retry_after: Option<String>,
        body: Value,
    }

    async fn upload(sink: &Fake, s: &CsvSettings, headers: HeaderMap, body: Body) -> Reply {
        let up = CsvUpload {
            sink,
            settings: s,
            adapter: "test",
            origin: Origin {
                source_system: "test",
                sender: "urn:ponte:principal:test",
                request_id: "r",
                trace_id: "t",
                endpoint: "POST /test",
            },
            received: SystemTime::UNIX_EPOCH,
        };
        let resp = up.run(&Layout, &headers, body).await;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Reply {
            status,
            retry_after,
            body: serde_json::from_slice(&bytes).unwrap(),
        }
    }

    /// The body in pieces of `size` bytes, sent without a declared length.
    fn pieces(text: &[u8], size: usize) -> Body {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            text.chunks(size).map(|c| Ok(c.to_vec())).collect();
        Body::from_stream(futures::stream::iter(chunks))
    }

    fn rejected_of(items: &[Item]) -> Vec<(String, String, Vec<u8>)> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Rejected(r) => {
                    assert_eq!(r.content_type, "text/csv");
                    Some((r.position.clone(), r.field.clone(), r.original.clone()))
                }
                Item::Accepted(_) => None,
            })
            .collect()
    }

    /// A BOM, `;`, CRLF, a quoted field over two lines, a blank line, a stray quote, a short
    /// record and no final line break.
    const MESSY: &str = "\u{feff}NIS;n\r\n\
                         1;1\r\n\
                         \"2\n(two lines)\";x\r\n\
                         \r\n\
                         3;3\r\n\
                         4;\"4\"x\r\n\
                         5\r\n\
                         6;6";

    #[tokio::test]
    async fn rows_are_published_in_chunks_and_rejections_are_named_by_the_line_they_start_on() {
        let text = MESSY;
        for size in [1, 3, 1000] {
            let sink = Fake::default();
            let r = upload(
                &sink,
                &settings(),
                HeaderMap::new(),
                pieces(text.as_bytes(), size),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.body["accepted"], 3);
            assert_eq!(r.body["rejected_total"], 3);
            assert_eq!(r.body["lines"], 9);
            assert!(r.body.get("error").is_none());
            // Only the first two are listed; every one is dead-lettered.
            assert_eq!(
                r.body["rejected"],
                json!([
                    {"line": 3, "position": "line 3", "field": "n", "error_type": "invalid_value",
                     "reason": "\"x\" is not a number"},
                    {"line": 7, "position": "line 7", "field": "record", "error_type": "malformed",
                     "reason": "field 2: 'x' after the closing quote (expected the delimiter or the end of the record)"},
                ])
            );
            let published = sink.published();
            assert_eq!(
                rejected_of(&published),
                [
                    (
                        "line 3".into(),
                        "n".into(),
                        b"\"2\n(two lines)\";x".to_vec()
                    ),
                    ("line 7".into(), "record".into(), b"4;\"4\"x".to_vec()),
                    ("line 8".into(), "record".into(), b"5".to_vec()),
                ]
            );
            let keys: Vec<_> = published
                .iter()
                .filter_map(|i| match i {
                    Item::Accepted(a) => Some(a.key.clone()),
                    Item::Rejected(_) => None,
                })
                .collect();
            assert_eq!(keys, ["1", "3", "6"]);
            assert!(sink.chunks.lock().unwrap().iter().all(|c| c.len() <= 2));
        }
    }

    #[tokio::test]
    async fn nothing_valid_is_422() {
        let sink = Fake::default();
        let r = upload(
            &sink,
            &settings(),
            HeaderMap::new(),
            Body::from("nis,n\n1,x\n"),
        )
        .await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert_eq!(
            (
                r.body["accepted"].as_u64(),
                r.body["rejected_total"].as_u64()
            ),
            (Some(0), Some(1))
        );
    }

    #[tokio::test]
    async fn a_header_that_cannot_be_read_refuses_the_file_and_is_dead_lettered() {
        for (text, reason) in [
            (&b"nis,presence\n1,2\n"[..], "unknown column \"presence\""),
            (b"\n\nnis\n1\n", "required column \"n\" is missing"),
            (b"nis,\"n\n", "never closed"),
            (
                b"nis,n,aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n1,2\n",
                "longer than 40 bytes (test_adapter.max_csv_line_bytes)",
            ),
            (b"n\xE9s,n\n1,2\n", "UTF-8"),
        ] {
            let sink = Fake::default();
            let r = upload(
                &sink,
                &settings(),
                HeaderMap::new(),
                Body::from(text.to_vec()),
            )
            .await;
            assert_eq!(r.status, 400, "{}", r.body);
            let error = r.body["error"].as_str().unwrap();
            assert!(error.contains(reason), "{error}");
            assert!(error.starts_with("header (line "), "{error}");
            assert_eq!(r.body["accepted"], 0);
            assert_eq!(r.body["rejected"][0]["field"], "header");
            let published = sink.published();
            assert_eq!(published.len(), 1, "only the header, dead-lettered");
            let line = r.body["rejected"][0]["line"].as_u64().unwrap();
            assert_eq!(rejected_of(&published)[0].0, format!("line {line}"));
        }
    }

    #[tokio::test]
    async fn an_empty_upload_is_refused() {
        for text in ["", "\r\n  \n"] {
            let sink = Fake::default();
            let r = upload(&sink, &settings(), HeaderMap::new(), Body::from(text)).await;
            assert_eq!(r.status, 400, "{}", r.body);
            assert!(r.body["error"].as_str().unwrap().contains("header line"));
            assert!(sink.published().is_empty());
        }
    }

    #[tokio::test]
    async fn a_declared_size_over_the_limit_is_refused_before_reading() {
        let sink = Fake::default();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(1001));
        let r = upload(&sink, &settings(), headers, Body::from("nis,n\n1,1\n")).await;
        assert_eq!(r.status, 413, "{}", r.body);
        assert!(
            r.body["error"]
                .as_str()
                .unwrap()
                .contains("test_adapter.max_csv_bytes")
        );
        assert_eq!(
            (r.body["accepted"].as_u64(), r.body["lines"].as_u64()),
            (Some(0), Some(0))
        );
        assert!(sink.published().is_empty());
    }

    /// A body in pieces of `size` that counts the bytes the handler pulled from it.
    fn counted(text: Vec<u8>, size: usize) -> (Body, std::sync::Arc<AtomicUsize>) {
        let pulled = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = pulled.clone();
        let chunks: Vec<Vec<u8>> = text.chunks(size).map(<[u8]>::to_vec).collect();
        let stream = futures::stream::iter(chunks).map(move |c| {
            counter.fetch_add(c.len(), Ordering::SeqCst);
            Ok::<_, std::io::Error>(c)
        });
        (Body::from_stream(stream), pulled)
    }

    #[tokio::test]
    async fn a_refused_upload_is_read_on_up_to_twice_the_limit_so_the_client_gets_the_answer() {
        // Declared over the limit (1000): refused unparsed, but what the client sends on is
        // read (and dropped) up to 2000 bytes, so it does not meet a closed connection.
        for (declared, len, read_at_most) in [(1001, 1001, 1001), (5000, 5000, 2000 + 100)] {
            let sink = Fake::default();
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(declared));
            let (body, pulled) = counted(vec![b'x'; len], 100);
            let r = upload(&sink, &settings(), headers, body).await;
            assert_eq!(r.status, 413, "{}", r.body);
            let pulled = pulled.load(Ordering::SeqCst);
            assert!(
                pulled >= len.min(2000) && pulled <= read_at_most,
                "{declared}: {pulled} bytes read"
            );
            assert!(sink.published().is_empty());
        }
        // Sent without a size: the same once the limit is passed.
        let (body, pulled) = counted(vec![b'x'; 1500], 100);
        let r = upload(&Fake::default(), &settings(), HeaderMap::new(), body).await;
        assert_eq!(r.status, 413, "{}", r.body);
        assert_eq!(pulled.load(Ordering::SeqCst), 1500);
    }

    #[tokio::test]
    async fn a_json_body_over_the_limit_is_read_on_before_it_is_refused() {
        let (body, pulled) = counted(vec![b'x'; 1500], 100);
        assert!(matches!(
            read_body(body, 1000).await,
            Err(BodyError::TooLarge)
        ));
        assert_eq!(pulled.load(Ordering::SeqCst), 1500, "the rest was read on");
        let (body, pulled) = counted(vec![b'x'; 10_000], 100);
        assert!(matches!(
            read_body(body, 1000).await,
            Err(BodyError::TooLarge)
        ));
        assert!(
            pulled.load(Ordering::SeqCst) <= 2100,
            "but not past twice the limit"
        );
        let (body, _) = counted(vec![b'y'; 1000], 64);
        assert_eq!(read_body(body, 1000).await.unwrap().len(), 1000);
    }

    #[tokio::test]
    async fn an_undeclared_size_over_the_limit_stores_and_counts_what_came_before() {
        let mut text = String::from("nis,n\n");
        for i in 0..200 {
            text.push_str(&format!("{i},{i}\n"));
        }
        let sink = Fake::default();
        let r = upload(
            &sink,
            &settings(),
            HeaderMap::new(),
            pieces(text.as_bytes(), 64),
        )
        .await;
        assert_eq!(r.status, 413, "{}", r.body);
        let accepted = r.body["accepted"].as_u64().unwrap();
        assert!((1..200).contains(&accepted), "{}", r.body);
        assert_eq!(r.body["lines"].as_u64().unwrap(), accepted + 1);
        assert_eq!(sink.published().len() as u64, accepted);
    }

    #[tokio::test]
    async fn a_chunk_the_bus_does_not_take_is_503_with_what_was_stored_before_it() {
        let sink = Fake {
            fail_at: Some(1),
            ..Fake::default()
        };
        let text = "nis,n\n1,1\n2,2\n3,x\n4,4\n5,5\n";
        let r = upload(&sink, &settings(), HeaderMap::new(), Body::from(text)).await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.retry_after.as_deref(), Some("7"));
        assert_eq!(r.body["accepted"], 2);
        assert_eq!(
            r.body["rejected_total"], 0,
            "the failed chunk's rejections are not counted"
        );
        assert!(
            r.body["error"]
                .as_str()
                .unwrap()
                .contains("send the whole file again")
        );
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_is_400_with_what_was_read() {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
            Ok(b"nis,n\n1,1\n2,".to_vec()),
            Err(std::io::Error::other("connection reset")),
        ];
        let sink = Fake::default();
        let r = upload(
            &sink,
            &settings(),
            HeaderMap::new(),
            Body::from_stream(futures::stream::iter(chunks)),
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            r.body["error"]
                .as_str()
                .unwrap()
                .contains("could not be read")
        );
        assert_eq!(
            (r.body["accepted"].as_u64(), r.body["lines"].as_u64()),
            (Some(1), Some(2))
        );
    }

    const LINGER: Duration = Duration::from_millis(100);

    /// Chunks far larger than the tests' uploads: they end by the linger.
    fn lingering() -> CsvSettings {
        CsvSettings {
            chunk_records: 1000,
            chunk_linger: LINGER,
            ..settings()
        }
    }

    type Piece = Result<Vec<u8>, std::io::Error>;

    /// A body the test sends piece by piece while it is read; dropping the sender ends it.
    fn trickle() -> (futures::channel::mpsc::UnboundedSender<Piece>, Body) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        (tx, Body::from_stream(rx))
    }

    fn send(tx: &futures::channel::mpsc::UnboundedSender<Piece>, text: &str) {
        tx.unbounded_send(Ok(text.as_bytes().to_vec())).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_upload_is_published_after_the_linger_while_the_body_is_still_coming() {
        let sink = Fake::default();
        let s = lingering();
        let (tx, body) = trickle();
        let client = async {
            send(&tx, "nis,n\n1,1\n2,x\n3,");
            tokio::time::sleep(LINGER / 2).await;
            assert!(sink.names().is_empty(), "published before the linger");
            tokio::time::sleep(LINGER).await;
            // The body goes on (line 4 is half sent), and what came before is published.
            assert_eq!(sink.names(), [["1", "line 3"]]);
            send(&tx, "3\n4,4\n");
            tokio::time::sleep(LINGER * 2).await;
            assert_eq!(sink.names(), [vec!["1", "line 3"], vec!["3", "4"]]);
            // A client that stalls halfway through a record: the record waits for its end,
            // the chunk before it does not.
            send(&tx, "5,5\n6");
            tokio::time::sleep(LINGER * 2).await;
            assert_eq!(sink.names().len(), 3);
            send(&tx, ",6\n");
            drop(tx);
        };
        let (r, ()) = tokio::join!(upload(&sink, &s, HeaderMap::new(), body), client);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["accepted"], 5);
        assert_eq!(r.body["rejected_total"], 1);
        assert_eq!(r.body["rejected"][0]["line"], 3);
        assert_eq!(r.body["lines"], 7);
        assert_eq!(
            sink.names(),
            [vec!["1", "line 3"], vec!["3", "4"], vec!["5"], vec!["6"]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_records_of_a_chunk_are_stamped_when_it_is_published() {
        let sink = Fake::default();
        let s = lingering();
        let wait = Duration::from_secs(7);
        let (tx, body) = trickle();
        let client = async {
            send(&tx, "nis,n\n1,1\n2,2\n");
            tokio::time::sleep(LINGER * 2).await;
            assert_eq!(sink.names().len(), 1);
            tokio::time::sleep(wait).await;
            send(&tx, "3,3\n");
            drop(tx);
        };
        // The request came in at the epoch (see `upload`).
        let received = SystemTime::UNIX_EPOCH;
        let (r, ()) = tokio::join!(upload(&sink, &s, HeaderMap::new(), body), client);
        assert_eq!(r.status, 200, "{}", r.body);
        let stamps = sink.stamps();
        assert_eq!(stamps.len(), 2, "{:?}", sink.names());
        // One stamp per chunk, taken when it is published, not when the request came in.
        assert_eq!(stamps[0][0], stamps[0][1]);
        assert!(stamps[0][0] >= received + LINGER, "{stamps:?}");
        let apart = stamps[1][0].duration_since(stamps[0][0]).unwrap();
        assert!(apart >= wait, "{stamps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn where_the_chunks_end_changes_no_answer() {
        let text = MESSY;
        let once = Fake::default();
        let expected = upload(&once, &settings(), HeaderMap::new(), Body::from(text)).await;
        assert_eq!(once.names().len(), 3, "chunks of 2 by count");
        let rejected = rejected_of(&once.published());
        // Pieces with a pause longer than the linger after each, and pieces with no pause and
        // no linger: each ends chunks elsewhere.
        for (size, pause, linger) in [
            (1, LINGER * 2, LINGER),
            (5, LINGER * 2, LINGER),
            (3, Duration::ZERO, Duration::ZERO),
        ] {
            let sink = Fake::default();
            let s = CsvSettings {
                chunk_linger: linger,
                ..lingering()
            };
            let (tx, body) = trickle();
            let client = async {
                for piece in text.as_bytes().chunks(size) {
                    tx.unbounded_send(Ok(piece.to_vec())).unwrap();
                    tokio::time::sleep(pause).await;
                }
                drop(tx);
            };
            let (r, ()) = tokio::join!(upload(&sink, &s, HeaderMap::new(), body), client);
            assert_eq!(r.status, expected.status, "{}", r.body);
            assert_eq!(r.body, expected.body, "size {size}, pause {pause:?}");
            assert!(sink.names().len() > 3, "size {size}: {:?}", sink.names());
            assert_eq!(sink.names().concat(), once.names().concat());
            assert_eq!(rejected_of(&sink.published()), rejected);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lingered_chunk_the_bus_does_not_take_is_503_with_what_was_stored_before_it() {
        let sink = Fake {
            fail_at: Some(1),
            ..Fake::default()
        };
        let s = lingering();
        let (tx, body) = trickle();
        let client = async {
            send(&tx, "nis,n\n1,1\n");
            tokio::time::sleep(LINGER * 2).await;
            send(&tx, "2,2\n3,x\n");
            tokio::time::sleep(LINGER * 2).await;
            // The failed chunk is gone: what follows is read but not published.
            send(&tx, "4,4\n");
            drop(tx);
        };
        let (r, ()) = tokio::join!(upload(&sink, &s, HeaderMap::new(), body), client);
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.retry_after.as_deref(), Some("7"));
        assert_eq!(r.body["accepted"], 1);
        assert_eq!(r.body["rejected_total"], 0);
        assert_eq!(sink.names(), [vec!["1"], vec!["2", "line 4"]]);
    }

    #[test]
    fn a_report_maps_to_its_status() {
        let none = IngestReport::default();
        let bad = IngestReport {
            accepted: 0,
            rejected: vec![Rejection {
                position: "record 1".into(),
                field: "nis".into(),
                error_type: "invalid_identifier".into(),
                reason: "check digit".into(),
            }],
        };
        let mixed = IngestReport {
            accepted: 1,
            ..bad.clone()
        };
        assert_eq!(status_of(&none, false), StatusCode::OK);
        assert_eq!(status_of(&mixed, false), StatusCode::OK);
        assert_eq!(status_of(&bad, false), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status_of(&bad, true), StatusCode::BAD_REQUEST);
        assert_eq!(
            serde_json::to_value(Answer::of(mixed)).unwrap(),
            json!({"accepted": 1, "rejected": [{"position": "record 1", "field": "nis",
                   "error_type": "invalid_identifier", "reason": "check digit"}]})
        );
        assert_eq!(json_position(true, 0), "body");
        assert_eq!(json_position(false, 2), "record 3");
    }

    #[test]
    fn a_bus_failure_is_503_with_retry_after_only_when_retrying_can_work() {
        let resp = unavailable(&BusError::Unavailable("down".into()), 7);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
        let resp = unavailable(&BusError::Rejected("no topic".into()), 7);
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn the_content_type_says_csv_and_its_charset() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            body_type(&h)
        };
        assert_eq!(body_type(&HeaderMap::new()), BodyType::Json);
        assert_eq!(with("application/json"), BodyType::Json);
        assert_eq!(with("text/csv"), BodyType::Csv);
        assert_eq!(with("application/csv"), BodyType::Csv);
        assert_eq!(with("Text/CSV; charset=\"UTF-8\""), BodyType::Csv);
        assert_eq!(
            with("text/csv; charset=ISO-8859-1"),
            BodyType::CsvNotUtf8("ISO-8859-1".to_owned())
        );
    }
}
