//! STUN Binding flood benchmark on loopback: our server vs `stund` vs coturn.
//!
//! Run: `cargo bench -p punch-server --bench stun_flood` (release profile), optionally with
//! `-- --secs 5 --count 2000000 --clients 2 --window 64 --targets ours,ours-nogso,stund`.
//!
//! `ours` coalesces the flood's responses into GSO sends (one source, one destination);
//! `ours-nogso` (`--no-gso`) sends one `sendmsg` per response, which is what traffic from
//! many different sources gets, and is the fair comparison with `stund` and coturn.
//!
//! Steps per target:
//!
//! 1. Start the server process on 127.0.0.1 (ours with `--rate-limit 0`; `stund -h
//!    127.0.0.1 -a 127.0.0.2`; `turnserver --stun-only`), wait until it answers a request.
//! 2. Each client thread owns one UDP socket and keeps about `window` requests in flight,
//!    sending with GSO and receiving with recvmmsg (quinn-udp) so that the load generator
//!    is cheaper per packet than any server; a receive timeout re-arms the window.
//!    Bounded by `count` requests in total and `secs` seconds.
//! 3. Wait briefly for stragglers, then report responses/s and loss
//!    (`1 - responses / requests`). Kill the server by its pid (`Child::kill`).
//!
//! Only loopback addresses are used. Missing `stund`/`turnserver` binaries are skipped with
//! a note (install `stun-server` and `coturn`).

use std::io::IoSliceMut;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE as BATCH};
use tokio::io::Interest;

struct Args {
    secs: f64,
    count: u64,
    clients: usize,
    window: usize,
    targets: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        secs: 5.0,
        count: 5_000_000,
        clients: 2,
        window: 64,
        targets: ["ours", "ours-nogso", "stund", "coturn"]
            .map(String::from)
            .to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().context("flag needs a value");
        match flag.as_str() {
            "--secs" => a.secs = val()?.parse()?,
            "--count" => a.count = val()?.parse()?,
            "--clients" => a.clients = val()?.parse()?,
            "--window" => a.window = val()?.parse()?,
            "--targets" => a.targets = val()?.split(',').map(str::to_owned).collect(),
            _ => {} // `cargo bench` passes `--bench`; ignore what we do not know.
        }
    }
    a.secs = a.secs.clamp(0.1, 60.0);
    a.clients = a.clients.clamp(1, 16);
    a.window = a.window.clamp(1, 4096);
    Ok(a)
}

/// A 20-byte Binding request with a transaction id derived from `n`.
fn request(n: u64) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[1] = 0x01;
    m[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m[8..16].copy_from_slice(&n.to_be_bytes());
    m
}

fn is_success(d: &[u8]) -> bool {
    d.len() >= 32 && d[0] == 0x01 && d[1] == 0x01
}

/// A free UDP port on `ip` (racy but fine for a benchmark on loopback).
fn free_port(ip: &str) -> Result<u16> {
    Ok(UdpSocket::bind((ip, 0))?.local_addr()?.port())
}

/// Waits (bounded) until `server` answers a Binding request.
fn wait_ready(server: SocketAddr) -> Result<()> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = [0u8; 1500];
    for i in 0..50 {
        s.send_to(&request(i), server)?;
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if is_success(&buf[..n]) {
                return Ok(());
            }
        }
    }
    bail!("{server} never answered")
}

struct Running {
    child: Child,
    addr: SocketAddr,
    _dir: Option<std::path::PathBuf>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Child::kill signals exactly this pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self._dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn start(target: &str) -> Result<Running> {
    match target {
        "ours" | "ours-nogso" => {
            let mut args = vec![
                "--listen",
                "127.0.0.1:0",
                "--rate-limit",
                "0",
                "--log",
                "warn",
            ];
            if target == "ours-nogso" {
                args.push("--no-gso");
            }
            let mut child = Command::new(env!("CARGO_BIN_EXE_punch-server"))
                .args(args)
                .stdout(Stdio::piped())
                .spawn()
                .context("starting punch-server")?;
            let mut line = String::new();
            let stdout = child.stdout.take().context("stdout")?;
            BufReader::new(stdout).read_line(&mut line)?;
            let v: serde_json::Value = serde_json::from_str(&line).context("listening line")?;
            let addr = v["addr"].as_str().context("addr")?.parse()?;
            Ok(Running {
                child,
                addr,
                _dir: None,
            })
        }
        "stund" => {
            let (p, o) = (free_port("127.0.0.1")?, free_port("127.0.0.2")?);
            let child = Command::new("stund")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-a",
                    "127.0.0.2",
                    "-p",
                    &p.to_string(),
                    "-o",
                    &o.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting stund (apt-get install stun-server)")?;
            Ok(Running {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], p)),
                _dir: None,
            })
        }
        "coturn" => {
            let p = free_port("127.0.0.1")?;
            let dir =
                std::env::temp_dir().join(format!("stun-flood-coturn-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let child = Command::new("turnserver")
                .args([
                    "--stun-only",
                    "-n",
                    "--no-cli",
                    "--no-tls",
                    "--no-dtls",
                    "--listening-ip=127.0.0.1",
                    &format!("--listening-port={p}"),
                    &format!("--db={}", dir.join("turndb").display()),
                    &format!("--pidfile={}", dir.join("pid").display()),
                    "--log-file=stdout",
                    "--simple-log",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting turnserver (apt-get install coturn)")?;
            Ok(Running {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], p)),
                _dir: Some(dir),
            })
        }
        other => bail!("unknown target {other}"),
    }
}

struct Totals {
    sent: u64,
    received: u64,
    elapsed: Duration,
}

/// One client: a connected-style loopback socket driven with GSO sends and recvmmsg
/// receives (quinn-udp), so that the client costs far fewer syscalls than the server.
async fn client(
    server: SocketAddr,
    id: u64,
    quota: u64,
    window: u64,
    deadline: Instant,
) -> Result<(u64, u64)> {
    let std_sock = UdpSocket::bind("127.0.0.1:0")?;
    std_sock.set_nonblocking(true)?;
    let state = UdpSocketState::new((&std_sock).into())?;
    let sock = tokio::net::UdpSocket::from_std(std_sock)?;
    let gso = state.max_gso_segments().clamp(1, 64) as u64;
    let mut out = Vec::with_capacity(64 * 20);
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; 65_536]).collect();
    let mut meta = vec![RecvMeta::default(); BATCH];
    let (mut sent, mut received) = (0u64, 0u64);
    let base = id << 40;
    // Sends up to `n` more requests, in GSO batches; returns how many went out.
    let mut send = |sent: &mut u64, n: u64| {
        let mut left = n.min(quota - *sent);
        while left > 0 {
            let k = left.min(gso);
            out.clear();
            for i in 0..k {
                out.extend_from_slice(&request(base + *sent + i));
            }
            let t = Transmit {
                destination: server,
                ecn: None,
                contents: &out,
                segment_size: (k > 1).then_some(20),
                src_ip: None,
            };
            if sock
                .try_io(Interest::WRITABLE, || state.try_send((&sock).into(), &t))
                .is_err()
            {
                break;
            }
            *sent += k;
            left -= k;
        }
    };
    send(&mut sent, window);
    let drain_until = |received: u64, sent: u64| received < sent;
    // Bounded by the quota and the deadline (plus a short drain).
    while Instant::now() < deadline + Duration::from_millis(100) {
        let sending = Instant::now() < deadline && sent < quota;
        if !sending && !drain_until(received, sent) {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(20), sock.readable()).await {
            Err(_) => {
                if !sending {
                    break;
                }
                // Timeout: the window was lost; re-arm it.
                send(&mut sent, window);
                continue;
            }
            Ok(r) => r?,
        }
        let mut iov: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        match sock.try_io(Interest::READABLE, || {
            state.recv((&sock).into(), &mut iov, &mut meta)
        }) {
            Ok(n) => {
                for (m, b) in meta.iter().zip(iov.iter()).take(n) {
                    let stride = m.stride.max(1);
                    for seg in b[..m.len].chunks(stride) {
                        if is_success(seg) {
                            received += 1;
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        let outstanding = sent.saturating_sub(received);
        if sending && outstanding <= window / 2 {
            send(&mut sent, window - outstanding);
        }
    }
    Ok((sent, received))
}

fn flood(server: SocketAddr, a: &Args) -> Result<Totals> {
    let quota = a.count / a.clients as u64;
    let deadline = Instant::now() + Duration::from_secs_f64(a.secs);
    let start = Instant::now();
    let mut handles = vec![];
    for c in 0..a.clients {
        let window = a.window as u64;
        handles.push(thread::spawn(move || -> Result<(u64, u64)> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(client(server, c as u64, quota, window, deadline))
        }));
    }
    let (mut sent, mut received) = (0, 0);
    for h in handles {
        let (s, r) = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        sent += s;
        received += r;
    }
    let elapsed = start.elapsed().min(Duration::from_secs_f64(a.secs));
    Ok(Totals {
        sent,
        received,
        elapsed,
    })
}

fn main() -> Result<()> {
    let a = parse_args()?;
    println!(
        "stun_flood: {} client thread(s), window {}, at most {} requests / {} s per target",
        a.clients, a.window, a.count, a.secs
    );
    for target in &a.targets {
        let running = match start(target) {
            Ok(r) => r,
            Err(e) => {
                println!("{target:>7}: skipped ({e:#})");
                continue;
            }
        };
        if let Err(e) = wait_ready(running.addr) {
            println!("{target:>7}: skipped ({e:#})");
            continue;
        }
        let t = flood(running.addr, &a)?;
        drop(running);
        let rate = t.received as f64 / t.elapsed.as_secs_f64();
        let loss = if t.sent == 0 {
            0.0
        } else {
            100.0 * (1.0 - t.received as f64 / t.sent as f64)
        };
        println!(
            "{target:>7}: {rate:>10.0} responses/s  requests {:>9}  responses {:>9}  loss {loss:5.2}%  ({:.2} s)",
            t.sent,
            t.received,
            t.elapsed.as_secs_f64()
        );
    }
    Ok(())
}
