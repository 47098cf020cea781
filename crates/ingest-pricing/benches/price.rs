//! What pricing one record costs (issue 19): matching it to a catalog key
//! and computing its exact cost, against the shipped snapshot.
//!
//! `cargo bench -p ingest-pricing --bench price` (or `cargo xtask bench price`).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ingest_pricing::{Index, Providers, Rates, Tokens};

fn pricing(c: &mut Criterion) {
    let parsed = ingest_pricing::catalog::snapshot().expect("the snapshot reads");
    let index: Index<Rates> =
        Index::new(Providers::builtin(), parsed.entries.into_iter().map(|e| (e.key, e.provider, e.rates)));
    let tokens = Tokens { prompt: 1200, completion: 350, cached: 200, cache_write: 0, reasoning: 0 };
    let cases = [
        ("bare key, versioned (openai gpt-4o 2024-08-06)", "openai", "gpt-4o", Some("2024-08-06")),
        ("provider key (gemini gemini-2.5-pro)", "gemini", "gemini-2.5-pro", None),
        ("alias (aws.bedrock amazon.nova-lite-v1:0)", "aws.bedrock", "amazon.nova-lite-v1:0", None),
        ("unknown (every candidate tried)", "my-gateway", "mystery-model", Some("v1")),
    ];
    let mut group = c.benchmark_group("price one record");
    for (name, provider, model, version) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                let found = index.find(black_box(provider), black_box(model), black_box(version));
                found.map(|m| m.value.cost_nano_usd(black_box(&tokens)))
            })
        });
    }
    // What is left per record once a caller remembers the candidates of a
    // model (the writer's `Pricer`): the arithmetic alone.
    let rates = index.get("gpt-4o").expect("gpt-4o is in the snapshot");
    group.bench_function("cost only (gpt-4o, candidates remembered)", |b| {
        b.iter(|| black_box(rates).cost_nano_usd(black_box(&tokens)))
    });
    group.finish();
}

criterion_group!(benches, pricing);
criterion_main!(benches);
