//! `--connect` destinations: the connections this host opens to them.

use std::net::SocketAddr;

use super::connections::TrackedConn;
use super::listeners::Listener;
use super::{Applied, Observer};
use crate::event::SockId;
use crate::model::{ConnState, Nanos};
use crate::tracker_id::TrackerId;

impl Observer {
    /// Also tracks the connections this host opens to each of `targets` (`--connect`), each
    /// in a tracker of its own named `connect:<destination>`.
    pub fn with_connect_targets(mut self, targets: &[SocketAddr]) -> Self {
        for &target in targets {
            let id = TrackerId::connect(target);
            let mut destination = Listener::new(id);
            // Never "gone": a destination is reported for as long as the daemon runs.
            destination.scanned_sockets = 1;
            self.listeners.insert(id, destination);
        }
        self
    }

    /// A connection to a destination opened; it is keyed by its local address, which tells
    /// the connections to one destination apart. Its close is handled like any other.
    pub(super) fn outbound_open(
        &mut self,
        sock: SockId,
        local: SocketAddr,
        remote: SocketAddr,
        at: Nanos,
    ) -> Applied {
        let id = TrackerId::connect(remote);
        if let Some(destination) = self.listeners.get_mut(&id) {
            destination.tracker.conn_state(local, at, ConnState::New);
            self.conns
                .insert(sock, TrackedConn::opened(id, local, true));
        }
        Applied::Done
    }
}
