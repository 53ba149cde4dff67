//! Arbitrary bytes as a pushed FHIR bundle, a pull-mode search page and a simple JSON record:
//! the parsers must answer every input with outcomes, never panic; every entry gets exactly one
//! outcome, and every record is keyed by the digits of its subject.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use ponte_adapter_health::fhir::{BundleSource, EntryOutcome, parse_bundle};
use ponte_adapter_health::record::MappingConfig;
use ponte_adapter_health::simple::{FollowUpInput, validate};

fuzz_target!(|data: &[u8]| {
    let cfg = MappingConfig::default();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    for source in [BundleSource::Push, BundleSource::Search] {
        if let Ok(b) = parse_bundle(data, &cfg, "health", source, now) {
            for (i, e) in b.entries.iter().enumerate() {
                assert_eq!(e.index, i);
                if let EntryOutcome::Record(r) = &e.outcome {
                    assert!(r.key.chars().all(|c| c.is_ascii_digit()));
                    assert!(r.key.len() == 11 || r.key.len() == 15);
                    assert!(r.event.version >= 1);
                }
            }
        }
    }
    if let Ok(input) = serde_json::from_slice::<FollowUpInput>(data) {
        let _ = validate(&input, "health", now);
    }
});
