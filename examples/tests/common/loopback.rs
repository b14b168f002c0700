//! Helpers of the loopback tests and the session bench: child processes whose stdout is
//! JSON lines, and the two servers (`master-server` on SQLite in a temp dir, and
//! `punch-server`) started on 127.0.0.1 with their listening lines read.
//!
//! Every wait has a timeout; processes are killed (by their own handle) on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::{master_server_bin, punch_server_bin};

/// Longest wait for a server's listening line.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// A child process: stdin piped, stdout JSON lines kept in order; killed on drop.
pub struct Proc {
    /// The name in log lines and errors.
    pub name: String,
    /// The child.
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every JSON line read so far.
    pub seen: Vec<Value>,
    /// When it was started.
    pub started: Instant,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[&str]) -> Result<Self> {
        Self::spawn_with(name, program, args, Stdio::inherit())
    }

    /// [`Proc::spawn`] with the child's stderr going to `stderr`.
    pub fn spawn_with(name: &str, program: &Path, args: &[&str], stderr: Stdio) -> Result<Self> {
        let mut command = Command::new(program);
        command.args(args).stderr(stderr);
        Self::from_command(name, command).with_context(|| format!("spawning {}", program.display()))
    }

    /// Starts `command` (its stderr as the caller set it) with stdin and stdout piped.
    pub fn from_command(name: &str, mut command: Command) -> Result<Self> {
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            name: name.to_string(),
            child,
            stdin,
            lines,
            seen: Vec::new(),
            started,
        })
    }

    pub fn peer(name: &str, args: &[&str]) -> Result<Self> {
        Self::spawn(name, Path::new(env!("CARGO_BIN_EXE_peer")), args)
    }

    /// Reads the next JSON line within `left`; `None` when the deadline passed or stdout
    /// closed.
    pub fn next(&mut self, left: Duration) -> Option<Value> {
        loop {
            let line = self.lines.recv_timeout(left).ok()?;
            eprintln!("{}: {line}", self.name);
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                self.seen.push(v.clone());
                return Some(v);
            }
        }
    }

    /// The first line (seen before or arriving within `timeout`) that `pred` accepts; an
    /// `error` or `ended` line fails the wait.
    pub fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return Ok(v.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(v) = self.next(left) else {
                bail!(
                    "{}: no {what} within {timeout:?}; saw {:?}",
                    self.name,
                    self.seen
                );
            };
            ensure!(
                v["event"] != "error" && v["event"] != "ended",
                "{}: unexpected {v} while waiting for {what}",
                self.name
            );
            if pred(&v) {
                return Ok(v);
            }
        }
    }

    /// Reads what arrives within `window` (for checks that something did *not* happen).
    pub fn drain(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if self.next(left).is_none() {
                return;
            }
        }
    }

    /// The first line with `event` == `name` whose `key` is `value`.
    pub fn wait_event(
        &mut self,
        name: &str,
        key: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<Value> {
        let what = format!("{name} with {key}={value}");
        self.wait(&what, timeout, |v| v["event"] == name && v[key] == value)
    }

    pub fn send_line(&mut self, text: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{text}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes the child's stdin (EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits until the process exits (after its stdin was closed) and checks status 0.
    pub fn wait_exit_ok(&mut self, deadline: Instant) -> Result<()> {
        match self.wait_exit(deadline)? {
            Some(0) => Ok(()),
            code => bail!("{} exited with {code:?}", self.name),
        }
    }

    /// Waits until the process exits (at most until `deadline`) and returns its code.
    pub fn wait_exit(&mut self, deadline: Instant) -> Result<Option<i32>> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not exit; saw {:?}",
                self.name,
                self.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first JSON line of a server process, which must be `listening`.
pub fn listening(proc: &mut Proc) -> Result<Value> {
    proc.wait("listening", LISTEN_TIMEOUT, |v| v["event"] == "listening")
}

pub fn str_of(v: &Value, key: &str) -> Result<String> {
    v[key]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no string {key} in {v}"))
}

/// `GET /v1/sessions/{id}` on the master server, over a plain HTTP/1.1 connection: the
/// status line and the body.
pub fn get(master: &str, id: &str) -> Result<(String, String)> {
    let mut stream = TcpStream::connect(master)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /v1/sessions/{id} HTTP/1.1\r\nHost: {master}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP body")?;
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// The session row `id` (which must exist).
pub fn get_session(master: &str, id: &str) -> Result<Value> {
    let (status, body) = get(master, id)?;
    ensure!(
        status.starts_with("HTTP/1.1 200"),
        "GET /v1/sessions/{id}: {status}"
    );
    serde_json::from_str(&body).with_context(|| format!("body {body:?}"))
}

/// A master server and a punch server on 127.0.0.1 (killed on drop).
pub struct Servers {
    /// The master server.
    pub master: Proc,
    /// The punch server.
    pub punch: Proc,
    /// The master server's `HOST:PORT`.
    pub master_addr: String,
    /// Its base URL.
    pub master_url: String,
    /// The punch server as peers name it, `ID@HOST:PORT`.
    pub punch_addr: String,
    /// Holds the database and the punch server's key.
    _dir: tempfile::TempDir,
}

impl Servers {
    /// Starts both (the master server without rate limits), their stderr to `stderr()`.
    pub fn start(stderr: impl Fn() -> Stdio) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let db = format!("sqlite:{}", dir.path().join("master.db").display());
        let mut master = Proc::spawn_with(
            "master",
            &master_server_bin()?,
            &[
                "--listen",
                "127.0.0.1:0",
                "--database",
                &db,
                "--rate-limit",
                "0",
            ],
            stderr(),
        )?;
        let master_addr = str_of(&listening(&mut master)?, "addr")?;
        let (punch, punch_addr) = start_punch(dir.path(), &[], stderr())?;
        Ok(Self {
            master,
            punch,
            master_url: format!("http://{master_addr}"),
            master_addr,
            punch_addr,
            _dir: dir,
        })
    }
}

/// Starts `punch-server` on 127.0.0.1 with its key in `dir` and `extra` flags; returns it
/// and its address as peers name it, `ID@HOST:PORT`.
pub fn start_punch(dir: &Path, extra: &[&str], stderr: Stdio) -> Result<(Proc, String)> {
    let key = dir.join("punch.key");
    let key = key.to_string_lossy();
    let mut args = vec!["--listen", "127.0.0.1:0", "--key-file", &key];
    args.extend_from_slice(extra);
    let mut punch = Proc::spawn_with("punch", &punch_server_bin()?, &args, stderr)?;
    let line = listening(&mut punch)?;
    let addr = format!("{}@{}", str_of(&line, "id")?, str_of(&line, "addr")?);
    Ok((punch, addr))
}

/// A [`mesh::session::Mesh`] for an in-process peer of `servers`: a new identity, bound to
/// 127.0.0.1, no UPnP.
pub fn loopback_mesh(servers: &Servers) -> Result<mesh::session::Mesh> {
    let punch: mesh::coord::PunchAddr = servers.punch_addr.parse().context("punch address")?;
    let mut config = mesh::session::MeshConfig::new(servers.master_url.clone(), punch);
    config.direct.upnp = None;
    config.direct.bind = "127.0.0.1:0".parse()?;
    let identity = mesh::identity::Identity::generate()?;
    Ok(mesh::session::Mesh::new(
        std::sync::Arc::new(identity),
        config,
    )?)
}
