//! A server process of a test's own, from the one launcher
//! (`ingest-throwaway`, shared with the chaos tool and xtask). A test that
//! cannot start it fails, naming what to install.

pub(crate) use ingest_throwaway::Server as Throwaway;

/// Starts `server` or fails the test with its reason.
pub(crate) fn started(server: std::io::Result<Throwaway>) -> Throwaway {
    server.unwrap_or_else(|e| panic!("cannot start a throwaway server: {e}"))
}
