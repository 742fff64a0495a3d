//! Report assembly: one [`ListenerReport`] per tracker and interval.

use super::{Observer, Owner};
use crate::model::{Nanos, Snapshot};
use crate::tracker_id::TrackerId;

/// One tracker's report for one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerReport {
    /// Which tracker this is; its `Display` is the name the report goes by.
    pub id: TrackerId,
    pub snapshot: Snapshot,
    pub owners: Vec<Owner>,
    /// The listener has closed; this is its last report once its connections are gone.
    pub gone: bool,
    /// Connections of the interval whose sessions cannot be counted (TLS, not HTTP, or the
    /// frame walk was lost): open now, or closed during the interval.
    pub sessions_unknown: u64,
    /// Every connection that closed since the previous report (for distributions such as
    /// Prometheus histograms).
    pub closed_connections: Vec<ClosedConnection>,
    /// Connections the model had to add or close to match the kernel's table in the
    /// interval (events were lost, or the connection predates the daemon).
    pub corrections: u64,
    /// Connections waiting in the accept queue when last sampled.
    pub accept_queue: u32,
    /// Most connections waiting in the accept queue among the interval's samples.
    pub accept_queue_peak: u32,
    /// The accept queue's limit (the listen backlog).
    pub accept_backlog: u32,
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
            sessions_unknown: 0,
            closed_connections: Vec::new(),
            corrections: 0,
            accept_queue: 0,
            accept_queue_peak: 0,
            accept_backlog: 0,
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

impl Observer {
    /// One report per tracker at `now`. With `reset`, the interval counters start again.
    /// Listeners that have closed and hold no connections are reported one last time, then
    /// forgotten, so a host that churns listeners does not grow the daemon's memory.
    pub fn report(&mut self, now: Nanos, reset: bool) -> Vec<ListenerReport> {
        let mut reports: Vec<ListenerReport> = self
            .listeners
            .iter_mut()
            .map(|(&id, state)| {
                let sessions_unknown = state.unknown_open + state.unknown_closed;
                let corrections = state.corrections;
                let accept_queue_peak = state.accept_queue_peak.max(state.accept_queue);
                if reset {
                    state.unknown_closed = 0;
                    state.corrections = 0;
                    state.accept_queue_peak = state.accept_queue;
                }
                ListenerReport {
                    id,
                    snapshot: state.tracker.snapshot(now, reset),
                    owners: state.owners.iter().cloned().collect(),
                    gone: !state.is_listening(),
                    sessions_unknown,
                    closed_connections: std::mem::take(&mut state.closed_log),
                    corrections,
                    accept_queue: state.accept_queue,
                    accept_queue_peak,
                    accept_backlog: state.accept_backlog,
                }
            })
            .collect();
        reports.sort_by_key(|report| report.id);
        self.listeners
            .retain(|_, state| state.is_listening() || !state.tracker.is_empty());
        reports
    }
}
