//! The HTTP API through the router (`tower::ServiceExt::oneshot`), the same suite against
//! SQLite and PostgreSQL: the life of a session (create, list, heartbeat, patch, delete,
//! expiry, restart). Bad input, limits and operations are in `api_edges.rs`.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{instant, session, Backend, Client, TestDb};
use master_server::{App, Config};
use serde_json::{json, Value};

both_backends!(
    create_get_and_list,
    list_filters_and_stable_pagination,
    heartbeat_and_patch_extend_life,
    owner_token_is_required_and_checked,
    delete_delists,
    expired_rows_vanish_and_are_reaped,
    restart_keeps_live_rows_and_tokens,
    synchronous_heartbeats_commit_before_answering,
    buffered_heartbeats_are_written_behind_and_flushed_at_shutdown,
    heartbeat_acknowledged_just_before_expiry_is_not_lost,
);

async fn start(db: &TestDb, config: Config) -> (App, Client) {
    let _ = db;
    let app = App::start(config).await.expect("app starts");
    let client = Client::new(&app);
    (app, client)
}

async fn create_get_and_list(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (app, client) = start(&db, db.config()).await;
    let before = chrono::Utc::now();
    let reply = client
        .call(
            Method::POST,
            "/v1/sessions",
            None,
            Some(session("quake", "q1")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["id"].as_str().expect("id");
    assert!(uuid::Uuid::parse_str(id).is_ok());
    assert!(
        reply.body["token"].as_str().expect("token").len() >= 22,
        "token has >= 128 bits"
    );
    assert_eq!(reply.body["addr"], "192.0.2.10");
    let expires = instant(&reply.body["expires_at"]);
    let ttl = (expires - before).num_milliseconds();
    assert!(
        (59_000..=61_000).contains(&ttl),
        "default timeout is 60 s, got {ttl} ms"
    );

    let row = client.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(row.status, StatusCode::OK);
    assert_eq!(row.body["name"], "q1");
    assert_eq!(row.body["game"], "quake");
    assert_eq!(row.body["max_players"], 8);
    assert_eq!(row.body["players"], 1);
    assert_eq!(row.body["attributes"], json!({"mode": "ctf"}));
    assert_eq!(row.body["connect"], json!({"peer": "abc"}));
    assert_eq!(row.body["addr"], "192.0.2.10");
    assert!(
        row.body.get("token").is_none(),
        "rows never carry the token"
    );
    assert!(row.body.get("token_hash").is_none());
    instant(&row.body["created_at"]);

    let list = client.get("/v1/sessions?game=quake").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["sessions"].as_array().map(Vec::len), Some(1));
    assert_eq!(list.body["sessions"][0]["id"], id);
    assert_eq!(list.body["next_cursor"], Value::Null);
    let other = client.get("/v1/sessions?game=doom").await;
    assert_eq!(other.body["sessions"], json!([]));
    app.shutdown().await;
    db.cleanup().await;
}

async fn list_filters_and_stable_pagination(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (app, client) = start(&db, db.config()).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let mode = if i % 2 == 0 { "ctf" } else { "dm" };
        let players = if i == 0 { 8 } else { 1 };
        let body = json!({"game": "g", "name": format!("s{i}"), "max_players": 8,
                          "players": players, "attributes": {"mode": mode, "region": "eu"}});
        ids.push(client.create(body).await.0);
    }
    client.create(session("other", "x")).await;

    let ctf = client.get("/v1/sessions?game=g&attr.mode=ctf").await;
    assert_eq!(ctf.body["sessions"].as_array().map(Vec::len), Some(4));
    let ctf_space = client
        .get("/v1/sessions?game=g&attr.mode=ctf&attr.region=eu&has_space=true")
        .await;
    let names: Vec<&str> = ctf_space.body["sessions"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["s2", "s4", "s6"], "full session s0 is filtered out");
    let none = client.get("/v1/sessions?game=g&attr.region=us").await;
    assert_eq!(none.body["sessions"], json!([]));

    // Walk pages of 3 while adding rows: every row appears exactly once, in creation order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut added = 0;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/v1/sessions?game=g&limit=3&cursor={c}"),
            None => "/v1/sessions?game=g&limit=3".to_owned(),
        };
        let page = client.get(&uri).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for row in page.body["sessions"].as_array().expect("array") {
            seen.push(row["id"].as_str().expect("id").to_owned());
        }
        if added < 2 {
            ids.push(
                client
                    .create(json!({"game": "g", "name": "late", "max_players": 2}))
                    .await
                    .0,
            );
            added += 1;
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "pagination is stable while rows are added");
    app.shutdown().await;
    db.cleanup().await;
}

async fn heartbeat_and_patch_extend_life(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (app, client) = start(&db, db.config()).await;
    let mut body = session("g", "hb");
    body["timeout_secs"] = json!(10);
    let (id, token) = client.create(body).await;
    let first = instant(&client.get(&format!("/v1/sessions/{id}")).await.body["expires_at"]);
    tokio::time::sleep(Duration::from_millis(30)).await;

    let hb = client
        .call(
            Method::POST,
            &format!("/v1/sessions/{id}/heartbeat"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(hb.status, StatusCode::OK, "{}", hb.body);
    let after_hb = instant(&hb.body["expires_at"]);
    assert!(after_hb > first, "heartbeat moves expiry forward");
    let row = client.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(instant(&row.body["expires_at"]), after_hb);

    let patch = json!({"players": 5, "name": "renamed", "attributes": {"map": "dm4"},
                       "connect": {"peer": "new"}, "timeout_secs": 120});
    let patched = client
        .call(
            Method::PATCH,
            &format!("/v1/sessions/{id}"),
            Some(&token),
            Some(patch),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["players"], 5);
    assert_eq!(patched.body["name"], "renamed");
    assert_eq!(patched.body["max_players"], 8, "unpatched fields stay");
    assert_eq!(
        patched.body["attributes"],
        json!({"map": "dm4"}),
        "attributes are replaced"
    );
    assert_eq!(patched.body["connect"], json!({"peer": "new"}));
    let ttl = (instant(&patched.body["expires_at"]) - chrono::Utc::now()).num_seconds();
    assert!(
        (118..=120).contains(&ttl),
        "patch counts as a heartbeat with the new timeout: {ttl}"
    );
    let listed = client.get("/v1/sessions?game=g&attr.map=dm4").await;
    assert_eq!(listed.body["sessions"][0]["players"], 5);

    let empty = client
        .call(
            Method::PATCH,
            &format!("/v1/sessions/{id}"),
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        empty.status,
        StatusCode::OK,
        "an empty patch is a heartbeat"
    );
    let too_many = client
        .call(
            Method::PATCH,
            &format!("/v1/sessions/{id}"),
            Some(&token),
            Some(json!({"players": 9})),
        )
        .await;
    assert_eq!(
        too_many.status,
        StatusCode::BAD_REQUEST,
        "players > max_players after merge"
    );
    app.shutdown().await;
    db.cleanup().await;
}

async fn owner_token_is_required_and_checked(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (app, client) = start(&db, db.config()).await;
    let (id, token) = client.create(session("g", "auth")).await;
    let (_, other_token) = client.create(session("g", "other")).await;
    let hb = format!("/v1/sessions/{id}/heartbeat");
    for presented in [None, Some(""), Some("wrong"), Some(other_token.as_str())] {
        let reply = client.call(Method::POST, &hb, presented, None).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "token {presented:?}"
        );
        assert_eq!(reply.code(), "unauthorized");
        let del = client
            .call(
                Method::DELETE,
                &format!("/v1/sessions/{id}"),
                presented,
                None,
            )
            .await;
        assert_eq!(del.status, StatusCode::UNAUTHORIZED);
        let patch = client
            .call(
                Method::PATCH,
                &format!("/v1/sessions/{id}"),
                presented,
                Some(json!({"players": 2})),
            )
            .await;
        assert_eq!(patch.status, StatusCode::UNAUTHORIZED);
    }
    let basic = Request::post(&hb)
        .header("authorization", format!("Basic {token}"))
        .body(Body::empty());
    assert_eq!(
        client.raw(basic.expect("request")).await.status,
        StatusCode::UNAUTHORIZED
    );
    let unknown = format!("/v1/sessions/{}/heartbeat", uuid::Uuid::new_v4());
    let reply = client
        .call(Method::POST, &unknown, Some(&token), None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.code(), "not_found");
    let reply = client
        .call(
            Method::POST,
            "/v1/sessions/not-a-uuid/heartbeat",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "invalid_id");
    // The row is untouched by the failed attempts.
    let row = client.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(row.body["players"], 1);
    app.shutdown().await;
    db.cleanup().await;
}

async fn delete_delists(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (app, client) = start(&db, db.config()).await;
    let (id, token) = client.create(session("g", "gone")).await;
    let uri = format!("/v1/sessions/{id}");
    let del = client.call(Method::DELETE, &uri, Some(&token), None).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    assert_eq!(del.body, Value::Null);
    assert_eq!(client.get(&uri).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        client.get("/v1/sessions?game=g").await.body["sessions"],
        json!([])
    );
    let again = client.call(Method::DELETE, &uri, Some(&token), None).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let hb = client
        .call(
            Method::POST,
            &format!("{uri}/heartbeat"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(hb.status, StatusCode::NOT_FOUND);
    app.shutdown().await;
    // Gone from the database too: a restart does not bring it back.
    let (app, client) = start(&db, db.config()).await;
    assert_eq!(client.get(&uri).await.status, StatusCode::NOT_FOUND);
    app.shutdown().await;
    db.cleanup().await;
}

async fn expired_rows_vanish_and_are_reaped(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.writer.reap_interval = Duration::from_millis(200);
    config.writer.reap_grace = Duration::ZERO;
    let (app, client) = start(&db, config.clone()).await;
    let mut short = session("g", "short");
    short["timeout_secs"] = json!(1);
    let (id, token) = client.create(short).await;
    let (long_id, _) = client.create(session("g", "long")).await;
    assert_eq!(
        client.get("/v1/sessions?game=g").await.body["sessions"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let uri = format!("/v1/sessions/{id}");
    assert_eq!(
        client.get(&uri).await.status,
        StatusCode::NOT_FOUND,
        "expired rows vanish at once"
    );
    let list = client.get("/v1/sessions?game=g").await;
    assert_eq!(list.body["sessions"].as_array().map(Vec::len), Some(1));
    assert_eq!(list.body["sessions"][0]["id"], long_id.as_str());
    let hb = client
        .call(
            Method::POST,
            &format!("{uri}/heartbeat"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        hb.status,
        StatusCode::NOT_FOUND,
        "an expired row cannot be revived"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    app.shutdown().await;

    // The reaper deleted it from the database: count rows directly.
    let rows: i64 = match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.expect("open");
            sqlx::query_scalar(
                "SELECT (SELECT COUNT(*) FROM sessions) + (SELECT COUNT(*) FROM session_liveness)",
            )
            .fetch_one(&pool)
            .await
            .expect("count")
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.expect("open");
            let n = sqlx::query_scalar(
                "SELECT (SELECT COUNT(*) FROM sessions) + (SELECT COUNT(*) FROM session_liveness)",
            )
            .fetch_one(&pool)
            .await
            .expect("count");
            pool.close().await;
            n
        }
    };
    assert_eq!(
        rows, 2,
        "the reaper deleted the expired row from both tables"
    );
    db.cleanup().await;
}

async fn restart_keeps_live_rows_and_tokens(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (app, client) = start(&db, db.config()).await;
    let (id, token) = client.create(session("g", "durable")).await;
    let (gone, gone_token) = client.create(session("g", "deleted")).await;
    client
        .call(
            Method::DELETE,
            &format!("/v1/sessions/{gone}"),
            Some(&gone_token),
            None,
        )
        .await;
    let before = client.get(&format!("/v1/sessions/{id}")).await.body;
    app.shutdown().await;

    let (app, client) = start(&db, db.config()).await;
    let after = client.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.body, before, "the row survives a restart unchanged");
    assert_eq!(
        client.get("/v1/sessions?game=g").await.body["sessions"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let hb = client
        .call(
            Method::POST,
            &format!("/v1/sessions/{id}/heartbeat"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        hb.status,
        StatusCode::OK,
        "the token still works after a restart"
    );
    app.shutdown().await;
    db.cleanup().await;
}

/// `expires_at_ms` of the only row, read from the database directly.
async fn stored_expiry(backend: Backend, url: &str) -> i64 {
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.expect("open");
            let v = sqlx::query_scalar("SELECT expires_at_ms FROM session_liveness")
                .fetch_one(&pool)
                .await
                .expect("row");
            pool.close().await;
            v
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.expect("open");
            let v = sqlx::query_scalar("SELECT expires_at_ms FROM session_liveness")
                .fetch_one(&pool)
                .await
                .expect("row");
            pool.close().await;
            v
        }
    }
}

async fn buffered_heartbeats_are_written_behind_and_flushed_at_shutdown(backend: Backend) {
    let db = TestDb::new(backend).await;
    let config = Config {
        heartbeat_flush: Duration::from_secs(3600),
        ..db.config()
    };
    let (app, client) = start(&db, config).await;
    let (id, token) = client.create(session("g", "behind")).await;
    let created = stored_expiry(backend, &db.url).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let hb = client
        .call(
            Method::POST,
            &format!("/v1/sessions/{id}/heartbeat"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(hb.status, StatusCode::OK);
    let acked = instant(&hb.body["expires_at"]).timestamp_millis();
    assert!(acked > created);
    let row = client.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(
        row.body["expires_at"], hb.body["expires_at"],
        "reads see the heartbeat at once"
    );
    assert_eq!(
        stored_expiry(backend, &db.url).await,
        created,
        "not yet written (flush every hour)"
    );
    app.shutdown().await;
    assert_eq!(
        stored_expiry(backend, &db.url).await,
        acked,
        "shutdown flushes buffered heartbeats"
    );
    db.cleanup().await;
}

async fn synchronous_heartbeats_commit_before_answering(backend: Backend) {
    let db = TestDb::new(backend).await;
    let config = Config {
        heartbeat_flush: Duration::ZERO,
        ..db.config()
    };
    let (app, client) = start(&db, config.clone()).await;
    let (id, token) = client.create(session("g", "sync")).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let uri = format!("/v1/sessions/{id}/heartbeat");
    let hb = client.call(Method::POST, &uri, Some(&token), None).await;
    assert_eq!(hb.status, StatusCode::OK);
    // Read the database directly: the heartbeat is already committed.
    let stored: i64 = match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.expect("open");
            sqlx::query_scalar("SELECT expires_at_ms FROM session_liveness")
                .fetch_one(&pool)
                .await
                .expect("row")
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.expect("open");
            let v = sqlx::query_scalar("SELECT expires_at_ms FROM session_liveness")
                .fetch_one(&pool)
                .await
                .expect("row");
            pool.close().await;
            v
        }
    };
    assert_eq!(stored, instant(&hb.body["expires_at"]).timestamp_millis());
    let unknown = format!("/v1/sessions/{}/heartbeat", uuid::Uuid::new_v4());
    assert_eq!(
        client
            .call(Method::POST, &unknown, Some(&token), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    app.shutdown().await;
    db.cleanup().await;
}

async fn heartbeat_acknowledged_just_before_expiry_is_not_lost(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = Config {
        heartbeat_flush: Duration::from_secs(3600),
        ..db.config()
    };
    config.writer.reap_interval = Duration::from_millis(100);
    let (app, client) = start(&db, config).await;
    let mut short = session("g", "edge");
    short["timeout_secs"] = json!(1);
    let (id, token) = client.create(short).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let uri = format!("/v1/sessions/{id}");
    // Acknowledged from memory while the stored expiry is 0.3 s away; nothing is flushed
    // until shutdown, so the stored expiry passes and the reaper runs many times.
    let hb = client
        .call(
            Method::POST,
            &format!("{uri}/heartbeat"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(hb.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        client.get(&uri).await.status,
        StatusCode::OK,
        "the acknowledged heartbeat holds"
    );
    app.shutdown().await;
    let acked = instant(&hb.body["expires_at"]).timestamp_millis();
    assert_eq!(
        stored_expiry(backend, &db.url).await,
        acked,
        "the row was not reaped, and the flush wrote it"
    );
    db.cleanup().await;
}
