//! Where reports go: a [`ReportSink`] receives every tracker's report once per interval.
//!
//! * [`lines`]: the original library's text line, or JSON lines.
//! * [`prometheus`]: counters and gauges served on `/metrics`.
//! * [`top`]: the live full-screen view.
//!
//! Reports always carry the figures of the interval just ended. [`RunningTotals`] turns them
//! into totals since start for the sinks that print them that way (`--no-reset`).

pub mod lines;
mod output_thread;
pub mod prometheus;
pub mod top;

use std::collections::BTreeMap;

use crate::kernel::hooks::HookChoice;
use crate::observer::ListenerReport;
use crate::tracker_id::TrackerId;

/// One report: every listener's figures for the interval just ended.
#[derive(Debug, Clone, Copy)]
pub struct ReportBatch<'a> {
    pub reports: &'a [ListenerReport],
    pub totals: IntervalTotals,
    /// Figures are the interval's. False once [`RunningTotals`] made them totals since start.
    pub per_interval: bool,
}

/// What the daemon should do after a sink took a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The sink's reader is gone (a closed pipe, the live view quit): stop.
    Stop,
}

/// A destination for reports.
pub trait ReportSink {
    fn publish(&mut self, batch: &ReportBatch<'_>) -> anyhow::Result<Flow>;

    /// Called once after the last report: delivers whatever the sink still holds.
    fn finish(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Several sinks fed the same reports; stops when any of them asks to.
pub struct Tee(pub Vec<Box<dyn ReportSink>>);

impl ReportSink for Tee {
    fn publish(&mut self, batch: &ReportBatch<'_>) -> anyhow::Result<Flow> {
        let mut flow = Flow::Continue;
        for sink in &mut self.0 {
            if sink.publish(batch)? == Flow::Stop {
                flow = Flow::Stop;
            }
        }
        Ok(flow)
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        // Every sink gets to deliver; the first failure is the one reported.
        let mut result = Ok(());
        for sink in &mut self.0 {
            let finished = sink.finish();
            if result.is_ok() {
                result = finished;
            }
        }
        result
    }
}

/// Figures that belong to the whole daemon rather than to one listener, for one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IntervalTotals {
    /// Wall-clock time of the report, seconds since the Unix epoch.
    pub unix_time_s: f64,
    /// Length of the interval the report covers, seconds.
    pub interval_s: f64,
    /// Kernel events dropped in this interval because the ring buffer was full.
    pub lost_events: u64,
    /// Connections the kernel could not track in this interval (its table was full).
    pub untracked_connections: u64,
    /// Connections refused in this interval because an accept queue was full (the kernel's
    /// ListenOverflows, for the daemon's network namespace).
    pub listen_overflows: u64,
    /// Connections dropped at a listener in this interval, overflows included (ListenDrops).
    pub listen_drops: u64,
    /// Connection closes in this interval that no tracker could be found for (a watched port
    /// whose listener is unknown, or a socket the model had already closed).
    pub unattributed_closes: u64,
    /// The hook serving each capability; the figures of an unserved one are unavailable.
    pub hooks: HookChoice,
}

impl IntervalTotals {
    /// Running totals: `self` covers the time up to where `next` begins.
    fn then(&self, next: &IntervalTotals) -> IntervalTotals {
        IntervalTotals {
            unix_time_s: next.unix_time_s,
            interval_s: self.interval_s + next.interval_s,
            lost_events: self.lost_events.saturating_add(next.lost_events),
            untracked_connections: self
                .untracked_connections
                .saturating_add(next.untracked_connections),
            listen_overflows: self.listen_overflows.saturating_add(next.listen_overflows),
            listen_drops: self.listen_drops.saturating_add(next.listen_drops),
            unattributed_closes: self
                .unattributed_closes
                .saturating_add(next.unattributed_closes),
            hooks: next.hooks,
        }
    }
}

/// Hands `inner` every report as totals since start (`--no-reset`) rather than per interval.
/// A tracker that closed for good starts from zero should its address come back.
pub struct RunningTotals<S> {
    inner: S,
    reports: BTreeMap<TrackerId, ListenerReport>,
    totals: Option<IntervalTotals>,
}

impl<S: ReportSink> RunningTotals<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            reports: BTreeMap::new(),
            totals: None,
        }
    }
}

impl<S: ReportSink> ReportSink for RunningTotals<S> {
    fn publish(&mut self, batch: &ReportBatch<'_>) -> anyhow::Result<Flow> {
        let totals = match &self.totals {
            Some(before) => before.then(&batch.totals),
            None => batch.totals,
        };
        self.totals = Some(totals);
        let reports: Vec<ListenerReport> = batch
            .reports
            .iter()
            .map(|report| {
                let running = match self.reports.get(&report.id) {
                    Some(before) => before.then(report),
                    None => report.clone(),
                };
                if running.is_last() {
                    self.reports.remove(&report.id);
                } else {
                    self.reports.insert(report.id, running.clone());
                }
                running
            })
            .collect();
        self.inner.publish(&ReportBatch {
            reports: &reports,
            totals,
            per_interval: false,
        })
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.inner.finish()
    }
}

#[cfg(test)]
mod tests;
