//! The registry of listeners: which addresses listen, through which sockets, owned by whom,
//! and which listener a connection was accepted through.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rustc_hash::FxHashSet;

use super::accept_queue::AcceptQueue;
use super::kernel_totals::{KernelLedger, TurnLeftOpen};
use super::report::{ClosedConnection, ListenerReport};
use super::{Applied, Observer, Owner};
use crate::event::{Netns, SockId};
use crate::host::workload::{Workloads, proc_cgroup};
use crate::model::{Nanos, Tracker};
use crate::tracker_id::{Role, TrackerId};

/// What the observer holds for one tracker (a listener or a `--connect` destination).
#[derive(Debug)]
pub(super) struct Listener {
    pub(super) tracker: Tracker<SocketAddr>,
    /// Listening sockets known from events.
    sockets: FxHashSet<SockId>,
    /// Listening sockets found by a table scan, whose kernel address is not known.
    pub(super) scanned_sockets: u32,
    pub(super) owners: BTreeSet<Owner>,
    /// Open connections whose sessions are unknown.
    pub(super) unknown_open: u64,
    /// What it counted since the last report.
    pub(super) tally: IntervalTally,
    /// Its accept queue as sampled.
    pub(super) accept_queue: AcceptQueue,
    /// What the kernel counted of it, with the daemon's counts of what the kernel could not
    /// (see [`Observer::apply_kernel_totals`]).
    pub(super) ledger: KernelLedger,
    /// What its connections showed of TLS.
    pub(super) tls: TlsSeen,
    /// The cgroup of the process that opened it (the last one to call `listen()` on it), or
    /// of an owner found by a scan.
    pub(super) cgroup: Option<String>,
}

/// What a listener counted since its last report: the report takes it whole, and counting
/// starts afresh.
#[derive(Debug, Default)]
pub(super) struct IntervalTally {
    /// Connections with unknown sessions closed.
    pub(super) unknown_closed: u64,
    /// Sessions that started but could not be tracked.
    pub(super) sessions_untracked: u64,
    /// Connections closed, with their lifetimes for the histogram.
    pub(super) closed: Vec<ClosedConnection>,
    /// Model entries corrected to match the kernel's table.
    pub(super) corrections: u64,
    /// Server accepts and closes of its connections.
    pub(super) accepted: u64,
    pub(super) server_closed: u64,
    /// Connections whose server answered `101 Switching Protocols`.
    pub(super) upgraded: u64,
}

/// What [`Observer::owners_check`] found among the listeners still listening.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnersCheck {
    /// Some listener is still listening.
    pub listening: bool,
    /// Some owner has exited (its sockets may have passed to other processes).
    pub exited: bool,
    /// Some listener has no owner still running.
    pub ownerless: bool,
}

/// Whether a listener's connections spoke TLS, and whether the kernel saw their handshakes
/// inside a hooked TLS library (whose plaintext it then follows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsSeen {
    /// Some TLS connection's plaintext is followed.
    pub followed: bool,
    /// Some TLS connection's handshake was not inside a hooked library: its sessions are
    /// unknown.
    pub opaque: bool,
}

impl Listener {
    /// A tracker named after its identity.
    pub(super) fn new(id: TrackerId) -> Self {
        Self {
            tracker: Tracker::new(id.to_string()),
            sockets: FxHashSet::default(),
            scanned_sockets: 0,
            owners: BTreeSet::new(),
            unknown_open: 0,
            tally: IntervalTally::default(),
            accept_queue: AcceptQueue::default(),
            ledger: KernelLedger::default(),
            tls: TlsSeen::default(),
            cgroup: None,
        }
    }

    /// A close of one of its connections that the kernel could not count, found at `at`, with
    /// the turn the kernel left open in it.
    pub(super) fn count_close_for_kernel(&mut self, at: Nanos, turn: Option<TurnLeftOpen>) {
        self.ledger.counts.closed += 1;
        self.ledger.daemon.closed(at, turn);
    }

    pub(super) fn is_listening(&self) -> bool {
        !self.sockets.is_empty() || self.scanned_sockets > 0
    }
}

impl Observer {
    /// Addresses of the listeners currently known.
    pub fn listener_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.listeners
            .keys()
            .filter(|id| id.role == Role::Listen)
            .map(|id| id.addr)
    }

    /// The processes owning listeners that still listen (whose TLS libraries the daemon hooks).
    pub fn listener_owner_pids(&self) -> BTreeSet<u32> {
        self.listeners
            .iter()
            .filter(|(id, listener)| id.role == Role::Listen && listener.is_listening())
            .flat_map(|(_, listener)| listener.owners.iter().map(|owner| owner.pid))
            .collect()
    }

    /// Whether the owners of the listeners still listening need looking up again.
    pub fn owners_check(&self, alive: impl Fn(u32) -> bool) -> OwnersCheck {
        let mut check = OwnersCheck::default();
        for (_, listener) in self
            .listeners
            .iter()
            .filter(|(id, listener)| id.role == Role::Listen && listener.is_listening())
        {
            let live = listener
                .owners
                .iter()
                .filter(|owner| alive(owner.pid))
                .count();
            check.listening = true;
            check.exited |= live < listener.owners.len();
            check.ownerless |= live == 0;
        }
        check
    }

    /// Makes the owners of each listener the processes that hold its sockets now: `holders`,
    /// by listener, where a listener's sockets were found; elsewhere its owners still `alive`.
    pub fn refresh_owners(
        &mut self,
        holders: &BTreeMap<TrackerId, Vec<Owner>>,
        alive: impl Fn(u32) -> bool,
    ) {
        for (id, listener) in &mut self.listeners {
            match holders.get(id).filter(|found| !found.is_empty()) {
                Some(found) => listener.owners = found.iter().cloned().collect(),
                None => listener.owners.retain(|owner| alive(owner.pid)),
            }
        }
    }

    /// Fills in who runs each listener of `reports`. A listener found by a scan rather than
    /// seen opening takes the cgroup of its first owner that still runs, kept from then on.
    pub fn describe_workloads(
        &mut self,
        reports: &mut [ListenerReport],
        workloads: &mut Workloads,
    ) {
        for report in reports.iter_mut() {
            if report.cgroup.is_none() && report.id.role == Role::Listen {
                report.cgroup = report
                    .owners
                    .iter()
                    .find_map(|owner| proc_cgroup(owner.pid));
                if let Some(cgroup) = &report.cgroup {
                    self.set_cgroup(report.id, cgroup.clone());
                }
            }
            if let Some(cgroup) = &report.cgroup {
                report.workload = workloads.of(cgroup);
                // The text line prints the snapshot's name.
                report.snapshot.name = report.name();
            }
        }
        let in_use: Vec<Option<&str>> = reports
            .iter()
            .map(|report| report.cgroup.as_deref())
            .collect();
        workloads.forget_unused(&in_use);
    }

    /// Sets the cgroup of listener `id` where no `listen()` event gave one (a listener found
    /// by a scan: the daemon reads its owner's).
    pub fn set_cgroup(&mut self, id: TrackerId, cgroup: String) {
        if let Some(listener) = self.listeners.get_mut(&id) {
            listener.cgroup.get_or_insert(cgroup);
        }
    }

    /// Records a listening socket found in the kernel's table (at start-up or on a rescan).
    /// A listener already known from events or an earlier scan only gains the owners.
    pub fn add_scanned_listener(&mut self, addr: SocketAddr, owners: &[Owner]) {
        if !self.watches(addr.port()) {
            return;
        }
        let id = TrackerId::listen(0, addr);
        let listener = self
            .listeners
            .entry(id)
            .or_insert_with(|| Listener::new(id));
        if !listener.is_listening() {
            listener.scanned_sockets = 1;
        }
        listener.owners.extend(owners.iter().cloned());
    }

    /// Records several listening sockets on one address found by the first scan (an
    /// SO_REUSEPORT group counts each socket so that each later close is matched).
    pub fn add_scanned_listener_sockets(
        &mut self,
        addr: SocketAddr,
        sockets: u32,
        owners: &[Owner],
    ) {
        self.add_scanned_listener(addr, owners);
        if let Some(listener) = self.listeners.get_mut(&TrackerId::listen(0, addr)) {
            listener.scanned_sockets = listener.scanned_sockets.max(sockets);
        }
    }

    pub(super) fn listener_up(
        &mut self,
        netns: Netns,
        sock: SockId,
        addr: SocketAddr,
        (owner, cgroup): (Owner, Option<&str>),
        rescanned: bool,
    ) -> Applied {
        if addr.port() == 0 {
            // listen() without bind(): the port is assigned just after this event.
            return if rescanned {
                Applied::Done
            } else {
                Applied::NeedsRescan
            };
        }
        if !self.watches(addr.port()) {
            return Applied::Done;
        }
        let id = TrackerId::listen(self.netns_key(netns), addr);
        let listener = self
            .listeners
            .entry(id)
            .or_insert_with(|| Listener::new(id));
        listener.sockets.insert(sock);
        listener.owners.insert(owner);
        if let Some(cgroup) = cgroup {
            listener.cgroup = Some(cgroup.to_owned());
        }
        Applied::Done
    }

    pub(super) fn listener_down(
        &mut self,
        netns: Netns,
        sock: SockId,
        addr: SocketAddr,
    ) -> Applied {
        let id = TrackerId::listen(self.netns_key(netns), addr);
        if let Some(listener) = self.listeners.get_mut(&id)
            && !listener.sockets.remove(&sock)
        {
            listener.scanned_sockets = listener.scanned_sockets.saturating_sub(1);
        }
        Applied::Done
    }

    /// The listener a connection with local address `local` was accepted through.
    pub(super) fn listener_for(
        &self,
        netns: Netns,
        local: SocketAddr,
        fall_back_to_local: bool,
    ) -> Option<TrackerId> {
        let exact = TrackerId::listen(netns, local);
        if self.listeners.contains_key(&exact) {
            return Some(exact);
        }
        let unspecified = match local.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let wildcard = TrackerId::listen(netns, SocketAddr::new(unspecified, local.port()));
        if self.listeners.contains_key(&wildcard) {
            return Some(wildcard);
        }
        fall_back_to_local.then_some(exact)
    }
}
