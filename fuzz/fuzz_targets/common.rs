//! What every target checks: a decoded record is either accepted or rejected
//! with at least one error, each with a documented code and a field of the
//! record (or the record itself); nothing panics.

use model::decode;
use model::validate::Context;
use model::{ErrorCode, ValidationConfig};

const FIELDS: &[&str] = &[
    "", "request_id", "timestamp", "provider", "model", "organization_id", "project_id", "user_id", "usage",
    "performance", "tags", "metadata",
];

pub fn check(raw: &serde_json::value::RawValue) {
    let ctx = Context::new(&ValidationConfig::default(), time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000));
    if let Err(rejected) = decode::record(raw, &ctx, uuid::Uuid::nil) {
        assert!(!rejected.errors.is_empty(), "rejected without an error");
        for e in &rejected.errors {
            assert_eq!(ErrorCode::from_code(e.code.as_str()), Some(e.code), "undocumented code");
            let top = e.field.split(['.', '[']).next().unwrap_or("");
            assert!(FIELDS.contains(&top), "error names no field of the record: {:?}", e.field);
        }
    }
}
