//! Maps kernel events onto one [`Tracker`](crate::model::Tracker) per [`TrackerId`].
//!
//! Plain Rust, no I/O: the daemon feeds it decoded [`Event`]s and the listening sockets it
//! found in the kernel's tables, and asks it for reports. Rules:
//!
//! * A listener is an address (`127.0.0.1:8080`, `[::]:8080`, …) in a network namespace.
//!   Several sockets on one address (SO_REUSEPORT groups) share one tracker; the listener goes
//!   away when its last socket closes, and is reported one last time once its connections are
//!   gone too.
//! * A connection counts under the listener with its exact local address, or else under the
//!   wildcard listener of its family on that port (a dual-stack `[::]` listener sees IPv4
//!   clients as `::ffff:a.b.c.d`, so they land there too). Its key in the tracker is the remote
//!   address and port, as in the original library.
//! * Inconsistencies are counted in the trackers' error counters, never dropped: a close for a
//!   connection that was never seen open is `no_conn_in_map`; a socket address reused by the
//!   kernel while we still hold a connection on it (its close was lost) closes the old one and
//!   counts `dangling_conn`.
//!
//! Each kind of event has its handler in the room that owns what it changes: [`listeners`]
//! (the registry of listening addresses), [`connections`] (connections and their turns and
//! sessions), [`outbound`] (`--connect` destinations), [`reconcile`] (adoption and
//! corrections against the kernel's table), [`accept_queue`] and [`report`].

mod accept_queue;
mod connections;
mod kernel_totals;
mod listeners;
mod live_gauges;
mod outbound;
mod reconcile;
mod report;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use rustc_hash::FxHashMap;

use crate::event::{Event, Netns, SockId};
use crate::tracker_id::TrackerId;

pub use crate::host::procfs::Owner;
pub use crate::kernel::gauges::GaugeReading;
pub use crate::kernel::hooks::LifeStart;
use connections::TrackedConn;
pub use kernel_totals::TurnLeftOpen;
use listeners::Listener;
pub use listeners::{OwnersCheck, TlsSeen};
pub use reconcile::Discrepancies;
pub use report::{ClosedConnection, ListenerReport};

/// What the caller should do after [`Observer::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Applied {
    /// The event was accounted for.
    Done,
    /// The event names a listener the observer does not know yet (a listener whose port was
    /// still unassigned when it appeared, or one opened before start that a scan missed): scan
    /// the kernel's listening sockets, pass them to [`Observer::add_scanned_listener`], then
    /// apply the event again with [`Observer::apply_after_rescan`].
    NeedsRescan,
}

/// Counters of events the observer could not attribute to any tracker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObserverStats {
    /// Connection closes that match no known listener even after a rescan, or name a socket
    /// the observer no longer knows.
    pub unattributed: u64,
}

/// Per-listener trackers fed by kernel events.
#[derive(Debug, Default)]
pub struct Observer {
    /// Listeners and `--connect` destinations alike. Hashed, not ordered: looked up for every
    /// event; reports are sorted when made.
    listeners: FxHashMap<TrackerId, Listener>,
    /// The daemon's own network namespace: events from it are keyed with netns 0.
    own_netns: Netns,
    conns: FxHashMap<SockId, TrackedConn>,
    /// Connections taken from the kernel's table, whose socket address is unknown: (listener,
    /// remote). Their close arrives with a socket address the observer never saw.
    adopted: FxHashMap<(TrackerId, SocketAddr), connections::Adoption>,
    ports: Option<BTreeSet<u16>>,
    stats: ObserverStats,
    /// The kernel's totals per local endpoint as of the last report, once the daemon passes
    /// them: reports then take `opened` and `closed` from the kernel.
    kernel_totals: Option<kernel_totals::Baseline>,
    /// The kernel's live gauges as of the last report (see [`Observer::apply_live_gauges`]).
    gauge_starts: live_gauges::GaugeStarts,
    life_start: LifeStart,
    /// Ends of closing phases the kernel handed on to time-wait sockets, per local endpoint,
    /// since start: the daemon counts them (see [`Observer::end_handed_over_closing`]).
    closing_ends: FxHashMap<tracker_common::Endpoint, tracker_common::Spans>,
}

impl Observer {
    /// An observer of every listener, or only of those on `ports` when given.
    pub fn new(ports: Option<BTreeSet<u16>>) -> Self {
        Self {
            ports,
            ..Self::default()
        }
    }

    /// Events from namespace `netns` are the daemon's own (keyed 0, named without prefix).
    pub fn with_own_netns(mut self, netns: Netns) -> Self {
        self.own_netns = netns;
        self
    }

    /// Connections' lives start at `start` (the default: at the handshake's end).
    pub fn with_life_start(mut self, start: LifeStart) -> Self {
        self.life_start = start;
        self
    }

    fn netns_key(&self, netns: Netns) -> Netns {
        if netns == self.own_netns { 0 } else { netns }
    }

    /// Whether listeners on `port` are reported.
    pub fn watches(&self, port: u16) -> bool {
        self.ports
            .as_ref()
            .is_none_or(|ports| ports.contains(&port))
    }

    /// Counters of what could not be attributed; each report carries the interval's share.
    pub fn stats(&self) -> ObserverStats {
        self.stats
    }

    /// Number of connections currently tracked, over all listeners.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Accounts for one event.
    pub fn apply(&mut self, event: &Event) -> Applied {
        self.dispatch(event, false)
    }

    /// Like [`Observer::apply`], after the rescan asked for by [`Applied::NeedsRescan`]: a
    /// connection whose listener is still unknown is tracked under its own local address, so
    /// that it is counted rather than lost.
    pub fn apply_after_rescan(&mut self, event: &Event) {
        let _ = self.dispatch(event, true);
    }

    /// One handler per kind of event.
    fn dispatch(&mut self, event: &Event, rescanned: bool) -> Applied {
        match *event {
            Event::ListenerUp {
                sock,
                addr,
                pid,
                ref comm,
                netns,
                ref cgroup,
                ..
            } => self.listener_up(
                netns,
                sock,
                addr,
                (Owner::from_event(pid, comm), cgroup.as_deref()),
                rescanned,
            ),
            Event::ListenerDown { sock, addr, netns } => self.listener_down(netns, sock, addr),
            Event::ConnOpen {
                sock,
                local,
                remote,
                at,
                netns,
                untracked,
            } => self.conn_open(netns, sock, (local, remote), at, untracked, rescanned),
            Event::OutboundOpen {
                sock,
                local,
                remote,
                at,
            } => self.outbound_open(sock, local, remote, at),
            Event::ConnClose {
                sock,
                endpoints,
                at,
                turn_end,
                netns,
            } => self.conn_close(netns, sock, endpoints, at, turn_end),
            Event::Turn {
                sock,
                at,
                previous_end,
                protocol,
                upgraded,
                tls_followed,
            } => self.turn(sock, at, previous_end, protocol, upgraded, tls_followed),
            Event::H2Frame {
                sock,
                ref frame,
                goaway_last_stream,
                inbound,
            } => self.h2_frame(sock, frame, goaway_last_stream, inbound),
            Event::WalkLost { sock } => self.walk_lost(sock),
            Event::Accepted { sock, at } => self.accepted(sock, at),
            Event::CloseCalled { sock, .. } => self.close_called(sock),
        }
    }
}

impl Owner {
    /// The process a listen() event names; its command line is read later.
    fn from_event(pid: u32, comm: &str) -> Self {
        Self {
            pid,
            comm: comm.to_owned(),
            cmdline: String::new(),
        }
    }
}
