//! Accept queues, sampled from the kernel's table of listening sockets.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::Observer;
use crate::tracker_id::Role;

impl Observer {
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
        let own_listeners = self
            .listeners
            .iter_mut()
            .filter(|(id, _)| id.role == Role::Listen && id.netns == 0);
        for (id, listener) in own_listeners {
            let (queue, backlog) = sums.get(&id.addr).copied().unwrap_or_default();
            listener.accept_queue = queue;
            listener.accept_backlog = backlog;
            listener.accept_queue_peak = listener.accept_queue_peak.max(queue);
        }
    }
}
