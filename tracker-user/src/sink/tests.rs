//! Tests of what all sinks share: running totals for `--no-reset`.

use std::net::SocketAddr;

use super::*;
use crate::model::{ConnState, Nanos, Tracker};

const SEC: Nanos = 1_000_000_000;

/// Keeps what it was handed.
#[derive(Default)]
struct Recorder(Vec<(Vec<ListenerReport>, IntervalTotals, bool)>);

impl ReportSink for &mut Recorder {
    fn publish(&mut self, batch: &ReportBatch<'_>) -> anyhow::Result<Flow> {
        self.0
            .push((batch.reports.to_vec(), batch.totals, batch.per_interval));
        Ok(Flow::Continue)
    }
}

fn listener() -> TrackerId {
    TrackerId::listen(0, "127.0.0.1:80".parse().unwrap())
}

fn remote(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn totals(lost_events: u64) -> IntervalTotals {
    IntervalTotals {
        unix_time_s: 100.0,
        interval_s: 1.0,
        lost_events,
        ..IntervalTotals::default()
    }
}

#[test]
fn running_totals_add_intervals_up_and_restart_after_a_last_report() {
    let mut recorder = Recorder::default();
    let mut sink = RunningTotals::new(&mut recorder);
    let mut tracker = Tracker::new(listener().to_string());
    tracker.conn_state(remote(1), 0, ConnState::New);
    let first = ListenerReport {
        corrections: 1,
        sessions_unknown_open: 1,
        ..ListenerReport::quiet(listener(), tracker.snapshot(SEC, true))
    };
    tracker.conn_state(remote(1), 2 * SEC, ConnState::Closed);
    let second = ListenerReport {
        gone: true,
        sessions_unknown_closed: 1,
        ..ListenerReport::quiet(listener(), tracker.snapshot(3 * SEC, true))
    };
    tracker.conn_state(remote(2), 3 * SEC, ConnState::New);
    let fresh = ListenerReport::quiet(listener(), tracker.snapshot(4 * SEC, true));
    for (report, lost) in [(first, 2), (second, 3), (fresh, 0)] {
        let flow = sink
            .publish(&ReportBatch {
                reports: &[report],
                totals: totals(lost),
                per_interval: true,
            })
            .unwrap();
        assert_eq!(flow, Flow::Continue);
    }
    let [
        (_, _, per_interval),
        (second, second_totals, _),
        (third, _, _),
    ] = &recorder.0[..]
    else {
        panic!("three batches expected");
    };
    assert!(!per_interval);
    let second = &second[0];
    assert_eq!((second.snapshot.opened, second.snapshot.closed), (1, 1));
    assert_eq!(second.snapshot.conn_for_ns, 2 * SEC);
    assert_eq!((second.snapshot.curr, second.snapshot.peak), (0, 1));
    assert_eq!(second.corrections, 1);
    assert_eq!(
        second.sessions_unknown(),
        1,
        "closed since start, none open"
    );
    assert_eq!(second_totals.lost_events, 5);
    assert_eq!(second_totals.interval_s, 2.0);
    // The closed listener's last report ended its running totals.
    assert_eq!(third[0].snapshot.opened, 1);
    assert_eq!(third[0].corrections, 0);
}
