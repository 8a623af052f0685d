//! Configuration files: any text parses to a config or to errors that each carry a message,
//! never a panic; secrets never appear in the errors.
#![no_main]

use gitferry_core::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, std::path::Path::new("fuzz.toml"), &|_| Some("fuzz-secret-value".into())) {
        Ok(_) => {}
        Err(e) => {
            let shown = e.to_string();
            assert!(!e.errors.is_empty());
            assert!(!shown.contains("fuzz-secret-value"), "{shown}");
        }
    }
});
