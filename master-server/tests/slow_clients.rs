//! The real binary on loopback against slow clients: 2,000 connections that trickle a
//! request header one byte a second, from one address and from twenty, while another
//! address probes `/healthz`; request bodies that never arrive; idle keep-alive
//! connections; the per-address and global connection caps.
//!
//! Figures (slow connections held, `/healthz` latency under them) are printed; the only
//! time bounds asserted are the ones the server promises (a probe answered within 5 s, a
//! deadline met within a few seconds of margin).

mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use common::server::Server;
use common::slow::{
    closed_within, connect_from, is_closed, metric, nudge, read_response, wait_closed,
};
use common::{Backend, TestDb};

const PROBE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const SLOW_HEAD: &[u8] = b"POST /v1/sessions HTTP/1.1\r\nHost: master\r\nX-Slow: ";

fn source(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))
}

/// Probes `/healthz` from [`PROBE`] on fresh connections every 100 ms for `span`, while
/// the slow sockets keep trickling; returns the latencies. Every probe must succeed.
async fn probe_healthz(server: &Server, slow: &[TcpStream], span: Duration) -> Vec<Duration> {
    let client = reqwest::Client::builder()
        .local_address(PROBE)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut latencies = Vec::new();
    let mut last_nudge = Instant::now();
    let end = Instant::now() + span;
    while Instant::now() < end {
        if last_nudge.elapsed() >= Duration::from_secs(1) {
            slow.iter().for_each(|s| nudge(s, b"a"));
            last_nudge = Instant::now();
        }
        let start = Instant::now();
        let reply = client
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .expect("/healthz answers within 5 s under slow clients");
        assert_eq!(reply.status(), 200);
        latencies.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies
}

fn summary(latencies: &mut [Duration]) -> String {
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{} probes, p50 {:.2} ms, max {:.2} ms",
        latencies.len(),
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() - 1])
    )
}

async fn metrics(server: &Server) -> String {
    common::server::http()
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// Opens `per_source` slow connections from each of `sources`, probes `/healthz` while
/// they are held, then checks that the server closed every one by the header timeout.
async fn slow_phase(
    server: &Server,
    sources: &[IpAddr],
    per_source: usize,
    expect_held: usize,
) -> (usize, String) {
    let mut slow = Vec::with_capacity(sources.len() * per_source);
    let opened = Instant::now();
    for src in sources {
        for _ in 0..per_source {
            let stream = connect_from(*src, server.addr).await;
            nudge(&stream, SLOW_HEAD);
            slow.push(stream);
        }
    }
    // Connections over a cap are closed right after accept; give the server (on a busy
    // machine) up to 5 s to get through the backlog.
    let settled = Instant::now() + Duration::from_secs(5);
    let mut held = slow.iter().filter(|s| !is_closed(s)).count();
    while held > expect_held && Instant::now() < settled {
        tokio::time::sleep(Duration::from_millis(100)).await;
        held = slow.iter().filter(|s| !is_closed(s)).count();
    }
    let open_metric = metric(&metrics(server).await, "master_connections_open");
    let mut latencies = probe_healthz(server, &slow, Duration::from_secs(3)).await;
    let figures = format!(
        "{} slow connections from {} address(es): {held} held (server gauge {open_metric}), \
         /healthz {}",
        slow.len(),
        sources.len(),
        summary(&mut latencies)
    );
    // Default header read timeout 5 s from each connection's opening; 5 s of margin.
    let deadline = opened + Duration::from_secs(10);
    while Instant::now() < deadline && !slow.iter().all(is_closed) {
        slow.iter().for_each(|s| nudge(s, b"a"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let still_open = slow.iter().filter(|s| !is_closed(s)).count();
    assert_eq!(
        still_open, 0,
        "every slow connection closed by the header timeout"
    );
    (held, figures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_stop_healthz() {
    let _ = master_server::serve::raise_fd_limit();
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(&db, &[]);

    let (held, one) = slow_phase(&server, &[source(2)], 2000, 256).await;
    assert_eq!(
        held, 256,
        "one address holds the per-address cap (default 256)"
    );
    let sources: Vec<IpAddr> = (3..23).map(source).collect();
    let (held, twenty) = slow_phase(&server, &sources, 100, 2000).await;
    assert_eq!(held, 2000, "twenty addresses below the cap are all held");

    let text = metrics(&server).await;
    let refused = metric(&text, "master_connections_refused_total{reason=\"per_ip\"}");
    let timed_out = metric(
        &text,
        "master_connections_timed_out_total{phase=\"header\"}",
    );
    println!("{one}\n{twenty}\nrefused at accept (per_ip): {refused}; closed at the header timeout: {timed_out}");
    assert_eq!(refused, 1744.0);
    assert!(timed_out >= 2256.0, "{timed_out}");
    server.terminate();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_and_idle_connections_are_answered_or_closed() {
    let db = TestDb::new(Backend::Sqlite).await;
    let timeouts = [
        "--body-read-timeout-ms",
        "1500",
        "--idle-timeout-ms",
        "1500",
        "--header-read-timeout-ms",
        "1500",
    ];
    let server = Server::start(&db, &timeouts);
    let post = |length: usize| {
        format!(
            "POST /v1/sessions HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\n\
             Content-Length: {length}\r\n\r\n{{\"game\""
        )
    };

    // 10 MB announced, never sent: refused at once, and the connection closed.
    let mut stream = connect_from(PROBE, server.addr).await;
    nudge(&stream, post(10_000_000).as_bytes());
    let start = Instant::now();
    let (status, head, body) =
        read_response(&mut stream, Duration::from_secs(5)).expect("an answer");
    println!(
        "10 MB body never sent: {status} after {:?}",
        start.elapsed()
    );
    assert_eq!(status, 413, "{body}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(wait_closed(&mut stream, Duration::from_secs(5)).is_some());

    // 1,000 bytes announced, 7 sent: 408 at the body read timeout, then closed.
    let mut stream = connect_from(PROBE, server.addr).await;
    nudge(&stream, post(1000).as_bytes());
    let start = Instant::now();
    let (status, head, body) =
        read_response(&mut stream, Duration::from_secs(10)).expect("an answer");
    let waited = start.elapsed();
    println!("stalled body: {status} after {waited:?}");
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("body_timeout"), "{body}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(waited >= Duration::from_millis(1000), "{waited:?}");
    assert!(wait_closed(&mut stream, Duration::from_secs(5)).is_some());

    // A keep-alive connection idle after its answer: closed at the idle timeout.
    let mut stream = connect_from(PROBE, server.addr).await;
    nudge(&stream, b"GET /healthz HTTP/1.1\r\nHost: m\r\n\r\n");
    let (status, head, _) = read_response(&mut stream, Duration::from_secs(5)).expect("answer");
    assert_eq!(status, 200);
    assert!(!head.contains("connection: close"), "keep-alive: {head}");
    let idle = wait_closed(&mut stream, Duration::from_secs(10)).expect("closed when idle");
    println!("idle keep-alive connection closed after {idle:?}");
    assert!(idle >= Duration::from_millis(1000), "{idle:?}");

    // Headers that never complete: closed without an answer at the header timeout.
    let mut stream = connect_from(PROBE, server.addr).await;
    nudge(&stream, b"GET /heal");
    let slow = wait_closed(&mut stream, Duration::from_secs(10)).expect("closed");
    println!("incomplete headers closed after {slow:?}");
    server.terminate();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_address_and_in_total() {
    let db = TestDb::new(Backend::Sqlite).await;
    let caps = ["--max-connections-per-ip", "3", "--max-connections", "5"];
    let server = Server::start(&db, &caps);
    let wait = Duration::from_secs(5);
    let mut a = Vec::new();
    for _ in 0..4 {
        a.push(connect_from(source(2), server.addr).await);
    }
    // Accepted in order: once the last is closed, the server has seen them all.
    assert!(
        closed_within(&a[3], wait).await,
        "a 4th from one address is closed"
    );
    let open: Vec<bool> = a[..3].iter().map(|s| !is_closed(s)).collect();
    assert_eq!(open, [true; 3], "3 per address are held");
    let mut b = Vec::new();
    for _ in 0..3 {
        b.push(connect_from(source(3), server.addr).await);
    }
    assert!(closed_within(&b[2], wait).await, "the 6th in all is closed");
    let open: Vec<bool> = b[..2].iter().map(|s| !is_closed(s)).collect();
    assert_eq!(open, [true; 2], "5 in all are held");
    // Full: a third address is turned away too, until a slot frees.
    let c = connect_from(source(4), server.addr).await;
    assert!(
        closed_within(&c, wait).await,
        "the global cap applies to every address"
    );
    drop(a.remove(0));
    // The server frees the slot once it sees the close; retry for up to 5 s.
    let end = Instant::now() + wait;
    let mut c = loop {
        let c = connect_from(source(4), server.addr).await;
        if !closed_within(&c, Duration::from_millis(200)).await {
            break c;
        }
        assert!(
            Instant::now() < end,
            "a freed slot is used again within 5 s"
        );
    };
    c.set_nonblocking(false).expect("blocking");
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: m\r\n\r\n")
        .expect("write");
    let (status, _, _) = read_response(&mut c, Duration::from_secs(5)).expect("answer");
    assert_eq!(status, 200, "a freed slot is used again");
    server.terminate();
    db.cleanup().await;
}
