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
        let label = self.catalog.label(&r.provider);
        let own = self
            .orgs
            .get(&r.organization_id)
            .and_then(|by_provider| by_provider.get(&r.provider)?.get(&r.model.name))
            .and_then(|rows| in_force(rows, r.timestamp));
        let row = own.or_else(|| {
            let at = r.timestamp;
            let found = self.catalog.find_where(&r.provider, &r.model.name, r.model.version.as_deref(), |rows| {
                in_force(rows, at).is_some()
            })?;
            in_force(found.value, at)
        });
        let cost = row.and_then(|row| {
            let tokens = Tokens {
                prompt: r.usage.prompt_tokens,
                completion: r.usage.completion_tokens,
                cached: r.usage.cached_tokens.unwrap_or(0),
                cache_write: r.usage.cache_write_tokens.unwrap_or(0),
                reasoning: r.usage.reasoning_tokens.unwrap_or(0),
            };
            match row.rates.cost_nano_usd(&tokens) {
                Ok(nano_usd) => Some(Cost { price_id: row.id, nano_usd }),
                Err(e) => {
                    tracing::debug!(price_id = row.id, error = %e, "record left unpriced");
                    None
                }
            }
        });
        Priced { cost, label }
    }
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

    fn replace(&self, book: PriceBook) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(book);
    }
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
        let entries: Vec<(String, String, Rates)> =
            parsed.entries.into_iter().map(|e| (e.key, e.provider, e.rates)).collect();
        self.insert_catalog(pricing::SNAPSHOT_VERSION, OffsetDateTime::UNIX_EPOCH, &entries).await
    }

    /// Stores a catalog version with all its entries, in one transaction;
    /// false when that version is stored already.
    async fn insert_catalog(
        &self,
        version: &str,
        effective_from: OffsetDateTime,
        entries: &[(String, String, Rates)],
    ) -> Result<bool, Error> {
        let now = OffsetDateTime::now_utc();
        let txn = self.connection().begin().await?;
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
                (entries.len() as i64).into(),
                self.timestamp(now).into(),
            ])
            .on_conflict(OnConflict::column(PriceCatalogs::Version).do_nothing().to_owned());
        if txn.execute_raw(self.build(&q)).await?.rows_affected() == 0 {
            return Ok(false);
        }
        for chunk in entries.chunks(INSERT_CHUNK) {
            let mut q = Query::insert();
            q.into_table(PricesTable::Table).columns([
                PricesTable::Version,
                PricesTable::Provider,
                PricesTable::Model,
                PricesTable::EffectiveFrom,
                PricesTable::Rates,
                PricesTable::CreatedAt,
            ]);
            for (key, provider, rates) in chunk {
                let rates = serde_json::to_string(rates).map_err(|e| Error::Prices(e.to_string()))?;
                q.values_panic([
                    version.into(),
                    provider.as_str().into(),
                    key.as_str().into(),
                    self.timestamp(effective_from).into(),
                    rates.into(),
                    self.timestamp(now).into(),
                ]);
            }
            txn.execute_raw(self.build(&q)).await?;
        }
        self.bump_generation(&txn).await?;
        txn.commit().await?;
        tracing::info!(version, entries = entries.len(), "price catalog loaded");
        Ok(true)
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
        let mut q = Query::select();
        q.columns([
            PricesTable::Id,
            PricesTable::OrganizationId,
            PricesTable::Provider,
            PricesTable::Model,
            PricesTable::EffectiveFrom,
            PricesTable::EffectiveTo,
            PricesTable::Rates,
        ])
        .from(PricesTable::Table)
        .order_by(PricesTable::EffectiveFrom, Order::Asc)
        .order_by(PricesTable::Id, Order::Asc);
        let rows = self.connection().query_all_raw(self.build(&q)).await?;
        let mut catalog: HashMap<String, (String, Vec<PriceRow>)> = HashMap::new();
        let mut orgs = OrgPrices::new();
        for row in &rows {
            let id: i64 = row.try_get_by_index(0)?;
            let org: Option<String> = row.try_get_by_index(1)?;
            let (provider, model): (String, String) = (row.try_get_by_index(2)?, row.try_get_by_index(3)?);
            let text: String = row.try_get_by_index(6)?;
            let rates: Rates = match serde_json::from_str(&text) {
                Ok(rates) => rates,
                Err(e) => {
                    tracing::warn!(price_id = id, error = %e, "a stored price cannot be read; it prices nothing");
                    continue;
                }
            };
            let from = self.get_time(row, 4)?.unwrap_or(OffsetDateTime::UNIX_EPOCH);
            let price = PriceRow { id, from, to: self.get_time(row, 5)?, rates };
            match org {
                Some(org) => {
                    orgs.entry(org).or_default().entry(provider).or_default().entry(model).or_default().push(price)
                }
                None => catalog.entry(model).or_insert_with(|| (provider, Vec::new())).1.push(price),
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
