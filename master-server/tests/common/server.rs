//! The real `master-server` binary on loopback, started and stopped by tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::TestDb;

/// A running server process, killed on drop if still alive.
pub struct Server {
    child: Child,
    /// `http://IP:PORT`.
    pub base: String,
    /// The listening address.
    pub addr: SocketAddr,
}

impl Server {
    pub fn start(db: &TestDb, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_master-server"))
            .args(["--listen", "127.0.0.1:0", "--database", &db.url])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn master-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("listening line within 30 s");
        let event: Value = serde_json::from_str(&line).expect("first stdout line is JSON");
        assert_eq!(event["event"], "listening");
        let addr = event["addr"].as_str().expect("addr").to_owned();
        Server {
            child,
            base: format!("http://{addr}"),
            addr: addr.parse().expect("socket address"),
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "SIGTERM delivered");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "graceful shutdown exits 0, got {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A reqwest client with a 10 s timeout.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}
