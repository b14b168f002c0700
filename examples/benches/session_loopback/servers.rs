//! The servers of the bench as child processes (their binaries next to the bench), and
//! the `Mesh` each in-process peer uses to reach them.

use super::*;

/// A child process and the lines of its stdout.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    pub(crate) fn spawn(program: &Path, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// The first JSON line with `event` == `name`.
    pub(crate) fn wait_event(&self, name: &str) -> Result<Value> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("no {name} line within {STEP_TIMEOUT:?}"))?;
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                ensure!(v["event"] != "error", "error line {v}");
                if v["event"] == name {
                    return Ok(v);
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn str_of(v: &Value, key: &str) -> Result<String> {
    v[key]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no string {key} in {v}"))
}

/// The servers and what a peer needs to use them.
pub(crate) struct Servers {
    pub(crate) master: Proc,
    pub(crate) punch: Proc,
    pub(crate) master_url: String,
    pub(crate) punch_addr: String,
    pub(crate) _dir: tempfile::TempDir,
}

pub(crate) fn start_servers() -> Result<Servers> {
    let hint = "build the servers first: cargo build --release -p master-server -p punch-server";
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite:{}", dir.path().join("master.db").display());
    let master = Proc::spawn(
        &common::master_server_bin().context(hint)?,
        &[
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db,
            "--rate-limit",
            "0",
        ],
    )?;
    let master_url = format!(
        "http://{}",
        str_of(&master.wait_event("listening")?, "addr")?
    );
    let key = dir.path().join("punch.key");
    let punch = Proc::spawn(
        &common::punch_server_bin().context(hint)?,
        &[
            "--listen",
            "127.0.0.1:0",
            "--key-file",
            &key.to_string_lossy(),
        ],
    )?;
    let line = punch.wait_event("listening")?;
    let punch_addr = format!("{}@{}", str_of(&line, "id")?, str_of(&line, "addr")?);
    Ok(Servers {
        master,
        punch,
        master_url,
        punch_addr,
        _dir: dir,
    })
}

pub(crate) fn new_mesh(s: &Servers) -> Result<Mesh> {
    let punch: PunchAddr = s.punch_addr.parse().context("punch address")?;
    let mut config = MeshConfig::new(s.master_url.clone(), punch);
    config.direct.upnp = None;
    config.direct.bind = "127.0.0.1:0".parse()?;
    Ok(Mesh::new(Arc::new(Identity::generate()?), config)?)
}
