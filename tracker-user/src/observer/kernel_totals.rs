//! The kernel's own count of connections opened and closed at each local endpoint, added up
//! per listener: once the daemon passes them, reports take `opened` and `closed` from here.
//!
//! The kernel counts before it sends any event, so these totals stay exact when events are
//! lost (a full ring, a stalled daemon); what the events carry (lifetimes, busy time, sessions)
//! may then be short, and `curr` is corrected against the kernel's table. The one close the
//! kernel cannot count is one the daemon takes over itself ([`Observer::close_adopted`]),
//! which adds it here.

use std::net::SocketAddr;

use rustc_hash::FxHashMap;
use tracker_common::{Endpoint, EndpointTotals, wire_addr};

use super::Observer;

/// Connections a listener opened and closed in the current interval, by the kernel's count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct KernelCounts {
    pub(super) opened: u64,
    pub(super) closed: u64,
}

/// The kernel's totals per endpoint when last applied.
pub(super) type Baseline = FxHashMap<Endpoint, EndpointTotals>;

impl Observer {
    /// Takes the kernel's totals since load per local endpoint (summed over CPUs) and adds
    /// what is new since the last call to the listener that each endpoint's connections
    /// belong to. Counts of an endpoint no listener takes (one that closed and was forgotten)
    /// are dropped, as its events are.
    pub fn apply_kernel_totals(&mut self, totals: &[(Endpoint, EndpointTotals)]) {
        let mut baseline = self.kernel_totals.take().unwrap_or_default();
        for &(endpoint, now) in totals {
            let before = baseline.insert(endpoint, now).unwrap_or_default();
            let new = KernelCounts {
                opened: now.opened.saturating_sub(before.opened),
                closed: now.closed.saturating_sub(before.closed),
            };
            if new == KernelCounts::default() || !self.watches(endpoint.port) {
                continue;
            }
            let Ok(ip) = wire_addr::decode(endpoint.family, endpoint.addr) else {
                continue;
            };
            let netns = self.netns_key(endpoint.netns);
            let local = SocketAddr::new(ip, endpoint.port);
            if let Some(listener) = self
                .listener_for(netns, local, false)
                .and_then(|id| self.listeners.get_mut(&id))
            {
                listener.kernel_counts.opened += new.opened;
                listener.kernel_counts.closed += new.closed;
            }
        }
        self.kernel_totals = Some(baseline);
    }
}
