//! A JSON request body, as the education adapter receives it: split into records, each read
//! into the layout and validated. Nothing may panic; a valid record's key is its NIS.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use ponte_adapter_education::record::{AttendanceInput, split_json_body, validate};

fuzz_target!(|data: &[u8]| {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let Ok(records) = split_json_body(data) else {
        return;
    };
    for raw in records {
        if let Ok(input) = serde_json::from_str::<AttendanceInput>(raw.get())
            && let Ok(valid) = validate(&input, "education", now)
        {
            assert_eq!(valid.key.len(), 11);
            assert!(valid.event.record_id.ends_with(&input.month));
        }
    }
});
