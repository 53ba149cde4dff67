//! A CSV upload as the education adapter streams it: the bytes cut into pieces at fuzzer-chosen
//! points, split into lines with a small line limit, the first line read as the header, every
//! other line parsed and validated. Nothing may panic, and the lines must not depend on how the
//! stream was cut.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use ponte_adapter_education::csv::{Header, Line, LineSplitter};
use ponte_adapter_education::record::validate;

fn split(pieces: &[&[u8]], max: usize) -> Vec<Line> {
    let mut s = LineSplitter::new(max);
    let mut out = Vec::new();
    for p in pieces {
        s.push(p, &mut out);
    }
    s.finish(&mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    // First byte: where to cut; the rest: the file.
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let max = 256;
    let step = usize::from(cut % 17) + 1;
    let pieces: Vec<&[u8]> = body.chunks(step).collect();
    let lines = split(&pieces, max);
    assert_eq!(lines, split(&[body], max), "lines depend on the chunking");

    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let mut it = lines.into_iter();
    let Some(first) = it.next() else {
        return;
    };
    let Ok(header) = Header::parse(&first.bytes) else {
        return;
    };
    for line in it {
        assert!(line.bytes.len() <= max);
        if let Ok(input) = header.parse_row(&line.bytes) {
            let _ = validate(&input, "education", now);
        }
    }
});
