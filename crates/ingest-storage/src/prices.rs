//! Effective-dated prices (SPEC §9; docs/pricing.md): the tables, the
//! catalog snapshot loaded on first start, and the in-memory [`PriceBook`]
//! every submission is priced from before it reaches the writer.
//!
//! The book is rebuilt from the `prices` table whenever `price_book.generation`
//! moves (every change to `prices` increments it in the same transaction);
//! `ingestd` checks it every 2 s. Pricing a record is a few hash lookups
//! and integer arithmetic, done on the submitting task, not the writer's.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use model::{Cost, UsageRecord};
use pricing::{Index, Providers, Rates, Tokens};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Order, Query};
use sea_orm::{ConnectionTrait, TransactionTrait};
use time::OffsetDateTime;

use crate::schema::{PriceBook as PriceBookTable, PriceCatalogs, Prices as PricesTable};
use crate::{Error, Store};

/// Catalog rows inserted per statement when a catalog is loaded.
const INSERT_CHUNK: usize = 500;

/// One stored price: in force from `from` (inclusive) to `to` (exclusive).
#[derive(Clone, Debug)]
struct PriceRow {
    id: i64,
    from: OffsetDateTime,
    to: Option<OffsetDateTime>,
    rates: Rates,
}

/// The row of `rows` (sorted by `from`) in force at `at`.
fn in_force(rows: &[PriceRow], at: OffsetDateTime) -> Option<&PriceRow> {
    rows.iter().rev().find(|r| r.from <= at && r.to.is_none_or(|to| at < to))
}

/// Every price in force at some time, indexed for pricing records.
#[derive(Debug)]
pub struct PriceBook {
    generation: i64,
    catalog: Index<Vec<PriceRow>>,
    /// Organization → provider → model name → that organization's prices
    /// (nested, so a lookup borrows the record's strings).
    orgs: OrgPrices,
}

type OrgPrices = HashMap<String, HashMap<String, HashMap<String, Vec<PriceRow>>>>;

/// How one record was priced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Priced<'a> {
    pub cost: Option<Cost>,
    /// The provider as a metric label: a catalog provider or `other`.
    pub label: &'a str,
}

impl PriceBook {
    /// A book with no prices: every record is unpriced.
    pub fn empty() -> PriceBook {
        PriceBook { generation: -1, catalog: Index::new(Providers::builtin(), []), orgs: HashMap::new() }
    }

    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// The price in force at the record's `timestamp`: the organization's
    /// own for this provider and exact model name, else the catalog's
    /// (matched as `pricing::Index::find` says); and the cost under it.
    pub fn price<'a>(&'a self, r: &'a UsageRecord) -> Priced<'a> {
        let query = PriceQuery {
            organization_id: &r.organization_id,
            provider: &r.provider,
            model: &r.model.name,
            version: r.model.version.as_deref(),
            at: r.timestamp,
            tokens: tokens_of(r),
        };
        Priced { cost: self.cost(&query), label: self.catalog.label(&r.provider) }
    }

    /// The price row in force for `q` (organization's own first), if any.
    fn row(&self, q: &PriceQuery<'_>) -> Option<&PriceRow> {
        let own = self
            .orgs
            .get(q.organization_id)
            .and_then(|by_provider| by_provider.get(q.provider)?.get(q.model))
            .and_then(|rows| in_force(rows, q.at));
        own.or_else(|| {
            let found =
                self.catalog.find_where(q.provider, q.model, q.version, |rows| in_force(rows, q.at).is_some())?;
            in_force(found.value, q.at)
        })
    }

    /// The cost of `q` under the price in force, or `None` (unpriced).
    pub(crate) fn cost(&self, q: &PriceQuery<'_>) -> Option<Cost> {
        cost_of(self.row(q)?, &q.tokens)
    }

    /// The catalog key a record of `provider` and `model` (`version`)
    /// is priced by at `at`, when no organization price applies.
    pub fn catalog_key(&self, provider: &str, model: &str, version: Option<&str>, at: OffsetDateTime) -> Option<&str> {
        self.catalog.find_where(provider, model, version, |rows| in_force(rows, at).is_some()).map(|m| m.key)
    }
}

/// Prices many records with one [`PriceBook`], remembering for each
/// (organization, provider, model, version) seen the rows that may price it
/// — the organization's own, then the catalog's candidate keys in matching
/// order — so that a model seen before costs string comparisons and the
/// arithmetic, not hash lookups and formatted candidate keys. Which row
/// applies still depends on each record's time, so the result is exactly
/// [`PriceBook::price`]'s.
pub(crate) struct Pricer<'a> {
    book: &'a PriceBook,
    memo: Vec<Memo<'a>>,
}

struct Memo<'a> {
    organization_id: String,
    provider: String,
    model: String,
    version: Option<String>,
    own: Option<&'a [PriceRow]>,
    catalog: Vec<&'a [PriceRow]>,
    label: String,
}

/// Distinct models remembered per [`Pricer`]; more are priced unremembered.
const MEMO_SIZE: usize = 32;

impl<'a> Pricer<'a> {
    pub(crate) fn new(book: &'a PriceBook) -> Pricer<'a> {
        Pricer { book, memo: Vec::new() }
    }

    /// The record's cost (or `None`) and its provider's metric label.
    pub(crate) fn price<'s>(&'s mut self, r: &'s UsageRecord) -> (Option<Cost>, &'s str) {
        let version = r.model.version.as_deref();
        let found = self.memo.iter().position(|m| {
            m.model == r.model.name
                && m.provider == r.provider
                && m.organization_id == r.organization_id
                && m.version.as_deref() == version
        });
        let i = match found {
            Some(i) => i,
            None if self.memo.len() < MEMO_SIZE => {
                let book = self.book;
                let own = book
                    .orgs
                    .get(&r.organization_id)
                    .and_then(|by_provider| by_provider.get(&r.provider)?.get(&r.model.name))
                    .map(Vec::as_slice);
                let catalog = book
                    .catalog
                    .candidates(&r.provider, &r.model.name, version)
                    .into_iter()
                    .map(|m| m.value.as_slice())
                    .collect();
                self.memo.push(Memo {
                    organization_id: r.organization_id.clone(),
                    provider: r.provider.clone(),
                    model: r.model.name.clone(),
                    version: version.map(str::to_owned),
                    own,
                    catalog,
                    label: book.catalog.label(&r.provider).to_owned(),
                });
                self.memo.len() - 1
            }
            None => {
                let priced = self.book.price(r);
                return (priced.cost, priced.label);
            }
        };
        let m = &self.memo[i];
        let at = r.timestamp;
        let row =
            m.own.and_then(|rows| in_force(rows, at)).or_else(|| m.catalog.iter().find_map(|rows| in_force(rows, at)));
        let cost = row.and_then(|row| cost_of(row, &tokens_of(r)));
        (cost, &m.label)
    }
}

fn tokens_of(r: &UsageRecord) -> Tokens {
    Tokens {
        prompt: r.usage.prompt_tokens,
        completion: r.usage.completion_tokens,
        cached: r.usage.cached_tokens.unwrap_or(0),
        cache_write: r.usage.cache_write_tokens.unwrap_or(0),
        reasoning: r.usage.reasoning_tokens.unwrap_or(0),
    }
}

fn cost_of(row: &PriceRow, tokens: &Tokens) -> Option<Cost> {
    match row.rates.cost_nano_usd(tokens) {
        Ok(nano_usd) => Some(Cost { price_id: row.id, nano_usd }),
        Err(e) => {
            tracing::debug!(price_id = row.id, error = %e, "record left unpriced");
            None
        }
    }
}

/// What a record is priced by: the columns of a stored row, or a record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PriceQuery<'a> {
    pub organization_id: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub version: Option<&'a str>,
    pub at: OffsetDateTime,
    pub tokens: Tokens,
}

/// The current [`PriceBook`], shared by the clones of a [`Store`].
#[derive(Clone, Debug)]
pub(crate) struct Prices(Arc<RwLock<Arc<PriceBook>>>);

impl Default for Prices {
    fn default() -> Self {
        Prices(Arc::new(RwLock::new(Arc::new(PriceBook::empty()))))
    }
}

impl Prices {
    pub(crate) fn current(&self) -> Arc<PriceBook> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Installs `book` unless a newer one is in place already (two
    /// refreshes can overlap: the 2 s tick and the one after a change).
    fn replace(&self, book: PriceBook) {
        let mut current = self.0.write().unwrap_or_else(|e| e.into_inner());
        if book.generation >= current.generation {
            *current = Arc::new(book);
        }
    }
}

/// What [`Store::import_catalog`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImportReport {
    pub version: String,
    #[serde(with = "time::serde::rfc3339")]
    pub effective_from: OffsetDateTime,
    /// Keys new to the catalog.
    pub added: u64,
    /// Keys whose price changed: old row closed, new row.
    pub changed: u64,
    pub unchanged: u64,
    /// Stored keys the file does not have: left in force.
    pub kept: u64,
}

impl Default for ImportReport {
    fn default() -> Self {
        ImportReport {
            version: String::new(),
            effective_from: OffsetDateTime::UNIX_EPOCH,
            added: 0,
            changed: 0,
            unchanged: 0,
            kept: 0,
        }
    }
}

/// A stored price: a catalog key's (`organization_id` none, `version`
/// its catalog version, `model` the key, `provider` LiteLLM's) or an
/// organization's (`provider` as records send it, `model` the exact name).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoredPrice {
    pub id: i64,
    pub organization_id: Option<String>,
    pub version: Option<String>,
    pub provider: String,
    pub model: String,
    #[serde(with = "time::serde::rfc3339")]
    pub effective_from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub effective_to: Option<OffsetDateTime>,
    pub rates: Rates,
}

impl StoredPrice {
    /// Whether it is in force at `at`.
    pub fn in_force_at(&self, at: OffsetDateTime) -> bool {
        self.effective_from <= at && self.effective_to.is_none_or(|to| at < to)
    }
}

/// `t` in UTC without its fraction of a second: every stored price starts
/// and ends on a whole second, so SQLite's text times compare as times.
fn whole_second(t: OffsetDateTime) -> Result<OffsetDateTime, Error> {
    t.checked_to_offset(time::UtcOffset::UTC)
        .filter(|utc| (1..=9999).contains(&utc.year()))
        .ok_or_else(|| Error::Prices(format!("{t} is outside the years 1 to 9999 (UTC)")))?
        .replace_nanosecond(0)
        .map_err(|e| Error::Prices(e.to_string()))
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// A catalog version as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogVersion {
    pub version: String,
    pub effective_from: OffsetDateTime,
    pub entries: i64,
    pub loaded_at: OffsetDateTime,
}

impl Store {
    /// The price book in use.
    pub fn price_book(&self) -> Arc<PriceBook> {
        self.prices.current()
    }

    /// Loads the shipped catalog snapshot when no catalog is stored yet
    /// (first start), effective from the Unix epoch. Several processes may
    /// race: the version's primary key lets one load it.
    pub async fn load_catalog_snapshot(&self) -> Result<bool, Error> {
        let versions = self.catalog_versions().await?;
        if !versions.is_empty() {
            return Ok(false);
        }
        let parsed = pricing::catalog::snapshot().map_err(|e| Error::Prices(e.to_string()))?;
        match self.import_catalog(pricing::SNAPSHOT_VERSION, OffsetDateTime::UNIX_EPOCH, &parsed.entries).await {
            Ok(_) => Ok(true),
            Err(Error::Prices(_)) if !self.catalog_versions().await?.is_empty() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stores a catalog version in one transaction: a key new to the
    /// catalog gets a row from `effective_from` on; a key whose price (or
    /// `litellm_provider`) changed has its open row closed at
    /// `effective_from` and a new row; an unchanged key gets nothing; a
    /// stored key the file lacks stays in force as it was. `effective_from`
    /// (to the second) must be later than every stored version's.
    pub async fn import_catalog(
        &self,
        version: &str,
        effective_from: OffsetDateTime,
        entries: &[pricing::Entry],
    ) -> Result<ImportReport, Error> {
        let effective_from = whole_second(effective_from)?;
        let now = OffsetDateTime::now_utc();
        let txn = self.connection().begin().await?;
        // First: the row lock on `price_book` serializes every writer of
        // prices, so what this transaction reads next is committed.
        self.bump_generation(&txn).await?;
        let mut q = Query::insert();
        q.into_table(PriceCatalogs::Table)
            .columns([
                PriceCatalogs::Version,
                PriceCatalogs::EffectiveFrom,
                PriceCatalogs::Entries,
                PriceCatalogs::LoadedAt,
            ])
            .values_panic([
                version.into(),
                self.timestamp(effective_from).into(),
                0i64.into(),
                self.timestamp(now).into(),
            ])
            .on_conflict(OnConflict::column(PriceCatalogs::Version).do_nothing().to_owned());
        if txn.execute_raw(self.build(&q)).await?.rows_affected() == 0 {
            return Err(Error::Prices(format!("catalog version {version:?} is stored already")));
        }
        let mut q = Query::select();
        q.expr(Expr::col(PriceCatalogs::EffectiveFrom).max())
            .from(PriceCatalogs::Table)
            .and_where(Expr::col(PriceCatalogs::Version).ne(version));
        if let Some(latest) = txn.query_one_raw(self.build(&q)).await?
            && let Some(latest) = self.get_time(&latest, 0)?
            && latest >= effective_from
        {
            return Err(Error::Prices(format!(
                "a catalog version must take effect after the latest stored one ({}); --effective-from is {}",
                rfc3339(latest),
                rfc3339(effective_from)
            )));
        }

        // The open catalog rows: key → (id, litellm_provider, rates).
        let mut q = Query::select();
        q.columns([PricesTable::Id, PricesTable::Provider, PricesTable::Model, PricesTable::Rates])
            .from(PricesTable::Table)
            .and_where(Expr::col(PricesTable::OrganizationId).is_null())
            .and_where(Expr::col(PricesTable::EffectiveTo).is_null());
        let mut open: HashMap<String, (i64, String, Option<Rates>)> = HashMap::new();
        for row in txn.query_all_raw(self.build(&q)).await? {
            let id: i64 = row.try_get_by_index(0)?;
            let text: String = row.try_get_by_index(3)?;
            open.insert(row.try_get_by_index(2)?, (id, row.try_get_by_index(1)?, serde_json::from_str(&text).ok()));
        }

        let mut report = ImportReport { version: version.to_owned(), effective_from, ..ImportReport::default() };
        let mut new_rows = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for entry in entries {
            if !seen.insert(entry.key.as_str()) {
                continue;
            }
            match open.get(&entry.key) {
                Some((_, provider, Some(rates))) if *provider == entry.provider && *rates == entry.rates => {
                    report.unchanged += 1;
                }
                Some((id, _, _)) => {
                    let mut q = Query::update();
                    q.table(PricesTable::Table)
                        .value(PricesTable::EffectiveTo, self.timestamp(effective_from))
                        .and_where(Expr::col(PricesTable::Id).eq(*id))
                        .and_where(Expr::col(PricesTable::EffectiveTo).is_null());
                    if txn.execute_raw(self.build(&q)).await?.rows_affected() != 1 {
                        return Err(Error::Prices("the prices changed during the import; run it again".into()));
                    }
                    report.changed += 1;
                    new_rows.push(entry);
                }
                None => {
                    report.added += 1;
                    new_rows.push(entry);
                }
            }
        }
        report.kept = open.keys().filter(|key| !seen.contains(key.as_str())).count() as u64;

        for chunk in new_rows.chunks(INSERT_CHUNK) {
            let mut q = Query::insert();
            q.into_table(PricesTable::Table).columns([
                PricesTable::Version,
                PricesTable::Provider,
                PricesTable::Model,
                PricesTable::EffectiveFrom,
                PricesTable::Rates,
                PricesTable::CreatedAt,
            ]);
            for entry in chunk {
                let rates = serde_json::to_string(&entry.rates).map_err(|e| Error::Prices(e.to_string()))?;
                q.values_panic([
                    version.into(),
                    entry.provider.as_str().into(),
                    entry.key.as_str().into(),
                    self.timestamp(effective_from).into(),
                    rates.into(),
                    self.timestamp(now).into(),
                ]);
            }
            txn.execute_raw(self.build(&q)).await?;
        }
        let mut q = Query::update();
        q.table(PriceCatalogs::Table)
            .value(PriceCatalogs::Entries, new_rows.len() as i64)
            .and_where(Expr::col(PriceCatalogs::Version).eq(version));
        txn.execute_raw(self.build(&q)).await?;
        txn.commit().await?;
        tracing::info!(
            version,
            added = report.added,
            changed = report.changed,
            unchanged = report.unchanged,
            "price catalog stored"
        );
        Ok(report)
    }

    /// Every stored price of `organization_id` (`None`: every price, the
    /// catalog's included) for `model` (`None`: any), by model, owner and
    /// start. Prices withdrawn before they took effect are left out.
    pub async fn stored_prices(
        &self,
        organization_id: Option<&str>,
        model: Option<&str>,
    ) -> Result<Vec<StoredPrice>, Error> {
        self.price_rows(organization_id, model, false).await
    }

    /// [`stored_prices`](Self::stored_prices); `lenient`: a row whose
    /// rates cannot be read is left out with a warning instead of failing.
    async fn price_rows(
        &self,
        organization_id: Option<&str>,
        model: Option<&str>,
        lenient: bool,
    ) -> Result<Vec<StoredPrice>, Error> {
        let mut q = Query::select();
        q.columns([
            PricesTable::Id,
            PricesTable::OrganizationId,
            PricesTable::Version,
            PricesTable::Provider,
            PricesTable::Model,
            PricesTable::EffectiveFrom,
            PricesTable::EffectiveTo,
            PricesTable::Rates,
        ])
        .from(PricesTable::Table)
        .order_by(PricesTable::Model, Order::Asc)
        .order_by(PricesTable::OrganizationId, Order::Asc)
        .order_by(PricesTable::EffectiveFrom, Order::Asc)
        .order_by(PricesTable::Id, Order::Asc);
        if let Some(org) = organization_id {
            q.and_where(Expr::col(PricesTable::OrganizationId).eq(org));
        }
        if let Some(model) = model {
            q.and_where(Expr::col(PricesTable::Model).eq(model));
        }
        let mut out = Vec::new();
        for row in self.connection().query_all_raw(self.build(&q)).await? {
            let text: String = row.try_get_by_index(7)?;
            let rates = match serde_json::from_str(&text) {
                Ok(rates) => rates,
                Err(e) if lenient => {
                    let id: i64 = row.try_get_by_index(0)?;
                    tracing::warn!(price_id = id, error = %e, "a stored price cannot be read; it prices nothing");
                    continue;
                }
                Err(e) => return Err(Error::Prices(e.to_string())),
            };
            let price = StoredPrice {
                id: row.try_get_by_index(0)?,
                organization_id: row.try_get_by_index(1)?,
                version: row.try_get_by_index(2)?,
                provider: row.try_get_by_index(3)?,
                model: row.try_get_by_index(4)?,
                effective_from: self.get_time(&row, 5)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
                effective_to: self.get_time(&row, 6)?,
                rates,
            };
            if price.effective_to != Some(price.effective_from) {
                out.push(price);
            }
        }
        Ok(out)
    }

    /// Sets `org`'s price for `provider` and the exact model name `model`
    /// from `effective_from` (to the second) on, replacing whatever that
    /// organization had for them from then on; earlier periods keep their
    /// prices. Every process uses it within 5 s (this one at once).
    pub async fn set_org_price(
        &self,
        org: &str,
        provider: &str,
        model: &str,
        effective_from: OffsetDateTime,
        rates: &Rates,
    ) -> Result<StoredPrice, Error> {
        let effective_from = whole_second(effective_from)?;
        let text = serde_json::to_string(rates).map_err(|e| Error::Prices(e.to_string()))?;
        let txn = self.connection().begin().await?;
        self.bump_generation(&txn).await?; // first: serializes the writers of prices
        self.cut_org_prices(&txn, org, provider, model, effective_from).await?;
        let mut q = Query::insert();
        q.into_table(PricesTable::Table)
            .columns([
                PricesTable::OrganizationId,
                PricesTable::Provider,
                PricesTable::Model,
                PricesTable::EffectiveFrom,
                PricesTable::Rates,
                PricesTable::CreatedAt,
            ])
            .values_panic([
                org.into(),
                provider.into(),
                model.into(),
                self.timestamp(effective_from).into(),
                text.into(),
                self.timestamp(OffsetDateTime::now_utc()).into(),
            ])
            .returning_col(PricesTable::Id);
        let id: i64 = match txn.query_one_raw(self.build(&q)).await? {
            Some(row) => row.try_get_by_index(0)?,
            None => return Err(Error::Prices("the new price has no id".into())),
        };
        txn.commit().await?;
        self.refresh_after_change().await;
        Ok(StoredPrice {
            id,
            organization_id: Some(org.to_owned()),
            version: None,
            provider: provider.to_owned(),
            model: model.to_owned(),
            effective_from,
            effective_to: None,
            rates: rates.clone(),
        })
    }

    /// Ends `org`'s price for `provider` and `model` at `at` (to the
    /// second): from then on the catalog prices its records again. False
    /// when the organization had no such price in force at or after `at`.
    pub async fn end_org_price(
        &self,
        org: &str,
        provider: &str,
        model: &str,
        at: OffsetDateTime,
    ) -> Result<bool, Error> {
        let at = whole_second(at)?;
        let txn = self.connection().begin().await?;
        self.bump_generation(&txn).await?; // first: serializes the writers of prices
        let changed = self.cut_org_prices(&txn, org, provider, model, at).await?;
        if changed == 0 {
            txn.rollback().await?;
            return Ok(false);
        }
        txn.commit().await?;
        self.refresh_after_change().await;
        Ok(true)
    }

    /// Makes `org`'s prices for (`provider`, `model`) end at `at`: a price
    /// that starts at or after it is withdrawn (its range made empty, so a
    /// record priced by it still finds its row), one in force across it is
    /// closed there. Rows changed.
    async fn cut_org_prices(
        &self,
        txn: &impl ConnectionTrait,
        org: &str,
        provider: &str,
        model: &str,
        at: OffsetDateTime,
    ) -> Result<u64, Error> {
        let of = |q: &mut sea_orm::sea_query::UpdateStatement| {
            q.table(PricesTable::Table)
                .and_where(Expr::col(PricesTable::OrganizationId).eq(org))
                .and_where(Expr::col(PricesTable::Provider).eq(provider))
                .and_where(Expr::col(PricesTable::Model).eq(model));
        };
        let mut withdraw = Query::update();
        of(&mut withdraw);
        withdraw
            .value(PricesTable::EffectiveTo, Expr::col(PricesTable::EffectiveFrom))
            .and_where(Expr::col(PricesTable::EffectiveFrom).gte(self.timestamp(at)))
            .and_where(
                Expr::col(PricesTable::EffectiveTo)
                    .is_null()
                    .or(Expr::col(PricesTable::EffectiveTo).gt(Expr::col(PricesTable::EffectiveFrom))),
            );
        let mut close = Query::update();
        of(&mut close);
        close
            .value(PricesTable::EffectiveTo, self.timestamp(at))
            .and_where(Expr::col(PricesTable::EffectiveFrom).lt(self.timestamp(at)))
            .and_where(
                Expr::col(PricesTable::EffectiveTo)
                    .is_null()
                    .or(Expr::col(PricesTable::EffectiveTo).gt(self.timestamp(at))),
            );
        let withdrawn = txn.execute_raw(self.build(&withdraw)).await?.rows_affected();
        let closed = txn.execute_raw(self.build(&close)).await?.rows_affected();
        Ok(withdrawn + closed)
    }

    /// This process's book after a change it committed: a failure is
    /// logged, not returned (the change is stored; the 2 s refresh retries).
    async fn refresh_after_change(&self) {
        if let Err(e) = self.refresh_prices().await {
            tracing::warn!(error = %e, "could not re-read prices after a change; the next refresh will");
        }
    }

    async fn bump_generation(&self, txn: &impl ConnectionTrait) -> Result<(), Error> {
        let mut q = Query::update();
        q.table(PriceBookTable::Table)
            .value(PriceBookTable::Generation, Expr::col(PriceBookTable::Generation).add(1))
            .and_where(Expr::col(PriceBookTable::Id).eq(1));
        txn.execute_raw(self.build(&q)).await?;
        Ok(())
    }

    /// The catalog versions stored, oldest first.
    pub async fn catalog_versions(&self) -> Result<Vec<CatalogVersion>, Error> {
        let mut q = Query::select();
        q.columns([
            PriceCatalogs::Version,
            PriceCatalogs::EffectiveFrom,
            PriceCatalogs::Entries,
            PriceCatalogs::LoadedAt,
        ])
        .from(PriceCatalogs::Table)
        .order_by(PriceCatalogs::EffectiveFrom, Order::Asc)
        .order_by(PriceCatalogs::LoadedAt, Order::Asc);
        let rows = self.connection().query_all_raw(self.build(&q)).await?;
        let missing = || Error::from(sea_orm::DbErr::Type("a catalog version without a time".into()));
        rows.iter()
            .map(|row| {
                Ok(CatalogVersion {
                    version: row.try_get_by_index(0)?,
                    effective_from: self.get_time(row, 1)?.ok_or_else(missing)?,
                    entries: row.try_get_by_index(2)?,
                    loaded_at: self.get_time(row, 3)?.ok_or_else(missing)?,
                })
            })
            .collect()
    }

    async fn price_generation(&self) -> Result<i64, Error> {
        let mut q = Query::select();
        q.column(PriceBookTable::Generation).from(PriceBookTable::Table).and_where(Expr::col(PriceBookTable::Id).eq(1));
        let row = self.connection().query_one_raw(self.build(&q)).await?;
        Ok(match row {
            Some(row) => row.try_get_by_index(0)?,
            None => 0,
        })
    }

    /// Rebuilds the price book when the stored prices changed since it was
    /// built; true when it did.
    pub async fn refresh_prices(&self) -> Result<bool, Error> {
        let generation = self.price_generation().await?;
        if generation == self.prices.current().generation {
            return Ok(false);
        }
        let mut catalog: HashMap<String, (String, Vec<PriceRow>)> = HashMap::new();
        let mut orgs = OrgPrices::new();
        // By model, owner and start: each key's rows come in start order.
        for p in self.price_rows(None, None, true).await? {
            let price = PriceRow { id: p.id, from: p.effective_from, to: p.effective_to, rates: p.rates };
            match p.organization_id {
                Some(org) => {
                    orgs.entry(org).or_default().entry(p.provider).or_default().entry(p.model).or_default().push(price)
                }
                None => {
                    // The latest row's `litellm_provider` decides bare-key matching.
                    let entry = catalog.entry(p.model).or_default();
                    entry.0 = p.provider;
                    entry.1.push(price);
                }
            }
        }
        let catalog =
            Index::new(Providers::builtin(), catalog.into_iter().map(|(key, (provider, rows))| (key, provider, rows)));
        let entries = catalog.len();
        self.prices.replace(PriceBook { generation, catalog, orgs });
        tracing::debug!(generation, entries, "price book rebuilt");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn row(id: i64, from: OffsetDateTime, to: Option<OffsetDateTime>) -> PriceRow {
        PriceRow { id, from, to, rates: Rates::default() }
    }

    fn priced_row(id: i64, from: OffsetDateTime, to: Option<OffsetDateTime>) -> PriceRow {
        let rate = |n: i64| Some(pricing::Decimal::new(n, 7));
        let base = pricing::KindRates { input: rate(id), output: rate(10 * id), ..Default::default() };
        PriceRow { id, from, to, rates: Rates { base, ..Rates::default() } }
    }

    /// The memoizing pricer gives exactly what pricing each record alone
    /// gives, for records of one model at times when different rows (and
    /// different candidate keys) are in force.
    #[test]
    fn the_pricer_agrees_with_the_book() {
        let t = |month: u8| {
            OffsetDateTime::new_utc(
                time::Date::from_calendar_date(2026, time::Month::try_from(month).unwrap(), 1).unwrap(),
                time::Time::MIDNIGHT,
            )
        };
        let catalog = Index::new(
            Providers::builtin(),
            [
                (
                    "gpt-4o",
                    "openai",
                    vec![priced_row(1, OffsetDateTime::UNIX_EPOCH, Some(t(3))), priced_row(2, t(3), None)],
                ),
                ("gpt-4o-2024-05-13", "openai", vec![priced_row(3, t(6), None)]),
                ("azure/gpt-4o", "azure", vec![priced_row(5, OffsetDateTime::UNIX_EPOCH, None)]),
            ]
            .map(|(k, p, rows)| (k.to_owned(), p.to_owned(), rows)),
        );
        let mut orgs = OrgPrices::new();
        orgs.entry("acme".into())
            .or_default()
            .entry("openai".into())
            .or_default()
            .insert("gpt-4o".into(), vec![priced_row(4, t(4), Some(t(5)))]);
        let book = PriceBook { generation: 1, catalog, orgs };
        let mut records = Vec::new();
        for org in ["acme", "other"] {
            for (provider, model) in
                [("openai", "gpt-4o"), ("azure.ai.openai", "gpt-4o"), ("my-proxy", "gpt-4o"), ("openai", "mystery")]
            {
                for version in [None, Some("2024-05-13")] {
                    for month in 1..=8 {
                        let mut r = testkit_record(org, month);
                        r.provider = provider.into();
                        r.model.name = model.into();
                        r.model.version = version.map(str::to_owned);
                        r.timestamp = t(month as u8) + time::Duration::days(14);
                        records.push(r);
                    }
                }
            }
        }
        let mut pricer = Pricer::new(&book);
        let mut ids = std::collections::BTreeSet::new();
        for r in &records {
            let alone = book.price(r);
            let (cost, label) = pricer.price(r);
            assert_eq!(
                (cost, label),
                (alone.cost, alone.label),
                "{} {} {:?} {:?} at {}",
                r.organization_id,
                r.provider,
                r.model.name,
                r.model.version,
                r.timestamp
            );
            ids.extend(cost.map(|c| c.price_id));
        }
        assert_eq!(ids, (1..=5).collect(), "every row priced some record");
        assert!(pricer.memo.len() < records.len(), "models were remembered");
    }

    fn testkit_record(org: &str, i: u64) -> UsageRecord {
        let json = serde_json::json!({
            "timestamp": "2026-01-01T00:00:00Z", "provider": "openai", "model": { "name": "gpt-4o" },
            "organization_id": org, "request_id": uuid::Uuid::from_u64_pair(0, i).to_string(),
            "usage": { "prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100 },
        });
        serde_json::from_value(json).expect("a record")
    }

    #[test]
    fn the_row_in_force() {
        let rows = [
            row(1, datetime!(1970-01-01 0:00 UTC), Some(datetime!(2026-03-01 0:00 UTC))),
            row(2, datetime!(2026-03-01 0:00 UTC), None),
            row(3, datetime!(2026-06-01 0:00 UTC), Some(datetime!(2026-07-01 0:00 UTC))),
        ];
        let id = |t| in_force(&rows, t).map(|r| r.id);
        assert_eq!(id(datetime!(2026-02-28 23:59:59 UTC)), Some(1));
        assert_eq!(id(datetime!(2026-03-01 0:00 UTC)), Some(2));
        assert_eq!(id(datetime!(2026-06-15 0:00 UTC)), Some(3), "the later start wins while it is in force");
        assert_eq!(id(datetime!(2026-07-01 0:00 UTC)), Some(2));
        assert_eq!(in_force(&rows[1..2], datetime!(2000-01-01 0:00 UTC)).map(|r| r.id), None);
    }
}
