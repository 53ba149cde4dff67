//! The one JSON body layout every adapter takes: one record, or an array of records.

use serde_json::value::RawValue;

/// Splits a JSON body — one record or an array of records — into records, keeping each
/// record's original bytes (what its dead letter carries).
pub fn split_json_body(body: &[u8]) -> Result<Vec<Box<RawValue>>, serde_json::Error> {
    if is_json_array(body) {
        serde_json::from_slice::<Vec<Box<RawValue>>>(body)
    } else {
        serde_json::from_slice::<Box<RawValue>>(body).map(|r| vec![r])
    }
}

/// True when the body's first non-blank byte opens an array (a batch rather than one record).
pub fn is_json_array(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_one_record_or_an_array_and_keeps_each_record_s_bytes() {
        let one = split_json_body(br#" {"a": 1} "#).unwrap();
        assert_eq!(one.len(), 1);
        assert!(!is_json_array(br#" {"a": 1} "#));
        let many = split_json_body(b"\n [{\"a\":1}, {\"b\" : 2}]").unwrap();
        assert!(is_json_array(b"\n [{\"a\":1}]"));
        let raw: Vec<&str> = many.iter().map(|r| r.get()).collect();
        assert_eq!(raw, [r#"{"a":1}"#, r#"{"b" : 2}"#]);
        assert!(split_json_body(b"{not json").is_err());
        assert!(split_json_body(b"").is_err());
    }
}
