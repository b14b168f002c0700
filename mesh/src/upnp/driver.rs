//! The tokio driver of the UPnP port mapper: runs the state machine's actions with
//! `igd-next` (SSDP search, SOAP requests) and publishes the state.
//!
//! Steps of the background task:
//! 1. IPv6 sockets get `Unavailable` at once (IGD port mapping is IPv4).
//! 2. Loop: hand every pending [`Action`] to `igd-next`, each bounded by a timeout (a search
//!    is also cut short by a shutdown request), feed the result back, publish the state;
//!    then sleep until the machine's next timer or a shutdown request.
//! 3. On shutdown the machine asks for the mapping's removal; the task ends when the
//!    machine is closed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use igd_next::aio::tokio::{search_gateway, Tokio};
use igd_next::aio::Gateway;
use igd_next::{AddAnyPortError, AddPortError, PortMappingProtocol, SearchOptions};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::machine::{Action, Machine, MachineConfig, MapFailure};
use super::{UpnpConfig, UpnpError, UpnpState};

/// Keeps a UDP socket's port mapped on the UPnP gateway; see the module docs of
/// [`crate::upnp`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use mesh::upnp::{PortMapper, UpnpConfig};
/// let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
/// let mapper = PortMapper::start(socket.local_addr()?, UpnpConfig::default())?;
/// // ... connect as usual; later, offer the candidate if there is one:
/// if let Some(external) = mapper.mapped_candidate() {
///     println!("UPnP candidate {external}");
/// }
/// mapper.shutdown().await?; // removes the mapping
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PortMapper {
    local: SocketAddr,
    state: watch::Receiver<UpnpState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    shutdown_timeout: Duration,
}

impl PortMapper {
    /// Starts mapping `local` (the UDP socket's local address; an unspecified IP is
    /// resolved to the interface that routes to the gateway) in a background task on the
    /// current tokio runtime. Returns at once.
    pub fn start(local: SocketAddr, config: UpnpConfig) -> Result<Self, UpnpError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| UpnpError::NoRuntime)?;
        let (tx, state) = watch::channel(UpnpState::Searching);
        let (stop, stop_rx) = oneshot::channel();
        let shutdown_timeout = config.shutdown_timeout;
        let task = runtime.spawn(run(local, config, tx, stop_rx));
        Ok(PortMapper {
            local,
            state,
            stop: Some(stop),
            task: Some(task),
            shutdown_timeout,
        })
    }

    /// The local address being mapped.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The current state.
    pub fn state(&self) -> UpnpState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn subscribe(&self) -> watch::Receiver<UpnpState> {
        self.state.clone()
    }

    /// The UPnP candidate: the mapped external address, if mapped now.
    pub fn mapped_candidate(&self) -> Option<SocketAddr> {
        self.state.borrow().mapped()
    }

    /// Waits until the state is no longer [`UpnpState::Searching`], at most `max`, and
    /// returns the state then.
    pub async fn wait_settled(&self, max: Duration) -> UpnpState {
        let mut rx = self.state.clone();
        let settled = timeout(max, async {
            rx.wait_for(|s| !matches!(s, UpnpState::Searching))
                .await
                .map(|s| (*s).clone())
        })
        .await;
        match settled {
            Ok(Ok(state)) => state,
            _ => self.state(),
        }
    }

    /// Removes the mapping (if any) and stops the task, waiting at most
    /// [`UpnpConfig::shutdown_timeout`].
    pub async fn shutdown(mut self) -> Result<(), UpnpError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match timeout(self.shutdown_timeout, task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(UpnpError::Task(e.to_string())),
            Err(_) => Err(UpnpError::ShutdownTimeout(self.shutdown_timeout)),
        }
    }
}

impl Drop for PortMapper {
    /// Best effort: asks the task to remove the mapping; it does so in the background while
    /// the runtime lives (otherwise the lease ends the mapping).
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Whether `ip` is not a public unicast address (private, shared, benchmarking, loopback,
/// link-local, documentation, reserved).
pub(crate) fn is_reserved(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_documentation()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00
        }
    }
}

fn publish(tx: &watch::Sender<UpnpState>, state: &UpnpState) {
    tx.send_if_modified(|current| {
        if current == state {
            return false;
        }
        match state {
            UpnpState::Mapped { external, .. } => tracing::info!(%external, "UPnP mapping active"),
            UpnpState::Unavailable { reason } => tracing::info!(%reason, "UPnP unavailable"),
            UpnpState::Searching => tracing::debug!("UPnP searching"),
        }
        *current = state.clone();
        true
    });
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn run(
    local: SocketAddr,
    cfg: UpnpConfig,
    tx: watch::Sender<UpnpState>,
    mut stop: oneshot::Receiver<()>,
) {
    if !local.is_ipv4() {
        publish(
            &tx,
            &UpnpState::Unavailable {
                reason: format!("UPnP IGD maps IPv4 ports only; {local} is IPv6"),
            },
        );
        return;
    }
    let mut machine = Machine::new(MachineConfig {
        local_port: local.port(),
        lease: cfg.lease,
        search_attempts: cfg.search_attempts.max(1),
        map_attempts: cfg.map_attempts.max(1),
        retry_base: cfg.retry_base,
        retry_max: cfg.retry_max.max(cfg.retry_base),
        rediscover_after: cfg.rediscover_after,
    });
    let mut io = Io {
        cfg,
        local,
        gateway: None,
        internal: None,
    };
    // `stop` must not be polled again once it completed.
    let mut stopping = false;
    machine.start(Instant::now());
    loop {
        while let Some(action) = machine.poll_action() {
            match action {
                Action::Search => {
                    let result = if stopping {
                        None
                    } else {
                        tokio::select! {
                            r = io.search() => Some(r),
                            _ = &mut stop => None,
                        }
                    };
                    match result {
                        Some(r) => machine.on_search(Instant::now(), r),
                        None => {
                            stopping = true;
                            machine.shutdown(Instant::now());
                        }
                    }
                }
                Action::Map {
                    external_port,
                    lease_secs,
                } => {
                    let r = io.map(external_port, lease_secs).await;
                    machine.on_map(Instant::now(), r);
                }
                Action::Remove { external_port } => {
                    let r = io.remove(external_port).await;
                    if let Err(e) = &r {
                        tracing::debug!(external_port, error = %e, "UPnP mapping removal failed");
                    }
                    machine.on_removed(Instant::now(), r);
                }
            }
            publish(&tx, machine.state());
        }
        if machine.is_closed() {
            break;
        }
        let deadline = machine.poll_timeout();
        if stopping && deadline.is_none() {
            break;
        }
        tokio::select! {
            () = sleep_until(deadline) => machine.handle_timeout(Instant::now()),
            _ = &mut stop, if !stopping => {
                stopping = true;
                machine.shutdown(Instant::now());
            }
        }
        publish(&tx, machine.state());
    }
    publish(&tx, machine.state());
}

/// The I/O half: the gateway found last and the internal address to map to.
struct Io {
    cfg: UpnpConfig,
    local: SocketAddr,
    gateway: Option<Gateway<Tokio>>,
    internal: Option<SocketAddr>,
}

/// The local address the gateway sees for this socket: the bound IP, or, for an
/// unspecified bind, the source address the routing table picks towards the gateway (a
/// connected UDP socket; nothing is sent).
async fn internal_addr(local: SocketAddr, gateway: SocketAddr) -> std::io::Result<SocketAddr> {
    if !local.ip().is_unspecified() {
        return Ok(local);
    }
    let probe = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    probe.connect(gateway).await?;
    Ok(SocketAddr::new(probe.local_addr()?.ip(), local.port()))
}

impl Io {
    async fn search(&mut self) -> Result<IpAddr, String> {
        self.gateway = None;
        self.internal = None;
        let options = SearchOptions {
            bind_addr: SocketAddr::new(self.local.ip(), 0),
            broadcast_address: self.cfg.ssdp_addr,
            timeout: Some(self.cfg.search_timeout),
            ..SearchOptions::default()
        };
        let limit = self.cfg.search_timeout + Duration::from_millis(500);
        let gateway = match timeout(limit, search_gateway(options)).await {
            Ok(Ok(gateway)) => gateway,
            Ok(Err(e)) => return Err(format!("gateway search: {e}")),
            Err(_) => return Err(format!("gateway search: no gateway within {limit:?}")),
        };
        let gateway_addr = gateway.addr;
        let internal = internal_addr(self.local, gateway_addr)
            .await
            .map_err(|e| format!("local address towards gateway {gateway_addr}: {e}"))?;
        let external = match timeout(self.cfg.request_timeout, gateway.get_external_ip()).await {
            Ok(Ok(ip)) => ip,
            Ok(Err(e)) => return Err(format!("gateway {gateway_addr}: external address: {e}")),
            Err(_) => {
                return Err(format!(
                    "gateway {gateway_addr}: no external address within {:?}",
                    self.cfg.request_timeout
                ))
            }
        };
        if is_reserved(external) {
            // A lab, a carrier-grade or double NAT: the address may still work (in the lab
            // it does), so it is offered as a candidate like any other.
            tracing::debug!(%external, gateway = %gateway_addr,
                "UPnP gateway reports a reserved external address; using it anyway");
        }
        tracing::debug!(gateway = %gateway_addr, %external, %internal, "UPnP gateway found");
        self.gateway = Some(gateway);
        self.internal = Some(internal);
        Ok(external)
    }

    async fn map(&self, external_port: Option<u16>, lease_secs: u32) -> Result<u16, MapFailure> {
        let (Some(gateway), Some(internal)) = (&self.gateway, self.internal) else {
            return Err(MapFailure::Other("no gateway".into()));
        };
        let description = self.cfg.description.as_str();
        let call = async {
            match external_port {
                Some(port) => gateway
                    .add_port(
                        PortMappingProtocol::UDP,
                        port,
                        internal,
                        lease_secs,
                        description,
                    )
                    .await
                    .map(|()| port)
                    .map_err(classify_add),
                None => gateway
                    .add_any_port(PortMappingProtocol::UDP, internal, lease_secs, description)
                    .await
                    .map_err(classify_add_any),
            }
        };
        match timeout(self.cfg.request_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(MapFailure::Other(format!(
                "no answer to the mapping request within {:?}",
                self.cfg.request_timeout
            ))),
        }
    }

    async fn remove(&self, external_port: u16) -> Result<(), String> {
        let Some(gateway) = &self.gateway else {
            return Err("no gateway".into());
        };
        match timeout(
            self.cfg.request_timeout,
            gateway.remove_port(PortMappingProtocol::UDP, external_port),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.cfg.request_timeout)),
        }
    }
}

fn classify_add(e: AddPortError) -> MapFailure {
    match e {
        AddPortError::PortInUse => MapFailure::PortInUse,
        AddPortError::OnlyPermanentLeasesSupported => MapFailure::OnlyPermanentLeases,
        other => MapFailure::Other(other.to_string()),
    }
}

fn classify_add_any(e: AddAnyPortError) -> MapFailure {
    match e {
        AddAnyPortError::OnlyPermanentLeasesSupported => MapFailure::OnlyPermanentLeases,
        other => MapFailure::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upnp::fake_igd::{Call, FakeIgd};

    #[test]
    fn reserved_addresses() {
        for ip in [
            "198.18.0.10",
            "198.19.255.1",
            "10.1.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "0.0.0.0",
        ] {
            assert!(is_reserved(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "198.20.0.1", "100.128.0.1", "2001:db8::1"] {
            assert!(!is_reserved(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn ipv6_socket_is_unavailable_at_once() {
        let mapper = PortMapper::start("[::1]:5000".parse().unwrap(), UpnpConfig::default())
            .expect("inside a runtime");
        let state = mapper.wait_settled(Duration::from_secs(5)).await;
        assert_eq!(state.name(), "unavailable");
        assert_eq!(mapper.mapped_candidate(), None);
        mapper.shutdown().await.expect("clean stop");
    }

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        assert!(matches!(
            PortMapper::start("0.0.0.0:1".parse().unwrap(), UpnpConfig::default()),
            Err(UpnpError::NoRuntime)
        ));
    }

    #[tokio::test]
    async fn no_gateway_on_loopback_gives_unavailable_quickly() {
        // The M-SEARCH goes to a closed loopback port: no gateway answers, nothing leaves
        // the host.
        let config = UpnpConfig {
            ssdp_addr: "127.0.0.1:9".parse().unwrap(),
            search_timeout: Duration::from_millis(200),
            search_attempts: 2,
            retry_base: Duration::from_millis(50),
            rediscover_after: None,
            ..UpnpConfig::default()
        };
        let mapper = PortMapper::start("127.0.0.1:40000".parse().unwrap(), config).unwrap();
        let state = mapper.wait_settled(Duration::from_secs(5)).await;
        match &state {
            UpnpState::Unavailable { reason } => assert!(reason.contains("2 searches"), "{reason}"),
            other => panic!("expected unavailable, got {other:?}"),
        }
        mapper.shutdown().await.unwrap();
    }

    async fn wait_for_calls(igd: &FakeIgd, action: &str, n: usize) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let calls = igd.calls();
            if calls.iter().filter(|c| c.action == action).count() >= n {
                return calls;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "fewer than {n} {action} calls: {calls:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn fake_config(igd: &FakeIgd, lease: Duration) -> UpnpConfig {
        UpnpConfig {
            ssdp_addr: igd.ssdp,
            search_timeout: Duration::from_secs(2),
            lease,
            ..UpnpConfig::default()
        }
    }

    #[tokio::test]
    async fn maps_renews_and_removes_against_a_fake_gateway() {
        let igd = FakeIgd::start(&[], 50000).await;
        let mapper = PortMapper::start(
            "127.0.0.1:40000".parse().unwrap(),
            fake_config(&igd, Duration::from_secs(2)),
        )
        .unwrap();
        let state = mapper.wait_settled(Duration::from_secs(10)).await;
        // The fake gateway reports a reserved address (as the lab's do): still mapped.
        assert_eq!(
            state.mapped(),
            Some("198.18.0.10:40000".parse().unwrap()),
            "{state:?}"
        );
        assert_eq!(mapper.mapped_candidate(), state.mapped());
        // Renewal at half the 2 s lease, for the same external port and lease.
        let calls = wait_for_calls(&igd, "AddPortMapping", 2).await;
        let adds: Vec<&Call> = calls
            .iter()
            .filter(|c| c.action == "AddPortMapping")
            .collect();
        assert!(adds
            .iter()
            .all(|c| c.external_port == Some(40000) && c.lease == Some(2)));
        let mut watch = mapper.subscribe();
        mapper.shutdown().await.unwrap();
        let calls = igd.calls();
        let last = calls.last().unwrap();
        assert_eq!(last.action, "DeletePortMapping", "{calls:?}");
        assert_eq!(last.external_port, Some(40000));
        assert_eq!(watch.borrow_and_update().name(), "unavailable");
    }

    #[tokio::test]
    async fn taken_port_falls_back_to_any_port_on_a_fake_gateway() {
        let igd = FakeIgd::start(&[40001], 50001).await;
        let mapper = PortMapper::start(
            "127.0.0.1:40001".parse().unwrap(),
            fake_config(&igd, Duration::from_secs(600)),
        )
        .unwrap();
        let state = mapper.wait_settled(Duration::from_secs(10)).await;
        assert_eq!(
            state.mapped(),
            Some("198.18.0.10:50001".parse().unwrap()),
            "{state:?} {:?}",
            igd.calls()
        );
        // Dropping the handle removes the mapping in the background.
        drop(mapper);
        let calls = wait_for_calls(&igd, "DeletePortMapping", 1).await;
        assert_eq!(calls.last().unwrap().external_port, Some(50001));
    }
}
