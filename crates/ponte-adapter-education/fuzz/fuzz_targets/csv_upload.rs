//! A CSV upload as the education adapter streams it: the bytes cut into pieces at fuzzer-chosen
//! points and read by the shared CSV reader with a small record limit, the first record read as
//! the header, every other record mapped and validated. Nothing may panic, and the records must
//! not depend on how the stream was cut.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use ponte_adapter_education::csv::Header;
use ponte_adapter_education::record::validate;
use ponte_edge::csv::{Reader, Record};

fn read(pieces: &[&[u8]], max: usize) -> (Vec<Record>, Option<u8>) {
    let mut reader = Reader::new(max);
    let mut out = Vec::new();
    for p in pieces {
        reader.push(p, &mut out);
    }
    reader.finish(&mut out);
    (out, reader.delimiter())
}

fuzz_target!(|data: &[u8]| {
    // First byte: where to cut; the rest: the file.
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let max = 256;
    let step = usize::from(cut % 17) + 1;
    let pieces: Vec<&[u8]> = body.chunks(step).collect();
    let (records, delimiter) = read(&pieces, max);
    assert_eq!(
        (&records, delimiter),
        (&read(&[body], max).0, read(&[body], max).1),
        "records depend on the chunking"
    );

    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let mut it = records.into_iter();
    let Some(first) = it.next() else {
        return;
    };
    let Ok(names) = &first.fields else {
        return;
    };
    let Ok(header) = Header::new(names, delimiter.unwrap_or(b',')) else {
        return;
    };
    for record in it {
        assert!(record.raw.len() <= max);
        if let Ok(cells) = &record.fields
            && let Ok(input) = header.row(cells)
        {
            let _ = validate(&input, "education", now);
        }
    }
});
