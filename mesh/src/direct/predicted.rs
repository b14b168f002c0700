//! Predicted candidates for a NAT that allocates public ports in a pattern (port
//! prediction, as RakNet's NAT punchthrough does): the driver of the sans-IO
//! [`MappingProbe`] on the node's own socket, and the window [`predict`] derives.
//!
//! Steps:
//! 1. At start, and [`SETTLE`] after each introduction (whose checks used up ports), run
//!    the probe against the punch server: its STUN answers are the server's observations
//!    of this socket's mappings for two fresh flows ([`crate::nat::MappingProbe`]).
//! 2. [`predict`] the next ports: a sequential or fixed-step NAT gives a window of
//!    [`PredictConfig::window`] ports after the last one; an endpoint-independent NAT
//!    (stable port) or a random one gives nothing.
//! 3. The window is published as reflexive candidates (same public IP, predicted ports);
//!    [`super::candidates::publish_candidates`] registers them with the others, so the
//!    next `Go` a peer gets carries them and its prober checks them like any other
//!    candidate. A wrong guess costs a few unanswered checks.
//!
//! 4. The same observation says how the NAT maps ([`mapping_of`]): the node tells the
//!    punch server (`NatMapping`, for birthday probing, [`super::birthdays`]) and its
//!    punch engine.
//!
//! A server without an alternate address (not in RFC 5780 mode) ends the task: there is
//! nothing to observe.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};

use super::control::Control;
use super::sleep_until_opt;
use crate::coord::{Candidate as WireCandidate, CandidateKind as WireKind, NatMapping};
use crate::nat::{MappingEvent, MappingProbe};
use crate::punch::predict::{predict, Observed, PredictConfig, Prediction};
use crate::socket::Endpoint;
use crate::stun::StunOwner;

/// How long after an introduction the mappings are observed again (its probing is over
/// by then, so the observation does not take ports the peer was told about).
pub const SETTLE: Duration = Duration::from_secs(5);
/// Longest one observation may take.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of the queue of STUN answers.
const ANSWERS: usize = 16;

/// The candidates of a [`MappingEvent`] (step 2): empty unless the ports follow a step.
pub(crate) fn candidates_of(event: &MappingEvent, config: PredictConfig) -> Vec<WireCandidate> {
    let MappingEvent::Observed { reflexive, fresh } = event else {
        return Vec::new();
    };
    match predict(
        &Observed {
            ports: fresh.clone(),
        },
        config,
    ) {
        Prediction::Ports { ports, .. } => ports
            .into_iter()
            .map(|p| {
                WireCandidate::new(
                    WireKind::ServerReflexive,
                    SocketAddr::new(reflexive.ip(), p),
                )
            })
            .collect(),
        Prediction::Stable(_) | Prediction::Unpredictable => Vec::new(),
    }
}

/// How the NAT maps, from a [`MappingEvent`] (step 4): `None` without an observation.
pub(crate) fn mapping_of(event: &MappingEvent, config: PredictConfig) -> Option<NatMapping> {
    let MappingEvent::Observed { fresh, .. } = event else {
        return None;
    };
    let observed = Observed {
        ports: fresh.clone(),
    };
    Some(match predict(&observed, config) {
        Prediction::Stable(_) => NatMapping::EndpointIndependent,
        Prediction::Ports { .. } => NatMapping::Predictable,
        Prediction::Unpredictable => NatMapping::Random,
    })
}

/// Runs one probe on the node's socket (step 1).
async fn observe(endpoint: &Endpoint, server: SocketAddr) -> MappingEvent {
    let (tx, mut answers) = mpsc::channel(ANSWERS);
    endpoint.socket().route_stun(StunOwner::Discovery, tx);
    let mut probe = MappingProbe::new(Instant::now(), server, rand::random());
    let run = async {
        loop {
            while let Some(t) = probe.poll_transmit() {
                let sent = endpoint
                    .send_stun_as(StunOwner::Discovery, t.destination, &t.contents)
                    .await;
                if let Err(e) = sent {
                    tracing::debug!(to = %t.destination, error = %e, "mapping probe not sent");
                }
            }
            if let Some(event) = probe.poll_event() {
                return event;
            }
            tokio::select! {
                answer = answers.recv() => match answer {
                    Some(d) => {
                        probe.handle_input(Instant::now(), d.from, &d.data);
                    }
                    None => return MappingEvent::Failed("socket closed".into()),
                },
                _ = sleep_until_opt(probe.poll_timeout()) => probe.handle_timeout(Instant::now()),
            }
        }
    };
    tokio::time::timeout(OBSERVE_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| MappingEvent::Failed("timed out".into()))
}

/// Keeps `out` at the current prediction (steps 1-3) and `mapping` at the NAT's mapping
/// (step 4, also told to the punch server through `control`) until the node goes away
/// (`None` until the first observation ended); `again` is notified after each
/// introduction.
pub(crate) async fn run(
    endpoint: Arc<Endpoint>,
    server: SocketAddr,
    again: Arc<Notify>,
    out: watch::Sender<Option<Vec<WireCandidate>>>,
    (mapping, control): (watch::Sender<Option<NatMapping>>, Control),
) {
    loop {
        let event = observe(&endpoint, server).await;
        let candidates = Some(candidates_of(&event, PredictConfig::default()));
        tracing::debug!(?event, ?candidates, "NAT mappings observed");
        if let Some(found) = mapping_of(&event, PredictConfig::default()) {
            mapping.send_if_modified(|m| m.replace(found) != Some(found));
            control.set_mapping(found).await;
        }
        out.send_if_modified(|c| std::mem::replace(c, candidates.clone()) != candidates);
        if event == MappingEvent::NoAlternate {
            return;
        }
        again.notified().await;
        tokio::time::sleep(SETTLE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(fresh: Vec<u16>) -> MappingEvent {
        MappingEvent::Observed {
            reflexive: "198.18.0.20:20000".parse().expect("addr"),
            fresh,
        }
    }

    #[test]
    fn a_step_gives_a_window_of_reflexive_candidates_on_the_public_ip() {
        let c = candidates_of(&observed(vec![20001, 20002]), PredictConfig::default());
        assert_eq!(c.len(), 8);
        assert!(c.iter().all(|c| c.kind == WireKind::ServerReflexive));
        assert_eq!(c[0].addr, "198.18.0.20:20003".parse().expect("addr"));
        assert_eq!(c[7].addr, "198.18.0.20:20010".parse().expect("addr"));
    }

    #[test]
    fn the_mapping_follows_the_observed_ports() {
        let config = PredictConfig::default();
        let of = |ports| mapping_of(&observed(ports), config);
        assert_eq!(
            of(vec![20000, 20000]),
            Some(NatMapping::EndpointIndependent)
        );
        assert_eq!(of(vec![20001, 20002]), Some(NatMapping::Predictable));
        assert_eq!(of(vec![20001, 41234]), Some(NatMapping::Random));
        assert_eq!(mapping_of(&MappingEvent::NoAlternate, config), None);
    }

    #[test]
    fn nothing_for_a_stable_or_random_nat_or_no_observation() {
        let config = PredictConfig::default();
        assert!(candidates_of(&observed(vec![20000, 20000]), config).is_empty());
        assert!(candidates_of(&observed(vec![20001, 41234]), config).is_empty());
        assert!(candidates_of(&MappingEvent::NoAlternate, config).is_empty());
        assert!(candidates_of(&MappingEvent::Failed("x".into()), config).is_empty());
    }
}
