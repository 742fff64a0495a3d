//! Adoption and reconciliation: making the model match the kernel's table of connections
//! when events were lost, or when connections predate the daemon.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;

use super::connections::{Adoption, Closing};
use super::{Observer, TurnLeftOpen};
use crate::event::SockId;
use crate::model::{ConnState, Nanos};
use crate::tracker_id::{Role, TrackerId};

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

impl Observer {
    /// Whether a connection adopted from the kernel's table is still open in the model: its
    /// close is still to be reported by the kernel, taken back or found.
    pub fn has_adopted_open(&self) -> bool {
        !self.adopted.is_empty()
    }

    /// Takes a connection that predates the daemon into the tracker of its listener (see
    /// [`Observer::adopt_as`]).
    pub fn adopt(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        now: Nanos,
    ) -> Option<SocketAddr> {
        self.adopt_as(local, remote, now, Adoption::BeforeStart)
    }

    /// Takes a connection the kernel has but the model does not (it predates the daemon, or
    /// its open event was lost) into the tracker of its listener, opened at `now`. Its sessions
    /// are unknown (its first bytes were missed). Returns its listener, or None when no
    /// watched listener takes it or the tracker already has that remote address.
    fn adopt_as(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        now: Nanos,
        adoption: Adoption,
    ) -> Option<SocketAddr> {
        if !self.watches(local.port()) {
            return None;
        }
        let id = self.listener_for(0, local, false)?;
        let listener = self.listeners.get_mut(&id)?;
        if listener.tracker.contains(&remote) {
            return None;
        }
        listener.tracker.conn_state(remote, now, ConnState::New);
        listener.unknown_open += 1;
        if adoption == Adoption::BeforeStart {
            // The kernel never counted its open: its time counts from now, as in the model.
            listener.ledger.daemon.opened_before_start(now);
        }
        self.adopted.insert((id, remote), adoption);
        Some(id.addr)
    }

    /// The connections in `model_only` that the model saw open: their listener's address,
    /// their kernel socket address and when they opened (the kernel's timestamp).
    pub fn sockets_of(
        &self,
        model_only: &BTreeSet<(SocketAddr, SocketAddr)>,
    ) -> Vec<(SocketAddr, SockId, Nanos)> {
        self.conns
            .iter()
            .filter(|(_, conn)| conn.listener.role == Role::Listen && conn.listener.netns == 0)
            .filter(|(_, conn)| model_only.contains(&(conn.listener.addr, conn.remote)))
            .filter_map(|(&sock, conn)| {
                let opened_at = self
                    .listeners
                    .get(&conn.listener)?
                    .tracker
                    .opened_at(&conn.remote)?;
                Some((conn.listener.addr, sock, opened_at))
            })
            .collect()
    }

    /// Counts a close the kernel program never ran for (see [`Observer::sockets_of`]), found
    /// at `now`: the connection left the kernel's table while still in its table of tracked
    /// connections, where it was in the turn `turn` (which ends with it).
    pub fn count_unseen_close(
        &mut self,
        listener: SocketAddr,
        now: Nanos,
        turn: Option<TurnLeftOpen>,
    ) {
        if let Some(listener) = self.listeners.get_mut(&TrackerId::listen(0, listener)) {
            listener.count_close_for_kernel(now, turn);
        }
    }

    /// Closes, now and as a correction, a connection adopted from the kernel's table that the
    /// kernel closed before it was asked to report that close.
    pub fn close_adopted(&mut self, local: SocketAddr, remote: SocketAddr, now: Nanos) {
        let Some(id) = self.listener_for(0, local, false) else {
            return;
        };
        let Some(adoption) = self.adopted.remove(&(id, remote)) else {
            return;
        };
        if let Some(listener) = self.listeners.get_mut(&id) {
            listener.close_connection(remote, now, Closing::Adopted);
            listener.tally.corrections += 1;
            // The kernel closed it before it was asked to follow it, so it did not count the
            // close, unless it had been tracking it since its open.
            if adoption == Adoption::BeforeStart {
                listener.count_close_for_kernel(now, None);
            }
        }
    }

    /// Compares the model with the kernel's table of connections the servers of the daemon's
    /// own network namespace hold (ESTABLISHED or CLOSE_WAIT), given as (local, remote) pairs; only connections of watched listeners of that
    /// namespace count (other namespaces, and outbound connections, are not compared).
    pub fn discrepancies(&self, kernel: &[(SocketAddr, SocketAddr)]) -> Discrepancies {
        let in_kernel: HashSet<(SocketAddr, SocketAddr)> = kernel
            .iter()
            .filter(|(local, _)| self.watches(local.port()))
            .filter_map(|&(local, remote)| Some((self.listener_for(0, local, false)?.addr, remote)))
            .collect();
        let mut found = Discrepancies::default();
        let own_listeners = self
            .listeners
            .iter()
            .filter(|(id, _)| id.role == Role::Listen && id.netns == 0);
        for (id, listener) in own_listeners {
            for &remote in listener.tracker.keys() {
                if !in_kernel.contains(&(id.addr, remote)) {
                    found.model_only.insert((id.addr, remote));
                }
            }
        }
        // Connections waiting to be accepted, where lives start at the accept: the model
        // knows them, though its trackers do not have them yet.
        let waiting: HashSet<(TrackerId, SocketAddr)> = self
            .conns
            .values()
            .filter(|conn| !conn.started)
            .map(|conn| (conn.listener, conn.remote))
            .collect();
        for &(local, remote) in kernel {
            if !self.watches(local.port()) {
                continue;
            }
            if let Some(id) = self.listener_for(0, local, false)
                && !waiting.contains(&(id, remote))
                && self
                    .listeners
                    .get(&id)
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
            let by_endpoint: HashMap<(TrackerId, SocketAddr), SockId> = self
                .conns
                .iter()
                .map(|(&sock, conn)| ((conn.listener, conn.remote), sock))
                .collect();
            for &(listener_addr, remote) in &found.model_only {
                let id = TrackerId::listen(0, listener_addr);
                let closing = match by_endpoint.get(&(id, remote)) {
                    Some(sock) => self
                        .conns
                        .remove(sock)
                        .map_or(Closing::Unseen, Closing::Tracked),
                    None if self.adopted.remove(&(id, remote)).is_some() => Closing::Adopted,
                    None => Closing::Unseen,
                };
                if let Some(listener) = self.listeners.get_mut(&id) {
                    listener.close_connection(remote, now, closing);
                    listener.tally.corrections += 1;
                }
            }
        }
        let mut adopted = Vec::new();
        for &(local, remote) in &found.kernel_only {
            if let Some(listener_addr) = self.adopt_as(local, remote, now, Adoption::OpenLost) {
                if let Some(listener) = self.listeners.get_mut(&TrackerId::listen(0, listener_addr))
                {
                    listener.tally.corrections += 1;
                }
                adopted.push((local, remote));
            }
        }
        adopted
    }
}
