//! Small pieces every Ponte HTTP API shares.
use axum::http::HeaderMap;

/// The request's trace id: the caller's `X-Trace-Id` when it is 1–64 visible ASCII characters,
/// else a new random one. It follows the records through logs and Kafka headers.
pub fn trace_id(headers: &HeaderMap) -> String {
    headers
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_caller_id_is_kept_and_anything_else_replaced() {
        let mut h = HeaderMap::new();
        assert_eq!(trace_id(&h).len(), 32);
        h.insert("x-trace-id", "batch-2025-05-01".parse().unwrap());
        assert_eq!(trace_id(&h), "batch-2025-05-01");
        h.insert("x-trace-id", "x".repeat(65).parse().unwrap());
        assert_ne!(trace_id(&h), "x".repeat(65));
        h.insert("x-trace-id", "has space".parse().unwrap());
        assert_ne!(trace_id(&h), "has space");
    }
}
