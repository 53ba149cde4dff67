//! Any bytes as a CSV profile upload, cut into chunks at arbitrary points: the shared CSV reader
//! must give the same records whatever the chunking, never keep more than its limit of one
//! record, and header and row mapping must never panic.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use ponte_adapter_assistance::csv::{Header, row};
use ponte_edge::csv::{Reader, Record};

const MAX_RECORD: usize = 256;

fn read(data: &[u8], chunk: usize) -> (Vec<Record>, Option<u8>) {
    let mut reader = Reader::new(MAX_RECORD);
    let mut out = Vec::new();
    for c in data.chunks(chunk.max(1)) {
        reader.push(c, &mut out);
    }
    reader.finish(&mut out);
    (out, reader.delimiter())
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let (whole, delimiter) = read(data, data.len().max(1));
    assert_eq!((whole.clone(), delimiter), read(data, usize::from(chunk % 17) + 1));

    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let mut header = None;
    let mut last_line = 0;
    for record in &whole {
        assert!(record.line > last_line && record.line <= record.last_line);
        last_line = record.last_line;
        assert!(record.raw.len() <= MAX_RECORD);
        let Ok(cells) = &record.fields else {
            continue;
        };
        match &header {
            None => header = Header::new(cells, delimiter.unwrap_or(b',')).ok(),
            Some(h) => {
                if let Ok(v) = row(h, cells, "assistance", now) {
                    assert_eq!(v.key.len(), 11);
                    assert!(v.event.record_id.ends_with(&v.key));
                }
            }
        }
    }
});
