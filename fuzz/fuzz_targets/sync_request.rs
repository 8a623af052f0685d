//! Queue messages: any bytes decode to a valid request or a clear error; valid requests
//! round-trip and have SQS-valid deduplication ids.
#![no_main]

use gitferry_core::request::SyncRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(r) = SyncRequest::from_json(text) {
        assert_eq!(SyncRequest::from_json(&r.to_json()).unwrap(), r);
        let id = r.dedup_id();
        assert!(id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()), "{id:?}");
    }
});
