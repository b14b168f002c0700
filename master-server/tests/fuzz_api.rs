//! Property-based fuzzing of the API through the router: arbitrary methods, paths, query
//! strings, headers and JSON (or non-JSON) bodies never get a 5xx, and every error has the
//! JSON error shape. Runs against SQLite (the input checks are the same for both backends).

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{Backend, Client, TestDb};
use master_server::App;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Arbitrary JSON, biased towards the API's field names.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z ]{0,12}".prop_map(Value::from),
        "\\PC{0,300}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        let key = prop_oneof![
            Just("game".to_owned()),
            Just("name".to_owned()),
            Just("max_players".to_owned()),
            Just("players".to_owned()),
            Just("timeout_secs".to_owned()),
            Just("attributes".to_owned()),
            Just("connect".to_owned()),
            "[a-z]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn path(id: String) -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/v1/sessions".to_owned()),
        Just(format!("/v1/sessions/{id}")),
        Just(format!("/v1/sessions/{id}/heartbeat")),
        "/v1/sessions/[a-zA-Z0-9%-]{0,40}",
        "/v1/sessions/[a-f0-9-]{36}/heartbeat",
        "/[a-z/]{0,20}",
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "\\?game=[a-z]{0,70}(&limit=-?[0-9]{0,4})?(&cursor=[a-z0-9-]{0,6})?",
        "\\?(game=g&)?attr\\.[a-z]{0,70}=[a-z]{0,300}(&has_space=[a-z0-9]{0,5})?",
        "\\?[a-z%&=.]{0,40}",
    ]
}

#[derive(Debug, Clone)]
struct Call {
    method: Method,
    path: String,
    query: String,
    content_type: Option<&'static str>,
    auth: Option<String>,
    body: Option<Vec<u8>>,
}

fn call(id: String, token: String) -> impl Strategy<Value = Call> {
    let method = prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PATCH),
        Just(Method::DELETE),
        Just(Method::PUT),
    ];
    let content_type = prop_oneof![
        Just(None),
        Just(Some("application/json")),
        Just(Some("text/plain")),
        Just(Some("application/problem+json")),
    ];
    let auth = prop_oneof![
        Just(None),
        Just(Some(format!("Bearer {token}"))),
        "(Bearer|Basic|bearer) [ -~]{0,200}".prop_map(Some),
    ];
    let body = prop_oneof![
        Just(None),
        json_value().prop_map(|v| Some(v.to_string().into_bytes())),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Some),
    ];
    (method, path(id), query(), content_type, auth, body).prop_map(
        |(method, path, query, content_type, auth, body)| Call {
            method,
            path,
            query,
            content_type,
            auth,
            body,
        },
    )
}

#[test]
fn arbitrary_requests_never_get_a_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (db, app, client, id, token) = runtime.block_on(async {
        let db = TestDb::new(Backend::Sqlite).await;
        let app = App::start(db.config()).await.expect("app starts");
        let client = Client::new(&app);
        let body = json!({"game": "g", "name": "fuzz target", "max_players": 4});
        let (id, token) = client.create(body).await;
        (db, app, client, id, token)
    });
    let config = ProptestConfig {
        cases: 2000,
        ..ProptestConfig::default()
    };
    proptest!(config, |(c in call(id.clone(), token.clone()))| {
        let mut req = Request::builder().method(c.method.clone()).uri(format!("{}{}", c.path, c.query));
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(auth) = &c.auth {
            req = req.header("authorization", auth.as_str());
        }
        let body = c.body.clone().map_or_else(Body::empty, Body::from);
        let Ok(req) = req.body(body) else { return Ok(()) };
        let reply = runtime.block_on(client.raw(req));
        prop_assert!(reply.status.as_u16() < 500, "{c:?} got {} {}", reply.status, reply.body);
        if reply.status.is_client_error() {
            prop_assert!(
                reply.body["error"]["code"].is_string() && reply.body["error"]["message"].is_string(),
                "{c:?} got an error without the JSON shape: {}", reply.body
            );
        }
    });
    // The server is still healthy and the target row still answers.
    runtime.block_on(async {
        assert_eq!(client.get("/healthz").await.status, StatusCode::OK);
        app.shutdown().await;
        db.cleanup().await;
    });
}
