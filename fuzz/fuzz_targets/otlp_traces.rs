//! `POST /v1/traces` bodies: the first byte picks the encoding (even:
//! protobuf, odd: OTLP/JSON), the rest is the body. Decoding never panics;
//! every usage span maps to a record that the record decoder accepts or
//! rejects with documented codes (`common::check`), with the organization
//! given and from the resource; the response encodes.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((first, body)) = data.split_first() else { return };
    let encoding = if first % 2 == 0 { otlp::Encoding::Protobuf } else { otlp::Encoding::Json };
    let Ok(request) = otlp::decode(body, encoding) else { return };
    for organization in [None, Some("fuzz-org")] {
        let spans = otlp::usage_spans(&request, organization);
        for span in &spans.usage {
            if let Ok(raw) = &span.record {
                common::check(raw);
            }
        }
        let _ = otlp::response(encoding, spans.usage.len() as u64, "fuzz");
    }
});
