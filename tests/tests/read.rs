//! Reading usage back (SPEC §10) through the whole service, on a real
//! socket, on SQLite and PostgreSQL:
//!
//! - property: for random record sets (several organizations, duplicates,
//!   times on bucket boundaries, records sent out of order and backfilled),
//!   every summary (1m, 1h, 1d; grouped and filtered; paged) equals a direct
//!   aggregation of the stored rows; and still after re-rating and after
//!   `rollups rebuild`;
//! - tenancy: an organization's read key never sees another's rows, whatever
//!   the query says; permissions are enforced both ways;
//! - paging records while a load inserts rows (backfilled ones included)
//!   never skips or repeats a row that existed when paging began;
//! - exports (CSV, NDJSON) hold exactly the rows of `/records`, in its order,
//!   with spreadsheet formulas defused; a large export streams in bounded
//!   memory.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use testkit::Kind;
use testkit::http::Client;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use common::Server;

mod common;

testkit::on_every_backend!(
    summaries_equal_a_direct_aggregation_of_the_rows,
    an_organization_key_reads_only_its_organization,
    paging_never_skips_or_repeats_a_row_that_existed,
    exports_hold_the_rows_of_records_with_formulas_defused,
    a_million_row_export_streams_in_bounded_memory,
);

/// A small deterministic generator (xorshift64*): each case is reproducible
/// from its seed, which failures print.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

/// Midnight UTC, `days` days before today's.
fn day_start(days: i64) -> OffsetDateTime {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    OffsetDateTime::from_unix_timestamp(now - now.rem_euclid(86_400) - days * 86_400).unwrap()
}

/// A random record of `org` in the three days before today: on an hour or
/// minute boundary, a nanosecond or half a second either side of one, or
/// anywhere.
fn random_record(rng: &mut Rng, org: &str, base: OffsetDateTime) -> Value {
    let hour = base + time::Duration::hours(rng.below(72) as i64);
    let at = match rng.below(6) {
        0 => hour,
        1 => hour - time::Duration::NANOSECOND,
        2 => hour + time::Duration::milliseconds(500),
        3 => hour - time::Duration::milliseconds(500),
        4 => hour + time::Duration::minutes(rng.below(60) as i64),
        _ => hour + time::Duration::nanoseconds((rng.next() % 3_600_000_000_000) as i64),
    };
    let at = at.max(base);
    let prompt = rng.below(5_000);
    let completion = rng.below(2_000);
    let mut usage =
        json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion });
    if rng.chance(40) {
        usage["cached_tokens"] = json!(rng.below(prompt + 1) / 2);
    }
    if rng.chance(20) {
        usage["cache_write_tokens"] = json!(rng.below(prompt + 1) / 2);
    }
    if rng.chance(30) {
        usage["reasoning_tokens"] = json!(rng.below(completion + 1));
    }
    let (provider, model) = *rng.pick(&[
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-mini"),
        ("anthropic", "claude-3-5-haiku-20241022"),
        ("openai", "no-such-model"),
    ]);
    let mut record = json!({
        "request_id": Uuid::new_v4(),
        "timestamp": rfc3339(at),
        "provider": if rng.chance(20) { " OpenAI " } else { provider },
        "model": { "name": model },
        "organization_id": org,
        "usage": usage,
    });
    if provider != "openai" {
        record["provider"] = json!(provider);
    }
    if rng.chance(60) {
        record["project_id"] = json!(*rng.pick(&["proj-1", "proj-2", "=proj"]));
    }
    if rng.chance(50) {
        record["user_id"] = json!(*rng.pick(&["alice", "bob"]));
    }
    record
}

async fn post_batch(c: &mut Client, key: Option<&str>, records: &[Value]) -> testkit::http::Reply {
    let bearer = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    c.send("POST", "/v1/usage/batch", &headers, serde_json::to_vec(&json!({ "records": records })).unwrap())
        .await
        .unwrap()
}

async fn get(c: &mut Client, key: Option<&str>, path: &str) -> testkit::http::Reply {
    let bearer = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", b.as_str())).collect();
    c.send("GET", path, &headers, Vec::new()).await.unwrap()
}

/// A stored row, read with plain SQL (not through the code under test).
#[derive(Clone, Debug)]
struct Row {
    at: OffsetDateTime,
    provider: String,
    model: String,
    project: Option<String>,
    user: Option<String>,
    sums: [i128; 9],
}

async fn stored_rows(server: &Server, org: &str) -> Vec<Row> {
    let db = server.store.connection();
    let backend = db.get_database_backend();
    let sql = "SELECT occurred_at, provider, model_name, project_id, user_id, prompt_tokens, completion_tokens, \
               total_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, cost_nano_usd FROM usage_records \
               WHERE organization_id = $1";
    let sql = if backend == sea_orm::DbBackend::Sqlite { sql.replace("$1", "?") } else { sql.to_owned() };
    let rows = db.query_all_raw(sea_orm::Statement::from_sql_and_values(backend, sql, [org.into()])).await.unwrap();
    rows.iter()
        .map(|r| {
            let at = match backend {
                sea_orm::DbBackend::Sqlite => {
                    OffsetDateTime::parse(&r.try_get_by_index::<String>(0).unwrap(), &Rfc3339).unwrap()
                }
                _ => r.try_get_by_index::<OffsetDateTime>(0).unwrap(),
            };
            let n = |i: usize| i128::from(r.try_get_by_index::<Option<i64>>(i).unwrap().unwrap_or(0));
            let cost: Option<i64> = r.try_get_by_index(11).unwrap();
            Row {
                at,
                provider: r.try_get_by_index(1).unwrap(),
                model: r.try_get_by_index(2).unwrap(),
                project: r.try_get_by_index(3).unwrap(),
                user: r.try_get_by_index(4).unwrap(),
                sums: [1, n(5), n(6), n(7), n(8), n(9), n(10), n(11), i128::from(cost.is_none())],
            }
        })
        .collect()
}

/// A summary query's parts, as the test chooses them.
#[derive(Clone, Debug)]
struct Query {
    width: i64,
    name: &'static str,
    from: OffsetDateTime,
    to: OffsetDateTime,
    group_by: Vec<&'static str>,
    filter: Option<(&'static str, &'static str)>,
}

fn usd(nano: i128) -> String {
    format!("{}.{:09}", nano / 1_000_000_000, nano % 1_000_000_000)
}

/// One result being summed: its group values and sums.
type Group<'a> = (Vec<(&'a str, Value)>, [i128; 9]);

/// The summary computed here from the rows: bucket start → results, each
/// result keyed by its group values.
fn expected(rows: &[Row], q: &Query) -> BTreeMap<i64, BTreeMap<String, Value>> {
    let first = q.from.unix_timestamp() - q.from.unix_timestamp().rem_euclid(q.width);
    let to = q.to.unix_timestamp() + i64::from(q.to.nanosecond() > 0);
    let mut out: BTreeMap<i64, BTreeMap<String, Value>> = BTreeMap::new();
    let mut sums: BTreeMap<(i64, String), Group<'_>> = BTreeMap::new();
    let mut s = first;
    while s < to {
        out.insert(s, BTreeMap::new());
        s += q.width;
    }
    for r in rows {
        let t = r.at.unix_timestamp();
        let bucket = t - t.rem_euclid(q.width);
        if !out.contains_key(&bucket) {
            continue;
        }
        if let Some((field, value)) = q.filter {
            let v = match field {
                "provider" => Some(r.provider.as_str()),
                "model" => Some(r.model.as_str()),
                "project_id" => r.project.as_deref(),
                _ => r.user.as_deref(),
            };
            if v != Some(value) {
                continue;
            }
        }
        let mut group = Vec::new();
        for g in &q.group_by {
            let v = match *g {
                "provider" => json!(r.provider),
                "model" => json!(r.model),
                "project_id" => json!(r.project),
                _ => json!(r.user),
            };
            group.push((*g, v));
        }
        let key = serde_json::to_string(&group).unwrap();
        let entry = sums.entry((bucket, key)).or_insert_with(|| (group, [0; 9]));
        for (a, b) in entry.1.iter_mut().zip(r.sums) {
            *a += b;
        }
    }
    for ((bucket, key), (group, s)) in sums {
        let mut result = json!({
            "object": "usage.result",
            "requests": s[0] as i64, "prompt_tokens": s[1] as i64, "completion_tokens": s[2] as i64,
            "total_tokens": s[3] as i64, "cached_tokens": s[4] as i64, "cache_write_tokens": s[5] as i64,
            "reasoning_tokens": s[6] as i64, "cost_usd": usd(s[7]), "unpriced_requests": s[8] as i64,
        });
        for (g, v) in group {
            result[g] = v;
        }
        out.get_mut(&bucket).unwrap().insert(key, result);
    }
    out
}

/// The summary the service answers, every page, in the same shape.
async fn answered(c: &mut Client, key: Option<&str>, org: &str, q: &Query) -> BTreeMap<i64, BTreeMap<String, Value>> {
    let mut path = format!(
        "/v1/usage/summary?organization_id={org}&from={}&to={}&bucket_width={}",
        q.from.unix_timestamp(),
        // RFC 3339 for `to`, fractions included.
        form(&rfc3339(q.to)),
        q.name
    );
    if !q.group_by.is_empty() {
        path.push_str(&format!("&group_by={}", q.group_by.join(",")));
    }
    if let Some((field, value)) = q.filter {
        path.push_str(&format!("&{field}={}", form(value)));
    }
    path.push_str("&limit=5");
    let mut out = BTreeMap::new();
    let mut page: Option<String> = None;
    loop {
        let url = match &page {
            Some(p) => format!("{path}&page={p}"),
            None => path.clone(),
        };
        let r = get(c, key, &url).await;
        assert_eq!(r.status, 200, "{url}: {}", String::from_utf8_lossy(&r.body));
        let body = r.json();
        assert_eq!(body["object"], "page");
        for bucket in body["data"].as_array().unwrap() {
            let start = bucket["start_time"].as_i64().unwrap();
            assert_eq!(bucket["end_time"].as_i64().unwrap(), start + q.width);
            let mut results = BTreeMap::new();
            for result in bucket["results"].as_array().unwrap() {
                let group: Vec<(&str, Value)> = q.group_by.iter().map(|g| (*g, result[*g].clone())).collect();
                let previous = results.insert(serde_json::to_string(&group).unwrap(), result.clone());
                assert!(previous.is_none(), "{url}: a group twice in one bucket");
            }
            assert!(out.insert(start, results).is_none(), "{url}: bucket {start} twice");
        }
        match body["next_page"].as_str() {
            Some(p) => {
                assert_eq!(body["has_more"], true);
                page = Some(p.to_owned());
            }
            None => {
                assert_eq!(body["has_more"], false);
                break;
            }
        }
    }
    out
}

fn form(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn random_query(rng: &mut Rng, base: OffsetDateTime) -> Query {
    let (width, name) = *rng.pick(&[(60, "1m"), (3_600, "1h"), (86_400, "1d")]);
    let offset = |rng: &mut Rng, max: i64| time::Duration::seconds(rng.below(max as u64) as i64);
    let (from, to) = match name {
        // At most 6 hours, across an hour boundary, ends mid-second.
        "1m" => {
            let from = base + time::Duration::hours(rng.below(66) as i64) + offset(rng, 3_600);
            (from, from + time::Duration::minutes(30 + rng.below(300) as i64) + time::Duration::milliseconds(250))
        }
        "1h" => {
            let from = base + offset(rng, 40 * 3_600);
            (from, from + time::Duration::hours(1 + rng.below(40) as i64))
        }
        _ => (base - time::Duration::days(1) + offset(rng, 86_400), base + time::Duration::days(3)),
    };
    let mut group_by = Vec::new();
    for g in ["provider", "model", "project_id", "user_id"] {
        if rng.chance(40) {
            group_by.push(g);
        }
    }
    let filter = match rng.below(5) {
        0 => Some(("provider", "openai")),
        1 => Some(("model", "gpt-4o")),
        2 => Some(("project_id", "=proj")),
        3 => Some(("user_id", "alice")),
        _ => None,
    };
    Query { width, name, from, to, group_by, filter }
}

async fn check_summaries(
    server: &Server,
    c: &mut Client,
    rng: &mut Rng,
    orgs: &[String],
    base: OffsetDateTime,
    seed: u64,
) {
    for org in orgs {
        let rows = stored_rows(server, org).await;
        for _ in 0..6 {
            let q = random_query(rng, base);
            let want = expected(&rows, &q);
            let got = answered(c, None, org, &q).await;
            assert_eq!(got, want, "seed {seed}, organization {org}, {q:?}");
        }
    }
}

async fn summaries_equal_a_direct_aggregation_of_the_rows(kind: Kind) {
    let server = Server::start(kind, |_| {}).await;
    let mut c = server.client().await;
    let base = day_start(3);
    let seeds: Vec<u64> = match std::env::var("INGESTD_TEST_SEED") {
        Ok(s) => vec![s.parse().expect("INGESTD_TEST_SEED is a number")],
        Err(_) => (1..=4).map(|i| 0x5eed_0000 + i).collect(),
    };
    for seed in seeds {
        let mut rng = Rng(seed);
        let orgs = [format!("prop{seed}-a"), format!("prop{seed}-b")];
        let mut sent: Vec<Value> = Vec::new();
        let n = 80 + rng.below(120);
        for _ in 0..n {
            let org = rng.pick(&orgs).clone();
            let mut record = random_record(&mut rng, &org, base);
            // A duplicate: an earlier record's identity, maybe other tokens
            // (the first stored wins; the second counts nowhere).
            if !sent.is_empty() && rng.chance(15) {
                let earlier = rng.pick(&sent).clone();
                record["request_id"] = earlier["request_id"].clone();
                record["organization_id"] = earlier["organization_id"].clone();
                if rng.chance(50) {
                    record = earlier;
                }
            }
            sent.push(record);
        }
        // Out of order, in batches of random size (repeats within a batch too).
        let mut order: Vec<Value> = sent.clone();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut at = 0;
        while at < order.len() {
            let size = (1 + rng.below(40) as usize).min(order.len() - at);
            let r = post_batch(&mut c, None, &order[at..at + size]).await;
            assert!(r.status == 200, "seed {seed}: {} {}", r.status, String::from_utf8_lossy(&r.body));
            at += size;
        }
        check_summaries(&server, &mut c, &mut rng, &orgs, base, seed).await;

        // A backfill after the first answers: older records, and some sent
        // before again (duplicates now, counted nowhere).
        let mut backfill: Vec<Value> = (0..40)
            .map(|_| {
                let org = rng.pick(&orgs).clone();
                let mut r = random_record(&mut rng, &org, base);
                r["timestamp"] = json!(rfc3339(base + time::Duration::seconds(rng.below(6 * 3_600) as i64)));
                r
            })
            .collect();
        backfill.extend((0..10).map(|_| rng.pick(&sent).clone()));
        let r = post_batch(&mut c, None, &backfill).await;
        assert_eq!(r.status, 200, "seed {seed}: {}", String::from_utf8_lossy(&r.body));
        check_summaries(&server, &mut c, &mut rng, &orgs, base, seed).await;

        // Re-rating (a back-dated organization price) moves the sums with the rows.
        let rates: pricing::Rates =
            serde_json::from_value(json!({ "input": "0.000003", "output": "0.000007" })).unwrap();
        server.store.set_org_price(&orgs[0], "openai", "no-such-model", base, &rates).await.unwrap();
        let report = server.store.rerate(base, day_start(0), Some(&orgs[0]), 7, &mut |_| {}).await.unwrap();
        assert!(report.changed > 0 || !sent.iter().any(|r| r["model"]["name"] == "no-such-model"), "seed {seed}");
        check_summaries(&server, &mut c, &mut rng, &orgs, base, seed).await;

        // A rebuild from the rows gives the same sums (of every hour, and of a range).
        server
            .store
            .rebuild_rollups(Some(base + time::Duration::minutes(90)), Some(base + time::Duration::hours(30)))
            .await
            .unwrap();
        server.store.rebuild_rollups(None, None).await.unwrap();
        check_summaries(&server, &mut c, &mut rng, &orgs, base, seed).await;
    }
    server.stop().await;
}

async fn an_organization_key_reads_only_its_organization(kind: Kind) {
    use auth::{Permissions, Scope};
    let server = Server::start(kind, |c| c.auth.mode = ingestd::config::AuthMode::ApiKey).await;
    let keys = server.keys.clone().unwrap();
    let make = |scope, org: Option<&str>, p: &str| {
        let keys = keys.clone();
        let org = org.map(str::to_owned);
        let p = Permissions::parse(p).unwrap();
        async move { keys.create(scope, org, None, false, p).await.unwrap().key }
    };
    let writer = make(Scope::Service, None, "write").await;
    let read_a = make(Scope::Org, Some("tenant-a"), "read").await;
    let both_a = make(Scope::Org, Some("tenant-a"), "read,write").await;
    let write_a = make(Scope::Org, Some("tenant-a"), "write").await;
    let read_service = make(Scope::Service, None, "read").await;
    let admin = make(Scope::Admin, None, "write").await;
    let mut c = server.client().await;
    let base = day_start(3);
    let mut rng = Rng(99);
    let a: Vec<Value> = (0..30).map(|_| random_record(&mut rng, "tenant-a", base)).collect();
    let b: Vec<Value> = (0..30).map(|_| random_record(&mut rng, "tenant-b", base)).collect();
    assert_eq!(post_batch(&mut c, Some(&writer), &a).await.status, 200);
    assert_eq!(post_batch(&mut c, Some(&writer), &b).await.status, 200);
    let b_ids: BTreeSet<String> = b.iter().map(|r| r["request_id"].as_str().unwrap().to_owned()).collect();
    let from = base.unix_timestamp() - 86_400;

    // Whatever the query names, an organization key gets its own rows or a 403.
    for key in [&read_a, &both_a] {
        for query in ["", "organization_id=tenant-a&"] {
            let r = get(&mut c, Some(key), &format!("/v1/usage/records?{query}limit=1000")).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let data = r.json()["data"].as_array().unwrap().clone();
            assert_eq!(data.len(), 30);
            assert!(data.iter().all(|row| row["organization_id"] == "tenant-a"));
            let r = get(&mut c, Some(key), &format!("/v1/usage/export?{query}format=ndjson")).await;
            assert_eq!(r.status, 200);
            let text = String::from_utf8(r.body.to_vec()).unwrap();
            assert_eq!(text.lines().count(), 30);
            assert!(b_ids.iter().all(|id| !text.contains(id.as_str())), "export leaked tenant-b");
            let r = get(&mut c, Some(key), &format!("/v1/usage/summary?{query}from={from}&bucket_width=1d")).await;
            assert_eq!(r.status, 200);
            let requests: i64 = r.json()["data"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|b| b["results"].as_array().unwrap().clone())
                .map(|x| x["requests"].as_i64().unwrap())
                .sum();
            assert_eq!(requests, 30);
        }
        for path in [
            "/v1/usage/records?organization_id=tenant-b".to_owned(),
            "/v1/usage/export?organization_id=tenant-b&format=csv".to_owned(),
            format!("/v1/usage/summary?organization_id=tenant-b&from={from}"),
        ] {
            let r = get(&mut c, Some(key), &path).await;
            assert_eq!(r.status, 403, "{path}");
            assert_eq!(r.json()["code"], "organization_forbidden", "{path}");
            assert!(b_ids.iter().all(|id| !String::from_utf8_lossy(&r.body).contains(id.as_str())));
        }
        // Repeating the parameter does not get around it.
        let r = get(&mut c, Some(key), "/v1/usage/records?organization_id=tenant-a&organization_id=tenant-b").await;
        assert_eq!(r.status, 400);
    }
    // Without `read`: 403 permission_denied; without `write`: no ingestion.
    for key in [&write_a, &writer] {
        let r = get(&mut c, Some(key), "/v1/usage/records?organization_id=tenant-a").await;
        assert_eq!(r.status, 403);
        assert_eq!(r.json()["code"], "permission_denied");
    }
    let r = post_batch(&mut c, Some(&read_a), &a[..1]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "permission_denied");
    let r = post_batch(&mut c, Some(&read_service), &a[..1]).await;
    assert_eq!(r.status, 403);
    // A service key with `read`, and an admin key, name the organization.
    for key in [&read_service, &admin] {
        let r = get(&mut c, Some(key), "/v1/usage/records").await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
        let r = get(&mut c, Some(key), "/v1/usage/records?organization_id=tenant-b&limit=1000").await;
        assert_eq!(r.status, 200);
        let data = r.json()["data"].as_array().unwrap().clone();
        assert_eq!(data.len(), 30);
        assert!(data.iter().all(|row| row["organization_id"] == "tenant-b"));
    }
    // No key at all.
    assert_eq!(get(&mut c, None, "/v1/usage/records?organization_id=tenant-a").await.status, 401);
    server.stop().await;
}

/// Every row of `org` through `/records`, `limit` per page, newest first.
async fn page_all(c: &mut Client, org: &str, limit: u32, extra: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/usage/records?organization_id={org}&limit={limit}{extra}");
        if let Some(cur) = &cursor {
            path.push_str(&format!("&cursor={cur}"));
        }
        let r = get(c, None, &path).await;
        assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(&r.body));
        let body = r.json();
        out.extend(body["data"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return out,
        }
    }
}

fn position(row: &Value) -> (OffsetDateTime, String) {
    (
        OffsetDateTime::parse(row["occurred_at"].as_str().unwrap(), &Rfc3339).unwrap(),
        row["request_id"].as_str().unwrap().to_owned(),
    )
}

async fn paging_never_skips_or_repeats_a_row_that_existed(kind: Kind) {
    let server = Server::start(kind, |_| {}).await;
    let mut c = server.client().await;
    let base = day_start(3);
    let org = "pager";
    let mut rng = Rng(7);
    // Many rows share a second (and some the same instant): the order's
    // second key, request_id, decides.
    let mut existing = Vec::new();
    for i in 0..600 {
        let mut r = random_record(&mut rng, org, base);
        if i % 3 == 0 {
            r["timestamp"] = json!(rfc3339(base + time::Duration::hours(10)));
        }
        existing.push(r);
    }
    for chunk in existing.chunks(100) {
        assert_eq!(post_batch(&mut c, None, chunk).await.status, 200);
    }
    let before: BTreeSet<String> = existing.iter().map(|r| r["request_id"].as_str().unwrap().to_owned()).collect();

    // A load inserts rows while paging: newer, older (backfilled) and on
    // the very instant many existing rows share.
    let addr = server.addr;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let load = tokio::spawn(async move {
        let mut c = Client::connect(addr).await.unwrap();
        let mut rng = Rng(8);
        let mut inserted = 0;
        loop {
            if stopped.try_recv().is_ok() {
                return inserted;
            }
            let mut batch: Vec<Value> = (0..20).map(|_| random_record(&mut rng, "pager", base)).collect();
            batch[0]["timestamp"] = json!(rfc3339(base + time::Duration::hours(10)));
            assert_eq!(post_batch(&mut c, None, &batch).await.status, 200);
            inserted += 20;
            tokio::task::yield_now().await;
        }
    });
    let seen = page_all(&mut c, org, 37, "").await;
    let _ = stop.send(());
    let inserted = load.await.unwrap();
    assert!(inserted > 0, "the load inserted nothing while paging");

    let ids: Vec<String> = seen.iter().map(|r| r["request_id"].as_str().unwrap().to_owned()).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a row was repeated");
    for id in &before {
        assert!(unique.contains(id), "row {id} existed when paging began and was skipped");
    }
    // Newest first, strictly.
    for pair in seen.windows(2) {
        assert!(position(&pair[0]) > position(&pair[1]), "out of order: {} then {}", pair[0], pair[1]);
    }
    // Bad cursors and limits are 400s.
    for bad in ["cursor=abc", "limit=0", "limit=1001", "limit=x", "from=yesterday", "nope=1"] {
        let r = get(&mut c, None, &format!("/v1/usage/records?organization_id={org}&{bad}")).await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["code"], "invalid_request", "{bad}");
    }
    server.stop().await;
}

async fn exports_hold_the_rows_of_records_with_formulas_defused(kind: Kind) {
    let server = Server::start(kind, |_| {}).await;
    let mut c = server.client().await;
    let base = day_start(3);
    let org = "exporter";
    let mut rng = Rng(11);
    let mut records: Vec<Value> = (0..2_500).map(|_| random_record(&mut rng, org, base)).collect();
    records[0]["user_id"] = json!("=HYPERLINK(\"http://x\")");
    records[0]["tags"] = json!(["a,b", "quote\"d"]);
    records[0]["metadata"] = json!({ "note": "line\nbreak" });
    records[1]["user_id"] = json!("@SUM(A1)");
    records[2]["user_id"] = json!("+1");
    for chunk in records.chunks(500) {
        assert_eq!(post_batch(&mut c, None, chunk).await.status, 200);
    }
    let window = format!("&from={}&to={}", base.unix_timestamp() + 3_600, base.unix_timestamp() + 60 * 3_600);
    let listed = page_all(&mut c, org, 1_000, &window).await;
    assert!(listed.len() > 1_000 && listed.len() < 2_500, "{}", listed.len());

    let ndjson = get(&mut c, None, &format!("/v1/usage/export?organization_id={org}&format=ndjson{window}")).await;
    assert_eq!(ndjson.status, 200);
    assert_eq!(ndjson.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> =
        String::from_utf8(ndjson.body.to_vec()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, listed);

    let csv = get(&mut c, None, &format!("/v1/usage/export?organization_id={org}&format=csv{window}")).await;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let mut reader = csv::Reader::from_reader(&csv.body[..]);
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    // The documented order (docs/api.md), and every field of a record.
    let columns = [
        "organization_id",
        "request_id",
        "occurred_at",
        "provider",
        "model_name",
        "model_version",
        "project_id",
        "user_id",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "context_window",
        "latency_ms",
        "time_to_first_token_ms",
        "cost_nano_usd",
        "price_id",
        "pricing",
        "tags",
        "metadata",
        "source",
        "received_at",
    ];
    assert_eq!(header, columns);
    let fields: BTreeSet<&str> = listed[0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(fields, columns.into_iter().collect::<BTreeSet<_>>());
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), listed.len());
    for (row, record) in rows.iter().zip(&listed) {
        for (cell, name) in row.iter().zip(&header) {
            let value = &record[name.as_str()];
            let plain = match value {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let want = if plain.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{plain}") } else { plain };
            // Times are compared as times (the export and the JSON may
            // write the same instant differently).
            if name.ends_with("_at") {
                let parse = |s: &str| OffsetDateTime::parse(s, &Rfc3339).unwrap();
                assert_eq!(parse(cell), parse(&want), "{name}");
            } else if name.ends_with("_ms") && !cell.is_empty() {
                assert_eq!(cell.parse::<f64>().unwrap(), want.parse::<f64>().unwrap(), "{name}");
            } else {
                assert_eq!(cell, want, "{name} of {}", record["request_id"]);
            }
        }
    }
    let all = get(&mut c, None, &format!("/v1/usage/export?organization_id={org}&format=csv")).await;
    let text = String::from_utf8(all.body.to_vec()).unwrap();
    assert!(text.contains("'=HYPERLINK"), "the formula cell is not defused");
    assert!(text.contains("'@SUM(A1)") && text.contains("'+1"));
    assert!(!text.contains(",=HYPERLINK") && !text.contains(",@SUM"));
    let r = get(&mut c, None, &format!("/v1/usage/export?organization_id={org}&format=xlsx")).await;
    assert_eq!(r.status, 400);
    server.stop().await;
}

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// 1M rows, generated by the database itself (the writer is not what is
/// measured), exported as CSV to a client that discards it: the process's
/// resident memory grows by less than 50 MiB while the export runs.
async fn a_million_row_export_streams_in_bounded_memory(kind: Kind) {
    const ROWS: i64 = 1_000_000;
    let server = Server::start(kind, |_| {}).await;
    let db = server.store.connection();
    let base = day_start(2).unix_timestamp();
    let sql = match kind {
        Kind::Sqlite => format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) \
             INSERT INTO usage_records (organization_id, request_id, provider, model_name, prompt_tokens, \
             completion_tokens, total_tokens, tags, occurred_at, received_at, source, pricing) \
             SELECT 'bulk', lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) \
             || '-a' || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))), 'openai', 'gpt-4o', i % 1000, 7, \
             i % 1000 + 7, '[\"t\"]', strftime('%Y-%m-%dT%H:%M:%S', {base} + i / 20, 'unixepoch') || '.000000000Z', \
             strftime('%Y-%m-%dT%H:%M:%SZ', 'now'), 'http', 'unpriced' FROM n"
        ),
        Kind::Postgres => format!(
            "INSERT INTO usage_records (organization_id, request_id, provider, model_name, prompt_tokens, \
             completion_tokens, total_tokens, tags, occurred_at, received_at, source, pricing) \
             SELECT 'bulk', gen_random_uuid(), 'openai', 'gpt-4o', i % 1000, 7, i % 1000 + 7, '[\"t\"]'::jsonb, \
             to_timestamp({base} + i / 20.0), now(), 'http', 'unpriced' FROM generate_series(1, {ROWS}) i"
        ),
    };
    // Unbounded: the pool's statement timeout is for ingestion.
    let txn = sea_orm::TransactionTrait::begin(db).await.unwrap();
    if kind == Kind::Postgres {
        txn.execute_unprepared("SET LOCAL statement_timeout = 0").await.unwrap();
    }
    txn.execute_unprepared(&sql).await.unwrap();
    txn.commit().await.unwrap();
    // As autovacuum would after such a load (without statistics
    // PostgreSQL sorts the whole organization for every page).
    db.execute_unprepared("ANALYZE usage_records").await.unwrap();
    assert_eq!(server.count("bulk").await, ROWS as u64);

    let mut c = server.client().await;
    let baseline = rss();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    };
    let mut lines = 0u64;
    let started = std::time::Instant::now();
    let (status, _, bytes) = c
        .stream("GET", "/v1/usage/export?organization_id=bulk&format=csv", &[], |chunk| {
            lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        })
        .await
        .unwrap();
    let elapsed = started.elapsed();
    sampler.abort();
    assert_eq!(status, 200);
    assert_eq!(lines, ROWS as u64 + 1, "every row and the header");
    let growth = peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(baseline);
    eprintln!(
        "{kind:?}: exported {ROWS} rows ({bytes} bytes) in {elapsed:?}; resident memory grew by {} KiB",
        growth / 1024
    );
    assert!(growth < 50 << 20, "resident memory grew by {} MiB", growth >> 20);
    server.stop().await;
}
