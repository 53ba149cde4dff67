//! Any bytes as a JSON push to any endpoint: splitting the body and validating every record of
//! every kind must never panic, and what is accepted must be publishable as is.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use ponte_adapter_assistance::record::{Destination, Kind, parse_json, split_json_body};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let kind = Kind::ALL[usize::from(selector) % Kind::ALL.len()];
    // 2026-01-01T00:00:00Z, then any reception time the selector picks.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600 + u64::from(selector) * 86_400_000);
    let Ok(records) = split_json_body(body) else {
        return;
    };
    for raw in records {
        if let Ok(v) = parse_json(kind, raw.get(), "assistance", now) {
            assert_eq!(v.destination, kind.destination());
            assert!(v.event.version >= 1);
            assert!(v.event.record_id.starts_with(&format!("assistance:{}:", kind.name())));
            assert!(v.event.record.is_some());
            match v.destination {
                Destination::RegistryPersons | Destination::AssistancePerson => {
                    assert!(v.key.len() == 11 && v.key.bytes().all(|b| b.is_ascii_digit()));
                }
                Destination::AssistanceFamily => {
                    assert!(!v.key.is_empty() && v.key.len() <= 32 && !v.key.contains(':'));
                }
            }
        }
    }
});
