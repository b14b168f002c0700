//! The real binary on loopback, SQLite and PostgreSQL: `--max-sessions-per-ip` caps the
//! live sessions of one client address (the forwarded one behind
//! `--trust-forwarded-for`); deleted and expired rows stop counting; concurrent creates
//! from one address do not overshoot.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::server::Server;
use common::{Backend, TestDb};
use serde_json::{json, Value};

both_backends!(caps_live_sessions_per_address);

fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Creates a session; returns the status and the body.
async fn create(
    client: &reqwest::Client,
    base: &str,
    timeout_secs: u32,
    forwarded: Option<&str>,
) -> (u16, Value) {
    let mut request = client
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"game": "g", "name": "n", "max_players": 4, "timeout_secs": timeout_secs}));
    if let Some(addr) = forwarded {
        request = request.header("x-forwarded-for", addr);
    }
    let reply = request.send().await.expect("create answered");
    let status = reply.status().as_u16();
    (status, reply.json().await.expect("json"))
}

async fn caps_live_sessions_per_address(backend: Backend) {
    let db = TestDb::new(backend).await;
    let flags = [
        "--max-sessions-per-ip",
        "3",
        "--min-timeout-secs",
        "1",
        "--trust-forwarded-for",
    ];
    let server = Server::start(&db, &flags);
    let (a, b) = (client_from(2), client_from(3));

    let mut rows = Vec::new();
    for timeout in [60, 60, 1] {
        let (status, body) = create(&a, &server.base, timeout, None).await;
        assert_eq!(status, 201, "{body}");
        rows.push(body);
    }
    let (status, body) = create(&a, &server.base, 60, None).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_sessions_for_address");
    assert_eq!(
        create(&b, &server.base, 60, None).await.0,
        201,
        "per address"
    );

    let (id, token) = (&rows[0]["id"], &rows[0]["token"]);
    let deleted = a
        .delete(format!(
            "{}/v1/sessions/{}",
            server.base,
            id.as_str().expect("id")
        ))
        .bearer_auth(token.as_str().expect("token"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        create(&a, &server.base, 60, None).await.0,
        201,
        "deleted rows stop counting"
    );
    assert_eq!(create(&a, &server.base, 60, None).await.0, 429);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        create(&a, &server.base, 60, None).await.0,
        201,
        "expired rows stop counting"
    );
    assert_eq!(create(&a, &server.base, 60, None).await.0, 429);

    // Behind a trusted proxy the forwarded address counts, not the proxy's.
    let via = Some("203.0.113.7");
    assert_eq!(create(&b, &server.base, 60, via).await.0, 201);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (b, base) = (b.clone(), server.base.clone());
            tokio::spawn(async move { create(&b, &base, 60, Some("203.0.113.8")).await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    let created = statuses.iter().filter(|s| **s == 201).count();
    assert_eq!(
        created, 3,
        "concurrent creates stop at the cap: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 429),
        "{statuses:?}"
    );
    server.terminate();
    db.cleanup().await;
}
