//! Which policy applies to which key: a default plus per-key overrides, changeable at runtime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::Policy;

/// A default policy and per-key overrides. Shared (behind an `Arc`) by a backend and its fallback.
///
/// Overrides live in this process only: every instance of the service must be given the same overrides (the service
/// crate owns that configuration). Changing a key's policy keeps its state: the stored `tat` is simply judged by the
/// new `T` and `C` from the next check on.
#[derive(Debug)]
pub struct PolicyRegistry {
    inner: RwLock<Inner>,
    /// Fast path: skip the override lookup (and its hashing) while there are none.
    has_overrides: AtomicBool,
}

#[derive(Debug)]
struct Inner {
    default: Policy,
    overrides: HashMap<String, Policy>,
}

impl PolicyRegistry {
    /// A registry applying `default` to every key.
    pub fn new(default: Policy) -> Self {
        Self { inner: RwLock::new(Inner { default, overrides: HashMap::new() }), has_overrides: AtomicBool::new(false) }
    }

    /// The policy deciding `key`: its override, or the default.
    pub fn policy_for(&self, key: &str) -> Policy {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        if self.has_overrides.load(Ordering::Acquire)
            && let Some(policy) = inner.overrides.get(key)
        {
            return *policy;
        }
        inner.default
    }

    /// The default policy.
    pub fn default_policy(&self) -> Policy {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).default
    }

    /// Replace the default policy.
    pub fn set_default(&self, policy: Policy) {
        self.inner.write().unwrap_or_else(PoisonError::into_inner).default = policy;
    }

    /// Give `key` its own policy; returns the override it replaces.
    pub fn set_override(&self, key: &str, policy: Policy) -> Option<Policy> {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let old = inner.overrides.insert(key.to_owned(), policy);
        self.has_overrides.store(true, Ordering::Release);
        old
    }

    /// Return `key` to the default policy; returns the removed override.
    pub fn remove_override(&self, key: &str) -> Option<Policy> {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let old = inner.overrides.remove(key);
        self.has_overrides.store(!inner.overrides.is_empty(), Ordering::Release);
        old
    }

    /// The override of `key`, if any.
    pub fn override_for(&self, key: &str) -> Option<Policy> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).overrides.get(key).copied()
    }

    /// All overrides (a snapshot).
    pub fn overrides(&self) -> Vec<(String, Policy)> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.overrides.iter().map(|(k, p)| (k.clone(), *p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_and_can_be_removed() {
        let default = Policy::per_minute(10).unwrap();
        let special = Policy::per_minute(1000).unwrap();
        let reg = PolicyRegistry::new(default);
        assert_eq!(reg.policy_for("a"), default);
        assert_eq!(reg.set_override("a", special), None);
        assert_eq!(reg.policy_for("a"), special);
        assert_eq!(reg.policy_for("b"), default);
        assert_eq!(reg.overrides(), vec![("a".to_owned(), special)]);
        assert_eq!(reg.remove_override("a"), Some(special));
        assert_eq!(reg.policy_for("a"), default);
        assert_eq!(reg.remove_override("a"), None);
        let other = Policy::per_hour(5).unwrap();
        reg.set_default(other);
        assert_eq!(reg.policy_for("zzz"), other);
        assert_eq!(reg.default_policy(), other);
    }
}
