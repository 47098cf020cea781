//! PostgreSQL over TLS with `sslmode=verify-full` (issue 22): a throwaway
//! server with a certificate of a certificate authority the test makes;
//! ingestd stores through it when told to trust that authority, and refuses
//! to start when not.

use ingestd::{App, Config};
use sea_orm::{ConnectionTrait, Database, Statement};
use testkit::tls::{Authority, Postgres};
use testkit::{Kind, record_json};

use common::Server;

mod common;

fn url(pg: &Postgres, query: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{}/postgres?{query}", pg.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_sslmode_verify_full_and_a_private_authority() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path());
    let pg = Postgres::start(&ca);
    let verified = url(&pg, &format!("sslmode=verify-full&sslrootcert={}", ca.ca_file.display()));
    let server = Server::start(Kind::Sqlite, |c: &mut Config| c.database.url = verified.clone()).await;
    let mut c = server.client().await;
    assert_eq!(c.post_json("/v1/usage", &record_json("org-tls", 0)).await.status, 200);
    assert_eq!(server.count("org-tls").await, 1);
    // ingestd's connections are the encrypted ones the server sees.
    let plain = Database::connect(url(&pg, "sslmode=disable")).await.unwrap();
    let row = plain
        .query_one_raw(Statement::from_string(
            plain.get_database_backend(),
            "SELECT count(*) FILTER (WHERE s.ssl) AS tls, count(*) FILTER (WHERE NOT s.ssl) AS plain \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = 'postgres'",
        ))
        .await
        .unwrap()
        .unwrap();
    let (tls, unencrypted): (i64, i64) = (row.try_get("", "tls").unwrap(), row.try_get("", "plain").unwrap());
    assert!(tls >= 1, "no TLS connection from ingestd");
    assert_eq!(unencrypted, 1, "only the test's own connection is plain");
    server.stop().await;

    // Not trusting the authority (the system's roots; another authority):
    // ingestd does not start.
    let other = Authority::new(&dir.path().join("other").tap_mkdir());
    for query in
        ["sslmode=verify-full".to_owned(), format!("sslmode=verify-full&sslrootcert={}", other.ca_file.display())]
    {
        let mut config = Config::default();
        config.database.url = url(&pg, &query);
        config.auth.mode = ingestd::config::AuthMode::None;
        let built = tokio::time::timeout(std::time::Duration::from_secs(60), App::build(config)).await;
        match built {
            Ok(Err(e)) => {
                let e = format!("{e:#}").to_lowercase();
                assert!(e.contains("certificate") || e.contains("tls") || e.contains("ssl"), "{query}: {e}");
            }
            Ok(Ok(_)) => panic!("{query}: ingestd started with a certificate it must not trust"),
            Err(_) => panic!("{query}: App::build hung"),
        }
    }
}

trait MkDir {
    fn tap_mkdir(self) -> Self;
}

impl MkDir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
