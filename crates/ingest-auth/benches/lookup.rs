//! The per-request cost of checking an API key: format + checksum, SHA-256,
//! hash-map lookup, constant-time compare; and of verifying a signature.

use criterion::{Criterion, criterion_group, criterion_main};
use ingest_auth::{KeyRing, Principal, Scope, SigningSecret, key};
use std::hint::black_box;

fn lookup(c: &mut Criterion) {
    let ring = KeyRing::new();
    let keys: Vec<String> = (0..10_000).map(|_| key::generate()).collect();
    ring.replace(keys.iter().map(|k| {
        (
            key::digest(k),
            Principal {
                key_id: uuid::Uuid::now_v7(),
                scope: Scope::Service,
                permissions: ingest_auth::Permissions::WRITE,
                organization: None,
                signing_secret: None,
            },
        )
    }));
    let known = &keys[4242];
    let unknown = key::generate();
    c.bench_function("lookup known key (10k keys)", |b| b.iter(|| ring.lookup(black_box(known))));
    c.bench_function("lookup unknown key (10k keys)", |b| b.iter(|| ring.lookup(black_box(&unknown))));
    let secret = SigningSecret::generate();
    let body = vec![b'x'; 1024];
    let sig = secret.sign("msg_1", 1_800_000_000, &body);
    let headers =
        ingest_auth::webhook::Headers { id: Some("msg_1"), timestamp: Some("1800000000"), signature: Some(&sig) };
    c.bench_function("verify signature (1 KiB body)", |b| {
        b.iter(|| secret.verify(black_box(&headers), black_box(&body), 1_800_000_000))
    });
}

criterion_group!(benches, lookup);
criterion_main!(benches);
