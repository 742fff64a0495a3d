//! Report assembly: one [`ListenerReport`] per tracker and interval.

use super::kernel_totals::KernelFigures;
use super::{Observer, Owner, TlsSeen, accept_queue};
use crate::host::workload::Workload;
use crate::model::{Nanos, Snapshot};
use crate::tracker_id::{Role, TrackerId};

/// One tracker's report for one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerReport {
    /// Which tracker this is; its `Display` is the name the report goes by.
    pub id: TrackerId,
    pub snapshot: Snapshot,
    pub owners: Vec<Owner>,
    /// The listener has closed; this is its last report once its connections are gone.
    pub gone: bool,
    /// Open connections whose sessions cannot be counted (TLS, not HTTP, or the frame walk
    /// was lost).
    pub sessions_unknown_open: u64,
    /// Such connections closed during the interval.
    pub sessions_unknown_closed: u64,
    /// Sessions that started in the interval but were not counted: HTTP/2 streams beyond
    /// the most tracked open at once on one connection.
    pub sessions_untracked: u64,
    /// Every connection that closed since the previous report (for distributions such as
    /// Prometheus histograms).
    pub closed_connections: Vec<ClosedConnection>,
    /// Connections the model had to add or close to match the kernel's table in the
    /// interval (events were lost, or the connection predates the daemon).
    pub corrections: u64,
    /// Connections waiting in the accept queue when last sampled; `None` when its queue is
    /// not sampled (a listener in another network namespace).
    pub accept_queue: Option<u32>,
    /// Most connections waiting in the accept queue among the interval's samples; `None`
    /// likewise.
    pub accept_queue_peak: Option<u32>,
    /// The accept queue's limit (the listen backlog), when the kernel's table tells it.
    pub accept_backlog: Option<u32>,
    /// Connections the server accepted (`accept()` returned them) in the interval; 0 where
    /// the kernel offers no accept hook (the report says which capabilities are served).
    pub accepted: u64,
    /// Connections the server closed itself (`close()` on the socket) in the interval.
    pub server_closed: u64,
    /// Connections upgraded in the interval: their server answered `101 Switching Protocols`
    /// and they went on as HTTP/2 (h2c) or left HTTP (a WebSocket).
    pub upgraded: u64,
    /// Connections the server has closed and the kernel is still finishing (FIN_WAIT1,
    /// FIN_WAIT2, LAST_ACK, CLOSING), by the kernel's count at the report: beside `curr`, which
    /// they have left.
    pub closing: u64,
    /// Nanoseconds connections spent closing in the interval: beside `conn_for_ns`.
    pub closing_ns: u64,
    /// What its connections have shown of TLS since the listener was first seen.
    pub tls: TlsSeen,
    /// The TLS library whose plaintext is followed for its owners (set by the daemon, which
    /// attaches the library hooks).
    pub tls_library: Option<String>,
    /// The cgroup of the process that opened the listener (None: unknown, or a `--connect`
    /// destination).
    pub cgroup: Option<String>,
    /// Who runs in that cgroup (set by the daemon, which parses it and reads pod names).
    pub workload: Workload,
}

#[cfg(test)]
impl ListenerReport {
    /// A report with `snapshot` and nothing else going on, for tests of the report's readers
    /// (set the fields a test cares about with struct update syntax).
    pub(crate) fn quiet(id: TrackerId, snapshot: Snapshot) -> Self {
        Self {
            id,
            snapshot,
            owners: Vec::new(),
            gone: false,
            sessions_unknown_open: 0,
            sessions_unknown_closed: 0,
            sessions_untracked: 0,
            closed_connections: Vec::new(),
            corrections: 0,
            accept_queue: Some(0),
            accept_queue_peak: Some(0),
            accept_backlog: Some(0),
            accepted: 0,
            server_closed: 0,
            upgraded: 0,
            closing: 0,
            closing_ns: 0,
            tls: TlsSeen::default(),
            tls_library: None,
            cgroup: None,
            workload: Workload::default(),
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

impl ListenerReport {
    /// Connections of the interval whose sessions cannot be counted: open now, or closed
    /// during the interval.
    pub fn sessions_unknown(&self) -> u64 {
        self.sessions_unknown_open
            .saturating_add(self.sessions_unknown_closed)
    }

    /// Running totals: `self` covers the time up to where `next`, the following interval's
    /// report of the same tracker, begins (see [`Snapshot::then`]). Closed connections are
    /// `next`'s: they are listed once, in the report of the interval they closed in.
    pub fn then(&self, next: &ListenerReport) -> ListenerReport {
        ListenerReport {
            id: next.id,
            snapshot: self.snapshot.then(&next.snapshot),
            owners: next.owners.clone(),
            gone: next.gone,
            sessions_unknown_open: next.sessions_unknown_open,
            sessions_unknown_closed: self
                .sessions_unknown_closed
                .saturating_add(next.sessions_unknown_closed),
            sessions_untracked: self
                .sessions_untracked
                .saturating_add(next.sessions_untracked),
            closed_connections: next.closed_connections.clone(),
            corrections: self.corrections.saturating_add(next.corrections),
            accept_queue: next.accept_queue,
            accept_queue_peak: self.accept_queue_peak.max(next.accept_queue_peak),
            accept_backlog: next.accept_backlog,
            accepted: self.accepted.saturating_add(next.accepted),
            server_closed: self.server_closed.saturating_add(next.server_closed),
            upgraded: self.upgraded.saturating_add(next.upgraded),
            closing: next.closing,
            closing_ns: self.closing_ns.saturating_add(next.closing_ns),
            tls: next.tls,
            tls_library: next.tls_library.clone(),
            cgroup: next.cgroup.clone(),
            workload: next.workload.clone(),
        }
    }

    /// The name the report goes by: its tracker's (see [`TrackerId`]), except that a listener
    /// in another network namespace is named by the container or pod that runs it where one
    /// is known (`podman:0123456789ab/127.0.0.1:8080`, `shop/cart-7f9/[::]:80`): its
    /// namespace's inode says nothing to an operator, and stays in `id.netns`.
    pub fn name(&self) -> String {
        let workload = &self.workload;
        let named = workload.container.is_some() || workload.pod.is_some();
        match workload.short_name() {
            Some(owner) if named && self.id.role == Role::Listen && self.id.netns != 0 => {
                format!("{owner}/{}", self.id.addr)
            }
            _ => self.id.to_string(),
        }
    }

    /// The tracker's last report: it has closed and holds no connections.
    pub fn is_last(&self) -> bool {
        self.gone && self.snapshot.curr == 0
    }
}

impl Snapshot {
    /// Takes the figures whose source is the kernel (see [`KernelFigures`]) in place of the
    /// model's; a peak no gauge speaks for stays the model's, never below what is open now.
    fn take_from_kernel(&mut self, kernel: &KernelFigures) {
        self.opened = kernel.opened;
        self.closed = kernel.closed;
        self.conn_for_ns = kernel.conn_for_ns;
        self.peak = kernel.peak.unwrap_or(self.peak);
        self.active_for_ns = kernel.active_for_ns;
        self.busy = kernel.busy;
        self.busy_peak = kernel.busy_peak.unwrap_or(self.busy_peak.max(kernel.busy));
    }
}

impl Observer {
    /// One report per tracker for the interval that ends at `now`; the next interval starts
    /// there. Listeners that have closed and hold no connections are reported one last time, then
    /// forgotten, so a host that churns listeners does not grow the daemon's memory.
    pub fn report(&mut self, now: Nanos) -> Vec<ListenerReport> {
        let mut reports: Vec<ListenerReport> = self
            .listeners
            .iter_mut()
            .map(|(&id, state)| {
                let queue = state.accept_queue.take_figures();
                let tally = std::mem::take(&mut state.tally);
                let mut snapshot = state.tracker.snapshot(now, true);
                let queue_known = accept_queue::sampled(&id);
                let from_kernel = self.kernel_totals.is_some() && id.role == Role::Listen;
                // Taken every interval, so that an interval's figures are its own whether or
                // not they are used.
                let kernel = state.ledger.take_figures(now, snapshot.curr);
                let kernel = from_kernel.then_some(kernel);
                if let Some(kernel) = kernel {
                    snapshot.take_from_kernel(&kernel);
                }
                ListenerReport {
                    id,
                    snapshot,
                    owners: state.owners.iter().cloned().collect(),
                    gone: !state.is_listening(),
                    sessions_unknown_open: state.unknown_open,
                    sessions_unknown_closed: tally.unknown_closed,
                    sessions_untracked: tally.sessions_untracked,
                    closed_connections: tally.closed,
                    corrections: tally.corrections,
                    accept_queue: queue_known.then_some(queue.waiting),
                    accept_queue_peak: queue_known.then_some(queue.peak),
                    accept_backlog: queue.backlog.filter(|_| queue_known),
                    accepted: tally.accepted,
                    server_closed: tally.server_closed,
                    upgraded: tally.upgraded,
                    closing: kernel.map_or(0, |kernel| kernel.closing),
                    closing_ns: kernel.map_or(0, |kernel| kernel.closing_ns),
                    tls: state.tls,
                    tls_library: None,
                    cgroup: state.cgroup.clone(),
                    workload: Workload::default(),
                }
            })
            .collect();
        reports.sort_by_key(|report| report.id);
        self.listeners
            .retain(|_, state| state.is_listening() || !state.tracker.is_empty());
        reports
    }
}
