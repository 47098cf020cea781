//! `POST /v1/usage` bodies: the document, then the record.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = model::decode::single(data) {
        common::check(raw);
    }
});
