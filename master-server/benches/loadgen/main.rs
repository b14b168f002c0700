//! Load generator for the master server (run with `cargo bench -p master-server --bench
//! loadgen`): starts the release binary on loopback and a bare axum server as the ceiling,
//! then measures, with the same client, in one run:
//! - the ceiling: bare GET and bare JSON POST;
//! - creates (filling 100,000 live rows over 2,000 games);
//! - lists of 50 rows of a random game;
//! - heartbeats on random live rows.
//!
//! It prints req/s, p50 and p99 per phase for SQLite, and for PostgreSQL when
//! `TEST_DATABASE_URL` (or `LOADGEN_PG_URL`) names a server. Every phase is bounded in
//! time (`LOADGEN_SECS`, default 5) and count; all traffic stays on 127.0.0.1.

mod baseline;
mod client;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use client::{Conn, Tally};
use rand::{Rng, SeedableRng};
use sqlx::Connection;

/// Bounds and sizes, from the environment.
struct Plan {
    rows: usize,
    games: usize,
    conns: usize,
    secs: u64,
    max_requests: u64,
}

impl Plan {
    fn from_env() -> Plan {
        let num = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Plan {
            rows: num("LOADGEN_ROWS", 100_000) as usize,
            games: num("LOADGEN_GAMES", 2_000) as usize,
            conns: num("LOADGEN_CONNS", 32) as usize,
            secs: num("LOADGEN_SECS", 5),
            max_requests: num("LOADGEN_MAX_REQUESTS", 5_000_000),
        }
    }
}

/// A child server process, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn spawn(mut command: Command) -> anyhow::Result<Server> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .context("no listening line")?;
        let event: serde_json::Value = serde_json::from_str(&line)?;
        let addr = event["addr"].as_str().context("addr")?.to_owned();
        Ok(Server { child, addr })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one request of a phase is.
#[derive(Clone)]
enum Work {
    BareGet,
    BarePost,
    List { games: usize },
    Heartbeat { rows: Arc<Vec<(String, String)>> },
}

/// Runs `work` on `conns` connections until `secs` pass or `max` requests are done.
async fn phase(
    addr: &str,
    conns: usize,
    secs: u64,
    max: u64,
    work: Work,
) -> anyhow::Result<(Tally, f64)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let per_conn = max / conns as u64 + 1;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let addr = addr.to_owned();
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            let mut tally = Tally::new();
            let mut rng = rand::rngs::StdRng::from_entropy();
            let json_body = br#"{"game":"g","name":"n","max_players":8}"#;
            for _ in 0..per_conn {
                if Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                let status = match &work {
                    Work::BareGet => conn.request("GET", "/hello", "", b"").await?.status,
                    Work::BarePost => {
                        conn.request(
                            "POST",
                            "/json",
                            "content-type: application/json\r\n",
                            json_body,
                        )
                        .await?
                        .status
                    }
                    Work::List { games } => {
                        let path = format!("/v1/sessions?game=g{}", rng.gen_range(0..*games));
                        conn.request("GET", &path, "", b"").await?.status
                    }
                    Work::Heartbeat { rows } => {
                        let (id, token) = &rows[rng.gen_range(0..rows.len())];
                        let path = format!("/v1/sessions/{id}/heartbeat");
                        let auth = format!("authorization: Bearer {token}\r\n");
                        conn.request("POST", &path, &auth, b"").await?.status
                    }
                };
                tally.record(t, status == 200);
            }
            anyhow::Ok(tally)
        }));
    }
    let mut total = Tally::new();
    for task in tasks {
        total.merge(&task.await??);
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

/// Creates `rows` sessions spread over `games` games; returns (id, token) of each.
async fn fill(addr: &str, plan: &Plan) -> anyhow::Result<(Tally, f64, Vec<(String, String)>)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let mut tasks = Vec::new();
    for c in 0..plan.conns {
        let addr = addr.to_owned();
        let (rows, conns, games) = (plan.rows, plan.conns, plan.games);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            let mut tally = Tally::new();
            let mut created = Vec::new();
            for i in (c..rows).step_by(conns) {
                anyhow::ensure!(Instant::now() < deadline, "fill took over 600 s");
                let body = format!(
                    r#"{{"game":"g{}","name":"session {i}","max_players":16,"players":{},"timeout_secs":3600,"attributes":{{"mode":"ctf","region":"eu"}},"connect":{{"peer":"p{i}"}}}}"#,
                    i % games,
                    i % 17
                );
                let t = Instant::now();
                let reply = conn.request("POST", "/v1/sessions", "content-type: application/json\r\n", body.as_bytes()).await?;
                let ok = reply.status == 201;
                if ok {
                    let v: serde_json::Value = serde_json::from_slice(reply.body)?;
                    let id = v["id"].as_str().context("id")?.to_owned();
                    created.push((id, v["token"].as_str().context("token")?.to_owned()));
                }
                tally.record(t, ok);
            }
            anyhow::Ok((tally, created))
        }));
    }
    let mut total = Tally::new();
    let mut rows = Vec::with_capacity(plan.rows);
    for task in tasks {
        let (tally, created) = task.await??;
        total.merge(&tally);
        rows.extend(created);
    }
    Ok((total, started.elapsed().as_secs_f64(), rows))
}

fn report(label: &str, tally: &Tally, secs: f64, ceiling: Option<f64>) -> f64 {
    let rate = tally.ok as f64 / secs;
    let vs = ceiling
        .map(|c| format!("{:>6.1}% of ceiling", 100.0 * rate / c))
        .unwrap_or_default();
    println!(
        "{label:<34} {rate:>10.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ok {:>8}  errors {:>4}  {vs}",
        tally.latency.value_at_quantile(0.5) as f64 / 1000.0,
        tally.latency.value_at_quantile(0.99) as f64 / 1000.0,
        tally.ok,
        tally.errors,
    );
    rate
}

async fn bench_backend(
    name: &str,
    url: &str,
    plan: &Plan,
    ceilings: (f64, f64),
) -> anyhow::Result<()> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_master-server"));
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--database",
            url,
            "--rate-limit",
            "0",
        ])
        .env("RUST_LOG", "warn");
    let server = Server::spawn(command)?;
    let (tally, secs, rows) = fill(&server.addr, plan).await?;
    report(
        &format!("{name}: create ({} rows)", plan.rows),
        &tally,
        secs,
        Some(ceilings.1),
    );
    anyhow::ensure!(
        rows.len() == plan.rows,
        "only {} of {} creates succeeded",
        rows.len(),
        plan.rows
    );
    let list = Work::List { games: plan.games };
    let (tally, secs) = phase(&server.addr, plan.conns, plan.secs, plan.max_requests, list).await?;
    report(
        &format!("{name}: list 50 of {} rows", plan.rows),
        &tally,
        secs,
        Some(ceilings.0),
    );
    let heartbeat = Work::Heartbeat {
        rows: Arc::new(rows),
    };
    let (tally, secs) = phase(
        &server.addr,
        plan.conns,
        plan.secs,
        plan.max_requests,
        heartbeat,
    )
    .await?;
    report(
        &format!("{name}: heartbeat"),
        &tally,
        secs,
        Some(ceilings.1),
    );
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let plan = Plan::from_env();
    println!(
        "master-server load: {} rows over {} games, {} connections, {} s per phase, {} cores",
        plan.rows,
        plan.games,
        plan.conns,
        plan.secs,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let mut command = Command::new(std::env::current_exe()?);
    command.env("LOADGEN_BASELINE", "1");
    let bare = Server::spawn(command)?;
    let (tally, secs) = phase(
        &bare.addr,
        plan.conns,
        plan.secs,
        plan.max_requests,
        Work::BareGet,
    )
    .await?;
    let get_ceiling = report("ceiling: bare axum GET", &tally, secs, None);
    let (tally, secs) = phase(
        &bare.addr,
        plan.conns,
        plan.secs,
        plan.max_requests,
        Work::BarePost,
    )
    .await?;
    let post_ceiling = report("ceiling: bare axum JSON POST", &tally, secs, None);
    drop(bare);

    let dir = tempfile::tempdir()?;
    let sqlite = format!("sqlite:{}", dir.path().join("bench.db").display());
    bench_backend("sqlite", &sqlite, &plan, (get_ceiling, post_ceiling)).await?;

    let pg = std::env::var("LOADGEN_PG_URL").or_else(|_| std::env::var("TEST_DATABASE_URL"));
    match pg {
        Ok(admin) => {
            let name = format!("master_bench_{}", std::process::id());
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                .execute(&mut conn)
                .await?;
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await?;
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
            let result = bench_backend(
                "postgres",
                &format!("{base}/{name}"),
                &plan,
                (get_ceiling, post_ceiling),
            )
            .await;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await?;
            result?;
        }
        Err(_) => println!("postgres: skipped (set TEST_DATABASE_URL or LOADGEN_PG_URL)"),
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os("LOADGEN_BASELINE").is_some() {
        return baseline::serve();
    }
    // `cargo test --benches` runs bench targets with `--test`-like flags: do nothing then.
    if std::env::args()
        .skip(1)
        .any(|a| a == "--list" || a == "--test")
    {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}
