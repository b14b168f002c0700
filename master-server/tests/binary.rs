//! The real `master-server` binary on loopback: flags, the listening line, the API over
//! TCP, graceful shutdown on SIGTERM, and a restart on the same database.

mod common;

use common::server::{http, Server};
use common::{session, Backend, TestDb};
use serde_json::{json, Value};

both_backends!(
    serves_over_tcp_and_survives_a_restart,
    rejects_bad_requests_over_tcp
);

async fn serves_over_tcp_and_survives_a_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &[]);
    let client = http();
    let created = client
        .post(format!("{}/v1/sessions", server.base))
        .json(&session("g", "tcp"))
        .send()
        .await
        .expect("post");
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.expect("json");
    assert_eq!(
        created["addr"], "127.0.0.1",
        "the client IP as the server saw it"
    );
    let id = created["id"].as_str().expect("id").to_owned();
    let token = created["token"].as_str().expect("token").to_owned();
    let hb = client
        .post(format!("{}/v1/sessions/{id}/heartbeat", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("heartbeat");
    assert_eq!(hb.status(), 200);
    let list: Value = client
        .get(format!("{}/v1/sessions?game=g", server.base))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["sessions"][0]["id"], id.as_str());
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    server.terminate();

    let server = Server::start(&db, &[]);
    let row = client
        .get(format!("{}/v1/sessions/{id}", server.base))
        .send()
        .await
        .expect("get");
    assert_eq!(
        row.status(),
        200,
        "a restart on the same database keeps live rows"
    );
    let del = client
        .delete(format!("{}/v1/sessions/{id}", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("delete");
    assert_eq!(del.status(), 204);
    server.terminate();
    db.cleanup().await;
}

async fn rejects_bad_requests_over_tcp(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db, &["--rate-limit", "1", "--max-timeout-secs", "100"]);
    let client = http();
    let long = json!({"game": "g", "name": "n", "max_players": 2, "timeout_secs": 101});
    let reply = client
        .post(format!("{}/v1/sessions", server.base))
        .json(&long)
        .send()
        .await
        .expect("post");
    assert_eq!(reply.status(), 400, "--max-timeout-secs applies");
    let body: Value = reply.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "timeout_out_of_range");
    let huge = "x".repeat(100 * 1024);
    let reply = client
        .post(format!("{}/v1/sessions", server.base))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("post");
    assert_eq!(reply.status(), 413);
    let mut limited = None;
    for _ in 0..10 {
        let reply = client
            .get(format!("{}/v1/sessions?game=g", server.base))
            .send()
            .await
            .expect("get");
        if reply.status() == 429 {
            limited = Some(reply);
            break;
        }
    }
    let limited = limited.expect("--rate-limit 1 answers 429 within 10 quick requests");
    assert!(limited.headers().contains_key("retry-after"));
    server.terminate();
    db.cleanup().await;
}
