//! A certificate authority of the test's own, and server or client
//! certificates it signs, written as PEM files (for TLS tests against the
//! real servers: NATS, Redis, PostgreSQL, an OTLP collector).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

pub struct Authority {
    params: CertificateParams,
    key: KeyPair,
    /// The authority's certificate (PEM): what clients are told to trust.
    pub ca_file: PathBuf,
}

/// A certificate and its private key, as PEM files.
pub struct Issued {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Authority {
    /// A new authority; its certificate is written to `dir/ca.pem`.
    pub fn new(dir: &Path) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "ingestd test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).unwrap();
        Authority { params, key, ca_file }
    }

    /// A certificate for `names` (DNS names or IP addresses), written to
    /// `dir/{stem}.pem` and `dir/{stem}-key.pem`.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> Issued {
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or(stem));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &Issuer::from_params(&self.params, &self.key)).unwrap();
        let (cert_file, key_file) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}-key.pem")));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Issued { cert_file, key_file }
    }
}

/// A PostgreSQL server of the test's own (`ssl = on`, a certificate of
/// `authority` for 127.0.0.1 and localhost); stopped when dropped.
pub struct Postgres {
    pub port: u16,
    _server: crate::throwaway::Throwaway,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start(authority: &Authority) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let issued = authority.issue(dir.path(), "postgres", &["127.0.0.1", "localhost"]);
        // PostgreSQL insists on a private key only its user can read; it runs
        // as `postgres` when the tests run as root.
        let run = |cmd: &mut std::process::Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
        run(std::process::Command::new("chmod").arg("600").arg(&issued.key_file));
        if std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n")) {
            run(std::process::Command::new("chown").args(["-R", "postgres"]).arg(dir.path()));
        }
        let cert = format!("ssl_cert_file={}", issued.cert_file.display());
        let key = format!("ssl_key_file={}", issued.key_file.display());
        let server = crate::throwaway::started(ingest_throwaway::postgres(&["ssl=on", &cert, &key]));
        Postgres { port: server.port, _server: server, _dir: dir }
    }
}

/// A `redis-server` of the test's own that speaks only TLS (a certificate
/// of `authority` for 127.0.0.1 and localhost); killed when dropped.
pub struct Redis {
    pub port: u16,
    _server: crate::throwaway::Throwaway,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start(authority: &Authority) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let issued = authority.issue(dir.path(), "redis", &["127.0.0.1", "localhost"]);
        let server = crate::throwaway::started(ingest_throwaway::redis_tls(issued.cert_file, issued.key_file));
        Redis { port: server.port, _server: server, _dir: dir }
    }

    /// `rediss://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}
