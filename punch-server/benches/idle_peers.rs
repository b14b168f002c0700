//! What an idle registered peer costs the punch server, and how fast peers register.
//!
//! Run: `cargo bench -p punch-server --bench idle_peers` (release profile), optionally with
//! `-- --peers 10000 --concurrency 16 --sockets 8 --secs 120 --retry always --park-after 30`
//! (`--retry under-load` starts the server with `--quic-retry under-load`, to measure what
//! the Retry round trip of every new source costs).
//!
//! Steps:
//! 1. Start the real `punch-server` binary on 127.0.0.1:0 (key file in a temporary
//!    directory, `/metrics` on 127.0.0.1:0), register one warm-up peer, and read the
//!    server's `VmRSS` from `/proc/PID/status`: one-time allocations (endpoint buffers,
//!    runtime, TLS session cache) land in this baseline.
//! 2. Register `--peers` peers, each with its own Ed25519 identity (the server identifies
//!    a peer by the key of its client certificate, `mesh::identity`), spread over
//!    `--sockets` quinn client endpoints (one UDP socket each) with `--concurrency`
//!    registrations in flight: handshake, control stream, `Register`, wait for
//!    `Registered`. Every peer keeps its connection open and answers the server's pings.
//!    Bounded by `--secs` in total.
//! 3. Let the server settle for 3 s, check on `/metrics` that it holds every peer, read
//!    `VmRSS` again and print (after - before) / peers, registrations/s and the
//!    registration latency (handshake start to `Registered`) percentiles.
//! 4. Parking (`--park-after N`, default 30 s; 0 = off): the peers offer it
//!    (`Capabilities { park: true }`) and the server runs with `--park-after-secs N`, so
//!    step 3 measures them still connected as long as registering took less than N s.
//!    Then wait (bounded) until the server has parked every peer and closed their
//!    connections, let it settle, read `VmRSS` again and print (parked - before) / peers.
//!    The parked entries outlive the run without keep-alives (`--park-keepalive-secs
//!    600`), so the bench sends none.
//! 5. Close every connection and kill the server by its pid (`Child::kill`).
//!
//! Only loopback addresses are used.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use mesh::coord::{encode, ClientMsg, FrameDecoder, ServerMsg};
use mesh::identity::{tls, Identity, PeerId};
use mesh::socket::{default_transport, endpoint_config, INITIAL_RTT};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;

/// Longest wait for one registration.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(20);

struct Args {
    peers: usize,
    concurrency: usize,
    sockets: usize,
    secs: u64,
    retry: Option<String>,
    /// `--park-after-secs` of the server (0: peers never offer parking).
    park_after: u64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        peers: 10_000,
        concurrency: 16,
        sockets: 8,
        secs: 120,
        retry: None,
        park_after: 30,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().context("flag needs a value");
        match flag.as_str() {
            "--peers" => a.peers = val()?.parse()?,
            "--concurrency" => a.concurrency = val()?.parse()?,
            "--sockets" => a.sockets = val()?.parse()?,
            "--secs" => a.secs = val()?.parse()?,
            "--retry" => a.retry = Some(val()?),
            "--park-after" => a.park_after = val()?.parse()?,
            _ => {} // `cargo bench` passes `--bench`; ignore what we do not know.
        }
    }
    a.peers = a.peers.clamp(1, 50_000);
    a.concurrency = a.concurrency.clamp(1, 512);
    a.sockets = a.sockets.clamp(1, 64);
    a.secs = a.secs.clamp(1, 600);
    a.park_after = a.park_after.min(600);
    Ok(a)
}

/// The server process, killed by its pid on drop.
struct ServerProc {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    id: PeerId,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProc {
    fn start(retry: Option<&str>, park_after: u64) -> Result<ServerProc> {
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("punch.key");
        let mut child = Command::new(env!("CARGO_BIN_EXE_punch-server"))
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--log", "warn"])
            .args(retry.map(|r| ["--quic-retry", r]).into_iter().flatten())
            .args(["--park-after-secs", &park_after.to_string()])
            // Parked entries outlive the measurement without keep-alives from the bench.
            .args(["--park-keepalive-secs", "600"])
            .arg("--key-file")
            .arg(&key)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting punch-server")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let v: serde_json::Value = serde_json::from_str(&line).context("listening line")?;
        let field = |k: &str| v[k].as_str().map(str::to_owned).context(k.to_owned());
        Ok(ServerProc {
            addr: field("addr")?.parse()?,
            metrics: field("metrics_addr")?.parse()?,
            id: field("id")?.parse()?,
            child,
            _dir: dir,
        })
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/PID/status`).
    fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("VmRSS")?;
        let kib = line
            .split_whitespace()
            .nth(1)
            .context("VmRSS value")?
            .parse()?;
        Ok(kib)
    }

    /// The `/metrics` page.
    fn metrics(&self) -> Result<String> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    }
}

/// The value of the sample `name` (with its labels, if any) in a `/metrics` page.
fn metric(page: &str, name: &str) -> Result<u64> {
    let line = page
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .with_context(|| format!("{name} in /metrics"))?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

/// The non-zero samples of `/metrics` that tell of trouble (drops, failures, refusals).
fn trouble(page: &str) -> Vec<&str> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            ["dropped", "failed", "refused", "too_slow"]
                .iter()
                .any(|k| l.contains(k))
        })
        .filter(|l| !l.ends_with(" 0"))
        .collect()
}

/// One registered peer: its connection and the task answering the server's pings.
struct Registered {
    conn: quinn::Connection,
    _keeper: tokio::task::JoinHandle<()>,
}

/// Dials `server` from `endpoint` as a fresh identity and registers; the time it took.
async fn register(
    endpoint: quinn::Endpoint,
    server: (PeerId, SocketAddr),
    transport: Arc<quinn::TransportConfig>,
    park: bool,
) -> Result<(Registered, Duration)> {
    let identity = Identity::generate()?;
    let (config, _) = tls::client_config(&identity, server.0, Some(transport))?;
    let started = Instant::now();
    let connecting = endpoint.connect_with(config, server.1, &tls::server_name(&server.0))?;
    let conn = timeout(REGISTER_TIMEOUT / 2, connecting)
        .await
        .context("handshake timed out")??;
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut frame = Vec::new();
    encode(&ClientMsg::Register { candidates: vec![] }, &mut frame)?;
    if park {
        encode(&ClientMsg::Capabilities { park: true }, &mut frame)?;
    }
    send.write_all(&frame).await?;
    let mut decoder = FrameDecoder::<ServerMsg>::new();
    loop {
        while let Some(msg) = decoder.pop() {
            match msg? {
                ServerMsg::Registered { .. } => {
                    let took = started.elapsed();
                    let keeper = tokio::spawn(keep(send, recv, decoder));
                    return Ok((
                        Registered {
                            conn,
                            _keeper: keeper,
                        },
                        took,
                    ));
                }
                ServerMsg::Ping { ts } => {
                    frame.clear();
                    encode(&ClientMsg::Pong { ts }, &mut frame)?;
                    send.write_all(&frame).await?;
                }
                _ => {}
            }
        }
        let Some(chunk) = recv.read_chunk(4096, true).await? else {
            bail!("control stream closed before Registered");
        };
        decoder.push(&chunk.bytes);
    }
}

/// Answers pings until the stream ends.
async fn keep(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut decoder: FrameDecoder<ServerMsg>,
) {
    let mut frame = Vec::new();
    while let Ok(Some(chunk)) = recv.read_chunk(4096, true).await {
        decoder.push(&chunk.bytes);
        while let Some(Ok(msg)) = decoder.pop() {
            if let ServerMsg::Ping { ts } = msg {
                frame.clear();
                if encode(&ClientMsg::Pong { ts }, &mut frame).is_err()
                    || send.write_all(&frame).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Waits (bounded: a minute past the last park due at `due`) until the server has parked
/// `n` peers and their connections are gone, lets it settle, and returns `/metrics`.
async fn wait_parked(server: &ServerProc, n: usize, due: Instant) -> Result<String> {
    let deadline = due + Duration::from_secs(60);
    loop {
        let page = server.metrics()?;
        let parked = metric(&page, "punch_coord_peers_parked")?;
        let active = metric(&page, "punch_coord_connections_active")?;
        // The warm-up peer stays connected.
        if parked >= n as u64 && active <= 1 {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {parked} of {n} peers parked ({active} connections left)");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.metrics()
}

fn client_endpoint() -> Result<quinn::Endpoint> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    Ok(quinn::Endpoint::new(
        endpoint_config(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let park = args.park_after > 0;
    let server = ServerProc::start(args.retry.as_deref(), args.park_after)?;
    let target = (server.id, server.addr);
    let transport = Arc::new(default_transport(INITIAL_RTT));
    let endpoints = (0..args.sockets)
        .map(|_| client_endpoint())
        .collect::<Result<Vec<_>>>()?;
    let warmup = timeout(
        REGISTER_TIMEOUT,
        register(endpoints[0].clone(), target, Arc::clone(&transport), false),
    )
    .await
    .context("warm-up registration in time")??;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib()?;

    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks = JoinSet::new();
    let mut peers = Vec::with_capacity(args.peers);
    let mut latency = Histogram::<u64>::new(3)?;
    let mut failures = 0u64;
    let started = Instant::now();
    let mut launched = 0;
    while peers.len() + (failures as usize) < args.peers {
        if Instant::now() >= deadline {
            break;
        }
        // Launch while there is a free slot, then collect one result.
        while launched < args.peers {
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                break;
            };
            let endpoint = endpoints[launched % endpoints.len()].clone();
            let transport = Arc::clone(&transport);
            tasks.spawn(async move {
                let r = timeout(
                    REGISTER_TIMEOUT,
                    register(endpoint, target, transport, park),
                )
                .await;
                drop(slot);
                r.map_err(anyhow::Error::from).and_then(|r| r)
            });
            launched += 1;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, tasks.join_next()).await {
            Ok(Some(Ok(Ok((peer, took))))) => {
                latency.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX))?;
                peers.push(peer);
            }
            Ok(Some(Ok(Err(e)))) => {
                failures += 1;
                if failures <= 5 {
                    eprintln!("registration failed: {e:#}");
                }
            }
            Ok(Some(Err(e))) => bail!("registration task: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    let elapsed = started.elapsed();
    tasks.abort_all();
    let registered = peers.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server.rss_kib()?;
    let page = server.metrics()?;
    let on_server = metric(&page, "punch_coord_peers_registered")?;
    let retries = metric(&page, "punch_coord_retries_sent_total")?;
    let per_peer = (after.saturating_sub(before)) as f64 * 1024.0 / registered.max(1) as f64;
    println!(
        "idle_peers: retry={} peers={registered} (server holds {on_server}, failed {failures}) \
         in {:.2} s = {:.0} registrations/s (concurrency {}, {} client sockets, {retries} Retry packets)",
        args.retry.as_deref().unwrap_or("default"),
        elapsed.as_secs_f64(),
        registered as f64 / elapsed.as_secs_f64(),
        args.concurrency,
        args.sockets,
    );
    println!(
        "idle_peers: registration latency p50 {} us, p90 {} us, p99 {} us, max {} us",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.9),
        latency.value_at_quantile(0.99),
        latency.max(),
    );
    println!(
        "idle_peers: server VmRSS {:.1} MiB -> {:.1} MiB: {:.0} bytes ({:.1} KiB) per connected \
         (unparked) idle peer",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per_peer,
        per_peer / 1024.0,
    );
    let mut page = page;
    if metric(&page, "punch_coord_peers_parked")? > 0 {
        println!(
            "idle_peers: WARNING: peers were parked before the connected figure was taken \
             (registering took longer than --park-after {} s less 3 s): it is too low",
            args.park_after
        );
    }
    if park {
        page = wait_parked(
            &server,
            registered,
            started + Duration::from_secs(args.park_after),
        )
        .await?;
        let parked_rss = server.rss_kib()?;
        let per_parked =
            (parked_rss.saturating_sub(before)) as f64 * 1024.0 / registered.max(1) as f64;
        println!(
            "idle_peers: parked {} peers: server VmRSS {:.1} MiB: {:.0} bytes ({:.2} KiB) per \
             parked peer",
            metric(&page, "punch_coord_peers_parked")?,
            parked_rss as f64 / 1024.0,
            per_parked,
            per_parked / 1024.0,
        );
    }
    let trouble = trouble(&page);
    if !trouble.is_empty() {
        println!("idle_peers: server counters: {}", trouble.join(", "));
    }
    for peer in peers.iter().chain(std::iter::once(&warmup.0)) {
        peer.conn.close(0u32.into(), b"bench done");
    }
    for endpoint in &endpoints {
        let _ = timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
    }
    drop(server);
    Ok(())
}
