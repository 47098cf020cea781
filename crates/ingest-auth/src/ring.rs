//! The keys a process accepts.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::Principal;
use crate::key::{self, Digest, KeyFormatError};

/// Active keys by digest. The owner refreshes it from the database
/// ([`replace`](Self::replace)); keys created or revoked by this process are
/// applied at once ([`insert`](Self::insert), [`remove`](Self::remove)).
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: RwLock<HashMap<Digest, Arc<Principal>>>,
}

/// The result of presenting a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(Arc<Principal>),
    /// Well-formed, but not an active key (never issued, or revoked).
    Unknown,
    Malformed(KeyFormatError),
}

impl KeyRing {
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// Replaces every key with `keys` (the active keys in the database).
    pub fn replace(&self, keys: impl IntoIterator<Item = (Digest, Principal)>) {
        let fresh: HashMap<_, _> = keys.into_iter().map(|(d, p)| (d, Arc::new(p))).collect();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }

    pub fn insert(&self, digest: Digest, principal: Principal) {
        self.keys.write().unwrap_or_else(|e| e.into_inner()).insert(digest, Arc::new(principal));
    }

    /// Drops the key with this id; whether it was there.
    pub fn remove(&self, key_id: Uuid) -> bool {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let before = keys.len();
        keys.retain(|_, p| p.key_id != key_id);
        keys.len() != before
    }

    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks a presented key: its form, then its digest.
    pub fn lookup(&self, presented: &str) -> Lookup {
        if let Err(e) = key::check_format(presented) {
            return Lookup::Malformed(e);
        }
        let digest = key::digest(presented);
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        // The map finds the candidate by digest; the final comparison is in
        // constant time, so no timing depends on how much of a digest matched.
        match keys.get_key_value(&digest) {
            Some((stored, principal)) if bool::from(stored.ct_eq(&digest)) => Lookup::Found(principal.clone()),
            _ => Lookup::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scope;

    fn principal(scope: Scope, org: Option<&str>) -> Principal {
        Principal {
            key_id: Uuid::now_v7(),
            scope,
            permissions: crate::Permissions::WRITE,
            organization: org.map(str::to_owned),
            signing_secret: None,
        }
    }

    #[test]
    fn finds_active_keys_and_forgets_revoked_ones() {
        let ring = KeyRing::new();
        let a = key::generate();
        let b = key::generate();
        let pa = principal(Scope::Org, Some("org-a"));
        ring.replace([(key::digest(&a), pa.clone()), (key::digest(&b), principal(Scope::Service, None))]);
        assert_eq!(ring.lookup(&a), Lookup::Found(Arc::new(pa.clone())));
        assert!(matches!(ring.lookup(&b), Lookup::Found(p) if p.scope == Scope::Service));
        assert_eq!(ring.lookup(&key::generate()), Lookup::Unknown);
        assert_eq!(ring.lookup("Bearer nonsense"), Lookup::Malformed(KeyFormatError::Prefix));
        assert!(ring.remove(pa.key_id));
        assert_eq!(ring.lookup(&a), Lookup::Unknown);
        assert!(!ring.remove(pa.key_id));
        ring.replace([]);
        assert_eq!(ring.lookup(&b), Lookup::Unknown);
        assert!(ring.is_empty());
    }

    #[test]
    fn org_keys_write_only_their_organization() {
        let org = principal(Scope::Org, Some("a"));
        assert!(org.may_write("a"));
        assert!(!org.may_write("b"));
        assert!(principal(Scope::Service, None).may_write("b"));
        assert!(principal(Scope::Admin, None).may_write("b"));
    }
}
