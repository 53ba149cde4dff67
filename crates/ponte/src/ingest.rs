//! `ponte ingest <sector> FILE`: sends a file to a running adapter, streamed (never loaded
//! whole), with a progress bar, and prints the adapter's answer as a summary.
//!
//! The client side of the adapters' contract: a `503` (or `429`) means nothing is guaranteed
//! stored, so the whole file is sent again after `Retry-After`; records carry stable ids and
//! versions, so what did get through the first time is not duplicated downstream. A refused
//! connection (adapter restarting) is retried the same way.
//!
//! A sector plugs in with a default endpoint (from its config section's `listen`) and, where it
//! needs one, its own media type per file extension ([`Sector::content_type`]).
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

/// The sectors whose adapters take files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Sector {
    Education,
    Health,
    Assistance,
}

impl Sector {
    /// Path of the adapter's main ingest endpoint: attendance (JSON or CSV), FHIR bundles,
    /// registry profiles (JSON or CSV). Other endpoints (`/v1/health`, `/v1/appeals`, …) take
    /// `--url`.
    fn default_path(self) -> Option<&'static str> {
        Some(match self {
            Sector::Education => "/v1/attendance",
            Sector::Health => "/fhir",
            Sector::Assistance => "/v1/persons",
        })
    }

    /// Media type of a file for this sector, from its extension.
    pub(crate) fn content_type(self, file: &Path) -> Option<&'static str> {
        let ext = file
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)?;
        Some(match (self, ext.as_str()) {
            (_, "csv") => "text/csv",
            (Sector::Health, "json") => "application/fhir+json",
            (_, "json") => "application/json",
            (_, "ndjson" | "jsonl") => "application/x-ndjson",
            (_, "xml") => "application/xml",
            _ => return None,
        })
    }
}

/// Arguments of `ponte ingest`.
#[derive(Debug, clap::Args)]
pub(crate) struct IngestArgs {
    /// Which adapter the file is for.
    #[arg(value_enum)]
    pub(crate) sector: Sector,
    /// The file to send (CSV, JSON…; the type follows the extension unless --content-type).
    pub(crate) file: PathBuf,
    /// Full URL of the adapter's ingest endpoint [default: from the sector's `listen` in the
    /// configuration, e.g. https://127.0.0.1:8081/v1/attendance; http:// without --ca].
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// Media type to send, overriding the one derived from the file's extension.
    #[arg(long)]
    pub(crate) content_type: Option<String>,
    /// How many times to send the file again after 503/429 or a refused connection.
    #[arg(long, default_value_t = 20)]
    pub(crate) retries: u32,
    /// Longest wait between attempts, whatever Retry-After says, in seconds.
    #[arg(long, default_value_t = 60)]
    pub(crate) max_wait_secs: u64,
    /// How many rejected records to print.
    #[arg(long, default_value_t = 10)]
    pub(crate) show_rejected: usize,
    /// Send at most this many lines per second (spares a shared adapter; 0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u32,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    pub(crate) no_progress: bool,
}

/// The answer's fields every adapter shares; anything else is ignored.
#[derive(Debug, Default, serde::Deserialize)]
struct Answer {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    rejected: Vec<serde_json::Value>,
    #[serde(default)]
    rejected_total: Option<u64>,
    #[serde(default)]
    error: Option<String>,
}

/// One attempt's outcome.
enum Attempt {
    /// The adapter answered something final.
    Answered {
        status: reqwest::StatusCode,
        body: String,
    },
    /// Try again after this long.
    Retry { wait: Duration, why: String },
}

/// Chunks of the file, paced to `rate` lines per second when set, feeding the progress bar.
fn body_stream(
    file: tokio::fs::File,
    rate: u32,
    bar: ProgressBar,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    const CHUNK: usize = 256 * 1024;
    let reader = BufReader::with_capacity(CHUNK, file);
    futures::stream::try_unfold((reader, bar), move |(mut reader, bar)| async move {
        let mut buf = Vec::with_capacity(CHUNK);
        if rate == 0 {
            (&mut reader)
                .take(CHUNK as u64)
                .read_to_end(&mut buf)
                .await?;
        } else {
            // Ten slices a second, each of rate/10 lines (at least one).
            let lines = (rate / 10).max(1);
            for _ in 0..lines {
                if reader.read_until(b'\n', &mut buf).await? == 0 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_secs_f64(f64::from(lines) / f64::from(rate))).await;
        }
        if buf.is_empty() {
            return Ok(None);
        }
        bar.inc(buf.len() as u64);
        Ok(Some((buf, (reader, bar))))
    })
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

async fn attempt(
    client: &reqwest::Client,
    args: &IngestArgs,
    url: &str,
    content_type: &str,
    size: u64,
    bar: &ProgressBar,
) -> anyhow::Result<Attempt> {
    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("opening {}", args.file.display()))?;
    bar.set_position(0);
    bar.set_message("sending");
    let body = reqwest::Body::wrap_stream(body_stream(file, args.rate, bar.clone()));
    let sent = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) if e.is_connect() || e.is_request() || e.is_timeout() => {
            return Ok(Attempt::Retry {
                wait: Duration::from_secs(2),
                why: format!("connection: {e}"),
            });
        }
        Err(e) => return Err(e).context("sending the file"),
    };
    bar.set_message("waiting for the answer");
    let status = resp.status();
    let wait = retry_after(resp.headers());
    let body = resp.text().await.unwrap_or_default();
    if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        let answer: Answer = serde_json::from_str(&body).unwrap_or_default();
        return Ok(Attempt::Retry {
            wait: wait.unwrap_or(Duration::from_secs(5)),
            why: format!(
                "{status}{}",
                answer.error.map(|e| format!(": {e}")).unwrap_or_default()
            ),
        });
    }
    Ok(Attempt::Answered { status, body })
}

fn describe(rejection: &serde_json::Value) -> String {
    let get = |k: &str| {
        rejection
            .get(k)
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    format!(
        "{:<12} {:<20} {}",
        get("position"),
        get("field"),
        get("reason")
    )
}

/// Runs `ponte ingest`; `default_listen` is the sector's configured listen address, if known.
/// Returns whether the adapter finally answered 2xx.
pub(crate) async fn run(
    args: IngestArgs,
    default_listen: Option<&str>,
    creds: &crate::client::ClientCreds,
) -> anyhow::Result<bool> {
    let url = match (&args.url, default_listen, args.sector.default_path()) {
        (Some(u), _, _) => u.clone(),
        (None, Some(listen), Some(path)) => format!("{}://{listen}{path}", creds.scheme()),
        _ => anyhow::bail!(
            "no default endpoint for the {:?} adapter: pass --url",
            args.sector
        ),
    };
    let content_type = match (&args.content_type, args.sector.content_type(&args.file)) {
        (Some(ct), _) => ct.clone(),
        (None, Some(ct)) => ct.to_owned(),
        (None, None) => anyhow::bail!(
            "cannot tell the media type of {} from its extension: pass --content-type",
            args.file.display()
        ),
    };
    let size = tokio::fs::metadata(&args.file)
        .await
        .with_context(|| format!("reading {}", args.file.display()))?
        .len();

    let bar = if args.no_progress {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(size)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));

    let client = creds.http_client()?;
    let started = Instant::now();
    let mut attempts = 0u32;
    let (status, body) = loop {
        attempts += 1;
        match attempt(&client, &args, &url, &content_type, size, &bar).await? {
            Attempt::Answered { status, body } => break (status, body),
            Attempt::Retry { wait, why } => {
                if attempts > args.retries {
                    bar.finish_and_clear();
                    anyhow::bail!("giving up after {attempts} attempts; last: {why}");
                }
                let wait = wait.min(Duration::from_secs(args.max_wait_secs));
                bar.suspend(|| {
                    eprintln!(
                        "attempt {attempts}: {why}; sending the file again in {} s",
                        wait.as_secs()
                    );
                });
                bar.set_message(format!("retrying in {} s", wait.as_secs()));
                tokio::time::sleep(wait).await;
            }
        }
    };
    bar.finish_and_clear();
    let elapsed = started.elapsed();

    let answer: Option<Answer> = serde_json::from_str(&body).ok();
    println!(
        "file       {} ({size} bytes, {content_type})",
        args.file.display()
    );
    println!("adapter    {url}");
    println!("status     {status} after {attempts} attempt(s)");
    match &answer {
        Some(a) => {
            let rejected = a.rejected_total.unwrap_or(a.rejected.len() as u64);
            let total = a.accepted + rejected;
            println!("accepted   {}", a.accepted);
            println!("rejected   {rejected}");
            for r in a.rejected.iter().take(args.show_rejected) {
                println!("  {}", describe(r));
            }
            if rejected > args.show_rejected.min(a.rejected.len()) as u64 {
                println!(
                    "  … {} more (all are on the dead-letter topic)",
                    rejected - args.show_rejected.min(a.rejected.len()) as u64
                );
            }
            if let Some(e) = &a.error {
                println!("error      {e}");
            }
            println!("time       {:.2} s", elapsed.as_secs_f64());
            println!(
                "rate       {:.0} records/s",
                total as f64 / elapsed.as_secs_f64().max(1e-3)
            );
        }
        None => {
            println!("answer     {body}");
            println!("time       {:.2} s", elapsed.as_secs_f64());
        }
    }
    Ok(status.is_success())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_media_type_follows_the_extension_and_the_sector() {
        let t = |s: Sector, f: &str| s.content_type(Path::new(f));
        assert_eq!(t(Sector::Education, "b2.CSV"), Some("text/csv"));
        assert_eq!(t(Sector::Education, "b2.json"), Some("application/json"));
        assert_eq!(
            t(Sector::Health, "bundle.json"),
            Some("application/fhir+json")
        );
        assert_eq!(
            t(Sector::Assistance, "x.ndjson"),
            Some("application/x-ndjson")
        );
        assert_eq!(t(Sector::Education, "noext"), None);
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
