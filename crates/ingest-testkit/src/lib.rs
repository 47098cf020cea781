//! Shared by the integration tests of every crate (dev-dependency only).
//!
//! Each test gets its own database: a file in a temporary directory for
//! SQLite, a fresh `CREATE DATABASE` for PostgreSQL. Services are found
//! through `INGESTD_TEST_POSTGRES_URL` (an admin URL; `cargo xtask test` sets
//! it), else the standard local port. A test that cannot reach its service
//! fails with a message naming what to start; it never passes silently.

pub mod conformance;
pub mod http;
pub mod nats;
pub mod python;
pub mod redis;
mod throwaway;
pub mod tls;

use model::{ModelInfo, Performance, TokenUsage, UsageRecord};
use sea_orm::{ConnectionTrait, Database};
use storage::{DatabaseConfig, Store};
use time::OffsetDateTime;
use uuid::Uuid;

pub const POSTGRES_ENV: &str = "INGESTD_TEST_POSTGRES_URL";
const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL of the test PostgreSQL server.
pub fn postgres_admin_url() -> String {
    std::env::var(POSTGRES_ENV).unwrap_or_else(|_| POSTGRES_DEFAULT.to_owned())
}

/// A database that exists for one test.
pub struct TestDatabase {
    pub config: DatabaseConfig,
    pub kind: Kind,
    // Keeps the SQLite file's directory alive for the test's duration.
    _dir: Option<tempfile::TempDir>,
    /// PostgreSQL: (admin url, database name), dropped with the value.
    pg: Option<(String, String)>,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.pg.take() else { return };
        // Drop runs inside the test's runtime; use a thread with its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let admin = Database::connect(admin_url.as_str()).await.ok()?;
                admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.ok()
            })
        });
        let _ = dropped.join();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

impl TestDatabase {
    pub async fn new(kind: Kind) -> Self {
        match kind {
            Kind::Sqlite => Self::sqlite(),
            Kind::Postgres => Self::postgres().await,
        }
    }

    /// A fresh SQLite file with the production defaults (WAL, `synchronous=FULL`).
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().join("test.db");
        let config =
            DatabaseConfig { url: format!("sqlite://{}?mode=rwc", path.display()), ..DatabaseConfig::default() };
        TestDatabase { config, kind: Kind::Sqlite, _dir: Some(dir), pg: None }
    }

    /// A fresh database on the test PostgreSQL server.
    pub async fn postgres() -> Self {
        let admin_url = postgres_admin_url();
        let admin = Database::connect(admin_url.as_str()).await.unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at {admin_url} ({e}); start it (e.g. `pg_ctlcluster 15 main start`) \
                 or set {POSTGRES_ENV}, or run the suite with `cargo xtask test`, which starts a throwaway server"
            )
        });
        let name = format!("ingestd_t_{}", Uuid::now_v7().simple());
        admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create test database");
        let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin_url);
        let config = DatabaseConfig { url: format!("{base}/{name}"), ..DatabaseConfig::default() };
        TestDatabase { config, kind: Kind::Postgres, _dir: None, pg: Some((admin_url.clone(), name)) }
    }

    /// Connects and migrates.
    pub async fn store(&self) -> Store {
        let store = Store::connect(&self.config).await.expect("connect to the test database");
        store.migrate().await.expect("migrate the test database");
        store
    }
}

/// Runs each named `async fn(Kind)` as two tests, `sqlite::name` and
/// `postgres::name`: one suite for every storage backend.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::Kind::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::Kind::Postgres).await })*
        }
    };
}

/// Makes the database refuse every row whose `model_name` is `model`,
/// although the model accepts it: a CHECK constraint on PostgreSQL
/// (SQLSTATE 23514), a trigger raising `ABORT` on SQLite (a constraint
/// error). It stands in for any value validation lets through and the
/// database refuses (a test-only hook: poison isolation must hold for
/// whatever the database refuses).
pub async fn refuse_model(store: &Store, model: &str) {
    let model = model.replace('\'', "''");
    let sql = match store.backend() {
        storage::Backend::Postgres => {
            format!("ALTER TABLE usage_records ADD CONSTRAINT test_refuse_model CHECK (model_name <> '{model}')")
        }
        storage::Backend::Sqlite => format!(
            "CREATE TRIGGER test_refuse_model BEFORE INSERT ON usage_records WHEN NEW.model_name = '{model}' \
             BEGIN SELECT RAISE(ABORT, 'test: this model is refused'); END"
        ),
    };
    store.connection().execute_unprepared(&sql).await.expect("install the refusing constraint");
}

/// A valid record of `org`, numbered `i`, with a fresh time-ordered id.
pub fn record(org: &str, i: u64) -> UsageRecord {
    UsageRecord {
        request_id: Uuid::now_v7(),
        timestamp: OffsetDateTime::now_utc(),
        provider: "openai".to_owned(),
        model: ModelInfo {
            name: "gpt-4o".to_owned(),
            version: Some("2024-08-06".to_owned()),
            context_window: Some(128_000),
        },
        organization_id: org.to_owned(),
        project_id: Some("proj".to_owned()),
        user_id: None,
        usage: TokenUsage {
            prompt_tokens: 100 + i,
            completion_tokens: 50,
            total_tokens: 150 + i,
            cached_tokens: Some(10),
            cache_write_tokens: None,
            reasoning_tokens: None,
        },
        performance: Performance { latency_ms: Some(812.5), time_to_first_token_ms: Some(120.0) },
        tags: vec!["test".to_owned()],
        metadata: Some(serde_json::json!({ "i": i }).as_object().cloned().unwrap_or_default()),
        cost: None,
    }
}

/// The JSON of [`record`], as a client would send it.
pub fn record_json(org: &str, i: u64) -> serde_json::Value {
    serde_json::to_value(record(org, i)).expect("records serialize")
}

/// How one stored record of `org` was priced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCost {
    pub model_name: String,
    pub cost_nano_usd: Option<i64>,
    /// The `model` of the `prices` row used: a catalog key, or the model
    /// name of an organization's price.
    pub price_model: Option<String>,
    pub pricing: String,
    pub cache_write_tokens: Option<i64>,
}

/// Every stored record of `org` with its cost, by ascending `prompt_tokens`.
pub async fn costs(store: &Store, org: &str) -> Vec<StoredCost> {
    let sql = format!(
        "SELECT u.model_name, u.cost_nano_usd, p.model, u.pricing, u.cache_write_tokens \
         FROM usage_records u LEFT JOIN prices p ON p.id = u.price_id \
         WHERE u.organization_id = '{}' ORDER BY u.prompt_tokens",
        org.replace('\'', "''")
    );
    let db = store.connection();
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("read the stored costs");
    rows.iter()
        .map(|row| StoredCost {
            model_name: row.try_get_by_index(0).unwrap(),
            cost_nano_usd: row.try_get_by_index(1).unwrap(),
            price_model: row.try_get_by_index(2).unwrap(),
            pricing: row.try_get_by_index(3).unwrap(),
            cache_write_tokens: row.try_get_by_index(4).unwrap(),
        })
        .collect()
}
