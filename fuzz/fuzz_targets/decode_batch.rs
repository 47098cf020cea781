//! `POST /v1/usage/batch` bodies: the envelope, then every record.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = model::decode::batch(data, 1000) {
        for raw in envelope.records {
            common::check(raw);
        }
    }
});
