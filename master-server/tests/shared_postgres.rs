//! Two master-server instances sharing one PostgreSQL database (as behind a load
//! balancer): each sees, extends and deletes the other's rows.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{instant, session, Backend, Client, TestDb};
use master_server::App;

/// Polls `check` for up to 5 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_stay_coherent() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = App::start(db.config()).await.expect("instance a");
    let b = App::start(db.config()).await.expect("instance b");
    let (ca, cb) = (Client::new(&a), Client::new(&b));

    let (id, token) = ca.create(session("shared", "one")).await;
    let uri = format!("/v1/sessions/{id}");
    assert_eq!(
        cb.get(&uri).await.status,
        StatusCode::OK,
        "b reads a's row at once"
    );
    eventually("b lists a's row", || async {
        cb.get("/v1/sessions?game=shared").await.body["sessions"]
            .as_array()
            .map(Vec::len)
            == Some(1)
    })
    .await;

    let hb = cb
        .call(
            Method::POST,
            &format!("{uri}/heartbeat"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        hb.status,
        StatusCode::OK,
        "the token works on every instance"
    );
    let extended = instant(&hb.body["expires_at"]);
    eventually("a sees b's heartbeat", || async {
        instant(&ca.get(&uri).await.body["expires_at"]) == extended
    })
    .await;

    let patched = cb
        .call(
            Method::PATCH,
            &uri,
            Some(&token),
            Some(serde_json::json!({"players": 3})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    eventually("a sees b's patch", || async {
        ca.get(&uri).await.body["players"] == 3
    })
    .await;

    let del = ca.call(Method::DELETE, &uri, Some(&token), None).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    eventually("b drops the deleted row", || async {
        cb.get(&uri).await.status == StatusCode::NOT_FOUND
    })
    .await;
    assert_eq!(
        cb.get("/v1/sessions?game=shared").await.body["sessions"],
        serde_json::json!([])
    );

    a.shutdown().await;
    b.shutdown().await;
    db.cleanup().await;
}
