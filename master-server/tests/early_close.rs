//! The real binary on loopback: an answer given before the request body was read (429
//! from the rate limit, 413 from the announced length) carries `Connection: close`, so a
//! keep-alive client reads it and opens a new connection for its next request instead of
//! writing into a closed socket.

mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::server::Server;
use common::slow::{connect_from, read_response, wait_closed};
use common::{session, Backend, TestDb};

fn request(body: &str) -> String {
    format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_close_keep_alive_connections() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(&db, &["--rate-limit", "1", "--max-sessions-per-ip", "0"]);
    let body = session("g", "keep-alive").to_string();

    // One raw keep-alive connection: answers keep it open until the rate limit answers
    // before reading the body; that answer says `Connection: close` and the server closes.
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut stream = connect_from(source, server.addr).await;
    stream.set_nonblocking(false).expect("blocking");
    let mut statuses = Vec::new();
    loop {
        assert!(
            statuses.len() < 10,
            "rate limit 1/s answers 429 within 10 requests"
        );
        stream.write_all(request(&body).as_bytes()).expect(
            "the server never closes a connection without saying so in the previous answer",
        );
        let (status, head, _) = read_response(&mut stream, Duration::from_secs(5))
            .expect("every request on the connection is answered");
        statuses.push(status);
        if head.contains("connection: close") {
            assert_eq!(status, 429, "{statuses:?}");
            break;
        }
        assert_ne!(
            status, 429,
            "a 429 before the body is read must close: {head}"
        );
    }
    assert!(
        wait_closed(&mut stream, Duration::from_secs(5)).is_some(),
        "closed after the 429"
    );
    println!("raw keep-alive connection: {statuses:?}, then closed");

    // An announced body over the limit: 413 with `Connection: close`, then closed.
    let mut stream = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), server.addr).await;
    stream.set_nonblocking(false).expect("blocking");
    stream
        .write_all(request(&"x".repeat(100 * 1024)).as_bytes())
        .expect("write");
    let (status, head, _) = read_response(&mut stream, Duration::from_secs(5)).expect("answer");
    assert_eq!(status, 413);
    assert!(head.contains("connection: close"), "{head}");

    // A pooled client (as games use) sees every answer, small bodies and 100 KiB ones alike:
    // no broken pipe, no reset.
    let client = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let (mut limited, mut too_large) = (0, 0);
    for i in 0..300 {
        let big = i % 10 == 9;
        let request = client
            .post(format!("{}/v1/sessions", server.base))
            .header("content-type", "application/json");
        let request = if big {
            request.body("x".repeat(100 * 1024))
        } else {
            request.body(body.clone())
        };
        let reply = request
            .send()
            .await
            .unwrap_or_else(|err| panic!("request {i} got no answer: {err:?}"));
        match reply.status().as_u16() {
            429 => limited += 1,
            413 => too_large += 1,
            _ => {}
        }
    }
    println!("pooled client: 300 requests, {limited} answered 429, {too_large} answered 413, none failed");
    assert!(limited > 200, "{limited}");
    server.terminate();
    db.cleanup().await;
}
