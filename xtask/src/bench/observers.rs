//! The observers the bench compares: none, tracker in its modes, and a bpftrace script.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context as _;

use super::harness::{ObserverGuard, forward_lines, start_tracker, wait_for_line};

/// bpftrace on the tracepoints tracker uses for connections and turns, doing the minimum a
/// one-liner would: count events per kind in maps.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:sock:inet_sock_set_state /args->protocol == 6/ { @states[args->oldstate, args->newstate] = count(); }
tracepoint:sock:sock_recv_length { @recv = count(); }
tracepoint:sock:sock_send_length { @send = count(); }
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Observer {
    None,
    Tracker,
    /// tracker watching a port nothing listens on: its programs stay attached to the same
    /// hooks and run on every firing, but drop every socket at their first check. What is
    /// left is the cost of being attached, before any per-connection work.
    TrackerIdle,
    /// tracker with `--connections-only`: lifecycle, accept and close hooks, none on reads
    /// and writes.
    TrackerConnectionsOnly,
    Bpftrace,
}

impl Observer {
    pub(crate) const ALL: [Observer; 5] = [
        Observer::None,
        Observer::Tracker,
        Observer::TrackerIdle,
        Observer::TrackerConnectionsOnly,
        Observer::Bpftrace,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Observer::None => "baseline",
            Observer::Tracker => "tracker",
            Observer::TrackerIdle => "tracker, idle",
            Observer::TrackerConnectionsOnly => "tracker --connections-only",
            Observer::Bpftrace => "bpftrace",
        }
    }
}

/// Starts `observer` and waits until it has attached.
pub(crate) fn start_observer(
    observer: Observer,
    tracker: &Path,
    port: u16,
    idle_port: u16,
    out_dir: &Path,
) -> anyhow::Result<ObserverGuard> {
    match observer {
        Observer::None => Ok(ObserverGuard {
            child: None,
            log: None,
        }),
        Observer::Tracker => start_tracker(tracker, port, out_dir.join("tracker.jsonl"), &[]),
        Observer::TrackerIdle => {
            start_tracker(tracker, idle_port, out_dir.join("tracker-idle.jsonl"), &[])
        }
        Observer::TrackerConnectionsOnly => start_tracker(
            tracker,
            port,
            out_dir.join("tracker-connections-only.jsonl"),
            &["--connections-only"],
        ),
        Observer::Bpftrace => {
            let mut child = Command::new("bpftrace")
                .args(["-e", BPFTRACE_SCRIPT])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting bpftrace")?;
            let log = forward_lines(child.stdout.take().expect("piped"), None);
            let guard = ObserverGuard {
                child: Some(child),
                log: Some(log),
            };
            wait_for_line(guard.log.as_ref().expect("set"), "Attaching", "bpftrace")?;
            Ok(guard)
        }
    }
}
