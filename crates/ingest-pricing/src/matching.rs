//! Which catalog key prices a record: the candidates tried in a fixed
//! order (SPEC §9, "Matching"; docs/pricing.md), with the providers'
//! aliases taken from a table (`data/providers.toml`), not from code.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

/// The provider table shipped with ingestd.
static PROVIDERS_TOML: &str = include_str!("../data/providers.toml");

/// One row of the provider table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderRow {
    /// The catalog's name, used in `<provider>/<model>` keys.
    pub provider: String,
    /// Other names clients send for it.
    #[serde(default)]
    pub sent: Vec<String>,
    /// The `litellm_provider` values of its bare keys; `[provider]` when empty.
    #[serde(default)]
    pub catalog: Vec<String>,
}

/// The provider table: aliases and the catalog providers of bare keys.
#[derive(Clone, Debug)]
pub struct Providers {
    rows: Vec<ProviderRow>,
    /// Every name (the provider and each alias) → its row.
    by_name: HashMap<String, usize>,
}

#[derive(Debug, thiserror::Error)]
#[error("provider table: {0}")]
pub struct ProvidersError(String);

impl Providers {
    /// The table shipped with ingestd.
    pub fn builtin() -> Providers {
        Providers::parse(PROVIDERS_TOML).unwrap_or_else(|e| unreachable!("data/providers.toml is tested: {e}"))
    }

    pub fn parse(text: &str) -> Result<Providers, ProvidersError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            provider: Vec<ProviderRow>,
        }
        let file: File = toml::from_str(text).map_err(|e| ProvidersError(e.to_string()))?;
        let mut by_name = HashMap::new();
        for (i, row) in file.provider.iter().enumerate() {
            for name in std::iter::once(&row.provider).chain(&row.sent) {
                if by_name.insert(name.clone(), i).is_some() {
                    return Err(ProvidersError(format!("{name:?} appears twice")));
                }
            }
        }
        Ok(Providers { rows: file.provider, by_name })
    }

    fn row(&self, provider: &str) -> Option<&ProviderRow> {
        self.by_name.get(provider).map(|i| &self.rows[*i])
    }
}

/// A catalog key and what it maps to (a price, or the effective-dated
/// prices of that key).
#[derive(Clone, Debug)]
struct Keyed<T> {
    catalog_provider: String,
    value: T,
}

/// The catalog keys with their values, and the provider table.
#[derive(Clone, Debug)]
pub struct Index<T> {
    by_key: HashMap<String, Keyed<T>>,
    providers: Providers,
    /// Provider names that may be a metric label: the catalog's providers
    /// (key prefixes and `litellm_provider` values) and the table's.
    known: HashSet<String>,
}

/// A match: the catalog key and its value.
#[derive(Debug, PartialEq, Eq)]
pub struct Match<'a, T> {
    pub key: &'a str,
    pub value: &'a T,
}

impl<T> Index<T> {
    /// `entries` are (catalog key, `litellm_provider`, value).
    pub fn new(providers: Providers, entries: impl IntoIterator<Item = (String, String, T)>) -> Index<T> {
        let mut known: HashSet<String> = providers.rows.iter().map(|r| r.provider.clone()).collect();
        let mut by_key = HashMap::new();
        for (key, catalog_provider, value) in entries {
            if let Some((prefix, _)) = key.split_once('/') {
                known.insert(prefix.to_owned());
            }
            known.insert(catalog_provider.clone());
            by_key.insert(key, Keyed { catalog_provider, value });
        }
        Index { by_key, providers, known }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&T> {
        self.by_key.get(key).map(|k| &k.value)
    }

    /// The provider as a metric label: its catalog name when the catalog
    /// or the table knows it, else `other` (so clients cannot create series).
    pub fn label<'a>(&'a self, provider: &'a str) -> &'a str {
        match self.providers.row(provider) {
            Some(row) => &row.provider,
            None if self.known.contains(provider) => provider,
            None => "other",
        }
    }

    /// The catalog entry for a record's provider (trimmed, lower-cased),
    /// `model.name` and `model.version`, trying in order (first hit wins):
    ///
    /// 1. the names `<name>-<version>`, `<name>@<version>` (with a version)
    ///    and `<name>`, each as `<provider>/<n>` and then as the bare key
    ///    `<n>` when its catalog provider is the record's provider or one the
    ///    provider table lists for it;
    /// 2. when the table names the provider under another catalog name
    ///    (`aws.bedrock` → `bedrock`), the same names as `<that>/<n>`;
    /// 3. a fine-tuned OpenAI name `ft:<base>:<org>::<id>`: `ft:<base>`, then
    ///    `<base>`, through steps 1 and 2.
    pub fn find(&self, provider: &str, name: &str, version: Option<&str>) -> Option<Match<'_, T>> {
        self.find_where(provider, name, version, |_| true)
    }

    /// [`find`](Self::find), counting only keys whose value `usable` accepts
    /// (for effective-dated prices: one in force at the record's time); a
    /// key that is not usable does not stop the search.
    pub fn find_where(
        &self,
        provider: &str,
        name: &str,
        version: Option<&str>,
        usable: impl Fn(&T) -> bool,
    ) -> Option<Match<'_, T>> {
        let mut found = None;
        self.visit(provider, name, version, &mut |m| {
            if usable(m.value) {
                found = Some(m);
                return true;
            }
            false
        });
        found
    }

    /// Every key [`find_where`](Self::find_where) would consider for these
    /// names, in its order, whatever their values: `find_where` is the first
    /// of them whose value is usable. (A caller that prices many records of
    /// one model looks the candidates up once.)
    pub fn candidates(&self, provider: &str, name: &str, version: Option<&str>) -> Vec<Match<'_, T>> {
        let mut all = Vec::new();
        self.visit(provider, name, version, &mut |m| {
            all.push(m);
            false
        });
        all
    }

    /// Calls `found` with each candidate key in matching order until it
    /// returns true.
    fn visit<'s>(
        &'s self,
        provider: &str,
        name: &str,
        version: Option<&str>,
        found: &mut dyn FnMut(Match<'s, T>) -> bool,
    ) {
        if self.visit_names(provider, name, version, found) {
            return;
        }
        let Some(base) = name.strip_prefix("ft:").and_then(|rest| rest.split(':').next()).filter(|b| !b.is_empty())
        else {
            return;
        };
        if !self.visit_names(provider, &format!("ft:{base}"), None, found) {
            self.visit_names(provider, base, None, found);
        }
    }

    /// Steps 1 and 2 for one name; true when `found` said stop.
    fn visit_names<'s>(
        &'s self,
        provider: &str,
        name: &str,
        version: Option<&str>,
        found: &mut dyn FnMut(Match<'s, T>) -> bool,
    ) -> bool {
        let version = version.map(str::trim).filter(|v| !v.is_empty());
        let mut names = Vec::with_capacity(3);
        if let Some(v) = version {
            names.push(format!("{name}-{v}"));
            names.push(format!("{name}@{v}"));
        }
        names.push(name.to_owned());
        let row = self.providers.row(provider);
        let bare_ok = |catalog_provider: &str| {
            catalog_provider == provider
                || row.is_some_and(|r| {
                    if r.catalog.is_empty() {
                        r.provider == catalog_provider
                    } else {
                        r.catalog.iter().any(|c| c == catalog_provider)
                    }
                })
        };
        for n in &names {
            if let Some(m) = self.exact(&format!("{provider}/{n}"))
                && found(m)
            {
                return true;
            }
            if let Some((key, keyed)) = self.by_key.get_key_value(n.as_str())
                && bare_ok(&keyed.catalog_provider)
                && found(Match { key, value: &keyed.value })
            {
                return true;
            }
        }
        let Some(canonical) = row.map(|r| r.provider.as_str()).filter(|c| *c != provider) else { return false };
        names.iter().any(|n| self.exact(&format!("{canonical}/{n}")).is_some_and(&mut *found))
    }

    fn exact(&self, key: &str) -> Option<Match<'_, T>> {
        self.by_key.get_key_value(key).map(|(key, keyed)| Match { key, value: &keyed.value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_table_parses_and_names_are_unique() {
        let p = Providers::builtin();
        assert_eq!(p.row("aws.bedrock").map(|r| r.provider.as_str()), Some("bedrock"));
        assert!(Providers::parse("[[provider]]\nprovider = \"a\"\nsent = [\"a\"]\n").is_err());
    }

    #[test]
    fn order_and_the_provider_check_on_bare_keys() {
        let index = Index::new(
            Providers::builtin(),
            [
                ("gpt-4o", "openai", 1),
                ("gpt-4o-2024-05-13", "openai", 2),
                ("azure/gpt-4o", "azure", 3),
                ("mistral-large", "bedrock", 4),
                ("mistral/mistral-large", "mistral", 5),
            ]
            .map(|(k, p, v)| (k.to_owned(), p.to_owned(), v)),
        );
        let find = |p, n, v| index.find(p, n, v).map(|m| *m.value);
        assert_eq!(find("openai", "gpt-4o", None), Some(1));
        assert_eq!(find("openai", "gpt-4o", Some("2024-05-13")), Some(2));
        assert_eq!(find("openai", "gpt-4o", Some("2099-01-01")), Some(1));
        assert_eq!(find("azure", "gpt-4o", None), Some(3));
        assert_eq!(find("azure.ai.openai", "gpt-4o", None), Some(3));
        // A bare key of another provider does not price the record.
        assert_eq!(find("groq", "gpt-4o", None), None);
        assert_eq!(find("mistral_ai", "mistral-large", None), Some(5));
        assert_eq!(find("openai", "ft:gpt-4o:acme::x1", None), Some(1));
        // A key that is not usable (no price in force) does not stop the search.
        let usable = index.find_where("openai", "gpt-4o", Some("2024-05-13"), |v| *v != 2).map(|m| *m.value);
        assert_eq!(usable, Some(1));
        let keys: Vec<&str> = index.candidates("openai", "gpt-4o", Some("2024-05-13")).iter().map(|m| m.key).collect();
        assert_eq!(keys, ["gpt-4o-2024-05-13", "gpt-4o"], "every candidate, in matching order");
        let keys: Vec<&str> = index.candidates("azure.ai.openai", "gpt-4o", None).iter().map(|m| m.key).collect();
        assert_eq!(keys, ["azure/gpt-4o"]);
        assert!(index.candidates("groq", "gpt-4o", None).is_empty());
        assert_eq!(index.label("aws.bedrock"), "bedrock");
        assert_eq!(index.label("mistral"), "mistral");
        assert_eq!(index.label("my-proxy"), "other");
    }
}
