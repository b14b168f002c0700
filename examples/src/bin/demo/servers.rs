//! The master server and the punch server, started in this process on 127.0.0.1.
//!
//! Steps of [`Servers::start`]:
//! 1. Open the master server's SQLite database in a temp dir ([`master_server::App`]), bind
//!    `127.0.0.1:0` and serve it in a task until told to stop.
//! 2. Generate the punch server's identity and start STUN plus the QUIC coordinator on
//!    `127.0.0.1:0` ([`punch_server::quic::start`]); peers address it as `ID@127.0.0.1:PORT`.
//!
//! [`Servers::shutdown`] stops both (punch first, then the master server), each bounded.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use mesh::coord::PunchAddr;
use mesh::identity::Identity;
use punch_server::config::ServerConfig;
use punch_server::coordinator::CoordConfig;
use punch_server::quic::{CoordServer, QuicConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The loopback address every server binds.
const LOOPBACK: [u8; 4] = [127, 0, 0, 1];
/// Longest each server may take to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Both servers, running.
pub struct Servers {
    /// The master server's base URL, `http://127.0.0.1:PORT`.
    pub master_url: String,
    /// The punch server as peers address it.
    pub punch: PunchAddr,
    master_stop: oneshot::Sender<()>,
    master_task: JoinHandle<std::io::Result<()>>,
    stun: punch_server::driver::Server,
    coordinator: CoordServer,
    /// Holds the SQLite database; removed on drop.
    _dir: tempfile::TempDir,
}

impl Servers {
    /// Starts both servers (see the module docs).
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temp dir for the database")?;
        let db = dir.path().join("master.db");
        let config = master_server::Config {
            database_url: format!("sqlite:{}", db.display()),
            ..master_server::Config::default()
        };
        let app = master_server::App::start(config)
            .await
            .context("starting the master server")?;
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((LOOPBACK, 0)))
            .await
            .context("binding the master server")?;
        let master_addr = listener.local_addr()?;
        let (master_stop, stopped) = oneshot::channel::<()>();
        let master_task = tokio::spawn(app.serve(listener, async move {
            let _ = stopped.await;
        }));

        let identity = Identity::generate().context("generating the punch server's key")?;
        let config = ServerConfig {
            listen: SocketAddr::from((LOOPBACK, 0)),
            ..ServerConfig::default()
        };
        let (stun, coordinator) = punch_server::quic::start(
            config,
            QuicConfig::default(),
            CoordConfig::default(),
            &identity,
        )
        .await
        .context("starting the punch server")?;
        let punch_addr = stun.local_addr();
        let punch = PunchAddr::new(
            identity.peer_id(),
            punch_addr.ip().to_string(),
            punch_addr.port(),
        );
        Ok(Self {
            master_url: format!("http://{master_addr}"),
            punch,
            master_stop,
            master_task,
            stun,
            coordinator,
            _dir: dir,
        })
    }

    /// Stops both servers, each within [`STOP_TIMEOUT`].
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let Self {
            master_stop,
            master_task,
            stun,
            coordinator,
            _dir,
            ..
        } = self;
        tokio::time::timeout(STOP_TIMEOUT, async {
            coordinator.shutdown().await;
            stun.shutdown().await;
        })
        .await
        .context("the punch server did not stop in time")?;
        let _ = master_stop.send(());
        tokio::time::timeout(STOP_TIMEOUT, master_task)
            .await
            .context("the master server did not stop in time")?
            .context("the master server task failed")?
            .context("the master server failed")?;
        Ok(())
    }
}
