//! Standard Webhooks signatures (<https://www.standardwebhooks.com>).
//!
//! The sender signs `{webhook-id}.{webhook-timestamp}.{body}` with
//! HMAC-SHA256 under the key's signing secret (`whsec_` + base64 of the
//! secret bytes) and sends `webhook-signature: v1,<base64>`; several
//! space-separated signatures are allowed, so a sender can sign with an old
//! and a new secret while a rotation is under way. The body is the one the
//! sender serialized: after any `Content-Encoding` is undone.
//!
//! A request is accepted when its timestamp is within [`TOLERANCE_SECS`] of
//! the server's clock (either way) and one `v1` signature matches, compared
//! in constant time. Error messages name the rule that failed, never the
//! expected value.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};

/// How far `webhook-timestamp` may be from the server's clock.
pub const TOLERANCE_SECS: i64 = 300;
/// The prefix of a signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A key's signing secret, `whsec_<base64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    text: String,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(whsec_…)")
    }
}

/// A signing secret that does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a signing secret is \"whsec_\" followed by base64 of at least 24 bytes")]
pub struct SecretFormatError;

impl SigningSecret {
    /// A new random 32-byte secret.
    pub fn generate() -> SigningSecret {
        let mut bytes = vec![0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        SigningSecret { text: format!("{SECRET_PREFIX}{}", STANDARD.encode(&bytes)), bytes }
    }

    pub fn parse(text: &str) -> Result<SigningSecret, SecretFormatError> {
        let encoded = text.strip_prefix(SECRET_PREFIX).ok_or(SecretFormatError)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| SecretFormatError)?;
        if bytes.len() < 24 {
            return Err(SecretFormatError);
        }
        Ok(SigningSecret { text: text.to_owned(), bytes })
    }

    /// The `whsec_…` form, for showing once and for storing.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The `v1,<base64>` signature of a message (what a sender puts in
    /// `webhook-signature`).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self.mac(id, &timestamp.to_string(), body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.bytes).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// Checks a request's Standard Webhooks headers against `body` at
    /// `now` (Unix seconds).
    pub fn verify(&self, headers: &Headers<'_>, body: &[u8], now: i64) -> Result<(), SignatureError> {
        let id = headers.id.filter(|s| !s.is_empty()).ok_or(SignatureError::Missing("webhook-id"))?;
        let ts_text = headers.timestamp.ok_or(SignatureError::Missing("webhook-timestamp"))?;
        let signatures = headers.signature.ok_or(SignatureError::Missing("webhook-signature"))?;
        let ts: i64 = ts_text.trim().parse().map_err(|_| SignatureError::BadTimestamp)?;
        let skew = now.saturating_sub(ts);
        if skew.abs() > TOLERANCE_SECS {
            return Err(SignatureError::Stale { skew });
        }
        let expected = self.mac(id, ts_text.trim(), body);
        let mut any_v1 = false;
        for candidate in signatures.split(' ').filter(|s| !s.is_empty()) {
            let Some(("v1", encoded)) = candidate.split_once(',') else { continue };
            any_v1 = true;
            let Ok(given) = STANDARD.decode(encoded) else { continue };
            // `verify_slice` compares in constant time.
            if expected.clone().verify_slice(&given).is_ok() {
                return Ok(());
            }
        }
        Err(if any_v1 { SignatureError::Mismatch } else { SignatureError::NoV1 })
    }
}

/// The three Standard Webhooks headers of a request, as sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Headers<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Why a signed request was refused (401).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("this API key requires signed requests: the {0} header is missing")]
    Missing(&'static str),
    #[error("webhook-timestamp must be a Unix time in whole seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is {skew} s from the server's clock; at most 300 s is allowed")]
    Stale { skew: i64 },
    #[error("webhook-signature holds no v1 signature (expected \"v1,<base64>\")")]
    NoV1,
    #[error("no webhook-signature matches the request (HMAC-SHA256 of webhook-id.webhook-timestamp.body)")]
    Mismatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> Headers<'a> {
        Headers { id: Some(id), timestamp: Some(ts), signature: Some(sig) }
    }

    #[test]
    fn the_specification_example_verifies() {
        let secret = SigningSecret::parse(SPEC_SECRET).unwrap();
        assert_eq!(secret.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
        let ts = SPEC_TS.to_string();
        assert_eq!(secret.verify(&headers(SPEC_ID, &ts, SPEC_SIG), SPEC_BODY, SPEC_TS + 10), Ok(()));
    }

    #[test]
    fn a_flipped_body_byte_fails() {
        let secret = SigningSecret::parse(SPEC_SECRET).unwrap();
        let ts = SPEC_TS.to_string();
        let mut body = SPEC_BODY.to_vec();
        body[3] ^= 1;
        assert_eq!(secret.verify(&headers(SPEC_ID, &ts, SPEC_SIG), &body, SPEC_TS), Err(SignatureError::Mismatch));
    }

    #[test]
    fn timestamps_more_than_five_minutes_off_fail_either_way() {
        let secret = SigningSecret::generate();
        let now = 1_800_000_000;
        for ts in [now - 301, now + 301] {
            let sig = secret.sign("m1", ts, b"{}");
            let t = ts.to_string();
            assert!(matches!(secret.verify(&headers("m1", &t, &sig), b"{}", now), Err(SignatureError::Stale { .. })));
        }
        for ts in [now - 300, now + 300] {
            let sig = secret.sign("m1", ts, b"{}");
            let t = ts.to_string();
            assert_eq!(secret.verify(&headers("m1", &t, &sig), b"{}", now), Ok(()));
        }
    }

    #[test]
    fn any_of_several_signatures_may_match_during_a_rotation() {
        let old = SigningSecret::generate();
        let new = SigningSecret::generate();
        let both = format!("{} {}", old.sign("m", 100, b"x"), new.sign("m", 100, b"x"));
        assert_eq!(new.verify(&headers("m", "100", &both), b"x", 100), Ok(()));
        assert_eq!(old.verify(&headers("m", "100", &both), b"x", 100), Ok(()));
        let other = SigningSecret::generate();
        assert_eq!(other.verify(&headers("m", "100", &both), b"x", 100), Err(SignatureError::Mismatch));
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let secret = SigningSecret::generate();
        let sig = secret.sign("m", 100, b"x");
        let mut h = headers("m", "100", &sig);
        h.id = None;
        assert_eq!(secret.verify(&h, b"x", 100), Err(SignatureError::Missing("webhook-id")));
        assert_eq!(secret.verify(&headers("m", "soon", &sig), b"x", 100), Err(SignatureError::BadTimestamp));
        assert_eq!(secret.verify(&headers("m", "100", "v2,abc"), b"x", 100), Err(SignatureError::NoV1));
        assert_eq!(secret.verify(&headers("m", "100", "v1,!!!"), b"x", 100), Err(SignatureError::Mismatch));
        // The message never carries the expected signature.
        let err = secret.verify(&headers("m", "100", "v1,AAAA"), b"x", 100).unwrap_err().to_string();
        assert!(!err.contains(&sig[3..]), "{err}");
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        let s = SigningSecret::generate();
        assert!(s.expose().starts_with("whsec_"));
        assert_eq!(SigningSecret::parse(s.expose()).unwrap(), s);
        assert_eq!(SigningSecret::parse("whsec_short"), Err(SecretFormatError));
        assert_eq!(SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), Err(SecretFormatError));
        assert!(!format!("{s:?}").contains(&s.expose()[6..]));
    }
}
