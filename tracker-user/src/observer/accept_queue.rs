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
            listener.accept_queue = queue;
            listener.accept_backlog = backlog;
            listener.accept_queue_peak = listener.accept_queue_peak.max(queue);
        }
    }
}
