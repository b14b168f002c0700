//! The HTTP API through the router, the same suite against SQLite and PostgreSQL: bad
//! input, rate limits, client addresses, OpenAPI, health and metrics.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{session, Backend, Client, TestDb};
use master_server::{App, Config};
use serde_json::{json, Value};

both_backends!(
    bad_input_gets_clear_4xx_json,
    rate_limit_answers_429_with_retry_after,
    forwarded_for_is_trusted_only_when_enabled,
    openapi_healthz_and_metrics,
);

async fn start(db: &TestDb, config: Config) -> (App, Client) {
    let _ = db;
    let app = App::start(config).await.expect("app starts");
    let client = Client::new(&app);
    (app, client)
}

async fn bad_input_gets_clear_4xx_json(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (app, client) = start(&db, db.config()).await;
    let (id, token) = client.create(session("g", "target")).await;
    let many_attrs: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
    let big_connect = json!({"blob": "x".repeat(2100)});
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "missing game",
            json!({"name": "n", "max_players": 2}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "wrong type",
            json!({"game": 5, "name": "n", "max_players": 2}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "negative count",
            json!({"game": "g", "name": "n", "max_players": -1}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "empty game",
            json!({"game": "", "name": "n", "max_players": 2}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "blank name",
            json!({"game": "g", "name": "  ", "max_players": 2}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "players > max",
            json!({"game": "g", "name": "n", "max_players": 2, "players": 3}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "zero max",
            json!({"game": "g", "name": "n", "max_players": 0}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "timeout low",
            json!({"game": "g", "name": "n", "max_players": 2, "timeout_secs": 0}),
            StatusCode::BAD_REQUEST,
            "timeout_out_of_range",
        ),
        (
            "timeout high",
            json!({"game": "g", "name": "n", "max_players": 2, "timeout_secs": 3601}),
            StatusCode::BAD_REQUEST,
            "timeout_out_of_range",
        ),
        (
            "33 attributes",
            json!({"game": "g", "name": "n", "max_players": 2, "attributes": many_attrs}),
            StatusCode::BAD_REQUEST,
            "too_many_attributes",
        ),
        (
            "long key",
            json!({"game": "g", "name": "n", "max_players": 2, "attributes": {"k".repeat(65): "v"}}),
            StatusCode::BAD_REQUEST,
            "invalid_attribute",
        ),
        (
            "long value",
            json!({"game": "g", "name": "n", "max_players": 2, "attributes": {"k": "v".repeat(257)}}),
            StatusCode::BAD_REQUEST,
            "invalid_attribute",
        ),
        (
            "non-string attr",
            json!({"game": "g", "name": "n", "max_players": 2, "attributes": {"k": 1}}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "big connect",
            json!({"game": "g", "name": "n", "max_players": 2, "connect": big_connect}),
            StatusCode::BAD_REQUEST,
            "connect_too_large",
        ),
        (
            "connect not object",
            json!({"game": "g", "name": "n", "max_players": 2, "connect": [1]}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "unknown field",
            json!({"game": "g", "name": "n", "max_players": 2, "colour": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "not an object",
            json!([1, 2]),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
    ];
    for (what, body, status, code) in cases {
        let reply = client
            .call(Method::POST, "/v1/sessions", None, Some(body))
            .await;
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        assert_eq!(reply.code(), code, "{what}");
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    let raw = |body: &'static str, content_type: &'static str| {
        Request::post("/v1/sessions")
            .header("content-type", content_type)
            .body(Body::from(body))
    };
    let malformed = client
        .raw(raw("{\"game\": ", "application/json").expect("req"))
        .await;
    assert_eq!(
        (malformed.status, malformed.code()),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    let text = client.raw(raw("game=g", "text/plain").expect("req")).await;
    assert_eq!(
        (text.status, text.code()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let huge = format!(
        "{{\"game\": \"g\", \"name\": \"{}\"}}",
        "x".repeat(70 * 1024)
    );
    let req = Request::post("/v1/sessions")
        .header("content-type", "application/json")
        .body(Body::from(huge));
    let reply = client.raw(req.expect("req")).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    for (uri, code) in [
        ("/v1/sessions", "invalid_query"),
        ("/v1/sessions?game=g&limit=0", "invalid_query"),
        ("/v1/sessions?game=g&limit=500", "invalid_query"),
        ("/v1/sessions?game=g&cursor=zz", "invalid_cursor"),
        ("/v1/sessions?game=g&bogus=1", "invalid_query"),
        ("/v1/sessions/123", "invalid_id"),
    ] {
        let reply = client.get(uri).await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::BAD_REQUEST, code),
            "{uri}"
        );
    }
    let unknown = client
        .get(&format!("/v1/sessions/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let route = client.get("/v2/nothing").await;
    assert_eq!(
        (route.status, route.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let method = client.call(Method::PUT, "/v1/sessions", None, None).await;
    assert_eq!(
        (method.status, method.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let bad_patch = client
        .call(
            Method::PATCH,
            &format!("/v1/sessions/{id}"),
            Some(&token),
            Some(json!({"players": "x"})),
        )
        .await;
    assert_eq!(
        (bad_patch.status, bad_patch.code()),
        (StatusCode::BAD_REQUEST, "invalid_body")
    );
    let bad_timeout = client
        .call(
            Method::PATCH,
            &format!("/v1/sessions/{id}"),
            Some(&token),
            Some(json!({"timeout_secs": 9999})),
        )
        .await;
    assert_eq!(bad_timeout.code(), "timeout_out_of_range");
    // Nothing above created a row.
    assert_eq!(
        client.get("/v1/sessions?game=g").await.body["sessions"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    app.shutdown().await;
    db.cleanup().await;
}

async fn rate_limit_answers_429_with_retry_after(backend: Backend) {
    let db = TestDb::new(backend).await;
    let config = Config {
        rate_limit_per_sec: 2,
        ..db.config()
    };
    let (app, mut client) = start(&db, config).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(client.get("/v1/sessions?game=g").await.status);
    }
    assert_eq!(
        &statuses[..4],
        &[StatusCode::OK; 4],
        "burst of 2 x rate is allowed"
    );
    let limited = client.get("/v1/sessions?game=g").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.code(), "rate_limited");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        client.get("/healthz").await.status,
        StatusCode::OK,
        "health checks are exempt"
    );
    client.peer = "192.0.2.99:1".parse().expect("addr");
    assert_eq!(
        client.get("/v1/sessions?game=g").await.status,
        StatusCode::OK,
        "limits are per IP"
    );
    app.shutdown().await;
    db.cleanup().await;
}

async fn forwarded_for_is_trusted_only_when_enabled(backend: Backend) {
    let db = TestDb::new(backend).await;
    let post = || {
        Request::post("/v1/sessions")
            .header("content-type", "application/json")
            .header("x-forwarded-for", "203.0.113.5, 198.51.100.7")
            .body(Body::from(session("g", "xff").to_string()))
            .expect("request")
    };
    let (app, client) = start(&db, db.config()).await;
    assert_eq!(
        client.raw(post()).await.body["addr"],
        "192.0.2.10",
        "peer address by default"
    );
    app.shutdown().await;
    let (app, client) = start(
        &db,
        Config {
            trust_forwarded_for: true,
            ..db.config()
        },
    )
    .await;
    assert_eq!(
        client.raw(post()).await.body["addr"],
        "198.51.100.7",
        "last hop when trusted"
    );
    app.shutdown().await;
    db.cleanup().await;
}

async fn openapi_healthz_and_metrics(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (app, client) = start(&db, db.config()).await;
    let doc = client.get("/v1/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.")));
    for path in [
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/sessions/{id}/heartbeat",
    ] {
        assert!(
            doc.body["paths"].get(path).is_some(),
            "openapi documents {path}"
        );
    }
    assert_eq!(client.get("/healthz").await.body, json!({"status": "ok"}));
    client.create(session("g", "m")).await;
    client.get("/v1/sessions?game=g").await;
    let text = client.get("/metrics").await;
    assert_eq!(text.status, StatusCode::OK);
    let text = text.body.as_str().expect("prometheus text").to_owned();
    assert!(text.contains("http_requests_total{"), "{text}");
    assert!(text.contains("route=\"/v1/sessions\""), "{text}");
    assert!(text.contains("status=\"201\""), "{text}");
    assert!(text.contains("master_sessions_live"), "{text}");
    assert!(text.contains("master_sessions_expired_total"), "{text}");
    app.shutdown().await;
    db.cleanup().await;
}
