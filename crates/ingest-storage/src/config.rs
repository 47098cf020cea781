use serde::{Deserialize, Serialize};

/// The `[database]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path?mode=rwc` or `postgres://user@host/db`.
    pub url: String,
    /// Apply pending migrations when `ingestd serve` starts.
    pub auto_migrate: bool,
    /// SQLite durability: `full` (default: a commit survives power loss),
    /// `normal` (survives a process crash; may lose the last commits on
    /// power loss) or `off`.
    pub sqlite_synchronous: SqliteSynchronous,
    /// Pool size. SQLite serializes writers anyway; reads and pings use the rest.
    pub max_connections: u32,
    /// How long a statement waits for a lock (SQLite) or a pooled
    /// connection; on PostgreSQL also the `statement_timeout` of every
    /// statement but the migrations'.
    pub busy_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://cost-ops.db?mode=rwc".to_owned(),
            auto_migrate: true,
            sqlite_synchronous: SqliteSynchronous::Full,
            max_connections: 8,
            busy_timeout_ms: 5_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    Off,
    Normal,
    #[default]
    Full,
}

/// The `[writer]` section: the group-commit writer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriterConfig {
    /// Records waiting to be committed, at most; beyond it submissions are
    /// refused as overloaded (HTTP 503) rather than queued without bound.
    pub queue_capacity: usize,
    /// Records committed in one transaction, at most.
    pub max_batch_rows: usize,
    /// How long a batch waits for more submissions before committing, at
    /// most. 0 (the default): commit what is queued at once; submissions
    /// that arrive meanwhile wait for this commit and form the next batch
    /// (docs/benchmarks.md, "HTTP").
    pub linger_ms: u64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig { queue_capacity: 10_000, max_batch_rows: 5_000, linger_ms: 0 }
    }
}
