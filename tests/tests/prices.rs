//! Effective-dated prices through the whole service (SPEC §9): a newer
//! catalog version changes the price of records that occur after it takes
//! effect and of nothing stored; an organization's back-dated price reaches
//! stored rows only through `prices rerate`, which changes exactly the rows
//! it applies to and nothing on a second run.

use std::collections::BTreeMap;

use sea_orm::ConnectionTrait;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use testkit::Kind;
use testkit::http::Client;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use common::{Server, admin};

mod common;

testkit::on_every_backend!(
    a_new_catalog_version_prices_only_records_after_it,
    a_back_dated_organization_price_reaches_exactly_its_rows_by_rerate,
);

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

/// A record of `org` at `at`: `prompt` tokens (of which `cached` read from
/// the cache) and 50 or `completion` completion tokens. Tests tell rows
/// apart by their prompt tokens.
fn record(org: &str, at: OffsetDateTime, provider: &str, model: &str, prompt: u64, cached: u64) -> Value {
    let completion = 50;
    let mut usage =
        json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion });
    if cached > 0 {
        usage["cached_tokens"] = json!(cached);
    }
    json!({
        "timestamp": rfc3339(at),
        "provider": provider,
        "model": { "name": model },
        "organization_id": org,
        "usage": usage,
    })
}

/// Every stored row of `org` as (prompt tokens, cost, price id, pricing),
/// by prompt tokens.
async fn rows(server: &Server, org: &str) -> Vec<(i64, Option<i64>, Option<i64>, String)> {
    let db = server.store.connection();
    let sql = format!(
        "SELECT prompt_tokens, cost_nano_usd, price_id, pricing FROM usage_records \
         WHERE organization_id = '{org}' ORDER BY prompt_tokens"
    );
    let rows = db.query_all_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql)).await.unwrap();
    rows.iter()
        .map(|r| {
            (
                r.try_get_by_index(0).unwrap(),
                r.try_get_by_index(1).unwrap(),
                r.try_get_by_index(2).unwrap(),
                r.try_get_by_index(3).unwrap(),
            )
        })
        .collect()
}

fn config(server: &Server) -> ingestd::Config {
    ingestd::Config { database: server.db.config.clone(), ..ingestd::Config::default() }
}

/// The embedded snapshot with `gpt-4o`'s input price doubled, a model
/// added, and `gpt-4o-mini` left out.
fn modified_catalog(dir: &std::path::Path) -> std::path::PathBuf {
    let text = pricing::catalog::snapshot_json().unwrap();
    let mut all: BTreeMap<String, Box<RawValue>> = serde_json::from_str(&text).unwrap();
    let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
    all.insert(
        "gpt-4o".into(),
        raw(r#"{"input_cost_per_token": 5e-06, "output_cost_per_token": 1e-05,
                "cache_read_input_token_cost": 1.25e-06, "litellm_provider": "openai", "mode": "chat"}"#),
    );
    all.insert(
        "my-custom-model".into(),
        raw(r#"{"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "litellm_provider": "openai", "mode": "chat"}"#),
    );
    assert!(all.remove("gpt-4o-mini").is_some());
    let path = dir.join("model_prices_and_context_window.json");
    std::fs::write(&path, serde_json::to_string(&all).unwrap()).unwrap();
    path
}

async fn a_new_catalog_version_prices_only_records_after_it(kind: Kind) {
    let server = Server::start(kind, |_| {}).await;
    let mut c = server.client().await;
    let org = format!("org-import-{}", uuid::Uuid::now_v7().simple());
    let now = OffsetDateTime::now_utc();
    let effective = (now - time::Duration::hours(1)).replace_nanosecond(0).unwrap();
    let send = async |c: &mut Client, r: Value| {
        let reply = c.post_json("/v1/usage", &r).await;
        assert_eq!(reply.status, 200, "{}", reply.json());
    };
    // Stored before the import, occurred after the new prices take effect.
    send(&mut c, record(&org, now - time::Duration::minutes(30), "openai", "gpt-4o", 100, 0)).await;
    let old_gpt4o = server.store.stored_prices(None, Some("gpt-4o")).await.unwrap();
    assert_eq!(old_gpt4o.len(), 1, "{old_gpt4o:?}");
    let all_before = server.store.stored_prices(None, None).await.unwrap().len();
    let generation = server.store.price_book().generation();

    let dir = tempfile::tempdir().unwrap();
    let file = modified_catalog(dir.path());
    let summary = ingestd::prices::import(&config(&server), &file, Some(effective), Some("litellm-next".into()), true)
        .await
        .unwrap();
    let report: Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(
        (&report["added"], &report["changed"], &report["kept"]),
        (&json!(1), &json!(1), &json!(1)),
        "one model added, gpt-4o changed, gpt-4o-mini kept: {report}"
    );
    assert_eq!(
        server.store.stored_prices(None, None).await.unwrap().len(),
        all_before + 2,
        "only the changed and the added price got rows"
    );
    let gpt4o = server.store.stored_prices(None, Some("gpt-4o")).await.unwrap();
    assert_eq!(gpt4o.len(), 2);
    let (old, new) = (&gpt4o[0], &gpt4o[1]);
    assert_eq!(
        (old.id, old.effective_to),
        (old_gpt4o[0].id, Some(effective)),
        "the old price ends where the new begins"
    );
    assert_eq!((new.version.as_deref(), new.effective_from, new.effective_to), (Some("litellm-next"), effective, None));

    // The running service picks the new version up within its refresh period.
    testkit::conformance::eventually("the price book is rebuilt", || async {
        server.store.price_book().generation() > generation
    })
    .await;
    for r in [
        // Before the new version: the old price.
        record(&org, effective - time::Duration::seconds(1), "openai", "gpt-4o", 101, 0),
        // After: 102 × 5e-6 + 50 × 1e-5 = 0.00101 USD.
        record(&org, now, "openai", "gpt-4o", 102, 0),
        // Not in the new file: its price stays in force. 103 × 1.5e-7 + 50 × 6e-7.
        record(&org, now, "openai", "gpt-4o-mini", 103, 0),
        // New in the file: 104 × 1e-6 + 50 × 2e-6.
        record(&org, now, "openai", "my-custom-model", 104, 0),
    ] {
        send(&mut c, r).await;
    }
    let mini = server.store.stored_prices(None, Some("gpt-4o-mini")).await.unwrap()[0].id;
    let custom = server.store.stored_prices(None, Some("my-custom-model")).await.unwrap()[0].id;
    let priced = |p: i64, nano: i64, id: i64| (p, Some(nano), Some(id), "priced".to_owned());
    assert_eq!(
        rows(&server, &org).await,
        [
            // Stored before the import: untouched, although it occurred after it takes effect.
            priced(100, 750_000, old.id),
            priced(101, 752_500, old.id),
            priced(102, 1_010_000, new.id),
            priced(103, 45_450, mini),
            priced(104, 204_000, custom),
        ]
    );

    // The same prices again: nothing changes. A version that would take
    // effect before the latest is refused.
    let again =
        ingestd::prices::import(&config(&server), &file, Some(now), Some("litellm-same".into()), true).await.unwrap();
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!((&again["added"], &again["changed"]), (&json!(0), &json!(0)), "{again}");
    let refused =
        ingestd::prices::import(&config(&server), &file, Some(effective), Some("litellm-earlier".into()), true).await;
    assert!(format!("{:#}", refused.unwrap_err()).contains("after the latest stored one"));
    server.stop().await;
}

async fn rerate(server: &Server, from: OffsetDateTime, to: OffsetDateTime, org: Option<&str>) -> Value {
    // Batches of 2 rows: the keyset walks several pages.
    let out = ingestd::prices::rerate(&config(server), from, to, org, 2, true).await.unwrap();
    serde_json::from_str(&out).unwrap()
}

async fn a_back_dated_organization_price_reaches_exactly_its_rows_by_rerate(kind: Kind) {
    let server = Server::start(kind, |c| c.auth.mode = ingestd::config::AuthMode::ApiKey).await;
    let keys = server.keys.as_ref().unwrap();
    let admin_key = keys.create(auth::Scope::Admin, None, None, false, auth::Permissions::WRITE).await.unwrap().key;
    let service = keys.create(auth::Scope::Service, None, None, false, auth::Permissions::WRITE).await.unwrap().key;
    let mut c = server.client().await;
    let id = uuid::Uuid::now_v7().simple();
    let (a, b) = (format!("org-a-{id}"), format!("org-b-{id}"));
    let now = OffsetDateTime::now_utc();
    let days = |n: i64| now - time::Duration::days(n);
    // gpt-4o with 1000 prompt tokens (200 cached), 50 completion tokens:
    // catalog 800 × 2.5e-6 + 200 × 1.25e-6 + 50 × 1e-5 = 0.00275 USD; each
    // row has one prompt token more than the last.
    let mut records = Vec::new();
    for org in [&a, &b] {
        records.push(record(org, days(10), "openai", "gpt-4o", 1000, 200));
        records.push(record(org, days(5), "openai", "gpt-4o", 1001, 200));
        records.push(record(org, days(1), "openai", "gpt-4o", 1002, 200));
        // Another provider and another model: not the organization price's.
        records.push(record(org, days(1), "azure", "gpt-4o", 1003, 200));
        records.push(record(org, days(1), "openai", "gpt-4o-2024-08-06", 1004, 200));
    }
    // Half a second either side of a whole second `edge`, of a model without
    // an organization price: on SQLite "…:05.5Z" sorts before "…:05Z" as
    // text, which re-rating must not trust.
    let edge = days(3).replace_nanosecond(0).unwrap();
    let half = time::Duration::milliseconds(500);
    records.push(record(&a, edge + half, "openai", "gpt-4o-mini", 1010, 200));
    records.push(record(&a, edge - half, "openai", "gpt-4o-mini", 1011, 200));
    let bearer = format!("Bearer {service}");
    let headers = [("content-type", "application/json"), ("authorization", bearer.as_str())];
    let body = serde_json::to_vec(&json!({ "records": records })).unwrap();
    let reply = c.send("POST", "/v1/usage/batch", &headers, body).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.json());

    // Negotiated from seven days ago: input 2e-6, cache read 1e-6, output 8e-6.
    let prices = format!("/admin/v1/orgs/{a}/prices");
    let price = json!({
        "provider": "OpenAI", "model": "gpt-4o", "effective_from": rfc3339(days(7)),
        "input": "0.000002", "output": "8e-6", "cache_read": "0.000001",
    });
    let mut wrong = price.clone();
    wrong["input"] = json!(0.000002);
    let reply = admin(&mut c, "PUT", &prices, &admin_key, Some(&wrong)).await;
    assert_eq!(reply.status, 400, "a rate as a number");
    assert_eq!(reply.json()["code"], "invalid_request");
    let reply = admin(&mut c, "PUT", &prices, &admin_key, Some(&price)).await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    let view = reply.json();
    let org_price = view["id"].as_i64().unwrap();
    assert_eq!(
        (&view["provider"], &view["input"], &view["output"]),
        (&json!("openai"), &json!("0.000002"), &json!("0.000008"))
    );
    let listed = admin(&mut c, "GET", &prices, &admin_key, None).await.json();
    assert_eq!(listed["prices"], json!([view]), "{listed}");
    assert_eq!(
        admin(&mut c, "GET", &format!("/admin/v1/orgs/{b}/prices"), &admin_key, None).await.json()["prices"],
        json!([])
    );

    // A record sent now is priced with it at once: 805 × 2e-6 + 200 × 1e-6 +
    // 50 × 8e-6 = 0.00221 USD.
    let body = serde_json::to_vec(&record(&a, now, "openai", "gpt-4o", 1005, 200)).unwrap();
    assert_eq!(c.send("POST", "/v1/usage", &headers, body).await.unwrap().status, 200);

    // In nano-USD: (prompt − 200) uncached, 200 cached, 50 completion tokens.
    let catalog_cost = |p: i64| (p - 200) * 2_500 + 200 * 1_250 + 50 * 10_000;
    let org_cost = |p: i64| (p - 200) * 2_000 + 200 * 1_000 + 50 * 8_000;
    assert_eq!((catalog_cost(1000), org_cost(1005)), (2_750_000, 2_210_000), "the sums in the comments");
    let catalog = |p: i64, id: i64| (p, Some(catalog_cost(p)), Some(id), "priced".to_owned());
    let before_a = rows(&server, &a).await;
    let before_b = rows(&server, &b).await;
    let catalog_id = before_a[0].2.unwrap();
    assert_eq!(before_a[5], (1005, Some(org_cost(1005)), Some(org_price), "priced".into()));
    assert_eq!(before_a[1], catalog(1001, catalog_id), "stored before the price was set: unchanged until rerate");

    let report = rerate(&server, days(30), now + time::Duration::hours(1), None).await;
    assert_eq!((&report["examined"], &report["changed"]), (&json!(13), &json!(2)), "{report}");
    assert_eq!(
        report["cost_after_nano_usd"].as_i64().unwrap() - report["cost_before_nano_usd"].as_i64().unwrap(),
        org_cost(1001) + org_cost(1002) - catalog_cost(1001) - catalog_cost(1002),
        "{report}"
    );
    let mut expected_a = before_a.clone();
    for row in &mut expected_a[1..3] {
        *row = (row.0, Some(org_cost(row.0)), Some(org_price), "priced".into());
    }
    assert_eq!(
        rows(&server, &a).await,
        expected_a,
        "exactly the rows from the price's start on, of its provider and model"
    );
    assert_eq!(rows(&server, &b).await, before_b, "another organization's rows are untouched");
    let report = rerate(&server, days(30), now + time::Duration::hours(1), None).await;
    assert_eq!(report["changed"], 0, "a second run changes nothing: {report}");
    let report = rerate(&server, edge, edge + time::Duration::SECOND, Some(&a)).await;
    assert_eq!(report["examined"], 1, "only the row at edge + 0.5 s is in [edge, edge + 1 s): {report}");
    let report = rerate(&server, edge - time::Duration::SECOND, edge, Some(&a)).await;
    assert_eq!(report["examined"], 1, "only the row at edge - 0.5 s is in [edge - 1 s, edge): {report}");

    // Withdrawn whole: the catalog prices those rows again after a rerate of
    // that organization.
    let query = format!(
        "{prices}?provider=openai&model=gpt-4o&effective_from={}",
        rfc3339(days(7)).replace(':', "%3A").replace('+', "%2B")
    );
    assert_eq!(admin(&mut c, "DELETE", &query, &admin_key, None).await.status, 204);
    assert_eq!(admin(&mut c, "DELETE", &query, &admin_key, None).await.status, 404);
    assert_eq!(admin(&mut c, "GET", &prices, &admin_key, None).await.json()["prices"], json!([]));
    let report = rerate(&server, days(30), now + time::Duration::hours(1), Some(&a)).await;
    assert_eq!((&report["examined"], &report["changed"]), (&json!(8), &json!(3)), "{report}");
    let after = rows(&server, &a).await;
    assert!(after[..3].iter().zip(1000..).all(|(row, p)| *row == catalog(p, catalog_id)), "{after:?}");
    assert_eq!(after[5], catalog(1005, catalog_id));

    // Another process on the same database prices with a new organization
    // price within 5 s of the PUT.
    let peer = server.peer(|c| c.auth.mode = ingestd::config::AuthMode::ApiKey).await;
    let mut there = peer.client().await;
    let third = format!("org-c-{id}");
    let price = json!({
        "provider": "openai", "model": "gpt-4o", "effective_from": rfc3339(days(1)),
        "input": "0.000002", "output": "8e-6", "cache_read": "0.000001",
    });
    let reply = admin(&mut c, "PUT", &format!("/admin/v1/orgs/{third}/prices"), &admin_key, Some(&price)).await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    let set_at = std::time::Instant::now();
    for prompt in 2000.. {
        let body =
            serde_json::to_vec(&record(&third, OffsetDateTime::now_utc(), "openai", "gpt-4o", prompt, 200)).unwrap();
        assert_eq!(there.send("POST", "/v1/usage", &headers, body).await.unwrap().status, 200);
        let last = rows(&server, &third).await.pop().unwrap();
        if last.1 == Some(org_cost(prompt as i64)) {
            break;
        }
        assert!(
            set_at.elapsed() < std::time::Duration::from_secs(5),
            "the peer still prices with the catalog: {last:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A later price closes the one in force at its start; a DELETE inside
    // a price's period ends it there.
    let prices = format!("/admin/v1/orgs/{third}/prices");
    let later_from = (now - time::Duration::hours(1)).replace_nanosecond(0).unwrap();
    let mut later = price.clone();
    later["effective_from"] = json!(rfc3339(later_from));
    later["input"] = json!("0.000003");
    assert_eq!(admin(&mut c, "PUT", &prices, &admin_key, Some(&later)).await.status, 200);
    let end = later_from + time::Duration::days(30);
    let query = format!("{prices}?provider=openai&model=gpt-4o&effective_from={}", rfc3339(end).replace(':', "%3A"));
    assert_eq!(admin(&mut c, "DELETE", &query, &admin_key, None).await.status, 204);
    let listed = admin(&mut c, "GET", &prices, &admin_key, None).await.json();
    let periods: Vec<(&Value, &Value, &Value)> = listed["prices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (&p["effective_from"], &p["effective_to"], &p["input"]))
        .collect();
    let (first_from, later_from, end) =
        (json!(rfc3339(days(1).replace_nanosecond(0).unwrap())), json!(rfc3339(later_from)), json!(rfc3339(end)));
    assert_eq!(
        periods,
        [(&first_from, &later_from, &json!("0.000002")), (&later_from, &end, &json!("0.000003"))],
        "{listed}"
    );
    peer.stop().await;
    server.stop().await;
}
