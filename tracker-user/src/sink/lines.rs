//! [`LineWriter`]: reports as the original library's text line, or as one JSON object per
//! tracker, one per line.

use std::io::{self, Write};

use serde::Serialize;

use super::{Flow, IntervalTotals, ReportBatch, ReportSink};
use crate::hooks::Capability;
use crate::model::ErrorKind;
use crate::observer::{ListenerReport, Owner};

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

/// Prints each report as lines of text or JSON.
pub struct LineWriter<W: Write> {
    out: W,
    format: Format,
}

impl<W: Write> LineWriter<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self { out, format }
    }
}

impl<W: Write> ReportSink for LineWriter<W> {
    fn publish(&mut self, batch: &ReportBatch<'_>) -> anyhow::Result<Flow> {
        let written = batch
            .reports
            .iter()
            .try_for_each(|report| {
                writeln!(self.out, "{}", render(self.format, report, &batch.totals))
            })
            .and_then(|()| self.out.flush());
        match written {
            Ok(()) => Ok(Flow::Continue),
            // A closed pipe (`tracker | head`): stop quietly, as command-line tools do.
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(Flow::Stop),
            Err(error) => Err(anyhow::Error::new(error).context("writing the report")),
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
    sessions_unknown: u64,
    sessions_untracked: u64,
    corrections: u64,
    accept_queue: u32,
    accept_queue_peak: u32,
    accept_backlog: Option<u32>,
    listen_overflows: u64,
    listen_drops: u64,
    errs: u64,
    errors: serde_json::Map<String, serde_json::Value>,
    conn_for_s: f64,
    active_for_s: Option<f64>,
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
    hooks: serde_json::Map<String, serde_json::Value>,
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
        listener: report.id.to_string(),
        role: report.id.role.name(),
        netns: report.id.foreign_netns(),
        port: report.id.port(),
        gone: report.gone,
        curr: snapshot.curr,
        peak: snapshot.peak,
        peak_sessions: turns(snapshot.peak_sessions),
        busy: turns(snapshot.busy),
        busy_peak: turns(snapshot.busy_peak),
        sessions_unknown: report.sessions_unknown(),
        sessions_untracked: report.sessions_untracked,
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
        opened: snapshot.opened,
        closed: snapshot.closed,
        lost_events: totals.lost_events,
        untracked_connections: totals.untracked_connections,
        unattributed_closes: totals.unattributed_closes,
        pid: first_owner.map(|owner| owner.pid),
        comm: first_owner.map(|owner| owner.comm.as_str()),
        owners: report
            .owners
            .iter()
            .map(|owner| JsonOwner {
                pid: owner.pid,
                comm: &owner.comm,
                cmdline: &owner.cmdline,
            })
            .collect(),
        accepted: hooks.has(Capability::Accept).then_some(report.accepted),
        server_closed: hooks.has(Capability::Close).then_some(report.server_closed),
        hooks: hooks
            .iter()
            .map(|(capability, label)| (capability.name().to_owned(), label.into()))
            .collect(),
    };
    serde_json::to_string(&json).expect("a report always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    use crate::hooks::HookChoice;
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
        assert!(!line.contains('\n'));
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
