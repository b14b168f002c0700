//! Which member routes between this end and a peer it cannot reach: the one with the
//! lowest sum of RTTs (this end to the member, the member to the peer), as RakNet's
//! Router2 picks its router.
//!
//! Steps:
//! 1. Every member tells each linked member the smoothed RTT of each of its links
//!    ([`SessionMsg::LinkRtts`](super::SessionMsg::LinkRtts)) whenever one of its links
//!    comes up or goes, and every [`RTT_REPORT_EVERY`]. Only reports of members (or, on
//!    a joiner, of the members the host listed) count.
//! 2. An end keeps the last report of each linked member ([`RttReports`]); a report is
//!    dropped with its sender's link.
//! 3. When a dial to `peer` fails, [`pick_router`] takes the linked members (not `peer`)
//!    whose last report names a link to `peer`, and picks the lowest sum of this end's RTT
//!    to the member and the member's RTT to `peer`. When no report names `peer`, the
//!    nearest member that has not reported goes first, then the nearest whose report
//!    names no link to `peer` (it may predate that link); a member that cannot reach
//!    `peer` refuses the route.

use std::collections::HashMap;
use std::time::Duration;

use crate::identity::PeerId;

use super::msg::MAX_MEMBERS;

/// How often a member sends its links' RTTs to every linked member.
pub const RTT_REPORT_EVERY: Duration = Duration::from_secs(5);

/// The last RTT report of each linked member (at most [`MAX_MEMBERS`] reporters of at
/// most [`MAX_MEMBERS`] entries each).
#[derive(Debug, Default)]
pub(crate) struct RttReports {
    by_reporter: HashMap<PeerId, Vec<(PeerId, Duration)>>,
}

impl RttReports {
    /// Records `from`'s report (replacing its previous one); entries past
    /// [`MAX_MEMBERS`] and reports past [`MAX_MEMBERS`] reporters are ignored.
    pub(crate) fn record(&mut self, from: PeerId, rtts: &[(PeerId, u32)]) {
        if !self.by_reporter.contains_key(&from) && self.by_reporter.len() >= MAX_MEMBERS {
            return;
        }
        let entries = rtts
            .iter()
            .take(MAX_MEMBERS)
            .map(|(p, micros)| (*p, Duration::from_micros(u64::from(*micros))))
            .collect();
        self.by_reporter.insert(from, entries);
    }

    /// Forgets `peer`'s report (its link went).
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.by_reporter.remove(peer);
    }

    /// `member`'s last reported RTT to `peer`: `None` when `member` has not reported,
    /// `Some(None)` when its report names no link to `peer` (yet).
    fn rtt(&self, member: &PeerId, peer: &PeerId) -> Option<Option<Duration>> {
        let report = self.by_reporter.get(member)?;
        Some(report.iter().find(|(p, _)| p == peer).map(|(_, rtt)| *rtt))
    }
}

/// Encodes this end's link RTTs for a report (microseconds, saturating; at most
/// [`MAX_MEMBERS`] entries).
pub(crate) fn report(links: impl Iterator<Item = (PeerId, Duration)>) -> Vec<(PeerId, u32)> {
    links
        .take(MAX_MEMBERS)
        .map(|(p, rtt)| (p, u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX)))
        .collect()
}

/// Step 3: the router for `peer` among `own` (this end's linked members and its RTT to
/// each), `None` when no member can route.
pub(crate) fn pick_router(
    own: impl Iterator<Item = (PeerId, Duration)>,
    reports: &RttReports,
    peer: &PeerId,
) -> Option<PeerId> {
    fn keep_lowest(best: &mut Option<(Duration, PeerId)>, value: Duration, member: PeerId) {
        if best.is_none_or(|(lowest, _)| value < lowest) {
            *best = Some((value, member));
        }
    }
    let mut by_sum = None;
    let mut unreported = None;
    // A report may predate the member's link to `peer`: such members are the last resort.
    let mut without_link = None;
    for (member, rtt) in own.filter(|(m, _)| m != peer) {
        match reports.rtt(&member, peer) {
            Some(Some(second)) => keep_lowest(&mut by_sum, rtt.saturating_add(second), member),
            Some(None) => keep_lowest(&mut without_link, rtt, member),
            None => keep_lowest(&mut unreported, rtt, member),
        }
    }
    by_sum
        .or(unreported)
        .or(without_link)
        .map(|(_, member)| member)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_lowest_sum_of_rtts_wins_over_the_nearest_member() {
        let mut reports = RttReports::default();
        // Member 2 is nearest to us but far from the peer 9; member 3 is the other way.
        reports.record(id(2), &report([(id(9), ms(80))].into_iter()));
        reports.record(id(3), &report([(id(9), ms(5))].into_iter()));
        let own = [(id(2), ms(10)), (id(3), ms(30))];
        assert_eq!(pick_router(own.into_iter(), &reports, &id(9)), Some(id(3)));
    }

    #[test]
    fn a_member_that_reported_a_link_to_the_peer_goes_before_one_that_did_not() {
        let mut reports = RttReports::default();
        reports.record(id(2), &report([(id(4), ms(1))].into_iter()));
        reports.record(id(3), &report([(id(9), ms(50))].into_iter()));
        let own = [(id(2), ms(1)), (id(3), ms(40))];
        assert_eq!(pick_router(own.into_iter(), &reports, &id(9)), Some(id(3)));
        // Only a member whose report predates its link to the peer: still asked (it
        // refuses if it cannot reach the peer).
        let own = [(id(2), ms(1))];
        assert_eq!(pick_router(own.into_iter(), &reports, &id(9)), Some(id(2)));
        // A member that has not reported goes before one whose report lacks the peer.
        let own = [(id(2), ms(1)), (id(5), ms(30))];
        assert_eq!(pick_router(own.into_iter(), &reports, &id(9)), Some(id(5)));
    }

    #[test]
    fn without_reports_the_nearest_member_is_asked_and_the_peer_never_routes_to_itself() {
        let reports = RttReports::default();
        let own = [(id(9), ms(1)), (id(2), ms(20)), (id(3), ms(10))];
        assert_eq!(pick_router(own.into_iter(), &reports, &id(9)), Some(id(3)));
        assert_eq!(pick_router([].into_iter(), &reports, &id(9)), None);
    }

    #[test]
    fn a_known_sum_beats_an_unreported_member_and_a_forgotten_report_counts_as_unknown() {
        let mut reports = RttReports::default();
        reports.record(id(3), &report([(id(9), ms(100))].into_iter()));
        let own = [(id(2), ms(1)), (id(3), ms(10))];
        assert_eq!(pick_router(own.into_iter(), &reports, &id(9)), Some(id(3)));
        reports.forget(&id(3));
        assert_eq!(pick_router(own.into_iter(), &reports, &id(9)), Some(id(2)));
    }

    #[test]
    fn reports_saturate_and_stay_bounded() {
        let long = report([(id(9), Duration::from_secs(10_000))].into_iter());
        assert_eq!(long, vec![(id(9), u32::MAX)]);
        let many: Vec<(PeerId, u32)> = (0..=255u8).map(|n| (id(n), 1)).collect();
        let mut reports = RttReports::default();
        reports.record(id(1), &many);
        assert_eq!(reports.by_reporter[&id(1)].len(), MAX_MEMBERS);
        for n in 0..=255u8 {
            reports.record(id(n), &[]);
        }
        assert_eq!(reports.by_reporter.len(), MAX_MEMBERS);
    }
}
