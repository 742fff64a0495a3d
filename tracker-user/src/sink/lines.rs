//! [`LineWriter`]: reports as the original library's text line, or as one JSON object per
//! tracker, one per line.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;

use super::output_thread::{Offer, OutputThread};
use super::{Flow, IntervalTotals, ReportBatch, ReportSink};
use crate::host::workload::Pod;
use crate::host::workload::cgroup_path::Container;
use crate::kernel::hooks::{Capability, LifeStart};
use crate::model::{ErrorKind, secs_to_tenths};
use crate::observer::{ListenerReport, Owner};
use crate::tracker_id::Role;
use crate::tracker_id::TrackerId;

/// Version of the JSON object layout; bumped on any incompatible change.
pub const JSON_VERSION: u32 = 1;

/// Output format selected with `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The original library's report line, one per listener.
    Text,
    /// One JSON object per listener per report, one per line.
    Json,
}

/// Prints each report as lines of text or JSON, on an [`OutputThread`] so that a reader who
/// stops reading never holds up the daemon.
///
/// While the output is still busy with earlier reports, a new report is merged into the one
/// waiting (counts and seconds added up, peaks kept, the interval lengthened), so whatever is
/// printed still adds up to everything that happened: sums of `opened`, `closed` and
/// `conn_for_s` over the printed lines stay exact, only fewer, longer intervals are printed.
pub struct LineWriter {
    output: OutputThread,
    format: Format,
    /// The report the output could not take yet.
    waiting: Option<Waiting>,
    /// Reports merged into a later one because the output was busy.
    merged: u64,
}

/// Reports not yet handed to the output, merged per tracker.
struct Waiting {
    reports: BTreeMap<TrackerId, ListenerReport>,
    totals: IntervalTotals,
}

impl Waiting {
    fn new(batch: &ReportBatch<'_>) -> Self {
        Self {
            reports: batch
                .reports
                .iter()
                .map(|report| (report.id, report.clone()))
                .collect(),
            totals: batch.totals,
        }
    }

    /// Adds the next batch: interval figures are merged, running totals replace.
    fn then(&mut self, batch: &ReportBatch<'_>) {
        if !batch.per_interval {
            *self = Self::new(batch);
            return;
        }
        self.totals = self.totals.then(&batch.totals);
        for report in batch.reports {
            let merged = match self.reports.get(&report.id) {
                Some(earlier) => earlier.then(report),
                None => report.clone(),
            };
            self.reports.insert(report.id, merged);
        }
    }

    fn render(&self, format: Format) -> String {
        self.reports
            .values()
            .map(|report| render(format, report, &self.totals) + "\n")
            .collect()
    }
}

impl LineWriter {
    pub fn new<W: Write + Send + 'static>(out: W, format: Format) -> io::Result<Self> {
        Ok(Self {
            output: OutputThread::spawn(out)?,
            format,
            waiting: None,
            merged: 0,
        })
    }

    /// Why the output thread stopped: a closed pipe ends the daemon quietly.
    fn stopped(&mut self) -> anyhow::Result<Flow> {
        match self.output.finish(None) {
            Err(error) if error.kind() != io::ErrorKind::BrokenPipe => {
                Err(anyhow::Error::new(error).context("writing the report"))
            }
            _ => Ok(Flow::Stop),
        }
    }
}

impl ReportSink for LineWriter {
    fn publish(&mut self, batch: &ReportBatch<'_>) -> anyhow::Result<Flow> {
        match &mut self.waiting {
            Some(waiting) => {
                waiting.then(batch);
                self.merged += 1;
            }
            None => self.waiting = Some(Waiting::new(batch)),
        }
        let text = self.waiting.as_ref().map(|w| w.render(self.format));
        match self.output.offer(text.unwrap_or_default()) {
            Offer::Taken => {
                self.waiting = None;
                Ok(Flow::Continue)
            }
            Offer::Busy(_) => {
                if self.merged == 0 {
                    log::warn!(
                        "the report output is not being read; reports are merged into longer \
                         intervals until it is, and kernel events are still collected"
                    );
                }
                Ok(Flow::Continue)
            }
            Offer::Stopped => self.stopped(),
        }
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        let last = self.waiting.take().map(|w| w.render(self.format));
        if self.merged > 0 {
            log::warn!(
                "{} report(s) were merged into later ones while the output was not read",
                self.merged
            );
        }
        match self.output.finish(last) {
            Err(error) if error.kind() != io::ErrorKind::BrokenPipe => {
                Err(anyhow::Error::new(error).context("writing the report"))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Serialize)]
struct JsonOwner<'a> {
    pid: u32,
    comm: &'a str,
    cmdline: &'a str,
}

#[derive(Serialize)]
struct JsonContainer<'a> {
    runtime: Option<&'static str>,
    id: &'a str,
}

#[derive(Serialize)]
struct JsonPod<'a> {
    uid: &'a str,
    qos: &'static str,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
}

impl<'a> JsonOwner<'a> {
    fn of(owner: &'a Owner) -> Self {
        Self {
            pid: owner.pid,
            comm: &owner.comm,
            cmdline: &owner.cmdline,
        }
    }
}

impl<'a> JsonContainer<'a> {
    fn of(container: &'a Container) -> Self {
        Self {
            runtime: container.runtime.map(|runtime| runtime.name()),
            id: &container.id,
        }
    }
}

impl<'a> JsonPod<'a> {
    fn of(pod: &'a Pod) -> Self {
        Self {
            uid: &pod.uid,
            qos: pod.qos.name(),
            namespace: pod.namespace.as_deref(),
            name: pod.name.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    version: u32,
    time: f64,
    interval_s: f64,
    listener: String,
    role: &'static str,
    netns: Option<u32>,
    port: u16,
    gone: bool,
    curr: usize,
    peak: usize,
    peak_sessions: Option<usize>,
    busy: Option<usize>,
    busy_peak: Option<usize>,
    sessions_unknown: Option<u64>,
    sessions_untracked: Option<u64>,
    corrections: u64,
    accept_queue: Option<u32>,
    accept_queue_peak: Option<u32>,
    accept_backlog: Option<u32>,
    listen_overflows: u64,
    listen_drops: u64,
    errs: u64,
    errors: serde_json::Map<String, serde_json::Value>,
    conn_for_s: f64,
    active_for_s: Option<f64>,
    closing: u64,
    closing_for_s: f64,
    opened: u64,
    closed: u64,
    lost_events: u64,
    untracked_connections: u64,
    unattributed_closes: u64,
    pid: Option<u32>,
    comm: Option<&'a str>,
    owners: Vec<JsonOwner<'a>>,
    accepted: Option<u64>,
    server_closed: Option<u64>,
    upgraded: Option<u64>,
    sessions: Option<u64>,
    life_from: &'static str,
    tls_library: Option<&'a str>,
    hooks: serde_json::Map<String, serde_json::Value>,
    cgroup: Option<&'a str>,
    unit: Option<&'a str>,
    container: Option<JsonContainer<'a>>,
    pod: Option<JsonPod<'a>>,
}

/// Renders one listener's report in `format` (no trailing newline).
pub fn render(format: Format, report: &ListenerReport, totals: &IntervalTotals) -> String {
    match format {
        Format::Text => report.snapshot.to_string(),
        Format::Json => render_json(report, totals),
    }
}

fn render_json(report: &ListenerReport, totals: &IntervalTotals) -> String {
    let snapshot = &report.snapshot;
    let errors = ErrorKind::ALL
        .iter()
        .map(|&kind| (kind.name().to_owned(), snapshot.errors.get(kind).into()))
        .collect();
    let first_owner: Option<&Owner> = report.owners.first();
    // Figures of a capability no hook serves on this kernel are null, never a made-up 0.
    let hooks = &totals.hooks;
    let turns = |value| hooks.has(Capability::Turns).then_some(value);
    let json = JsonReport {
        version: JSON_VERSION,
        time: totals.unix_time_s,
        interval_s: totals.interval_s,
        listener: report.name(),
        role: report.id.role.name(),
        netns: report.id.foreign_netns(),
        port: report.id.port(),
        gone: report.gone,
        curr: snapshot.curr,
        peak: snapshot.peak,
        peak_sessions: turns(snapshot.peak_sessions),
        busy: turns(snapshot.busy),
        busy_peak: turns(snapshot.busy_peak),
        sessions_unknown: hooks
            .has(Capability::Turns)
            .then(|| report.sessions_unknown()),
        sessions_untracked: hooks
            .has(Capability::Turns)
            .then_some(report.sessions_untracked),
        corrections: report.corrections,
        accept_queue: report.accept_queue,
        accept_queue_peak: report.accept_queue_peak,
        accept_backlog: report.accept_backlog,
        listen_overflows: totals.listen_overflows,
        listen_drops: totals.listen_drops,
        errs: snapshot.errors.total(),
        errors,
        conn_for_s: snapshot.conn_for_secs(),
        active_for_s: hooks
            .has(Capability::Turns)
            .then(|| snapshot.active_for_secs()),
        closing: report.closing,
        closing_for_s: secs_to_tenths(report.closing_ns),
        opened: snapshot.opened,
        closed: snapshot.closed,
        lost_events: totals.lost_events,
        untracked_connections: totals.untracked_connections,
        unattributed_closes: totals.unattributed_closes,
        pid: first_owner.map(|owner| owner.pid),
        comm: first_owner.map(|owner| owner.comm.as_str()),
        owners: report.owners.iter().map(JsonOwner::of).collect(),
        accepted: hooks.has(Capability::Accept).then_some(report.accepted),
        server_closed: hooks.has(Capability::Close).then_some(report.server_closed),
        upgraded: hooks.has(Capability::Turns).then_some(report.upgraded),
        sessions: hooks.has(Capability::Turns).then_some(snapshot.sessions),
        life_from: match report.id.role {
            Role::Listen => hooks.life_start().name(),
            Role::Connect => LifeStart::Handshake.name(),
        },
        tls_library: report.tls_library.as_deref(),
        hooks: hooks
            .iter()
            .map(|(capability, label)| (capability.name().to_owned(), label.into()))
            .collect(),
        cgroup: report.cgroup.as_deref(),
        unit: report.workload.unit.as_deref(),
        container: report.workload.container.as_ref().map(JsonContainer::of),
        pod: report.workload.pod.as_ref().map(JsonPod::of),
    };
    serde_json::to_string(&json).expect("a report always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    use crate::host::workload::cgroup_path::{Container, Qos, Runtime};
    use crate::kernel::hooks::HookChoice;
    use crate::model::Tracker;

    fn sample() -> ListenerReport {
        let mut tracker = Tracker::new("[::1]:8080");
        let remote: SocketAddr = "[::1]:5000".parse().unwrap();
        tracker.conn_state(remote, 0, crate::model::ConnState::New);
        tracker.session_done(&remote);
        ListenerReport {
            owners: vec![Owner {
                pid: 12,
                comm: "nginx".into(),
                cmdline: String::new(),
            }],
            ..ListenerReport::quiet(
                crate::tracker_id::TrackerId::listen(0, "[::1]:8080".parse().unwrap()),
                tracker.snapshot(1_500_000_000, true),
            )
        }
    }

    #[test]
    fn text_is_the_original_line() {
        assert_eq!(
            render(Format::Text, &sample(), &IntervalTotals::default()),
            "curr=1 pk=1 sess=0 errs=1 (0/0/0/1/0/0) connFor=1.5s activeFor=0.0s [::1]:8080"
        );
    }

    #[test]
    fn json_has_every_documented_field() {
        let totals = IntervalTotals {
            unix_time_s: 1.0,
            interval_s: 10.0,
            lost_events: 3,
            untracked_connections: 0,
            listen_overflows: 0,
            listen_drops: 0,
            unattributed_closes: 2,
            hooks: HookChoice::default(),
        };
        let mut hooks = HookChoice::default();
        hooks.set(
            Capability::Lifecycle,
            Some("raw tracepoint inet_sock_set_state"),
        );
        hooks.set(Capability::Turns, Some("fexit tcp_recvmsg/tcp_sendmsg"));
        hooks.set(Capability::Accept, Some("fexit inet_csk_accept"));
        let totals = IntervalTotals { hooks, ..totals };
        let line = render(Format::Json, &sample(), &totals);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["version"], 1);
        assert_eq!(value["listener"], "[::1]:8080");
        assert_eq!(value["port"], 8080);
        assert_eq!(value["curr"], 1);
        assert_eq!(value["peak"], 1);
        assert_eq!(value["errs"], 1);
        assert_eq!(value["errors"]["negative_concurrency"], 1);
        assert_eq!(value["errors"].as_object().unwrap().len(), 6);
        assert_eq!(value["conn_for_s"], 1.5);
        assert_eq!(value["opened"], 1);
        assert_eq!(value["closed"], 0);
        assert_eq!(value["lost_events"], 3);
        assert_eq!(value["unattributed_closes"], 2);
        assert_eq!(value["pid"], 12);
        assert_eq!(value["comm"], "nginx");
        assert_eq!(value["active_for_s"], 0.0);
        assert_eq!(value["accepted"], 0);
        assert_eq!(value["server_closed"], serde_json::Value::Null);
        assert_eq!(value["hooks"]["turns"], "fexit tcp_recvmsg/tcp_sendmsg");
        assert_eq!(value["hooks"]["close"], serde_json::Value::Null);
        assert_eq!(value["hooks"].as_object().unwrap().len(), 4);
        assert_eq!(value["cgroup"], serde_json::Value::Null);
        assert_eq!(value["pod"], serde_json::Value::Null);
        assert!(!line.contains('\n'));
    }

    #[test]
    fn json_names_who_runs_the_listener() {
        let uid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
        let report = ListenerReport {
            cgroup: Some(format!("/kubepods/besteffort/pod{uid}/{}", "a".repeat(64))),
            workload: crate::host::workload::Workload {
                unit: None,
                container: Some(Container {
                    runtime: Some(Runtime::Containerd),
                    id: "a".repeat(64),
                }),
                pod: Some(crate::host::workload::Pod {
                    uid: uid.to_owned(),
                    qos: Qos::BestEffort,
                    namespace: Some("shop".into()),
                    name: Some("cart".into()),
                }),
            },
            id: crate::tracker_id::TrackerId::listen(4026532481, "[::1]:8080".parse().unwrap()),
            ..sample()
        };
        let line = render(Format::Json, &report, &IntervalTotals::default());
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["unit"], serde_json::Value::Null);
        assert_eq!(value["container"]["runtime"], "containerd");
        assert_eq!(value["container"]["id"], "a".repeat(64));
        assert_eq!(value["pod"]["uid"], uid);
        assert_eq!(value["pod"]["qos"], "besteffort");
        assert_eq!(value["pod"]["namespace"], "shop");
        assert_eq!(value["pod"]["name"], "cart");
        assert!(value["cgroup"].as_str().unwrap().starts_with("/kubepods/"));
        // In another network namespace, named by its pod; the namespace in a field of its own.
        assert_eq!(value["listener"], "shop/cart/[::1]:8080");
        assert_eq!(value["netns"], 4026532481_u32);
    }

    #[test]
    fn reports_the_output_cannot_take_yet_are_merged_and_add_up() {
        let (gate, pass) = crate::test_writer::gate();
        let written = std::sync::Arc::clone(&gate.written);
        let mut writer = LineWriter::new(gate, Format::Json).unwrap();
        let totals = IntervalTotals {
            interval_s: 1.0,
            lost_events: 1,
            ..IntervalTotals::default()
        };
        const REPORTS: usize = 6;
        for _ in 0..REPORTS {
            let flow = writer
                .publish(&ReportBatch {
                    reports: &[sample()],
                    totals,
                    per_interval: true,
                })
                .unwrap();
            assert_eq!(flow, Flow::Continue);
        }
        // Nothing was written yet: the first report waits in the blocked write, the second
        // in the queue at most, the others were merged.
        assert!(written.lock().unwrap().is_empty());
        for _ in 0..REPORTS {
            let _ = pass.send(());
        }
        writer.finish().unwrap();
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert!((2..=3).contains(&lines.len()), "{text}");
        let sum = |field: &str| -> f64 { lines.iter().map(|l| l[field].as_f64().unwrap()).sum() };
        assert_eq!(sum("opened"), REPORTS as f64);
        assert_eq!(sum("interval_s"), REPORTS as f64);
        assert_eq!(sum("lost_events"), REPORTS as f64);
        assert_eq!(sum("conn_for_s"), 1.5 * REPORTS as f64);
        assert_eq!(lines.last().unwrap()["curr"], 1);
    }

    #[test]
    fn json_marks_the_figures_of_an_unserved_capability_null() {
        let line = render(Format::Json, &sample(), &IntervalTotals::default());
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        for field in [
            "active_for_s",
            "busy",
            "busy_peak",
            "peak_sessions",
            "accepted",
            "server_closed",
        ] {
            assert_eq!(value[field], serde_json::Value::Null, "{field}");
        }
        assert_eq!(value["curr"], 1);
    }
}
