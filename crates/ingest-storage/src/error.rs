/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsupported database url {url:?}: expected sqlite://… or postgres://…")]
    UnsupportedUrl { url: String },
    #[error("cannot connect to the database")]
    Connect(#[source] sea_orm::DbErr),
    #[error("migration failed")]
    Migrate(#[source] sea_orm::DbErr),
    #[error("database error")]
    Database(#[from] sea_orm::DbErr),
    /// The SQLite writer's own connection (`sqlite.rs`).
    #[error("database error")]
    Sqlite(#[source] rusqlite::Error),
    /// A price catalog that cannot be read or stored.
    #[error("prices: {0}")]
    Prices(String),
}
