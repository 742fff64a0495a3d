//! Connections: their open and close, their turns (busy periods) and their sessions.

use std::net::SocketAddr;

use tracker_common::proto::{FrameHeader, Protocol};

use super::listeners::Listener;
use super::report::ClosedConnection;
use super::{Applied, LifeStart, Observer};
use crate::event::{Netns, SockId};
use crate::model::{ConnState, ErrorKind, Nanos, Tracker};
use crate::sessions::{self, Sessions};
use crate::tracker_id::TrackerId;

/// Where a tracked connection is accounted, and its turn and session state as the tracker
/// last saw it.
#[derive(Debug, Clone)]
pub(super) struct TrackedConn {
    pub(super) listener: TrackerId,
    /// The key of the connection in its tracker: the remote address of an accepted
    /// connection, the local address of an outbound one (its destination is the tracker's).
    pub(super) remote: SocketAddr,
    /// In a turn (Active in the tracker).
    pub(super) busy: bool,
    /// Marked Idle at this time at a report, because the server had answered and no new
    /// payload had come yet; the kernel has not closed the turn, and may still extend it.
    provisional_idle: Option<Nanos>,
    /// Sessions (requests, streams) by protocol.
    sessions: Sessions,
    /// The protocol is known to give no session accounting (TLS, not HTTP, or the frame
    /// walk was lost).
    sessions_unknown: bool,
    /// Most sessions open at once over the connection's life.
    peak_sessions: u32,
    /// Its life has started (see [`LifeStart`]): it is in the tracker. False while it waits
    /// in the accept queue, where lives start at the server's accept.
    pub(super) started: bool,
}

impl TrackedConn {
    /// A connection just opened, keyed `remote` in `listener`'s tracker; `started`: whether
    /// its life starts now, or at its accept.
    pub(super) fn opened(listener: TrackerId, remote: SocketAddr, started: bool) -> Self {
        Self {
            listener,
            started,
            remote,
            busy: false,
            provisional_idle: None,
            sessions: Sessions::Unknown,
            sessions_unknown: false,
            peak_sessions: 0,
        }
    }

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

/// Why a connection was taken from the kernel's table rather than seen open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Adoption {
    /// It predates the daemon: the kernel never counted it, open or closed, unless it was
    /// asked to follow it in time.
    BeforeStart,
    /// Its open event was lost: the kernel counted its open and counts its close.
    OpenLost,
}

/// What the observer knew of a connection it closes.
pub(super) enum Closing {
    /// Seen open (or opened by this host): its sessions end with it.
    Tracked(TrackedConn),
    /// Taken from the kernel's table: its sessions were never known.
    Adopted,
    /// Never seen: the tracker counts `no_conn_in_map`.
    Unseen,
}

impl Listener {
    /// Everything a connection's close changes in its listener: its open sessions end, it
    /// leaves the count of connections with unknown sessions, its lifetime and peak sessions
    /// are logged, and the tracker closes it.
    pub(super) fn close_connection(&mut self, remote: SocketAddr, at: Nanos, closing: Closing) {
        let (peak_sessions, sessions_unknown) = match closing {
            Closing::Tracked(mut conn) => {
                // An HTTP/1 request ends with its connection at the latest. HTTP/2 streams
                // still open (neither answered to their end nor reset) are left to the
                // tracker, which ends them and counts the connection in `conns_lost`.
                let ended = conn.sessions.turn_ended();
                sessions::apply(&mut self.tracker, &remote, (0, ended));
                (conn.peak_sessions, conn.sessions_unknown)
            }
            Closing::Adopted => (0, true),
            Closing::Unseen => (0, false),
        };
        if sessions_unknown {
            self.unknown_open = self.unknown_open.saturating_sub(1);
            self.tally.unknown_closed += 1;
        }
        if let Some(opened_at) = self.tracker.opened_at(&remote) {
            self.tally.closed.push(ClosedConnection {
                lifetime_ns: at.saturating_sub(opened_at),
                peak_sessions,
            });
        }
        self.tracker.conn_state(remote, at, ConnState::Closed);
    }
}

impl Observer {
    pub(super) fn conn_open(
        &mut self,
        netns: Netns,
        sock: SockId,
        (local, remote): (SocketAddr, SocketAddr),
        at: Nanos,
        untracked: bool,
        rescanned: bool,
    ) -> Applied {
        if !self.watches(local.port()) {
            return Applied::Done;
        }
        if let Some(previous) = self.conns.remove(&sock)
            && previous.started
            && let Some(listener) = self.listeners.get_mut(&previous.listener)
        {
            // The kernel reused this socket's memory, so the connection we held on it is
            // certainly gone: its close was lost. Favour the current state.
            listener.close_connection(previous.remote, at, Closing::Tracked(previous));
            listener.tracker.record_error(ErrorKind::DanglingConn);
        }
        let netns = self.netns_key(netns);
        let Some(id) = self.listener_for(netns, local, rescanned) else {
            return Applied::NeedsRescan;
        };
        let listener = self
            .listeners
            .entry(id)
            .or_insert_with(|| Listener::new(id));
        let adoption = self.adopted.remove(&(id, remote));
        if adoption == Some(Adoption::BeforeStart)
            && let Some(adopted_at) = listener.tracker.opened_at(&remote)
        {
            // It opened between the attach and the start-up scan: the kernel counted its
            // open after all.
            listener.ledger.daemon.withdraw_open(adopted_at);
        }
        // Where lives start at the accept, one adopted meanwhile is in the tracker already,
        // and one the kernel could not track starts now: its accept will not be seen.
        let starts_now = self.life_start == LifeStart::Handshake || untracked;
        if starts_now {
            listener.tracker.conn_state(remote, at, ConnState::New);
        }
        let started = starts_now || adoption.is_some();
        self.conns
            .insert(sock, TrackedConn::opened(id, remote, started));
        Applied::Done
    }

    /// A connection closed: inbound or outbound, seen open or adopted, the same bookkeeping.
    pub(super) fn conn_close(
        &mut self,
        netns: Netns,
        sock: SockId,
        endpoints: Option<(SocketAddr, SocketAddr)>,
        at: Nanos,
        turn_end: Option<Nanos>,
    ) -> Applied {
        if let Some(mut conn) = self.conns.remove(&sock) {
            if !conn.started {
                // Closed in the accept queue: the server never had it.
                return Applied::Done;
            }
            if let Some(listener) = self.listeners.get_mut(&conn.listener) {
                if let Some(end) = turn_end {
                    conn.end_turn(&mut listener.tracker, end);
                }
                listener.close_connection(conn.remote, at, Closing::Tracked(conn));
            }
            return Applied::Done;
        }
        // A socket it no longer knows (a correction removed it): nothing to attribute the
        // close to.
        let Some((local, remote)) = endpoints else {
            self.stats.unattributed += 1;
            return Applied::Done;
        };
        let Some(id) = self.listener_for(self.netns_key(netns), local, false) else {
            if self.watches(local.port()) {
                self.stats.unattributed += 1;
            }
            return Applied::Done;
        };
        let closing = if self.adopted.remove(&(id, remote)).is_some() {
            Closing::Adopted
        } else {
            Closing::Unseen
        };
        if let Some(listener) = self.listeners.get_mut(&id) {
            listener.close_connection(remote, at, closing);
        }
        Applied::Done
    }

    pub(super) fn turn(
        &mut self,
        sock: SockId,
        at: Nanos,
        mut previous_end: Option<Nanos>,
        protocol: Option<Protocol>,
        upgraded: bool,
        tls_followed: bool,
    ) -> Applied {
        if upgraded && let Some((conn, listener)) = self.conn_and_listener(sock) {
            // The upgrade request's turn ends as HTTP/1, before its sessions change kind.
            if let Some(end) = previous_end.take() {
                conn.end_turn(&mut listener.tracker, end);
            }
            listener.tally.upgraded += 1;
        }
        if let Some(protocol) = protocol {
            self.set_protocol(sock, protocol, tls_followed);
        }
        // The kernel only reports turns of connections it reported open, so an unknown socket
        // here means that open was lost; its close will count the error.
        let Some((conn, listener)) = self.conn_and_listener(sock) else {
            return Applied::Done;
        };
        if let Some(end) = previous_end {
            conn.end_turn(&mut listener.tracker, end);
        }
        if matches!(protocol, Some(Protocol::Switching | Protocol::Hijacked)) {
            // Its server answered `101` (a WebSocket, an h2c upgrade): open, and busy again
            // only if the client's next bytes turn out to be HTTP/2.
            return Applied::Done;
        }
        listener
            .tracker
            .conn_state(conn.remote, at, ConnState::Active);
        conn.busy = true;
        let started = conn.sessions.turn_started();
        sessions::apply(&mut listener.tracker, &conn.remote, (started, 0));
        conn.note_peak_sessions();
        Applied::Done
    }

    pub(super) fn h2_frame(
        &mut self,
        sock: SockId,
        frame: &FrameHeader,
        goaway_last_stream: Option<u32>,
        inbound: bool,
    ) -> Applied {
        if let Some((conn, listener)) = self.conn_and_listener(sock) {
            let change = if inbound {
                conn.sessions.client_frame(frame)
            } else {
                conn.sessions.server_frame(frame, goaway_last_stream)
            };
            sessions::apply(&mut listener.tracker, &conn.remote, change);
            conn.note_peak_sessions();
            listener.tally.sessions_untracked += conn.sessions.take_untracked();
        }
        Applied::Done
    }

    pub(super) fn walk_lost(&mut self, sock: SockId) -> Applied {
        if let Some((conn, listener)) = self.conn_and_listener(sock) {
            // What is open can no longer be followed: end it now rather than count it lost at
            // close, and count nothing more on this connection.
            let ended = conn.sessions.close_all();
            sessions::apply(&mut listener.tracker, &conn.remote, (0, ended));
            conn.sessions = Sessions::Unknown;
            if !conn.sessions_unknown {
                conn.sessions_unknown = true;
                listener.unknown_open += 1;
            }
        }
        Applied::Done
    }

    /// The server took a tracked connection off its accept queue, at `at`: where lives
    /// start at the accept, its life starts.
    pub(super) fn accepted(&mut self, sock: SockId, at: Nanos) -> Applied {
        let Some(conn) = self.conns.get_mut(&sock) else {
            return Applied::Done;
        };
        let Some(listener) = self.listeners.get_mut(&conn.listener) else {
            return Applied::Done;
        };
        listener.tally.accepted += 1;
        if !conn.started {
            conn.started = true;
            listener.tracker.conn_state(conn.remote, at, ConnState::New);
        }
        Applied::Done
    }

    /// The server closed a tracked connection itself (its last reference to the socket).
    pub(super) fn close_called(&mut self, sock: SockId) -> Applied {
        if let Some((_, listener)) = self.conn_and_listener(sock) {
            listener.tally.server_closed += 1;
        }
        Applied::Done
    }

    /// The connection's protocol is known (from the first bytes the client sent, or the first
    /// plaintext of a TLS connection whose library is hooked): it decides what its sessions
    /// are. TLS whose plaintext will follow (`tls_followed`) has none until then, and is not
    /// unknown.
    fn set_protocol(&mut self, sock: SockId, protocol: Protocol, tls_followed: bool) {
        if let Some((conn, listener)) = self.conn_and_listener(sock) {
            conn.sessions = Sessions::new(protocol, true);
            if protocol == Protocol::Tls {
                if tls_followed {
                    listener.tls.followed = true;
                } else {
                    listener.tls.opaque = true;
                }
            }
            let unknown = match protocol {
                Protocol::Tls => !tls_followed,
                Protocol::Other => true,
                _ => false,
            };
            if unknown && !conn.sessions_unknown {
                listener.unknown_open += 1;
            } else if !unknown && conn.sessions_unknown {
                listener.unknown_open = listener.unknown_open.saturating_sub(1);
            }
            conn.sessions_unknown = unknown;
        }
    }

    /// A tracked connection whose life has started, and its listener, by socket.
    fn conn_and_listener(&mut self, sock: SockId) -> Option<(&mut TrackedConn, &mut Listener)> {
        let conn = self.conns.get_mut(&sock).filter(|conn| conn.started)?;
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
        let Some((conn, listener)) = self.conn_and_listener(sock) else {
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
}
