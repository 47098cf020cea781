//! `cargo bench -p ingest-ratelimit --features redis -- --warm-up-time 1 --measurement-time 3`
//!
//! Redis benches use `INGESTD_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::FutureExt;
use ingest_ratelimit::{MemoryConfig, MemoryLimiter, Policy, PolicyRegistry, RateLimiter, SystemClock};

const KEYS: usize = 1_000_000;

fn registry() -> Arc<PolicyRegistry> {
    // High enough that the benches measure admissions, not refusals (both cost the same).
    Arc::new(PolicyRegistry::new(Policy::per_minute(10_000_000).unwrap()))
}

fn memory(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory");
    group.throughput(Throughput::Elements(1));

    // Parts of a check, for reading the totals below.
    let clock = SystemClock::new();
    group.bench_function("part_clock_now", |b| b.iter(|| black_box(ingest_ratelimit::Clock::now(&clock))));
    let reg = registry();
    group.bench_function("part_policy_for", |b| b.iter(|| black_box(reg.policy_for(black_box("org-hot")))));
    let hasher = std::hash::RandomState::new();
    group.bench_function("part_siphash", |b| {
        b.iter(|| black_box(std::hash::BuildHasher::hash_one(&hasher, black_box("org-hot"))))
    });
    let policy = reg.default_policy();
    group.bench_function("part_decide", |b| {
        b.iter(|| black_box(ingest_ratelimit::decide(&policy, black_box(Some(5_000_000)), black_box(4_000_000), 1)))
    });

    let limiter = MemoryLimiter::new(registry());
    group.bench_function("hot_key_sync", |b| b.iter(|| black_box(limiter.try_check(black_box("org-hot"), 1))));
    group.bench_function("hot_key_async_trait", |b| {
        b.iter(|| black_box(limiter.check(black_box("org-hot"), 1).now_or_never()))
    });

    let limiter = MemoryLimiter::with_config(
        registry(),
        Arc::new(SystemClock::new()),
        MemoryConfig { max_keys: 2 * KEYS, ..MemoryConfig::default() },
    );
    let keys: Vec<String> = (0..KEYS).map(|i| format!("org-{i:08}")).collect();
    for key in &keys {
        limiter.try_check(key, 1).unwrap();
    }
    // Visit the keys in a scrambled order so consecutive checks hit unrelated cache lines.
    let mut i = 0usize;
    group.bench_function("1M_keys", |b| {
        b.iter(|| {
            i = (i + 7_919) % KEYS;
            black_box(limiter.try_check(&keys[i], 1))
        })
    });

    // With an override table in use (the override lookup is skipped while there are none).
    limiter.set_org_limit("org-special", Policy::per_minute(5).unwrap());
    group.bench_function("1M_keys_with_overrides", |b| {
        b.iter(|| {
            i = (i + 7_919) % KEYS;
            black_box(limiter.try_check(&keys[i], 1))
        })
    });
    group.finish();
}

#[cfg(feature = "redis")]
fn redis(c: &mut Criterion) {
    use std::time::Instant;

    use ingest_ratelimit::RedisLimiter;
    use ingest_ratelimit::redis::RedisLimiterConfig;

    const TASKS: u64 = 64;
    let url = std::env::var("INGESTD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let config = RedisLimiterConfig { key_prefix: format!("bench-rl:{nanos:x}:"), ..RedisLimiterConfig::default() };
    let limiter = runtime.block_on(async {
        match RedisLimiter::connect(&url, registry(), config).await {
            Ok(l) => Arc::new(l),
            Err(e) => panic!("cannot reach Redis at {url}: {e}; start redis-server or set INGESTD_TEST_REDIS_URL"),
        }
    });
    let keys: Arc<Vec<String>> = Arc::new((0..1000).map(|i| format!("org-{i}")).collect());

    let mut group = c.benchmark_group("redis");
    group.throughput(Throughput::Elements(1));
    group.bench_function("check_64_tasks", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let limiter = limiter.clone();
            let keys = keys.clone();
            async move {
                let per_task = iters.div_ceil(TASKS);
                let start = Instant::now();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|t| {
                        let limiter = limiter.clone();
                        let keys = keys.clone();
                        tokio::spawn(async move {
                            for i in 0..per_task {
                                let key = &keys[((t * 131 + i) % keys.len() as u64) as usize];
                                black_box(limiter.check(key, 1).await.unwrap());
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                start.elapsed().mul_f64(iters as f64 / (per_task * TASKS) as f64)
            }
        })
    });
    group.finish();
    // With the default 10 ms call timeout, a check that waited too long was answered by the fallback.
    eprintln!("redis bench: {} checks answered by the fallback", limiter.fallback_count());
}

#[cfg(not(feature = "redis"))]
fn redis(_: &mut Criterion) {}

criterion_group!(benches, memory, redis);
criterion_main!(benches);
