//! Accept queues, sampled from the kernel's table of listening sockets.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::Observer;
use crate::tracker_id::{Role, TrackerId};

/// Whether the samples speak for tracker `id`: sock_diag lists the daemon's own namespace's
/// listening sockets only, so another namespace's queue is unknown.
pub(super) fn sampled(id: &TrackerId) -> bool {
    id.role == Role::Listen && id.netns == 0
}

/// A listener's accept queue as sampled: waiting connections and the limit (summed over the
/// sockets of an SO_REUSEPORT group), and the longest queue since the last report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AcceptQueue {
    waiting: u32,
    backlog: Option<u32>,
    peak: u32,
}

impl Default for AcceptQueue {
    fn default() -> Self {
        Self {
            waiting: 0,
            backlog: Some(0),
            peak: 0,
        }
    }
}

/// An accept queue's figures for one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AcceptQueueFigures {
    pub(super) waiting: u32,
    pub(super) peak: u32,
    pub(super) backlog: Option<u32>,
}

impl AcceptQueue {
    fn sample(&mut self, waiting: u32, backlog: Option<u32>) {
        self.waiting = waiting;
        self.backlog = backlog;
        self.peak = self.peak.max(waiting);
    }

    /// The figures for the report that ends an interval; the next interval's peak starts
    /// from the queue now.
    pub(super) fn take_figures(&mut self) -> AcceptQueueFigures {
        let peak = std::mem::replace(&mut self.peak, self.waiting).max(self.waiting);
        AcceptQueueFigures {
            waiting: self.waiting,
            peak,
            backlog: self.backlog,
        }
    }
}

impl Observer {
    /// Records an accept-queue sample: (listening socket address, waiting connections,
    /// backlog if known) for every listening socket; sockets sharing an address are summed,
    /// and their backlog is unknown if one socket's is.
    pub fn sample_accept_queues(&mut self, samples: &[(SocketAddr, u32, Option<u32>)]) {
        let mut sums: HashMap<SocketAddr, (u32, Option<u32>)> = HashMap::new();
        for &(addr, queue, backlog) in samples {
            let sum = sums.entry(addr).or_insert((0, Some(0)));
            sum.0 = sum.0.saturating_add(queue);
            sum.1 = sum.1.zip(backlog).map(|(sum, one)| sum.saturating_add(one));
        }
        let own_listeners = self.listeners.iter_mut().filter(|(id, _)| sampled(id));
        for (id, listener) in own_listeners {
            let (queue, backlog) = sums.get(&id.addr).copied().unwrap_or((0, Some(0)));
            listener.accept_queue.sample(queue, backlog);
        }
    }
}
