//! Logs and metrics setup, done once per process.
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::RuntimeError;

/// The `[log]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,ponte_reconciler=debug`. `RUST_LOG` wins.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global `tracing` subscriber. Later calls are ignored.
pub fn init_logging(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Every line goes through `mask_ids_in` on its way out: identifiers inside record ids, keys
    // and error messages are masked whichever code logged them (librdkafka's lines included).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| MaskedLine(Vec::with_capacity(256)));
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus metrics recorder (once) and returns its handle.
pub fn init_metrics() -> Result<PrometheusHandle, RuntimeError> {
    if let Some(h) = PROMETHEUS.get() {
        return Ok(h.clone());
    }
    // 150 and 200 ms between 100 and 250: the paced ingest-to-view p99 is judged against
    // 175 ms, and interpolated across 100–250 ms it read about 240 ms where the finer buckets
    // show 150–175 (docs/benchmarks.md, 2026-12-04).
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5,
            5.0, 10.0, 30.0, 60.0,
        ])
        .map_err(|e| RuntimeError::Telemetry(e.to_string()))?
        .install_recorder()
        .map_err(|e| RuntimeError::Telemetry(e.to_string()))?;
    Ok(PROMETHEUS.get_or_init(|| handle).clone())
}

/// Masks a NIS or other personal identifier for logs: `268******60`.
pub fn mask_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 5 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 5))
}

/// One log line on its way to stderr: written whole, identifiers masked, when dropped (the
/// formatter writes one event per writer).
struct MaskedLine(Vec<u8>);

impl std::io::Write for MaskedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MaskedLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let masked = mask_ids_in(&text);
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), masked.as_bytes());
    }
}

/// Masks every personal identifier inside a longer text — a record id such as
/// `education:35012345:26827649960:2025-04`, or a reason — for logs: every run of 11 or more
/// digits (a NIS or CPF has 11, a CNS 15) as [`mask_id`] masks it, unless a letter touches it
/// (a run inside a hexadecimal trace id or hash is no identifier). Shorter runs (school and
/// municipality codes, dates, counts) are kept: they identify no one.
pub fn mask_ids_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let mut after_letter = false;
    let flush = |run: &mut String, out: &mut String, touches_letter: bool| {
        if run.len() >= 11 && !touches_letter {
            out.push_str(&mask_id(run));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            let letter = c.is_ascii_alphabetic();
            if !run.is_empty() {
                flush(&mut run, &mut out, after_letter || letter);
            }
            after_letter = letter;
            out.push(c);
        }
    }
    flush(&mut run, &mut out, after_letter);
    out
}

#[cfg(test)]
mod tests {
    use super::{mask_id, mask_ids_in};

    #[test]
    fn masks_identifiers_inside_record_ids_and_keeps_the_rest() {
        assert_eq!(
            mask_ids_in("education:35012345:26827649960:2025-04"),
            "education:35012345:268******60:2025-04"
        );
        assert_eq!(
            mask_ids_in("health:cns:268276499600008:2025-S1"),
            "health:cns:268**********08:2025-S1"
        );
        assert_eq!(mask_ids_in("no digits"), "no digits");
        assert_eq!(
            mask_ids_in("nis=26827649960 cpf 12345678909\n"),
            "nis=268******60 cpf 123******09\n"
        );
        // A run of digits inside a hexadecimal trace id is no identifier.
        assert_eq!(
            mask_ids_in("trace_id=3f12345678901234ab"),
            "trace_id=3f12345678901234ab"
        );
        assert_eq!(
            mask_ids_in("trace_id=12345678901234ab"),
            "trace_id=12345678901234ab"
        );
    }

    #[test]
    fn masks_all_but_the_edges() {
        assert_eq!(mask_id("26827649960"), "268******60");
        assert_eq!(mask_id("123"), "***");
    }
}
