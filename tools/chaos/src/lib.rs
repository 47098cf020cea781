//! The machinery of `cargo xtask chaos` (see `src/main.rs` for the
//! scenarios): the real `ingestd` binary as a child process, throwaway
//! PostgreSQL and Redis, an HTTP load generator and stream producers (NATS
//! JetStream, Redis Streams) that keep a ledger of every record sent and
//! every record acknowledged, and the check of the ledger against the
//! database, in the manner of Jepsen's queue checker: attempted,
//! acknowledged, stored, lost (acknowledged, not stored), duplicated (stored
//! twice), unexpected (stored, never sent). Records are counted by a marker
//! of their own in `metadata`, not by `request_id`, so records sent without
//! one count too (see [`ledger`]).

pub mod ledger;
pub mod load;
pub mod procs;
pub mod producers;

pub use ledger::{Ledger, Verdict};
pub use load::{Load, LoadReport};
pub use procs::{Ingestd, Postgres, Redis};
pub use producers::{ProduceReport, Producers};
