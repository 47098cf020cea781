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
