//! Schemathesis against the real binary on loopback: requests generated from the served
//! OpenAPI document (coverage, fuzzing and stateful phases, positive and negative data),
//! with every check on: no 5xx, every status and body as documented, schema-valid
//! requests accepted and schema-invalid ones refused.
//!
//! Hooks (`tests/schemathesis/master_hooks.py`) supply real owner tokens and apply the
//! rules the document states in prose. `.ci/run` installs schemathesis and sets
//! `SCHEMATHESIS`; elsewhere the test uses `schemathesis` from `PATH`, and skips (saying
//! so) only when it is absent outside CI. `MASTER_FUZZ_EXAMPLES` (default 100 per
//! operation) and `MASTER_FUZZ_SEED` (default fixed) tune the run.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::Server;
use common::{Backend, TestDb};

/// The whole run must end within this.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// Reads a pipe to its end on a thread.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

fn schemathesis() -> Option<PathBuf> {
    let candidate = std::env::var_os("SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("schemathesis"));
    let works = Command::new(&candidate)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    works.then_some(candidate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let Some(tool) = schemathesis() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the OpenAPI fuzzer: .ci/run installs schemathesis and sets SCHEMATHESIS"
        );
        println!("SKIPPED: schemathesis not installed (pip install schemathesis)");
        return;
    };
    let db = TestDb::new(Backend::Sqlite).await;
    // Limits that would turn most generated requests into 429s are off; they have their
    // own tests. Rows live longer than the run (the document states the minimum it takes
    // from this flag), so a row the stateful phase created has not expired when it comes
    // back to it on a busy machine.
    let server = Server::start(
        &db,
        &[
            "--rate-limit",
            "0",
            "--max-sessions-per-ip",
            "0",
            "--min-timeout-secs",
            "600",
        ],
    );
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let examples = std::env::var("MASTER_FUZZ_EXAMPLES").unwrap_or_else(|_| "100".into());
    let seed = std::env::var("MASTER_FUZZ_SEED").unwrap_or_else(|_| "20261202".into());
    let report = tempfile::tempdir().expect("report dir");
    let start = Instant::now();
    let mut child = Command::new(&tool)
        .arg("--config-file")
        .arg(hooks.join("schemathesis.toml"))
        .args(["run", &format!("{}/v1/openapi.json", server.base)])
        .args(["--max-examples", &examples, "--seed", &seed])
        .args(["--request-timeout", "10", "--no-color"])
        .arg("--report-dir")
        .arg(report.path())
        .current_dir(report.path())
        .env("PYTHONPATH", &hooks)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("MASTER_FUZZ_BASE", &server.base)
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start schemathesis");
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis did not finish within {RUN_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let summary: Vec<&str> = out.lines().rev().take(14).collect();
    println!(
        "schemathesis: {examples} examples per operation, seed {seed}, {:.1} s, {status}\n{}",
        start.elapsed().as_secs_f64(),
        summary.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(status.success(), "schemathesis failed:\n{out}\n{err}");
    server.terminate();
    db.cleanup().await;
}
