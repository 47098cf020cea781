//! Authentication for ingestd, without IO (SPEC §3).
//!
//! - [`key`]: the API key format — a fixed prefix, 256 random bits and a
//!   checksum, so secret scanners can find leaked keys and reject typos
//!   without a lookup — and its SHA-256 digest, the only form ever stored.
//! - [`KeyRing`]: the keys a process accepts, by digest, refreshed from the
//!   database by the caller (ingestd does so every 2 s, so a revocation
//!   reaches every process within the 5 s the contract allows).
//! - [`webhook`]: Standard Webhooks signatures (`webhook-id`,
//!   `webhook-timestamp`, `webhook-signature: v1,<base64>`), for keys that
//!   carry a signing secret.

pub mod key;
mod ring;
pub mod webhook;

pub use key::{Digest, KeyFormatError};
pub use ring::{KeyRing, Lookup};
pub use webhook::{SignatureError, SigningSecret};

use uuid::Uuid;

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Writes records of one organization.
    Org,
    /// Writes records of any organization (a trusted gateway).
    Service,
    /// The management API (`/admin/v1/…`); may also write for any organization.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Org => "org",
            Scope::Service => "service",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "org" => Some(Scope::Org),
            "service" => Some(Scope::Service),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a request is, once its key checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub key_id: Uuid,
    pub scope: Scope,
    /// The one organization an [`Scope::Org`] key writes for.
    pub organization: Option<String>,
    /// Requests with this key must be signed with it.
    pub signing_secret: Option<SigningSecret>,
}

impl Principal {
    /// Whether this key may write records of `organization`.
    pub fn may_write(&self, organization: &str) -> bool {
        match self.scope {
            Scope::Org => self.organization.as_deref() == Some(organization),
            Scope::Service | Scope::Admin => true,
        }
    }
}
