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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_parse_and_print() {
        for (text, read, write) in [("read", true, false), ("write", false, true), ("read,write", true, true)] {
            let p = Permissions::parse(text).expect(text);
            assert_eq!((p.read, p.write), (read, write), "{text}");
            assert_eq!(p.as_str(), text);
        }
        assert_eq!(Permissions::parse("write, read"), Permissions::parse("read,write"));
        for bad in ["", "read,read", "admin", "read,", ",write", "Read"] {
            assert_eq!(Permissions::parse(bad), None, "{bad:?}");
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a key may do with usage (SPEC §10), apart from its [`Scope`]:
/// `write` (ingestion), `read` (the read endpoints), or both. Admin keys
/// may do everything whatever these say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Permissions {
    pub read: bool,
    pub write: bool,
}

impl Permissions {
    /// What keys created without saying get, and what keys made before
    /// permissions existed have.
    pub const WRITE: Permissions = Permissions { read: false, write: true };

    /// `read`, `write` or both, comma-separated (`read,write`); at least
    /// one, each once.
    pub fn parse(s: &str) -> Option<Permissions> {
        Self::from_names(s.split(','))
    }

    /// From permission names, as in the admin API's list.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Permissions> {
        let mut p = Permissions { read: false, write: false };
        for name in names {
            let seen = match name.trim() {
                "read" => std::mem::replace(&mut p.read, true),
                "write" => std::mem::replace(&mut p.write, true),
                _ => return None,
            };
            if seen {
                return None;
            }
        }
        (p.read || p.write).then_some(p)
    }

    /// `read`, `write` or `read,write`: as stored.
    pub fn as_str(self) -> &'static str {
        match (self.read, self.write) {
            (true, true) => "read,write",
            (true, false) => "read",
            _ => "write",
        }
    }

    /// The names, `read` first.
    pub fn names(self) -> Vec<&'static str> {
        [(self.read, "read"), (self.write, "write")].into_iter().filter(|(on, _)| *on).map(|(_, n)| n).collect()
    }
}

impl Default for Permissions {
    fn default() -> Self {
        Permissions::WRITE
    }
}

/// Who a request is, once its key checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub key_id: Uuid,
    pub scope: Scope,
    pub permissions: Permissions,
    /// The one organization an [`Scope::Org`] key writes for.
    pub organization: Option<String>,
    /// Requests with this key must be signed with it.
    pub signing_secret: Option<SigningSecret>,
}

impl Principal {
    /// Whether this key may use the read endpoints.
    pub fn may_read(&self) -> bool {
        self.scope == Scope::Admin || self.permissions.read
    }

    /// Whether this key may ingest.
    pub fn may_ingest(&self) -> bool {
        self.scope == Scope::Admin || self.permissions.write
    }

    /// Whether this key may write records of `organization`.
    pub fn may_write(&self, organization: &str) -> bool {
        match self.scope {
            Scope::Org => self.organization.as_deref() == Some(organization),
            Scope::Service | Scope::Admin => true,
        }
    }
}
