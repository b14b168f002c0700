//! Relayed paths for tests and benches: the real `proxy` on loopback, and mesh endpoints
//! that allocate on it with the workspace's TURN client driven over their own socket.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use mesh::identity::Identity;
use mesh::socket::{Endpoint, EndpointOptions, StunReceiver};
use mesh::turn::client::{RequestId, TurnClient, TurnClientConfig, TurnEvent};
use mesh::turn::credentials::Credentials;
use mesh::turn::msg::Response;

use super::loopback::{listening, str_of, Proc};
use super::proxy_bin;

/// The shared secret of the test proxy.
pub const SECRET: &str = "relay-path-test-secret";
const STEP: Duration = Duration::from_secs(10);

/// Starts `proxy` on 127.0.0.1 (loopback peers allowed); returns it and its address.
pub fn start_proxy() -> Result<(Proc, SocketAddr)> {
    start_proxy_with(&[])
}

/// [`start_proxy`] with extra flags.
pub fn start_proxy_with(extra: &[&str]) -> Result<(Proc, SocketAddr)> {
    let (proxy, line) = start_proxy_line(extra)?;
    Ok((proxy, str_of(&line, "addr")?.parse()?))
}

/// [`start_proxy_with`], returning the proxy's whole listening line (`addr`,
/// `metrics_addr`, ...).
pub fn start_proxy_line(extra: &[&str]) -> Result<(Proc, serde_json::Value)> {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--relay-ip",
        "127.0.0.1",
        "--auth-secret",
        SECRET,
        "--allow-loopback-peers",
        "--log",
        "warn",
    ];
    args.extend_from_slice(extra);
    let mut proxy = Proc::spawn_with("proxy", &proxy_bin()?, &args, Stdio::inherit())?;
    let line = listening(&mut proxy)?;
    Ok((proxy, line))
}

/// One endpoint with its STUN queue and its TURN client on the proxy.
pub struct Side {
    /// The endpoint.
    pub endpoint: Endpoint,
    stun: StunReceiver,
    turn: TurnClient,
    /// Its relayed address on the proxy.
    pub relayed: SocketAddr,
}
impl Side {
    /// Binds an endpoint on 127.0.0.1 and allocates a relay for it as `user`.
    pub async fn start(proxy: SocketAddr, user: &str) -> Result<Self> {
        let identity = Arc::new(Identity::generate()?);
        let (endpoint, stun) =
            Endpoint::bind("127.0.0.1:0".parse()?, identity, EndpointOptions::default())?;
        let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
        let creds = Credentials::rest(SECRET, user, expiry);
        let turn = TurnClient::new(proxy, creds, TurnClientConfig::default());
        let mut side = Side {
            endpoint,
            stun,
            turn,
            relayed: proxy,
        };
        let id = side.turn.allocate(Instant::now(), None)?;
        let allocated = side.exchange(id).await?;
        side.relayed = allocated.relayed.context("no XOR-RELAYED-ADDRESS")?;
        Ok(side)
    }

    /// Drives the TURN client over the endpoint's own socket until `id` is answered.
    async fn exchange(&mut self, id: RequestId) -> Result<Response> {
        let deadline = Instant::now() + STEP;
        loop {
            while let Some(t) = self.turn.poll_transmit() {
                self.endpoint.send_stun(t.dst, &t.payload).await?;
            }
            while let Some(TurnEvent::Done { id: done, result }) = self.turn.poll_event() {
                if done == id {
                    return Ok(result?);
                }
            }
            if Instant::now() > deadline {
                bail!("no TURN answer within {STEP:?}");
            }
            let wake = self.turn.poll_timeout().unwrap_or(deadline);
            let wait = wake.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, self.stun.recv()).await {
                Ok(Some(d)) => {
                    self.turn.handle_input(Instant::now(), d.from, &d.data);
                }
                Ok(None) => bail!("socket closed"),
                Err(_) => self.turn.handle_timeout(Instant::now()),
            }
        }
    }

    /// Binds `channel` to `peer` on the endpoint's allocation.
    pub async fn bind_channel(&mut self, channel: u16, peer: SocketAddr) -> Result<()> {
        let id = self.turn.channel_bind(Instant::now(), channel, peer)?;
        self.exchange(id).await.map(drop)
    }

    /// The endpoint's own (direct) address.
    pub fn direct(&self) -> Result<SocketAddr> {
        let port = self.endpoint.local_addr()?.port();
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

/// Sends `len` bytes (a counting pattern) on a new stream; the receiver checks every one.
pub async fn transfer(
    from: &quinn::Connection,
    to: &quinn::Connection,
    len: usize,
    during: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    let pattern = |i: usize| (i % 251) as u8;
    let send = async {
        let mut s = from.open_uni().await?;
        let chunk: Vec<u8> = (0..len).map(pattern).collect();
        for part in chunk.chunks(64 * 1024) {
            s.write_all(part).await?;
            tokio::task::yield_now().await;
        }
        s.finish()?;
        anyhow::Ok(())
    };
    let receive = async {
        let mut r = to.accept_uni().await?;
        let data = r.read_to_end(len + 1).await?;
        anyhow::ensure!(data.len() == len, "received {} of {len} bytes", data.len());
        let bad = data.iter().enumerate().position(|(i, b)| *b != pattern(i));
        anyhow::ensure!(bad.is_none(), "byte {bad:?} wrong: lost or duplicated data");
        anyhow::Ok(())
    };
    let (sent, received, switched) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(send, receive, during)
    })
    .await
    .context("transfer did not finish within 60 s")?;
    sent?;
    received?;
    switched
}
