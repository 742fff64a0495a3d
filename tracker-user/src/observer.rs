//! Maps kernel events onto one [`Tracker`] per listening address.
//!
//! Plain Rust, no I/O: the daemon feeds it decoded [`Event`]s and the listening sockets it
//! found in the kernel's tables, and asks it for reports. Rules:
//!
//! * A listener is an address (`127.0.0.1:8080`, `[::]:8080`, …). Several sockets on one
//!   address (SO_REUSEPORT groups) share one tracker; the listener goes away when its last
//!   socket closes, and is reported one last time once its connections are gone too.
//! * A connection counts under the listener with its exact local address, or else under the
//!   wildcard listener of its family on that port (a dual-stack `[::]` listener sees IPv4
//!   clients as `::ffff:a.b.c.d`, so they land there too). Its key in the tracker is the remote
//!   address and port, as in the original library.
//! * Inconsistencies are counted in the trackers' error counters, never dropped: a close for a
//!   connection that was never seen open is `no_conn_in_map`; a socket address reused by the
//!   kernel while we still hold a connection on it (its close was lost) closes the old one and
//!   counts `dangling_conn`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rustc_hash::{FxHashMap, FxHashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::event::{Event, Netns, SockId};
use tracker_common::proto::Protocol;

use crate::model::{ConnState, ErrorKind, Nanos, Snapshot, Tracker};
use crate::sessions::{self, Sessions};

/// A listener's identity: its network namespace (0 for the daemon's own) and its address.
/// The same address in two namespaces is two listeners.
pub type ListenerKey = (Netns, SocketAddr);

/// A process that owns (listens on) a listener.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    /// Its command line, arguments separated by spaces (empty until known).
    pub cmdline: String,
}

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

/// One listener's report for one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerReport {
    pub listener: SocketAddr,
    pub snapshot: Snapshot,
    pub owners: Vec<Owner>,
    /// The listener has closed; this is its last report once its connections are gone.
    pub gone: bool,
    /// Connections of the interval whose sessions cannot be counted (TLS, not HTTP, or the
    /// frame walk was lost): open now, or closed during the interval.
    pub sessions_unknown: u64,
    /// Every connection that closed since the previous report (for distributions such as
    /// Prometheus histograms), whether or not reports reset.
    pub closed_connections: Vec<ClosedConnection>,
    /// Connections the model had to add or close to match the kernel's table in the
    /// interval (events were lost, or the connection predates the daemon).
    pub corrections: u64,
    /// The listener's network namespace (inode number), when it is not the daemon's own.
    pub netns: Option<Netns>,
    /// An outbound tracker (`--connect`): `listener` is the destination, connections are
    /// keyed by their local address, and the name reads `connect:<destination>`.
    pub outbound: bool,
    /// Connections waiting in the accept queue when last sampled.
    pub accept_queue: u32,
    /// Most connections waiting in the accept queue among the interval's samples.
    pub accept_queue_peak: u32,
    /// The accept queue's limit (the listen backlog).
    pub accept_backlog: u32,
    /// Connections the server accepted (`accept()` returned them) in the interval; 0 where
    /// the kernel offers no accept hook (the report says which capabilities are served).
    pub accepted: u64,
    /// Connections the server closed itself (`close()` on the socket) in the interval.
    pub server_closed: u64,
}

/// Where the model and the kernel's table disagree (see [`Observer::discrepancies`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discrepancies {
    /// (listener, remote) in the model but not in the kernel: their close was lost.
    pub model_only: BTreeSet<(SocketAddr, SocketAddr)>,
    /// (local, remote) in the kernel but not in the model: their open was lost, or they
    /// predate the daemon.
    pub kernel_only: BTreeSet<(SocketAddr, SocketAddr)>,
}

impl Discrepancies {
    pub fn is_empty(&self) -> bool {
        self.model_only.is_empty() && self.kernel_only.is_empty()
    }

    /// Only what both `self` and `other` report: a discrepancy seen twice, with the events
    /// in flight drained in between, is real rather than a race with the ring buffer.
    pub fn confirmed_by(&self, other: &Self) -> Self {
        Self {
            model_only: self
                .model_only
                .intersection(&other.model_only)
                .copied()
                .collect(),
            kernel_only: self
                .kernel_only
                .intersection(&other.kernel_only)
                .copied()
                .collect(),
        }
    }
}

#[cfg(test)]
impl ListenerReport {
    /// A report with `snapshot` and nothing else going on, for tests of the report's readers
    /// (set the fields a test cares about with struct update syntax).
    pub(crate) fn quiet(listener: SocketAddr, snapshot: Snapshot) -> Self {
        Self {
            listener,
            snapshot,
            owners: Vec::new(),
            gone: false,
            sessions_unknown: 0,
            closed_connections: Vec::new(),
            corrections: 0,
            outbound: false,
            netns: None,
            accept_queue: 0,
            accept_queue_peak: 0,
            accept_backlog: 0,
            accepted: 0,
            server_closed: 0,
        }
    }
}

/// A connection that closed: how long it lived and its most concurrent sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedConnection {
    pub lifetime_ns: Nanos,
    /// Most sessions open at once over its whole life (0 when unknown or none).
    pub peak_sessions: u32,
}

#[derive(Debug)]
struct Listener {
    tracker: Tracker<SocketAddr>,
    /// Listening sockets known from events.
    sockets: FxHashSet<SockId>,
    /// Listening sockets found by a table scan, whose kernel address is not known.
    scanned_sockets: u32,
    owners: BTreeSet<Owner>,
    /// Open connections whose sessions are unknown.
    unknown_open: u64,
    /// Connections with unknown sessions closed since the last reset.
    unknown_closed: u64,
    /// Connections closed since the last report.
    closed_log: Vec<ClosedConnection>,
    /// Model entries corrected to match the kernel's table since the last reset.
    corrections: u64,
    /// Accept queue as last sampled: waiting connections, and the limit (summed over the
    /// sockets of an SO_REUSEPORT group).
    accept_queue: u32,
    accept_backlog: u32,
    /// Longest accept queue sampled since the last reset.
    accept_queue_peak: u32,
    /// Server accepts and closes of its connections since the last reset.
    accepted: u64,
    server_closed: u64,
}

impl Listener {
    /// A listener named by its address, prefixed with its namespace when it is not the
    /// daemon's own: `127.0.0.1:8080`, `netns:4026532481/127.0.0.1:8080`.
    fn for_key((netns, addr): ListenerKey) -> Self {
        let mut listener = Self::new(addr);
        if netns != 0 {
            listener.tracker = Tracker::new(format!("netns:{netns}/{addr}"));
        }
        listener
    }

    /// Bookkeeping for an adopted connection about to be closed in the tracker.
    fn forget_adopted(&mut self, remote: SocketAddr, at: Nanos) {
        self.unknown_open = self.unknown_open.saturating_sub(1);
        self.unknown_closed += 1;
        if let Some(opened_at) = self.tracker.opened_at(&remote) {
            self.closed_log.push(ClosedConnection {
                lifetime_ns: at.saturating_sub(opened_at),
                peak_sessions: 0,
            });
        }
    }

    fn new(addr: SocketAddr) -> Self {
        Self {
            tracker: Tracker::new(addr.to_string()),
            sockets: FxHashSet::default(),
            scanned_sockets: 0,
            owners: BTreeSet::new(),
            unknown_open: 0,
            unknown_closed: 0,
            closed_log: Vec::new(),
            corrections: 0,
            accept_queue: 0,
            accept_backlog: 0,
            accept_queue_peak: 0,
            accepted: 0,
            server_closed: 0,
        }
    }

    fn is_listening(&self) -> bool {
        !self.sockets.is_empty() || self.scanned_sockets > 0
    }
}

/// Where a tracked connection is accounted, and its turn and session state as the tracker
/// last saw it.
#[derive(Debug, Clone)]
struct ConnRef {
    listener: ListenerKey,
    remote: SocketAddr,
    /// In a turn (Active in the tracker).
    busy: bool,
    /// Marked Idle at this time at a report, because the server had answered and no new
    /// payload had come yet; the kernel has not closed the turn, and may still extend it.
    provisional_idle: Option<Nanos>,
    /// Sessions (requests, streams) by protocol.
    sessions: Sessions,
    /// Opened by this host (`--connect`): `listener` is the destination and `remote` the
    /// local address, the key that tells its connections apart.
    outbound: bool,
    /// The protocol is known to give no session accounting (TLS, not HTTP, or the frame
    /// walk was lost).
    sessions_unknown: bool,
    /// Most sessions open at once over the connection's life.
    peak_sessions: u32,
}

impl ConnRef {
    fn note_peak_sessions(&mut self) {
        let open = u32::try_from(self.sessions.open_count()).unwrap_or(u32::MAX);
        self.peak_sessions = self.peak_sessions.max(open);
    }

    /// Ends the current turn at `end` in `tracker`, with its HTTP/1 request. If a report
    /// already ended it provisionally earlier and the server kept sending after that, the busy
    /// time from the provisional end to the real one is added back (to the current interval).
    fn end_turn(&mut self, tracker: &mut Tracker<SocketAddr>, end: Nanos) {
        let ended = self.sessions.turn_ended();
        sessions::apply(tracker, &self.remote, (0, ended));
        match self.provisional_idle.take() {
            Some(provisional) if end > provisional => {
                tracker.conn_state(self.remote, provisional, ConnState::Active);
                tracker.conn_state(self.remote, end, ConnState::Idle);
            }
            Some(_) => {}
            None => {
                tracker.conn_state(self.remote, end, ConnState::Idle);
            }
        }
        self.busy = false;
    }
}

/// Counters of events the observer could not attribute to any tracker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObserverStats {
    /// Connection events whose local address matches no known listener even after a rescan.
    pub unattributed: u64,
}

/// Per-listener trackers fed by kernel events.
#[derive(Debug, Default)]
pub struct Observer {
    /// Hashed, not ordered: looked up for every event; reports are sorted when made.
    listeners: FxHashMap<ListenerKey, Listener>,
    /// The daemon's own network namespace: events from it are keyed with netns 0.
    own_netns: Netns,
    conns: FxHashMap<SockId, ConnRef>,
    /// Connections taken from the kernel's table, whose socket address is unknown: (listener,
    /// remote). Their close arrives with a socket address the observer never saw.
    adopted: FxHashSet<(ListenerKey, SocketAddr)>,
    /// Trackers of outbound connections, by destination (`--connect`).
    outbound: BTreeMap<SocketAddr, Listener>,
    ports: Option<BTreeSet<u16>>,
    stats: ObserverStats,
}

impl Observer {
    /// An observer of every listener, or only of those on `ports` when given.
    pub fn new(ports: Option<BTreeSet<u16>>) -> Self {
        Self {
            ports,
            ..Self::default()
        }
    }

    /// Also tracks the connections this host opens to each of `targets` (`--connect`), each
    /// in a tracker of its own named `connect:<destination>`.
    pub fn with_connect_targets(mut self, targets: &[SocketAddr]) -> Self {
        for &target in targets {
            let mut group = Listener::new(target);
            group.tracker = Tracker::new(format!("connect:{target}"));
            // Never "gone": a destination is reported for as long as the daemon runs.
            group.scanned_sockets = 1;
            self.outbound.insert(target, group);
        }
        self
    }

    /// Events from namespace `netns` are the daemon's own (keyed 0, named without prefix).
    pub fn with_own_netns(mut self, netns: Netns) -> Self {
        self.own_netns = netns;
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

    pub fn stats(&self) -> ObserverStats {
        self.stats
    }

    /// Number of connections currently tracked, over all listeners.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Addresses of the listeners currently known.
    pub fn listener_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.listeners.keys().map(|&(_, addr)| addr)
    }

    /// Records a listening socket found in the kernel's table (at start-up or on a rescan).
    /// A listener already known from events or an earlier scan only gains the owners.
    pub fn add_scanned_listener(&mut self, addr: SocketAddr, owners: &[Owner]) {
        if !self.watches(addr.port()) {
            return;
        }
        let listener = self
            .listeners
            .entry((0, addr))
            .or_insert_with(|| Listener::new(addr));
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
        if let Some(listener) = self.listeners.get_mut(&(0, addr)) {
            listener.scanned_sockets = listener.scanned_sockets.max(sockets);
        }
    }

    /// Accounts for one event.
    pub fn apply(&mut self, event: &Event) -> Applied {
        self.apply_inner(event, false)
    }

    /// Like [`Observer::apply`], after the rescan asked for by [`Applied::NeedsRescan`]: a
    /// connection whose listener is still unknown is tracked under its own local address, so
    /// that it is counted rather than lost.
    pub fn apply_after_rescan(&mut self, event: &Event) {
        let _ = self.apply_inner(event, true);
    }

    fn apply_inner(&mut self, event: &Event, rescanned: bool) -> Applied {
        match *event {
            Event::OutboundOpen {
                sock,
                local,
                remote,
                at,
            } => {
                if let Some(group) = self.outbound.get_mut(&remote) {
                    group.tracker.conn_state(local, at, ConnState::New);
                    self.conns.insert(
                        sock,
                        ConnRef {
                            listener: (0, remote),
                            remote: local,
                            busy: false,
                            provisional_idle: None,
                            sessions: Sessions::Unknown,
                            outbound: true,
                            sessions_unknown: false,
                            peak_sessions: 0,
                        },
                    );
                }
            }
            Event::ConnClose { sock, at, .. }
                if self.conns.get(&sock).is_some_and(|conn| conn.outbound) =>
            {
                if let Some(conn) = self.conns.remove(&sock)
                    && let Some(group) = self.outbound.get_mut(&conn.listener.1)
                {
                    if let Some(opened_at) = group.tracker.opened_at(&conn.remote) {
                        group.closed_log.push(ClosedConnection {
                            lifetime_ns: at.saturating_sub(opened_at),
                            peak_sessions: 0,
                        });
                    }
                    group.tracker.conn_state(conn.remote, at, ConnState::Closed);
                }
            }
            Event::ListenerUp {
                sock,
                addr,
                pid,
                ref comm,
                netns,
            } => {
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
                let key = (self.netns_key(netns), addr);
                let listener = self
                    .listeners
                    .entry(key)
                    .or_insert_with(|| Listener::for_key(key));
                listener.sockets.insert(sock);
                listener.owners.insert(Owner {
                    pid,
                    comm: comm.clone(),
                    cmdline: String::new(),
                });
            }
            Event::ListenerDown { sock, addr, netns } => {
                let key = (self.netns_key(netns), addr);
                if let Some(listener) = self.listeners.get_mut(&key)
                    && !listener.sockets.remove(&sock)
                {
                    listener.scanned_sockets = listener.scanned_sockets.saturating_sub(1);
                }
            }
            Event::ConnOpen {
                sock,
                local,
                remote,
                at,
                netns,
            } => {
                if !self.watches(local.port()) {
                    return Applied::Done;
                }
                if let Some(previous) = self.conns.remove(&sock) {
                    // The kernel reused this socket's memory, so the connection we held on it
                    // is certainly gone: its close was lost. Favour the current state.
                    if let Some(listener) = self.listeners.get_mut(&previous.listener) {
                        listener
                            .tracker
                            .conn_state(previous.remote, at, ConnState::Closed);
                        listener.tracker.record_error(ErrorKind::DanglingConn);
                    }
                }
                let netns = self.netns_key(netns);
                let Some(listener_addr) = self.listener_for(netns, local, rescanned) else {
                    return Applied::NeedsRescan;
                };
                let listener = self
                    .listeners
                    .entry(listener_addr)
                    .or_insert_with(|| Listener::for_key(listener_addr));
                listener.tracker.conn_state(remote, at, ConnState::New);
                self.conns.insert(
                    sock,
                    ConnRef {
                        listener: listener_addr,
                        remote,
                        busy: false,
                        provisional_idle: None,
                        sessions: Sessions::Unknown,
                        sessions_unknown: false,
                        outbound: false,
                        peak_sessions: 0,
                    },
                );
            }
            Event::ConnClose {
                sock,
                endpoints,
                at,
                turn_end,
                netns,
            } => {
                let netns = self.netns_key(netns);
                let conn = self.conns.remove(&sock);
                let (listener_addr, remote) = match conn {
                    Some(mut conn) => {
                        if let Some(listener) = self.listeners.get_mut(&conn.listener) {
                            if let Some(end) = turn_end {
                                conn.end_turn(&mut listener.tracker, end);
                            }
                            // Streams end with their connection.
                            let ended = conn.sessions.close_all();
                            sessions::apply(&mut listener.tracker, &conn.remote, (0, ended));
                            if conn.sessions_unknown {
                                listener.unknown_open = listener.unknown_open.saturating_sub(1);
                                listener.unknown_closed += 1;
                            }
                            if let Some(opened_at) = listener.tracker.opened_at(&conn.remote) {
                                listener.closed_log.push(ClosedConnection {
                                    lifetime_ns: at.saturating_sub(opened_at),
                                    peak_sessions: conn.peak_sessions,
                                });
                            }
                        }
                        (conn.listener, conn.remote)
                    }
                    // A socket it no longer knows (a correction removed it): nothing to
                    // attribute the close to.
                    None if endpoints.is_none() => {
                        self.stats.unattributed += 1;
                        return Applied::Done;
                    }
                    None => {
                        let (local, remote) = endpoints.expect("checked above");
                        match self.listener_for(netns, local, false) {
                            Some(listener_addr) => {
                                if self.adopted.remove(&(listener_addr, remote))
                                    && let Some(listener) = self.listeners.get_mut(&listener_addr)
                                {
                                    listener.forget_adopted(remote, at);
                                }
                                (listener_addr, remote)
                            }
                            None if !self.watches(local.port()) => return Applied::Done,
                            None => {
                                self.stats.unattributed += 1;
                                return Applied::Done;
                            }
                        }
                    }
                };
                if let Some(listener) = self.listeners.get_mut(&listener_addr) {
                    // For a connection never seen open this counts no_conn_in_map.
                    listener.tracker.conn_state(remote, at, ConnState::Closed);
                }
            }
            Event::Turn {
                sock,
                at,
                previous_end,
                protocol,
            } => {
                if let Some(protocol) = protocol {
                    self.set_protocol(sock, protocol);
                }
                // The kernel only reports turns of connections it reported open, so an unknown
                // socket here means that open was lost; its close will count the error.
                let Some(conn) = self.conns.get_mut(&sock) else {
                    return Applied::Done;
                };
                let Some(listener) = self.listeners.get_mut(&conn.listener) else {
                    return Applied::Done;
                };
                if let Some(end) = previous_end {
                    conn.end_turn(&mut listener.tracker, end);
                }
                listener
                    .tracker
                    .conn_state(conn.remote, at, ConnState::Active);
                conn.busy = true;
                let started = conn.sessions.turn_started();
                sessions::apply(&mut listener.tracker, &conn.remote, (started, 0));
                conn.note_peak_sessions();
            }
            Event::H2Frame {
                sock,
                ref frame,
                inbound,
            } => {
                if let Some((conn, listener)) = self.conn_and_listener(sock) {
                    let change = if inbound {
                        conn.sessions.client_frame(frame)
                    } else {
                        conn.sessions.server_frame(frame)
                    };
                    sessions::apply(&mut listener.tracker, &conn.remote, change);
                    conn.note_peak_sessions();
                }
            }
            Event::Accepted { sock, .. } => {
                if let Some((_, listener)) = self.conn_and_listener(sock) {
                    listener.accepted += 1;
                }
            }
            Event::ServerClosed { sock, .. } => {
                if let Some((_, listener)) = self.conn_and_listener(sock) {
                    listener.server_closed += 1;
                }
            }
            Event::WalkLost { sock } => {
                if let Some((conn, listener)) = self.conn_and_listener(sock) {
                    // What is open can no longer be followed: end it now rather than count it
                    // lost at close, and count nothing more on this connection.
                    let ended = conn.sessions.close_all();
                    sessions::apply(&mut listener.tracker, &conn.remote, (0, ended));
                    conn.sessions = Sessions::Unknown;
                    if !conn.sessions_unknown {
                        conn.sessions_unknown = true;
                        listener.unknown_open += 1;
                    }
                }
            }
        }
        Applied::Done
    }

    /// The connection's protocol is known (from the first bytes the client sent): it decides
    /// what its sessions are.
    fn set_protocol(&mut self, sock: SockId, protocol: Protocol) {
        if let Some((conn, listener)) = self.conn_and_listener(sock) {
            conn.sessions = Sessions::new(protocol, true);
            let unknown = matches!(protocol, Protocol::Tls | Protocol::Other);
            if unknown && !conn.sessions_unknown {
                listener.unknown_open += 1;
            }
            conn.sessions_unknown = unknown;
        }
    }

    /// A tracked connection and its listener, by socket.
    fn conn_and_listener(&mut self, sock: SockId) -> Option<(&mut ConnRef, &mut Listener)> {
        let conn = self.conns.get_mut(&sock)?;
        let listener = self.listeners.get_mut(&conn.listener)?;
        Some((conn, listener))
    }

    /// Connections in a turn that a report has not provisionally ended: the daemon asks the
    /// kernel whether the server has answered them yet (see [`Observer::provisional_idle`]).
    pub fn busy_sockets(&self) -> Vec<SockId> {
        self.conns
            .iter()
            .filter(|(_, conn)| conn.busy)
            .map(|(&sock, _)| sock)
            .collect()
    }

    /// Before a report: the server has answered connection `sock`, last at `last_send`, and no
    /// new payload has come since, so it is idle from then on unless it sends more (in which
    /// case the turn's real end, reported later, adds the difference back).
    pub fn provisional_idle(&mut self, sock: SockId, last_send: Nanos) {
        let Some(conn) = self.conns.get_mut(&sock) else {
            return;
        };
        let Some(listener) = self.listeners.get_mut(&conn.listener) else {
            return;
        };
        if conn.busy {
            // The response has been sent: the HTTP/1 request is complete.
            let ended = conn.sessions.turn_ended();
            sessions::apply(&mut listener.tracker, &conn.remote, (0, ended));
            listener
                .tracker
                .conn_state(conn.remote, last_send, ConnState::Idle);
            conn.busy = false;
            conn.provisional_idle = Some(last_send);
        }
    }

    /// The listener a connection with local address `local` was accepted through.
    fn listener_for(
        &self,
        netns: Netns,
        local: SocketAddr,
        fall_back_to_local: bool,
    ) -> Option<ListenerKey> {
        if self.listeners.contains_key(&(netns, local)) {
            return Some((netns, local));
        }
        let unspecified = match local.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let wildcard = (netns, SocketAddr::new(unspecified, local.port()));
        if self.listeners.contains_key(&wildcard) {
            return Some(wildcard);
        }
        fall_back_to_local.then_some((netns, local))
    }

    /// Takes a connection the kernel has but the model does not (it predates the daemon, or
    /// its open event was lost) into the tracker of its listener, opened at `now`. Its sessions
    /// are unknown (its first bytes were missed). Returns its listener, or None when no
    /// watched listener takes it or the tracker already has that remote address.
    pub fn adopt(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        now: Nanos,
    ) -> Option<SocketAddr> {
        if !self.watches(local.port()) {
            return None;
        }
        let key = self.listener_for(0, local, false)?;
        let listener = self.listeners.get_mut(&key)?;
        if listener.tracker.contains(&remote) {
            return None;
        }
        listener.tracker.conn_state(remote, now, ConnState::New);
        listener.unknown_open += 1;
        self.adopted.insert((key, remote));
        Some(key.1)
    }

    /// Compares the model with the kernel's table of connections of the daemon's own network
    /// namespace, given as (local, remote) pairs; only connections of watched listeners of that
    /// namespace count (other namespaces are not in the table).
    pub fn discrepancies(&self, kernel: &[(SocketAddr, SocketAddr)]) -> Discrepancies {
        let in_kernel: HashSet<(SocketAddr, SocketAddr)> = kernel
            .iter()
            .filter(|(local, _)| self.watches(local.port()))
            .filter_map(|&(local, remote)| Some((self.listener_for(0, local, false)?.1, remote)))
            .collect();
        let mut found = Discrepancies::default();
        for (&(netns, listener_addr), listener) in &self.listeners {
            if netns != 0 {
                continue;
            }
            for &remote in listener.tracker.keys() {
                if !in_kernel.contains(&(listener_addr, remote)) {
                    found.model_only.insert((listener_addr, remote));
                }
            }
        }
        for &(local, remote) in kernel {
            if !self.watches(local.port()) {
                continue;
            }
            if let Some(key) = self.listener_for(0, local, false)
                && self
                    .listeners
                    .get(&key)
                    .is_some_and(|listener| !listener.tracker.contains(&remote))
            {
                found.kernel_only.insert((local, remote));
            }
        }
        found
    }

    /// Makes the model match the kernel (the original's rule: favour the current state):
    /// closes what the kernel no longer has, adopts what only the kernel has, and counts each
    /// as a correction of its listener. Returns the adopted (local, remote) pairs, whose close
    /// the kernel must be told to report.
    pub fn correct(&mut self, found: &Discrepancies, now: Nanos) -> Vec<(SocketAddr, SocketAddr)> {
        if !found.model_only.is_empty() {
            let by_endpoint: HashMap<(ListenerKey, SocketAddr), SockId> = self
                .conns
                .iter()
                .filter(|(_, conn)| !conn.outbound)
                .map(|(&sock, conn)| ((conn.listener, conn.remote), sock))
                .collect();
            for &(listener_addr, remote) in &found.model_only {
                let key = (0, listener_addr);
                if let Some(sock) = by_endpoint.get(&(key, remote))
                    && let Some(mut conn) = self.conns.remove(sock)
                    && let Some(listener) = self.listeners.get_mut(&key)
                {
                    let ended = conn.sessions.close_all();
                    sessions::apply(&mut listener.tracker, &remote, (0, ended));
                    if conn.sessions_unknown {
                        listener.unknown_open = listener.unknown_open.saturating_sub(1);
                        listener.unknown_closed += 1;
                    }
                } else if self.adopted.remove(&(key, remote))
                    && let Some(listener) = self.listeners.get_mut(&key)
                {
                    listener.forget_adopted(remote, now);
                }
                if let Some(listener) = self.listeners.get_mut(&key) {
                    listener.tracker.conn_state(remote, now, ConnState::Closed);
                    listener.corrections += 1;
                }
            }
        }
        let mut adopted = Vec::new();
        for &(local, remote) in &found.kernel_only {
            if let Some(listener_addr) = self.adopt(local, remote, now) {
                if let Some(listener) = self.listeners.get_mut(&(0, listener_addr)) {
                    listener.corrections += 1;
                }
                adopted.push((local, remote));
            }
        }
        adopted
    }

    /// Records an accept-queue sample: (listening socket address, waiting connections,
    /// backlog) for every listening socket; sockets sharing an address are summed.
    pub fn sample_accept_queues(&mut self, samples: &[(SocketAddr, u32, u32)]) {
        let mut sums: HashMap<SocketAddr, (u32, u32)> = HashMap::new();
        for &(addr, queue, backlog) in samples {
            let sum = sums.entry(addr).or_default();
            sum.0 = sum.0.saturating_add(queue);
            sum.1 = sum.1.saturating_add(backlog);
        }
        // sock_diag lists the daemon's own namespace only.
        for ((netns, addr), listener) in &mut self.listeners {
            if *netns != 0 {
                continue;
            }
            let (queue, backlog) = sums.get(addr).copied().unwrap_or_default();
            listener.accept_queue = queue;
            listener.accept_backlog = backlog;
            listener.accept_queue_peak = listener.accept_queue_peak.max(queue);
        }
    }

    /// One report per listener at `now`. With `reset`, the interval counters start again.
    /// Listeners that have closed and hold no connections are reported one last time, then
    /// forgotten, so a host that churns listeners does not grow the daemon's memory.
    pub fn report(&mut self, now: Nanos, reset: bool) -> Vec<ListenerReport> {
        let mut reports: Vec<ListenerReport> = self
            .listeners
            .iter_mut()
            .map(|(&key, state)| (false, key, state))
            .chain(
                self.outbound
                    .iter_mut()
                    .map(|(&target, state)| (true, (0, target), state)),
            )
            .map(|(outbound, (netns, listener), state)| {
                let sessions_unknown = state.unknown_open + state.unknown_closed;
                let corrections = state.corrections;
                let accept_queue_peak = state.accept_queue_peak.max(state.accept_queue);
                let (accepted, server_closed) = (state.accepted, state.server_closed);
                if reset {
                    state.accepted = 0;
                    state.server_closed = 0;
                    state.unknown_closed = 0;
                    state.corrections = 0;
                    state.accept_queue_peak = state.accept_queue;
                }
                ListenerReport {
                    listener,
                    snapshot: state.tracker.snapshot(now, reset),
                    owners: state.owners.iter().cloned().collect(),
                    gone: !state.is_listening(),
                    sessions_unknown,
                    closed_connections: std::mem::take(&mut state.closed_log),
                    corrections,
                    outbound,
                    netns: (netns != 0).then_some(netns),
                    accept_queue: state.accept_queue,
                    accept_queue_peak,
                    accept_backlog: state.accept_backlog,
                    accepted,
                    server_closed,
                }
            })
            .collect();
        // Listeners by namespace and address, then outbound destinations.
        reports.sort_by_key(|report| (report.outbound, report.netns, report.listener));
        self.listeners
            .retain(|_, state| state.is_listening() || !state.tracker.is_empty());
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn open(sock: SockId, local: &str, remote: &str, at: Nanos) -> Event {
        Event::ConnOpen {
            netns: 0,
            sock,
            local: addr(local),
            remote: addr(remote),
            at,
        }
    }

    fn close(sock: SockId, local: &str, remote: &str, at: Nanos) -> Event {
        Event::ConnClose {
            netns: 0,
            sock,
            endpoints: Some((addr(local), addr(remote))),
            at,
            turn_end: None,
        }
    }

    fn turn(sock: SockId, at: Nanos, previous_end: Option<Nanos>) -> Event {
        Event::Turn {
            sock,
            at,
            previous_end,
            protocol: None,
        }
    }

    fn up(sock: SockId, listener: &str) -> Event {
        Event::ListenerUp {
            netns: 0,
            sock,
            addr: addr(listener),
            pid: 7,
            comm: "srv".into(),
        }
    }

    fn report_of(observer: &mut Observer, now: Nanos, listener: &str) -> ListenerReport {
        observer
            .report(now, true)
            .into_iter()
            .find(|report| report.listener == addr(listener))
            .unwrap_or_else(|| panic!("no report for {listener}"))
    }

    const SECOND: Nanos = 1_000_000_000;

    #[test]
    fn connections_count_under_their_exact_listener() {
        let mut observer = Observer::new(None);
        assert_eq!(observer.apply(&up(1, "127.0.0.1:8080")), Applied::Done);
        assert_eq!(
            observer.apply(&open(10, "127.0.0.1:8080", "127.0.0.1:5000", 0)),
            Applied::Done
        );
        assert_eq!(
            observer.apply(&open(11, "127.0.0.1:8080", "127.0.0.1:5001", 0)),
            Applied::Done
        );
        assert_eq!(
            observer.apply(&close(10, "127.0.0.1:8080", "127.0.0.1:5000", 2 * SECOND)),
            Applied::Done
        );
        let report = report_of(&mut observer, 3 * SECOND, "127.0.0.1:8080");
        assert_eq!(report.snapshot.curr, 1);
        assert_eq!(report.snapshot.peak, 2);
        assert_eq!(report.snapshot.opened, 2);
        assert_eq!(report.snapshot.closed, 1);
        assert_eq!(report.snapshot.conn_for_ns, 5 * SECOND);
        assert_eq!(report.snapshot.errors.total(), 0);
        assert_eq!(
            report.owners,
            vec![Owner {
                pid: 7,
                comm: "srv".into(),
                cmdline: String::new(),
            }]
        );
        assert!(!report.gone);
    }

    #[test]
    fn wildcard_listeners_take_connections_of_their_family() {
        let mut observer = Observer::new(None);
        let _ = observer.apply(&up(1, "0.0.0.0:80"));
        let _ = observer.apply(&up(2, "[::]:80"));
        let _ = observer.apply(&open(10, "127.0.0.1:80", "127.0.0.1:5000", 0));
        let _ = observer.apply(&open(11, "[::1]:80", "[::1]:5000", 0));
        let _ = observer.apply(&open(
            12,
            "[::ffff:127.0.0.1]:80",
            "[::ffff:127.0.0.1]:5001",
            0,
        ));
        let reports = observer.report(SECOND, true);
        let curr = |name: &str| {
            reports
                .iter()
                .find(|report| report.listener == addr(name))
                .unwrap()
                .snapshot
                .curr
        };
        assert_eq!(curr("0.0.0.0:80"), 1);
        assert_eq!(curr("[::]:80"), 2);
    }

    #[test]
    fn unknown_listener_asks_for_a_rescan_then_counts() {
        let mut observer = Observer::new(None);
        let event = open(10, "127.0.0.1:9000", "127.0.0.1:5000", 0);
        assert_eq!(observer.apply(&event), Applied::NeedsRescan);
        observer.add_scanned_listener(addr("0.0.0.0:9000"), &[]);
        observer.apply_after_rescan(&event);
        assert_eq!(
            report_of(&mut observer, SECOND, "0.0.0.0:9000")
                .snapshot
                .curr,
            1
        );

        // Still unknown after the rescan: tracked under its own local address.
        let event = open(11, "127.0.0.1:9100", "127.0.0.1:5000", 0);
        assert_eq!(observer.apply(&event), Applied::NeedsRescan);
        observer.apply_after_rescan(&event);
        assert_eq!(
            report_of(&mut observer, SECOND, "127.0.0.1:9100")
                .snapshot
                .curr,
            1
        );
    }

    #[test]
    fn listener_with_unassigned_port_asks_for_a_rescan() {
        let mut observer = Observer::new(None);
        assert_eq!(observer.apply(&up(1, "0.0.0.0:0")), Applied::NeedsRescan);
        assert_eq!(observer.listener_addrs().count(), 0);
    }

    #[test]
    fn close_never_seen_open_counts_no_conn_in_map() {
        let mut observer = Observer::new(None);
        let _ = observer.apply(&up(1, "127.0.0.1:8080"));
        let _ = observer.apply(&close(10, "127.0.0.1:8080", "127.0.0.1:5000", SECOND));
        let report = report_of(&mut observer, SECOND, "127.0.0.1:8080");
        assert_eq!(report.snapshot.errors.get(ErrorKind::NoConnInMap), 1);
        assert_eq!(report.snapshot.closed, 0);
    }

    #[test]
    fn close_for_an_unknown_listener_is_counted_as_unattributed() {
        let mut observer = Observer::new(None);
        let _ = observer.apply(&close(10, "127.0.0.1:8080", "127.0.0.1:5000", SECOND));
        assert_eq!(observer.stats().unattributed, 1);
    }

    #[test]
    fn reused_socket_address_closes_the_dangling_connection() {
        let mut observer = Observer::new(None);
        let _ = observer.apply(&up(1, "127.0.0.1:8080"));
        let _ = observer.apply(&open(10, "127.0.0.1:8080", "127.0.0.1:5000", 0));
        // Close lost; the kernel reuses socket 10 for a new connection.
        let _ = observer.apply(&open(10, "127.0.0.1:8080", "127.0.0.1:5001", SECOND));
        let report = report_of(&mut observer, 2 * SECOND, "127.0.0.1:8080");
        assert_eq!(report.snapshot.curr, 1);
        assert_eq!(report.snapshot.errors.get(ErrorKind::DanglingConn), 1);
        assert_eq!(observer.connections(), 1);
    }

    #[test]
    fn closed_listener_is_reported_until_its_connections_are_gone() {
        let mut observer = Observer::new(None);
        let _ = observer.apply(&up(1, "127.0.0.1:8080"));
        let _ = observer.apply(&open(10, "127.0.0.1:8080", "127.0.0.1:5000", 0));
        let _ = observer.apply(&Event::ListenerDown {
            netns: 0,
            sock: 1,
            addr: addr("127.0.0.1:8080"),
        });
        let report = report_of(&mut observer, SECOND, "127.0.0.1:8080");
        assert!(report.gone);
        assert_eq!(report.snapshot.curr, 1);
        let _ = observer.apply(&close(10, "127.0.0.1:8080", "127.0.0.1:5000", 2 * SECOND));
        let report = report_of(&mut observer, 3 * SECOND, "127.0.0.1:8080");
        assert!(report.gone);
        assert_eq!(report.snapshot.closed, 1);
        assert!(observer.report(4 * SECOND, true).is_empty());
    }

    #[test]
    fn reuseport_group_is_one_listener_until_the_last_socket_closes() {
        let mut observer = Observer::new(None);
        let _ = observer.apply(&up(1, "127.0.0.1:8080"));
        let _ = observer.apply(&Event::ListenerUp {
            netns: 0,
            sock: 2,
            addr: addr("127.0.0.1:8080"),
            pid: 8,
            comm: "worker".into(),
        });
        observer.add_scanned_listener_sockets(addr("127.0.0.1:9090"), 2, &[]);
        let reports = observer.report(SECOND, true);
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].owners.len(), 2);

        for (sock, listener) in [(1, "127.0.0.1:8080"), (99, "127.0.0.1:9090")] {
            let _ = observer.apply(&Event::ListenerDown {
                netns: 0,
                sock,
                addr: addr(listener),
            });
        }
        assert!(
            observer
                .report(2 * SECOND, true)
                .iter()
                .all(|report| !report.gone)
        );
        for (sock, listener) in [(2, "127.0.0.1:8080"), (98, "127.0.0.1:9090")] {
            let _ = observer.apply(&Event::ListenerDown {
                netns: 0,
                sock,
                addr: addr(listener),
            });
        }
        assert!(
            observer
                .report(3 * SECOND, true)
                .iter()
                .all(|report| report.gone)
        );
        assert!(observer.report(4 * SECOND, true).is_empty());
    }

    #[test]
    fn port_filter_ignores_other_listeners() {
        let mut observer = Observer::new(Some(BTreeSet::from([8080])));
        let _ = observer.apply(&up(1, "127.0.0.1:8080"));
        let _ = observer.apply(&up(2, "127.0.0.1:9090"));
        observer.add_scanned_listener(addr("127.0.0.1:7070"), &[]);
        assert_eq!(
            observer.apply(&open(10, "127.0.0.1:9090", "127.0.0.1:5000", 0)),
            Applied::Done
        );
        let reports = observer.report(SECOND, true);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].listener, addr("127.0.0.1:8080"));
    }

    #[test]
    fn server_accepts_and_closes_are_counted_per_listener_and_reset() {
        let mut observer = Observer::new(None);
        let _ = observer.apply(&up(1, "127.0.0.1:8080"));
        let _ = observer.apply(&open(10, "127.0.0.1:8080", "127.0.0.1:5000", 0));
        let _ = observer.apply(&open(11, "127.0.0.1:8080", "127.0.0.1:5001", 0));
        for sock in [10, 11] {
            let _ = observer.apply(&Event::Accepted { sock, at: 1 });
        }
        let _ = observer.apply(&Event::ServerClosed { sock: 10, at: 2 });
        // A socket the observer does not track counts nowhere.
        let _ = observer.apply(&Event::Accepted { sock: 99, at: 3 });
        let report = report_of(&mut observer, SECOND, "127.0.0.1:8080");
        assert_eq!((report.accepted, report.server_closed), (2, 1));
        let report = report_of(&mut observer, 2 * SECOND, "127.0.0.1:8080");
        assert_eq!((report.accepted, report.server_closed), (0, 0));
    }

    #[test]
    fn thousands_of_short_connections_are_counted_exactly() {
        let mut observer = Observer::new(None);
        let _ = observer.apply(&up(1, "[::1]:8080"));
        for n in 0..5_000u64 {
            let remote = format!("[::1]:{}", 10_000 + n % 50_000);
            let _ = observer.apply(&open(100 + n, "[::1]:8080", &remote, n * 1_000));
            let _ = observer.apply(&close(100 + n, "[::1]:8080", &remote, n * 1_000 + 500));
        }
        let report = report_of(&mut observer, SECOND, "[::1]:8080");
        assert_eq!(
            (report.snapshot.opened, report.snapshot.closed),
            (5_000, 5_000)
        );
        assert_eq!(report.snapshot.curr, 0);
        assert_eq!(report.snapshot.peak, 1);
        assert_eq!(report.snapshot.conn_for_ns, 5_000 * 500);
        assert_eq!(observer.connections(), 0);
    }

    #[test]
    fn turns_make_busy_time() {
        let mut observer = Observer::new(None);
        let _ = observer.apply(&up(1, "127.0.0.1:80"));
        let _ = observer.apply(&open(10, "127.0.0.1:80", "127.0.0.1:5000", 0));
        // Request at 1 s answered by 3 s; next request at 5 s answered by 6 s; close at 8 s.
        let _ = observer.apply(&turn(10, SECOND, None));
        let _ = observer.apply(&turn(10, 5 * SECOND, Some(3 * SECOND)));
        let _ = observer.apply(&Event::ConnClose {
            netns: 0,
            sock: 10,
            endpoints: None,
            at: 8 * SECOND,
            turn_end: Some(6 * SECOND),
        });
        let report = report_of(&mut observer, 9 * SECOND, "127.0.0.1:80");
        assert_eq!(report.snapshot.active_for_ns, 3 * SECOND);
        assert_eq!(report.snapshot.conn_for_ns, 8 * SECOND);
        assert_eq!(report.snapshot.busy_peak, 1);
        assert_eq!(report.snapshot.errors.total(), 0);
    }

    #[test]
    fn unused_connection_is_never_busy() {
        let mut observer = Observer::new(None);
        let _ = observer.apply(&up(1, "127.0.0.1:80"));
        let _ = observer.apply(&open(10, "127.0.0.1:80", "127.0.0.1:5000", 0));
        let _ = observer.apply(&close(10, "127.0.0.1:80", "127.0.0.1:5000", 4 * SECOND));
        let report = report_of(&mut observer, 5 * SECOND, "127.0.0.1:80");
        assert_eq!(report.snapshot.active_for_ns, 0);
        assert_eq!(report.snapshot.busy_peak, 0);
    }

    #[test]
    fn provisional_idle_at_a_report_is_corrected_by_the_real_turn_end() {
        let mut observer = Observer::new(None);
        let _ = observer.apply(&up(1, "127.0.0.1:80"));
        let _ = observer.apply(&open(10, "127.0.0.1:80", "127.0.0.1:5000", 0));
        let _ = observer.apply(&turn(10, SECOND, None));
        assert_eq!(observer.busy_sockets(), vec![10]);
        // At the 4 s report the server had last sent at 2 s.
        observer.provisional_idle(10, 2 * SECOND);
        assert!(observer.busy_sockets().is_empty());
        let first = report_of(&mut observer, 4 * SECOND, "127.0.0.1:80");
        assert_eq!(first.snapshot.active_for_ns, SECOND);
        assert_eq!(first.snapshot.busy, 0);
        // It went on sending until 5 s; the next request comes at 6 s.
        let _ = observer.apply(&turn(10, 6 * SECOND, Some(5 * SECOND)));
        observer.provisional_idle(10, 7 * SECOND);
        let second = report_of(&mut observer, 8 * SECOND, "127.0.0.1:80");
        // 2→5 s added back, plus 6→7 s.
        assert_eq!(second.snapshot.active_for_ns, 4 * SECOND);
    }

    #[test]
    fn provisional_idle_without_more_sends_changes_nothing_later() {
        let mut observer = Observer::new(None);
        let _ = observer.apply(&up(1, "127.0.0.1:80"));
        let _ = observer.apply(&open(10, "127.0.0.1:80", "127.0.0.1:5000", 0));
        let _ = observer.apply(&turn(10, SECOND, None));
        observer.provisional_idle(10, 2 * SECOND);
        let first = report_of(&mut observer, 4 * SECOND, "127.0.0.1:80");
        assert_eq!(first.snapshot.active_for_ns, SECOND);
        let _ = observer.apply(&turn(10, 6 * SECOND, Some(2 * SECOND)));
        let second = report_of(&mut observer, 7 * SECOND, "127.0.0.1:80");
        assert_eq!(second.snapshot.active_for_ns, SECOND);
    }

    #[test]
    fn closed_connections_are_logged_once_with_lifetime_and_sessions() {
        let mut observer = Observer::new(None);
        let _ = observer.apply(&up(1, "127.0.0.1:80"));
        let _ = observer.apply(&open(10, "127.0.0.1:80", "127.0.0.1:5000", SECOND));
        let _ = observer.apply(&Event::Turn {
            sock: 10,
            at: 2 * SECOND,
            previous_end: None,
            protocol: Some(Protocol::Http1),
        });
        let _ = observer.apply(&close(10, "127.0.0.1:80", "127.0.0.1:5000", 4 * SECOND));
        let report = report_of(&mut observer, 5 * SECOND, "127.0.0.1:80");
        assert_eq!(
            report.closed_connections,
            vec![ClosedConnection {
                lifetime_ns: 3 * SECOND,
                peak_sessions: 1
            }]
        );
        assert_eq!(report.snapshot.errors.total(), 0);
        let later = report_of(&mut observer, 6 * SECOND, "127.0.0.1:80");
        assert!(later.closed_connections.is_empty());
    }

    #[test]
    fn adopted_connections_count_and_close_without_errors() {
        let mut observer = Observer::new(None);
        observer.add_scanned_listener(addr("0.0.0.0:80"), &[]);
        let local = addr("127.0.0.1:80");
        assert_eq!(
            observer.adopt(local, addr("127.0.0.1:5000"), SECOND),
            Some(addr("0.0.0.0:80"))
        );
        assert_eq!(
            observer.adopt(local, addr("127.0.0.1:5000"), SECOND),
            None,
            "already there"
        );
        assert_eq!(
            observer.adopt(addr("127.0.0.1:81"), addr("127.0.0.1:5000"), SECOND),
            None
        );
        let first = report_of(&mut observer, 2 * SECOND, "0.0.0.0:80");
        assert_eq!((first.snapshot.curr, first.sessions_unknown), (1, 1));
        // Its close comes with a socket address the observer never saw.
        let _ = observer.apply(&close(77, "127.0.0.1:80", "127.0.0.1:5000", 3 * SECOND));
        let second = report_of(&mut observer, 4 * SECOND, "0.0.0.0:80");
        assert_eq!((second.snapshot.curr, second.snapshot.closed), (0, 1));
        assert_eq!(second.snapshot.errors.total(), 0);
        assert_eq!(second.closed_connections.len(), 1);
    }

    #[test]
    fn reconciliation_closes_lost_closes_and_adopts_lost_opens() {
        let mut observer = Observer::new(None);
        let _ = observer.apply(&up(1, "127.0.0.1:80"));
        let _ = observer.apply(&open(10, "127.0.0.1:80", "127.0.0.1:5000", 0));
        let _ = observer.apply(&open(11, "127.0.0.1:80", "127.0.0.1:5001", 0));
        // The kernel still has 5001, no longer 5000 (close lost), and has 5002 (open lost).
        let kernel = [
            (addr("127.0.0.1:80"), addr("127.0.0.1:5001")),
            (addr("127.0.0.1:80"), addr("127.0.0.1:5002")),
            (addr("127.0.0.1:9999"), addr("127.0.0.1:6000")),
        ];
        let found = observer.discrepancies(&kernel);
        assert_eq!(
            found.model_only,
            BTreeSet::from([(addr("127.0.0.1:80"), addr("127.0.0.1:5000"))])
        );
        assert_eq!(
            found.kernel_only,
            BTreeSet::from([(addr("127.0.0.1:80"), addr("127.0.0.1:5002"))])
        );
        let again = observer.discrepancies(&kernel[..1]);
        let confirmed = found.confirmed_by(&again);
        assert!(confirmed.kernel_only.is_empty(), "5002 was seen only once");
        assert_eq!(confirmed.model_only.len(), 1);

        let adopted = observer.correct(&found, SECOND);
        assert_eq!(
            adopted,
            vec![(addr("127.0.0.1:80"), addr("127.0.0.1:5002"))]
        );
        let report = report_of(&mut observer, 2 * SECOND, "127.0.0.1:80");
        assert_eq!(report.snapshot.curr, 2);
        assert_eq!(report.corrections, 2);
        assert_eq!(report.snapshot.errors.total(), 0);
        assert_eq!(observer.connections(), 1, "socket 10 forgotten");
        assert!(observer.discrepancies(&kernel).is_empty());
    }

    #[test]
    fn accept_queue_samples_sum_reuseport_groups_and_keep_the_peak() {
        let mut observer = Observer::new(None);
        observer.add_scanned_listener_sockets(addr("127.0.0.1:80"), 2, &[]);
        let listener = addr("127.0.0.1:80");
        observer.sample_accept_queues(&[(listener, 3, 128), (listener, 4, 128)]);
        observer.sample_accept_queues(&[(listener, 1, 128), (listener, 0, 128)]);
        let report = report_of(&mut observer, SECOND, "127.0.0.1:80");
        assert_eq!(
            (
                report.accept_queue,
                report.accept_queue_peak,
                report.accept_backlog
            ),
            (1, 7, 256)
        );
        let next = report_of(&mut observer, 2 * SECOND, "127.0.0.1:80");
        assert_eq!(
            next.accept_queue_peak, 1,
            "peak restarts from the current length"
        );
    }

    #[test]
    fn outbound_connections_are_tracked_per_destination() {
        let target = addr("127.0.0.1:5432");
        let mut observer =
            Observer::new(Some(BTreeSet::from([80]))).with_connect_targets(&[target]);
        let outbound_open = |sock, local: &str, at| Event::OutboundOpen {
            sock,
            local: addr(local),
            remote: target,
            at,
        };
        let _ = observer.apply(&outbound_open(20, "127.0.0.1:40000", 0));
        let _ = observer.apply(&outbound_open(21, "127.0.0.1:40001", 0));
        let _ = observer.apply(&close(20, "127.0.0.1:40000", "127.0.0.1:5432", SECOND));
        let reports = observer.report(2 * SECOND, true);
        let report = reports
            .iter()
            .find(|report| report.outbound)
            .expect("outbound report");
        assert_eq!(report.listener, target);
        assert_eq!(report.snapshot.name, "connect:127.0.0.1:5432");
        assert_eq!((report.snapshot.curr, report.snapshot.peak), (1, 2));
        assert_eq!((report.snapshot.opened, report.snapshot.closed), (2, 1));
        assert_eq!(report.snapshot.errors.total(), 0);
        assert_eq!(report.closed_connections.len(), 1);
        assert!(!report.gone);
    }
}
