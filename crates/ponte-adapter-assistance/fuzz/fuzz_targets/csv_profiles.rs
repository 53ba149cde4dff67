//! Any bytes as a CSV profile upload, cut into chunks at arbitrary points: the line splitter
//! must give the same numbered lines whatever the chunking, never hold more than its limit, and
//! header and row parsing must never panic.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use ponte_adapter_assistance::csv::{Header, Line, LineSplitter, parse_row};

const MAX_LINE: usize = 256;

fn split(data: &[u8], chunk: usize) -> Vec<Line> {
    let mut s = LineSplitter::new(MAX_LINE);
    let mut out = Vec::new();
    for c in data.chunks(chunk.max(1)) {
        s.push(c, &mut out);
    }
    s.finish(&mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let whole = split(data, data.len().max(1));
    let chunked = split(data, usize::from(chunk % 17) + 1);
    assert_eq!(whole, chunked);

    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let mut header = None;
    for (i, line) in whole.iter().enumerate() {
        let (number, bytes) = match line {
            Line::Text { number, bytes } => (*number, bytes),
            Line::TooLong { number, prefix } => (*number, prefix),
        };
        assert_eq!(number, i as u64 + 1);
        assert!(bytes.len() <= MAX_LINE);
        let Ok(text) = std::str::from_utf8(bytes) else {
            continue;
        };
        match &header {
            None => header = Header::parse(text).ok(),
            Some(h) => {
                if let Ok(v) = parse_row(h, text, "assistance", now) {
                    assert_eq!(v.key.len(), 11);
                    assert!(v.event.record_id.ends_with(&v.key));
                }
            }
        }
    }
});
