//! NATS and Redis Streams payloads: a record, an array, or an envelope.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(records) = model::decode::stream_message(data) {
        for raw in records {
            common::check(raw);
        }
    }
});
