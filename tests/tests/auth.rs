//! API keys, tenancy, idempotent retries and signed webhooks (SPEC §3),
//! over real sockets with the whole service in-process.

use std::time::{Duration, Instant};

use ingestd::Config;
use ingestd::config::{AuthMode, PolicyConfig};
use serde_json::{Value, json};
use testkit::http::{Client, Reply};
use testkit::{Kind, TestDatabase, record_json};

use common::{Server, admin};

mod common;

fn with_keys(c: &mut Config) {
    c.auth.mode = AuthMode::ApiKey;
}

async fn keyed(kind: Kind) -> Server {
    Server::start(kind, with_keys).await
}

/// A key of `scope` created the way `ingestd keys create` does.
async fn create_key(server: &Server, scope: auth::Scope, org: Option<&str>, signed: bool) -> ingestd::keys::NewApiKey {
    let keys = server.keys.as_ref().expect("auth.mode = api_key");
    keys.create(scope, org.map(str::to_owned), None, signed, auth::Permissions::WRITE).await.unwrap()
}

async fn post(c: &mut Client, path: &str, key: &str, extra: &[(&str, &str)], body: &Value) -> Reply {
    let bearer = format!("Bearer {key}");
    let mut headers = vec![("content-type", "application/json"), ("authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    c.send("POST", path, &headers, serde_json::to_vec(body).unwrap()).await.unwrap()
}

fn without_request_id(org: &str, i: u64) -> Value {
    let mut r = record_json(org, i);
    r.as_object_mut().unwrap().remove("request_id");
    r
}

testkit::on_every_backend!(
    org_keys_write_only_their_organization,
    a_key_revoked_on_one_process_fails_on_another_within_5_s,
    rate_limit_decisions_of_every_process_are_counted_per_organization,
);

#[tokio::test]
async fn requests_without_a_valid_key_are_401_and_probes_need_none() {
    let server = keyed(Kind::Sqlite).await;
    let mut c = server.client().await;
    let record = serde_json::to_vec(&record_json("org-a", 0)).unwrap();
    let json = ("content-type", "application/json");
    let unknown = format!("Bearer {}", auth::key::generate());
    let first = server.first_key.clone().unwrap();
    let mut typo = first.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let typo = format!("Bearer {}", String::from_utf8(typo).unwrap());
    for (headers, code) in [
        (vec![json], "missing_api_key"),
        (vec![json, ("authorization", "Basic dXNlcjpwYXNz")], "malformed_authorization"),
        (vec![json, ("authorization", "Bearer not-a-key")], "malformed_api_key"),
        (vec![json, ("authorization", typo.as_str())], "malformed_api_key"),
        (vec![json, ("authorization", unknown.as_str())], "unknown_api_key"),
    ] {
        let reply = c.send("POST", "/v1/usage", &headers, record.clone()).await.unwrap();
        assert_eq!(reply.status, 401, "{code}");
        assert_eq!(reply.json()["code"], code);
        assert_eq!(reply.header("www-authenticate"), Some("Bearer realm=\"ingestd\""));
    }
    assert_eq!(server.count("org-a").await, 0);
    for probe in ["/health", "/health/ready", "/metrics", "/openapi.json"] {
        assert_eq!(c.get(probe).await.status, 200, "{probe}");
    }
    // The printed first key works (a service key: any organization).
    assert_eq!(post(&mut c, "/v1/usage", &first, &[], &record_json("org-a", 1)).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn the_first_start_creates_one_service_key_and_later_starts_none() {
    let server = keyed(Kind::Sqlite).await;
    let first = server.first_key.clone().expect("a key at first start");
    assert!(first.starts_with("ingestd_") && first.len() == 57, "{first}");
    let db = server.stop().await;
    let again = Server::start_on(db, with_keys).await;
    assert_eq!(again.first_key, None, "a second start creates no key");
    let keys = again.keys.as_ref().unwrap().list(true).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].scope, "service");
    let mut c = again.client().await;
    assert_eq!(post(&mut c, "/v1/usage", &first, &[], &record_json("org-z", 0)).await.status, 200);
    again.stop().await;
}

async fn org_keys_write_only_their_organization(kind: Kind) {
    let server = keyed(kind).await;
    let a = create_key(&server, auth::Scope::Org, Some("org-a"), false).await.key;
    let mut c = server.client().await;
    // A single record for another organization: 403, nothing stored.
    let reply = post(&mut c, "/v1/usage", &a, &[], &record_json("org-b", 0)).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["errors"][0]["code"], "organization_forbidden");
    assert_eq!(reply.json()["errors"][0]["field"], "organization_id");
    // Mixed batch: the foreign record is rejected by index, the rest stored.
    let batch = json!({ "records": [record_json("org-a", 1), record_json("org-b", 2), record_json("org-a", 3)] });
    let reply = post(&mut c, "/v1/usage/batch", &a, &[], &batch).await;
    assert_eq!(reply.status, 207);
    let v = reply.json();
    assert_eq!((v["accepted"].as_u64(), v["rejected"].as_u64()), (Some(2), Some(1)));
    assert_eq!(
        (v["errors"][0]["index"].as_u64(), v["errors"][0]["code"].as_str()),
        (Some(1), Some("organization_forbidden"))
    );
    // Only foreign records: 403.
    let only_b = json!({ "records": [record_json("org-b", 4)] });
    assert_eq!(post(&mut c, "/v1/usage/batch", &a, &[], &only_b).await.status, 403);
    assert_eq!(server.count("org-b").await, 0);
    assert_eq!(server.count("org-a").await, 2);
    // A service key writes for anyone.
    let service = create_key(&server, auth::Scope::Service, None, false).await.key;
    assert_eq!(post(&mut c, "/v1/usage", &service, &[], &record_json("org-b", 5)).await.status, 200);
    assert_eq!(server.count("org-b").await, 1);
    server.stop().await;
}

async fn a_key_revoked_on_one_process_fails_on_another_within_5_s(kind: Kind) {
    let server = keyed(kind).await;
    let admin_key = create_key(&server, auth::Scope::Admin, None, false).await.key;
    let peer = server.peer(with_keys).await;
    let mut here = server.client().await;
    // Created through the admin API of the first process...
    let created = admin(
        &mut here,
        "POST",
        "/admin/v1/keys",
        &admin_key,
        Some(&json!({ "scope": "org", "organization_id": "org-r", "label": "ci" })),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let key = created.json()["api_key"].as_str().unwrap().to_owned();
    let id = created.json()["id"].as_str().unwrap().to_owned();
    // ...it works on the peer within the refresh interval.
    let mut there = peer.client().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut i = 0;
    while post(&mut there, "/v1/usage", &key, &[], &record_json("org-r", i)).await.status != 200 {
        assert!(Instant::now() < deadline, "the peer never accepted the new key");
        tokio::time::sleep(Duration::from_millis(100)).await;
        i += 1;
    }
    // Revoked on the first process: refused there at once, on the peer within 5 s.
    let revoked_at = Instant::now();
    assert_eq!(admin(&mut here, "DELETE", &format!("/admin/v1/keys/{id}"), &admin_key, None).await.status, 204);
    assert_eq!(post(&mut here, "/v1/usage", &key, &[], &record_json("org-r", 1000)).await.status, 401);
    loop {
        i += 1;
        let reply = post(&mut there, "/v1/usage", &key, &[], &record_json("org-r", i)).await;
        if reply.status == 401 {
            assert_eq!(reply.json()["code"], "unknown_api_key");
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(5), "the peer still accepts a revoked key");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = revoked_at.elapsed();
    assert!(seen < Duration::from_secs(5), "{seen:?}");
    // Revoking twice: 404, whichever UUID form names it (%-escaped as clients send them).
    assert_eq!(admin(&mut here, "DELETE", &format!("/admin/v1/keys/{id}"), &admin_key, None).await.status, 404);
    for form in [format!("urn%3Auuid%3A{id}"), format!("%7B{id}%7D"), id.replace('-', "")] {
        let reply = admin(&mut here, "DELETE", &format!("/admin/v1/keys/{form}"), &admin_key, None).await;
        assert_eq!(reply.status, 404, "{form}: {:?}", reply.json());
    }
    assert_eq!(admin(&mut here, "DELETE", "/admin/v1/keys/urn%3Anope", &admin_key, None).await.status, 400);
    peer.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn the_rate_limit_organization_is_the_keys_whatever_headers_say() {
    let server = Server::start(Kind::Sqlite, |c| {
        with_keys(c);
        c.rate_limit.default =
            PolicyConfig { max_requests: Some(3), window_secs: Some(3600), ..PolicyConfig::default() };
    })
    .await;
    let a = create_key(&server, auth::Scope::Org, Some("org-a"), false).await.key;
    let service = create_key(&server, auth::Scope::Service, None, false).await.key;
    let mut c = server.client().await;
    let spoof = [("x-organization-id", "org-b")];
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(post(&mut c, "/v1/usage", &a, &spoof, &record_json("org-a", i)).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429], "org-a's budget of 3");
    // org-b's budget is untouched: a service key naming org-b gets all 3.
    for i in 0..3 {
        let reply = post(&mut c, "/v1/usage", &service, &spoof, &record_json("org-b", i)).await;
        assert_eq!(reply.status, 200, "request {i} for org-b");
    }
    assert_eq!(post(&mut c, "/v1/usage", &service, &spoof, &record_json("org-b", 9)).await.status, 429);
    server.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retried_request_store_once() {
    let server = keyed(Kind::Sqlite).await;
    let key = server.first_key.clone().unwrap();
    let mut c = server.client().await;
    let batch = json!({ "records": [without_request_id("org-i", 0), without_request_id("org-i", 1)] });
    let idem = [("idempotency-key", "retry-7f3a")];
    let first = post(&mut c, "/v1/usage/batch", &key, &idem, &batch).await;
    assert_eq!((first.status.as_u16(), first.json()["accepted"].as_u64()), (200, Some(2)));
    let retry = post(&mut c, "/v1/usage/batch", &key, &idem, &batch).await;
    assert_eq!((retry.status.as_u16(), retry.json()["duplicates"].as_u64()), (200, Some(2)));
    assert_eq!(server.count("org-i").await, 2);
    // Another key is another request; no key at all, too.
    assert_eq!(
        post(&mut c, "/v1/usage/batch", &key, &[("idempotency-key", "other")], &batch).await.json()["accepted"],
        2
    );
    assert_eq!(post(&mut c, "/v1/usage/batch", &key, &[], &batch).await.json()["accepted"], 2);
    assert_eq!(server.count("org-i").await, 6);
    // Single records too; an over-long key is a 400.
    let single = without_request_id("org-i", 9);
    let once = post(&mut c, "/v1/usage", &key, &idem, &single).await;
    let twice = post(&mut c, "/v1/usage", &key, &idem, &single).await;
    assert_eq!(once.json()["request_id"], twice.json()["request_id"]);
    assert_eq!(twice.json()["duplicates"], 1);
    // Two keys of one organization picking the same idempotency key are two requests.
    let other = create_key(&server, auth::Scope::Org, Some("org-i"), false).await.key;
    let same_key = post(&mut c, "/v1/usage/batch", &other, &idem, &batch).await;
    assert_eq!(same_key.json()["accepted"], 2);
    assert_eq!(server.count("org-i").await, 9);
    let long = "k".repeat(256);
    let reply = post(&mut c, "/v1/usage", &key, &[("idempotency-key", &long)], &single).await;
    assert_eq!((reply.status.as_u16(), reply.json()["code"].as_str()), (400, Some("invalid_idempotency_key")));
    server.stop().await;
}

async fn signed_post(c: &mut Client, key: &str, id: &str, ts: i64, signature: &str, body: &[u8]) -> Reply {
    let bearer = format!("Bearer {key}");
    let ts = ts.to_string();
    let headers = [
        ("content-type", "application/json"),
        ("authorization", bearer.as_str()),
        ("webhook-id", id),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", signature),
    ];
    c.send("POST", "/v1/usage/batch", &headers, body.to_vec()).await.unwrap()
}

#[tokio::test]
async fn signed_keys_need_a_valid_standard_webhooks_signature() {
    let server = keyed(Kind::Sqlite).await;
    let new = create_key(&server, auth::Scope::Org, Some("org-s"), true).await;
    let secret = new.signing_secret.clone().unwrap();
    let key = new.key;
    let mut c = server.client().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = serde_json::to_vec(&json!({ "records": [without_request_id("org-s", 0)] })).unwrap();

    // Valid.
    let sig = secret.sign("msg_1", now, &body);
    let ok = signed_post(&mut c, &key, "msg_1", now, &sig, &body).await;
    assert_eq!((ok.status.as_u16(), ok.json()["accepted"].as_u64()), (200, Some(1)));
    // Replayed webhook-id: 200, no new row (the id derives the record ids).
    let replay = signed_post(&mut c, &key, "msg_1", now, &sig, &body).await;
    assert_eq!((replay.status.as_u16(), replay.json()["duplicates"].as_u64()), (200, Some(1)));
    assert_eq!(server.count("org-s").await, 1);
    // One body byte flipped.
    let mut flipped = body.clone();
    let at = flipped.iter().position(|&b| b == b'1').unwrap();
    flipped[at] = b'2';
    let reply = signed_post(&mut c, &key, "msg_2", now, &secret.sign("msg_2", now, &body), &flipped).await;
    assert_eq!((reply.status.as_u16(), reply.json()["code"].as_str()), (401, Some("invalid_signature")));
    // Past the 300 s tolerance, either way, even when correctly signed (by
    // 310 s: `now` was read before the requests above, and a slow machine
    // moves the server's clock on by a second or more in between).
    for ts in [now - 310, now + 310] {
        let reply = signed_post(&mut c, &key, "msg_3", ts, &secret.sign("msg_3", ts, &body), &body).await;
        assert_eq!(reply.status, 401);
        assert!(reply.json()["error"].as_str().unwrap().contains("at most 300 s"), "{:?}", reply.json());
    }
    // A replay with an added Idempotency-Key (not covered by the signature)
    // still maps onto the same rows: signed requests use webhook-id only.
    let bearer = format!("Bearer {key}");
    let ts = now.to_string();
    let headers = [
        ("content-type", "application/json"),
        ("authorization", bearer.as_str()),
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", sig.as_str()),
        ("idempotency-key", "made-up-by-an-attacker"),
    ];
    let tampered = c.send("POST", "/v1/usage/batch", &headers, body.clone()).await.unwrap();
    assert_eq!((tampered.status.as_u16(), tampered.json()["duplicates"].as_u64()), (200, Some(1)));
    assert_eq!(server.count("org-s").await, 1);
    // Rotation: an old secret's signature beside the current one, in either order.
    let old = auth::SigningSecret::generate();
    for (i, id) in ["msg_4", "msg_4b"].into_iter().enumerate() {
        let body4 = serde_json::to_vec(&json!({ "records": [without_request_id("org-s", 4 + i as u64)] })).unwrap();
        let (a, b) = (old.sign(id, now, &body4), secret.sign(id, now, &body4));
        let header = if i == 0 { format!("{a} {b}") } else { format!("{b} {a}") };
        assert_eq!(signed_post(&mut c, &key, id, now, &header, &body4).await.status, 200, "{header}");
    }
    let body4 = serde_json::to_vec(&json!({ "records": [without_request_id("org-s", 4)] })).unwrap();
    // Only the old secret: refused; and the message never shows the expected value.
    let reply = signed_post(&mut c, &key, "msg_5", now, &old.sign("msg_5", now, &body4), &body4).await;
    assert_eq!(reply.status, 401);
    let expected = secret.sign("msg_5", now, &body4);
    assert!(!String::from_utf8_lossy(&reply.body).contains(&expected[3..]));
    // No signature headers at all.
    let unsigned = post(&mut c, "/v1/usage/batch", &key, &[], &json!({ "records": [record_json("org-s", 6)] })).await;
    assert_eq!((unsigned.status.as_u16(), unsigned.json()["code"].as_str()), (401, Some("invalid_signature")));
    assert_eq!(server.count("org-s").await, 3);
    server.stop().await;
}

#[tokio::test]
async fn admin_endpoints_need_an_admin_key_and_manage_keys_and_limits() {
    let server = Server::start(Kind::Sqlite, |c| {
        with_keys(c);
        c.rate_limit.default =
            PolicyConfig { max_requests: Some(1000), window_secs: Some(3600), ..PolicyConfig::default() };
        c.rate_limit.orgs.insert(
            "org-x".into(),
            PolicyConfig { max_requests: Some(500), window_secs: Some(3600), ..PolicyConfig::default() },
        );
    })
    .await;
    let service = server.first_key.clone().unwrap();
    let org = create_key(&server, auth::Scope::Org, Some("org-x"), false).await.key;
    let admin_key = create_key(&server, auth::Scope::Admin, None, false).await.key;
    let mut c = server.client().await;
    for key in [&service, &org] {
        let reply = admin(&mut c, "GET", "/admin/v1/keys", key, None).await;
        assert_eq!((reply.status.as_u16(), reply.json()["code"].as_str()), (403, Some("admin_scope_required")));
        let put = admin(&mut c, "PUT", "/admin/v1/orgs/org-x/rate-limit", key, Some(&json!({ "per_hour": 1 }))).await;
        assert_eq!(put.status, 403);
    }
    assert_eq!(c.get("/admin/v1/keys").await.status, 401);
    // Listing never shows a secret.
    let list = admin(&mut c, "GET", "/admin/v1/keys", &admin_key, None).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["keys"].as_array().unwrap().len(), 3);
    for secret in [&service, &org, &admin_key] {
        assert!(!String::from_utf8_lossy(&list.body).contains(secret.as_str()));
    }
    // Bad requests name the problem.
    let bad = admin(&mut c, "POST", "/admin/v1/keys", &admin_key, Some(&json!({ "scope": "org" }))).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("organization"), "{:?}", bad.json());
    let bad =
        admin(&mut c, "PUT", "/admin/v1/orgs/org-x/rate-limit", &admin_key, Some(&json!({ "per_minute": 0 }))).await;
    assert_eq!(bad.status, 400);
    for body in
        [json!({}), json!({ "per_hour": 5, "per_day": null }), json!({ "per_minute": 1_000_000_000_000_001u64 })]
    {
        let bad = admin(&mut c, "PUT", "/admin/v1/orgs/org-x/rate-limit", &admin_key, Some(&body)).await;
        assert_eq!((bad.status.as_u16(), bad.json()["code"].as_str()), (400, Some("invalid_request")), "{body}");
    }
    // Well-formed but unenforceable: one request a day with a burst of 10^12.
    let deep = json!({ "max_requests": 1, "window_secs": 86_400, "burst_size": 1_000_000_000_000u64 });
    let bad = admin(&mut c, "PUT", "/admin/v1/orgs/org-x/rate-limit", &admin_key, Some(&deep)).await;
    assert_eq!((bad.status.as_u16(), bad.json()["code"].as_str()), (422, Some("invalid_policy")), "{:?}", bad.json());
    // A whole number written as a float is that number.
    let put =
        admin(&mut c, "PUT", "/admin/v1/orgs/org-f/rate-limit", &admin_key, Some(&json!({ "per_minute": 600.0 })))
            .await;
    assert_eq!((put.status.as_u16(), put.json()["max_requests"].as_u64()), (200, Some(600)), "{:?}", put.json());
    // …read from the text: a float would round this one to 600.
    let bearer = format!("Bearer {admin_key}");
    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    let body = br#"{"per_minute": 600.00000000000001}"#.to_vec();
    let bad = c.send("PUT", "/admin/v1/orgs/org-f/rate-limit", &headers, body).await.unwrap();
    assert_eq!(bad.status, 400, "{:?}", bad.json());
    for label in ["tab\there".to_owned(), "x".repeat(257)] {
        let bad =
            admin(&mut c, "POST", "/admin/v1/keys", &admin_key, Some(&json!({ "scope": "service", "label": label })))
                .await;
        assert_eq!(bad.status, 400, "label {label:?}");
    }
    // Organizations are counted in characters, as in records: 200 × "é" is 400 bytes.
    let wide = "%C3%A9".repeat(200);
    let got = admin(&mut c, "GET", &format!("/admin/v1/orgs/{wide}/rate-limit"), &admin_key, None).await;
    assert_eq!(got.status, 200, "{:?}", got.json());
    // A runtime policy applies at once here: 2 per hour (burst 1 with per_hour(2)? no: custom, burst 0).
    let put = admin(
        &mut c,
        "PUT",
        "/admin/v1/orgs/org-x/rate-limit",
        &admin_key,
        Some(&json!({ "max_requests": 2, "window_secs": 3600 })),
    )
    .await;
    assert_eq!(put.status, 200, "{:?}", put.body);
    assert_eq!((put.json()["source"].as_str(), put.json()["capacity"].as_u64()), (Some("runtime"), Some(2)));
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(post(&mut c, "/v1/usage", &org, &[], &record_json("org-x", i)).await.status.as_u16());
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429]);
    let got = admin(&mut c, "GET", "/admin/v1/orgs/org-x/rate-limit", &admin_key, None).await;
    assert_eq!(got.json()["max_requests"], 2);
    assert_eq!(admin(&mut c, "DELETE", "/admin/v1/orgs/org-x/rate-limit", &admin_key, None).await.status, 204);
    assert_eq!(admin(&mut c, "DELETE", "/admin/v1/orgs/org-x/rate-limit", &admin_key, None).await.status, 404);
    // Back to the configured override, and enforced again.
    let got = admin(&mut c, "GET", "/admin/v1/orgs/org-x/rate-limit", &admin_key, None).await;
    assert_eq!((got.json()["source"].as_str(), got.json()["max_requests"].as_u64()), (Some("config"), Some(500)));
    let reply = post(&mut c, "/v1/usage", &org, &[], &record_json("org-x", 7)).await;
    assert_eq!(reply.header("x-ratelimit-limit"), Some("500"));
    let got = admin(&mut c, "GET", "/admin/v1/orgs/org-q/rate-limit", &admin_key, None).await;
    assert_eq!((got.json()["source"].as_str(), got.json()["max_requests"].as_u64()), (Some("default"), Some(1000)));
    let bad = admin(&mut c, "GET", "/admin/v1/orgs/%01/rate-limit", &admin_key, None).await;
    assert_eq!(bad.status, 400);
    // Persisted and carried to a running second process by its refresh.
    let y = create_key(&server, auth::Scope::Org, Some("org-y"), false).await.key;
    let peer = server
        .peer(|c| {
            with_keys(c);
            c.rate_limit.default =
                PolicyConfig { max_requests: Some(1000), window_secs: Some(3600), ..PolicyConfig::default() };
        })
        .await;
    let mut there = peer.client().await;
    let set_at = Instant::now();
    let one_per_hour = json!({ "max_requests": 1, "window_secs": 3600 });
    let put = admin(&mut c, "PUT", "/admin/v1/orgs/org-y/rate-limit", &admin_key, Some(&one_per_hour)).await;
    assert_eq!(put.status, 200);
    let mut i = 0;
    loop {
        let reply = post(&mut there, "/v1/usage", &y, &[], &record_json("org-y", i)).await;
        if reply.header("x-ratelimit-limit") == Some("1") {
            break;
        }
        assert!(set_at.elapsed() < Duration::from_secs(5), "the peer still uses the default policy");
        tokio::time::sleep(Duration::from_millis(50)).await;
        i += 1;
    }
    peer.stop().await;
    server.stop().await;
}

/// Captures everything logged, at every level, on this (current-thread) runtime.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_plaintext_key_in_the_database_file_or_the_logs() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let db = TestDatabase::sqlite();
    let file = db.config.url.trim_start_matches("sqlite://").split('?').next().unwrap().to_owned();
    let server = Server::start_on(db, with_keys).await;
    let first = server.first_key.clone().unwrap();
    let signed = create_key(&server, auth::Scope::Org, Some("org-p"), true).await;
    let admin_key = create_key(&server, auth::Scope::Admin, None, false).await.key;
    let mut c = server.client().await;
    assert_eq!(post(&mut c, "/v1/usage", &first, &[], &record_json("org-p", 0)).await.status, 200);
    let created = admin(&mut c, "POST", "/admin/v1/keys", &admin_key, Some(&json!({ "scope": "service" }))).await;
    let via_api = created.json()["api_key"].as_str().unwrap().to_owned();
    assert_eq!(post(&mut c, "/v1/usage", &via_api, &[], &record_json("org-p", 1)).await.status, 200);
    assert_eq!(post(&mut c, "/v1/usage", &signed.key, &[], &record_json("org-p", 2)).await.status, 401);
    let db = server.stop().await;

    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        if let Ok(b) = std::fs::read(format!("{file}{suffix}")) {
            bytes.extend(b);
        }
    }
    assert!(!bytes.is_empty(), "read the database file {file}");
    let logs = captured.0.lock().unwrap().clone();
    assert!(logs.windows(7).any(|w| w == b"request"), "the capture saw the service's logs");
    let secret = signed.signing_secret.as_ref().unwrap().expose().to_owned();
    assert!(!logs.windows(secret.len()).any(|w| w == secret.as_bytes()), "a signing secret in the logs");
    for key in [&first, &signed.key, &admin_key, &via_api] {
        let needle = key.as_bytes();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "a plaintext key in the database file");
        assert!(!logs.windows(needle.len()).any(|w| w == needle), "a plaintext key in the logs");
        // The digest is what is stored.
        let digest = auth::key::digest(key);
        assert!(bytes.windows(32).any(|w| w == digest), "the key's digest is stored");
    }
    drop(db);
}

#[tokio::test]
async fn with_auth_off_there_is_no_admin_api() {
    let server = Server::start(Kind::Sqlite, |_| {}).await;
    let mut c = server.client().await;
    let reply = c
        .send("POST", "/admin/v1/keys", &[("content-type", "application/json")], r#"{"scope":"admin"}"#)
        .await
        .unwrap();
    assert_eq!(reply.status, 404);
    assert_eq!(c.get("/admin/v1/orgs/a/rate-limit").await.status, 404);
    assert!(server.store.list_api_keys(true).await.unwrap().is_empty());
    // Records of any organization are taken.
    assert_eq!(c.post_json("/v1/usage", &record_json("org-any", 0)).await.status, 200);
    server.stop().await;
}

/// `GET /admin/v1/orgs/{org}/rate-limit` counts the decisions of every
/// process on the database: the answering one's, and a peer's that stopped
/// before its periodic flush (its shutdown stores them). The refusal metric
/// is by kind of policy.
async fn rate_limit_decisions_of_every_process_are_counted_per_organization(kind: Kind) {
    let limited = |c: &mut Config| {
        with_keys(c);
        let per_hour = |n| PolicyConfig { max_requests: Some(n), window_secs: Some(3600), ..PolicyConfig::default() };
        c.rate_limit.default = per_hour(3);
        c.rate_limit.orgs.insert("org-vip".into(), per_hour(1));
    };
    let server = Server::start(kind, limited).await;
    let admin_key = create_key(&server, auth::Scope::Admin, None, false).await.key;
    let key = create_key(&server, auth::Scope::Org, Some("org-d"), false).await.key;
    let other = create_key(&server, auth::Scope::Org, Some("org-e"), false).await.key;
    let vip = create_key(&server, auth::Scope::Org, Some("org-vip"), false).await.key;
    let peer = server.peer(limited).await;
    let (mut here, mut there) = (server.client().await, peer.client().await);
    let before = refusals(&mut here).await;
    let mut statuses = Vec::new();
    // Each process has its own in-memory bucket of 3: 3 + 2 refused here, 3 + 1 there.
    for i in 0..5 {
        statuses.push(post(&mut here, "/v1/usage", &key, &[], &record_json("org-d", i)).await.status.as_u16());
    }
    for i in 5..9 {
        statuses.push(post(&mut there, "/v1/usage", &key, &[], &record_json("org-d", i)).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 200, 200, 200, 429]);
    assert_eq!(post(&mut here, "/v1/usage", &other, &[], &record_json("org-e", 0)).await.status, 200);
    for i in 0..2 {
        post(&mut here, "/v1/usage", &vip, &[], &record_json("org-vip", i)).await;
    }
    peer.stop().await;
    let got = admin(&mut here, "GET", "/admin/v1/orgs/org-d/rate-limit", &admin_key, None).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let counts = json!({ "admitted": 6, "refused": 3 });
    assert_eq!(got.json()["decisions"], json!({ "last_hour": counts, "last_day": counts }));
    let got = admin(&mut here, "GET", "/admin/v1/orgs/org-e/rate-limit", &admin_key, None).await;
    assert_eq!(got.json()["decisions"]["last_day"], json!({ "admitted": 1, "refused": 0 }));
    let got = admin(&mut here, "GET", "/admin/v1/orgs/org-vip/rate-limit", &admin_key, None).await;
    assert_eq!(got.json()["decisions"]["last_hour"], json!({ "admitted": 1, "refused": 1 }));
    let got = admin(&mut here, "GET", "/admin/v1/orgs/org-none/rate-limit", &admin_key, None).await;
    assert_eq!(got.json()["decisions"]["last_day"], json!({ "admitted": 0, "refused": 0 }));
    // Both processes report to this test process's one metrics recorder
    // (which other tests may share: the growth is compared).
    let after = refusals(&mut here).await;
    assert_eq!([after[0] - before[0], after[1] - before[1]], [3, 1], "default, organization");
    server.stop().await;
}

/// `ingestd_rate_limit_refusals_total` for the policies `default` and `organization`.
async fn refusals(c: &mut Client) -> [u64; 2] {
    let metrics = String::from_utf8(c.get("/metrics").await.body.to_vec()).unwrap();
    ["default", "organization"].map(|policy| {
        let series = format!("ingestd_rate_limit_refusals_total{{policy=\"{policy}\"}} ");
        let line = metrics.lines().find_map(|l| l.strip_prefix(series.as_str()));
        line.unwrap_or_else(|| panic!("no {series} in\n{metrics}")).parse().unwrap()
    })
}
