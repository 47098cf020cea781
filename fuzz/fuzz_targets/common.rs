//! What every target checks: a decoded record is either accepted or rejected
//! with at least one error, each with a documented code and a field of the
//! record (or the record itself); nothing panics.

use model::decode;
use model::validate::Context;
use model::{ErrorCode, ValidationConfig};

const FIELDS: &[&str] = &[
    "",
    "request_id",
    "timestamp",
    "provider",
    "model",
    "organization_id",
    "project_id",
    "user_id",
    "usage",
    "performance",
    "tags",
    "metadata",
];

fn context() -> Context {
    Context::new(&ValidationConfig::default(), time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000))
}

/// The record, when the decoder accepts it.
#[allow(dead_code)] // not every target looks at accepted records
pub fn accepted(raw: &serde_json::value::RawValue) -> Option<model::UsageRecord> {
    decode::record(raw, &context(), uuid::Uuid::nil).ok()
}

pub fn check(raw: &serde_json::value::RawValue) {
    if let Err(rejected) = decode::record(raw, &context(), uuid::Uuid::nil) {
        assert!(!rejected.errors.is_empty(), "rejected without an error");
        for e in &rejected.errors {
            assert_eq!(ErrorCode::from_code(e.code.as_str()), Some(e.code), "undocumented code");
            let top = e.field.split(['.', '[']).next().unwrap_or("");
            assert!(FIELDS.contains(&top), "error names no field of the record: {:?}", e.field);
        }
    }
}
