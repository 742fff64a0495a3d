//! The model's unit tests, and the original library's timing example.

use super::*;

const SEC: Nanos = 1_000_000_000;
const MIN: Nanos = 60 * SEC;

fn at(hour: u64, minute: u64) -> Nanos {
    (hour * 60 + minute) * MIN
}

fn snapshot_with(conn_for_ns: u64, active_for_ns: u64) -> Snapshot {
    Snapshot {
        name: "t".to_string(),
        curr: 0,
        peak: 0,
        peak_sessions: 0,
        errors: ErrorCounts::default(),
        conn_for_ns,
        active_for_ns,
        opened: 0,
        closed: 0,
        sessions: 0,
        busy: 0,
        busy_peak: 0,
    }
}

#[test]
fn original_timing_example() {
    let mut t = Tracker::new(":8080");
    assert!(t.conn_state("A", at(12, 0), ConnState::New));
    assert!(t.conn_state("B", at(12, 0), ConnState::New));
    assert!(t.conn_state("A", at(12, 1), ConnState::Active));
    assert!(t.conn_state("B", at(12, 2), ConnState::Active));
    assert!(t.conn_state("A", at(12, 4), ConnState::Idle));
    assert!(t.conn_state("B", at(12, 5), ConnState::Idle));
    assert!(t.conn_state("B", at(12, 6), ConnState::Active));
    assert!(t.conn_state("B", at(12, 7), ConnState::Idle));
    assert!(t.conn_state("A", at(12, 10), ConnState::Closed));
    assert!(t.conn_state("B", at(12, 11), ConnState::Closed));
    assert_eq!(
        t.snapshot(at(12, 11), true).to_string(),
        "curr=0 pk=2 sess=0 errs=0 (0/0/0/0/0/0) connFor=1260.0s activeFor=420.0s :8080"
    );
}

#[test]
fn error_kind_names_and_order() {
    let names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(
        names,
        [
            "no_conn_in_map",
            "no_conn_for_session",
            "dangling_conn",
            "negative_concurrency",
            "conns_lost",
            "unknown_state"
        ]
    );
    let mut counts = ErrorCounts::default();
    for (n, kind) in ErrorKind::ALL.into_iter().enumerate() {
        for _ in 0..=n {
            counts.record(kind);
        }
    }
    let listed: Vec<_> = counts.iter().collect();
    assert_eq!(listed[0], (ErrorKind::NoConnInMap, 1));
    assert_eq!(listed[5], (ErrorKind::UnknownState, 6));
    assert_eq!(counts.total(), 21);
    let mut snap = snapshot_with(0, 0);
    snap.errors = counts;
    assert!(snap.to_string().contains("errs=21 (1/2/3/4/5/6)"));
}

#[test]
fn no_conn_in_map_for_unknown_key() {
    let mut t: Tracker<u32> = Tracker::new("t");
    for state in [
        ConnState::Active,
        ConnState::Idle,
        ConnState::Hijacked,
        ConnState::Closed,
    ] {
        assert!(!t.conn_state(7, SEC, state));
    }
    let snap = t.snapshot(SEC, false);
    assert_eq!(snap.errors.get(ErrorKind::NoConnInMap), 4);
    assert_eq!(snap.errors.total(), 4);
    assert_eq!(snap.closed, 0);
    assert!(t.is_empty());
}

#[test]
fn no_conn_for_session() {
    let mut t: Tracker<u32> = Tracker::new("t");
    assert!(!t.session_add(&1));
    assert!(!t.session_done(&1));
    let snap = t.snapshot(0, false);
    assert_eq!(snap.errors.get(ErrorKind::NoConnForSession), 2);
    assert_eq!(snap.errors.total(), 2);
}

#[test]
fn dangling_new_replaces_record() {
    let mut t = Tracker::new("t");
    assert!(t.conn_state(1u32, 0, ConnState::New));
    assert!(t.conn_state(1, SEC, ConnState::Active));
    assert!(t.session_add(&1));
    assert!(!t.conn_state(1, 10 * SEC, ConnState::New));
    assert_eq!(t.opened_at(&1), Some(10 * SEC));
    assert_eq!(t.len(), 1);
    let snap = t.snapshot(12 * SEC, false);
    assert_eq!(snap.errors.get(ErrorKind::DanglingConn), 1);
    // The old record's time is dropped; the fresh one is idle.
    assert_eq!(snap.conn_for_ns, 2 * SEC);
    assert_eq!(snap.active_for_ns, 0);
    assert_eq!(snap.busy, 0);
    assert_eq!(snap.busy_peak, 1);
    assert_eq!(snap.opened, 2);
    assert_eq!(snap.peak, 1);
    // The fresh record has no sessions.
    assert_eq!(snap.peak_sessions, 0);
    assert!(!t.session_done(&1));
    assert!(t.conn_state(1, 12 * SEC, ConnState::Closed));
}

#[test]
fn unknown_state_counted() {
    let mut t = Tracker::new("t");
    assert!(!t.conn_state(1u32, 0, ConnState::Unknown(42)));
    assert!(t.conn_state(1, 0, ConnState::New));
    assert!(!t.conn_state(1, 0, ConnState::Unknown(5)));
    let snap = t.snapshot(0, false);
    assert_eq!(snap.errors.get(ErrorKind::UnknownState), 2);
    assert_eq!(snap.errors.total(), 2);
    assert_eq!(snap.curr, 1);
}

#[test]
fn peak_sessions_from_closed_and_open_connections() {
    let mut t = Tracker::new("t");
    t.conn_state(1u32, 0, ConnState::New);
    t.conn_state(2, 0, ConnState::New);
    for _ in 0..3 {
        assert!(t.session_add(&1));
    }
    for _ in 0..3 {
        assert!(t.session_done(&1));
    }
    assert!(t.conn_state(1, SEC, ConnState::Closed));
    assert_eq!(t.snapshot(SEC, false).peak_sessions, 3);
    for _ in 0..5 {
        assert!(t.session_add(&2));
    }
    let snapshot = t.snapshot(SEC, true);
    assert_eq!(snapshot.peak_sessions, 5);
    assert_eq!(snapshot.sessions, 8, "every session added in the interval");
    assert!(!t.session_add(&1), "closed");
    assert_eq!(t.snapshot(2 * SEC, true).sessions, 0, "a new interval");
}

#[test]
fn conns_lost_still_records_peak_sessions() {
    let mut t = Tracker::new("t");
    t.conn_state(1u32, 0, ConnState::New);
    assert!(t.session_add(&1));
    assert!(t.session_add(&1));
    assert!(!t.conn_state(1, 4 * SEC, ConnState::Hijacked));
    assert!(!t.contains(&1));
    let snap = t.snapshot(5 * SEC, false);
    assert_eq!(snap.errors.get(ErrorKind::ConnsLost), 1);
    assert_eq!(snap.peak_sessions, 2);
    assert_eq!(snap.conn_for_ns, 4 * SEC);
    assert_eq!(snap.closed, 1);
}

#[test]
fn negative_concurrency() {
    let mut t = Tracker::new("t");
    t.conn_state(1u32, 0, ConnState::New);
    assert!(!t.session_done(&1));
    assert!(t.session_add(&1));
    assert!(t.session_done(&1));
    assert!(!t.session_done(&1));
    let snap = t.snapshot(0, false);
    assert_eq!(snap.errors.get(ErrorKind::NegativeConcurrency), 2);
    assert_eq!(snap.errors.total(), 2);
}

#[test]
fn record_error_counts_like_the_others() {
    let mut t: Tracker<u32> = Tracker::new("t");
    t.record_error(ErrorKind::ConnsLost);
    let snap = t.snapshot(0, true);
    assert_eq!(snap.errors.get(ErrorKind::ConnsLost), 1);
    assert_eq!(t.snapshot(0, false).errors.total(), 0);
}

#[test]
fn reset_splits_open_connection_at_report_time() {
    let mut t = Tracker::new("t");
    t.conn_state(1u32, 0, ConnState::New);
    t.conn_state(1, 5 * SEC, ConnState::Active);
    let first = t.snapshot(10 * SEC, true);
    assert_eq!(first.conn_for_ns, 10 * SEC);
    assert_eq!(first.active_for_ns, 5 * SEC);
    assert_eq!(first.curr, 1);
    t.conn_state(1, 12 * SEC, ConnState::Idle);
    t.conn_state(1, 25 * SEC, ConnState::Closed);
    let second = t.snapshot(30 * SEC, true);
    assert_eq!(second.conn_for_ns, 15 * SEC);
    assert_eq!(second.active_for_ns, 2 * SEC);
    // Both intervals together count the lifetime exactly once.
    assert_eq!(first.conn_for_ns + second.conn_for_ns, 25 * SEC);
    assert_eq!(first.active_for_ns + second.active_for_ns, 7 * SEC);
    assert_eq!(t.opened_at(&1), None);
}

#[test]
fn reset_zeroes_counters_and_peak_becomes_curr() {
    let mut t = Tracker::new("t");
    for key in 0u32..3 {
        t.conn_state(key, 0, ConnState::New);
    }
    t.conn_state(0, SEC, ConnState::Closed);
    t.conn_state(9, SEC, ConnState::Idle);
    t.conn_state(1, SEC, ConnState::Active);
    t.conn_state(2, SEC, ConnState::Active);
    t.conn_state(2, SEC, ConnState::Idle);
    let first = t.snapshot(2 * SEC, true);
    assert_eq!((first.curr, first.peak), (2, 3));
    assert_eq!((first.opened, first.closed), (3, 1));
    assert_eq!((first.busy, first.busy_peak), (1, 2));
    assert_eq!(first.errors.total(), 1);
    let second = t.snapshot(2 * SEC, false);
    assert_eq!((second.curr, second.peak), (2, 2));
    assert_eq!((second.opened, second.closed), (0, 0));
    assert_eq!((second.busy, second.busy_peak), (1, 1));
    assert_eq!(second.errors, ErrorCounts::default());
    assert_eq!(second.conn_for_ns, 0);
    assert_eq!(second.active_for_ns, 0);
    assert_eq!(t.opened_at(&1), Some(0));
}

#[test]
fn reset_sets_open_peak_sessions_to_current() {
    let mut t = Tracker::new("t");
    t.conn_state(1u32, 0, ConnState::New);
    for _ in 0..3 {
        t.session_add(&1);
    }
    t.session_done(&1);
    t.session_done(&1);
    assert_eq!(t.snapshot(SEC, true).peak_sessions, 3);
    assert_eq!(t.snapshot(SEC, true).peak_sessions, 1);
    t.session_done(&1);
    assert_eq!(t.snapshot(SEC, true).peak_sessions, 1);
    assert_eq!(t.snapshot(SEC, true).peak_sessions, 0);
}

#[test]
fn no_reset_keeps_accumulating() {
    let mut t = Tracker::new("t");
    t.conn_state(1u32, 0, ConnState::New);
    t.conn_state(2, 0, ConnState::Idle);
    assert_eq!(
        t.snapshot(10 * SEC, false).to_string(),
        "curr=1 pk=1 sess=0 errs=1 (1/0/0/0/0/0) connFor=10.0s activeFor=0.0s t"
    );
    t.conn_state(1, 15 * SEC, ConnState::Closed);
    assert_eq!(
        t.snapshot(20 * SEC, false).to_string(),
        "curr=0 pk=1 sess=0 errs=1 (1/0/0/0/0/0) connFor=15.0s activeFor=0.0s t"
    );
}

#[test]
fn rounding_to_tenths() {
    let ms = 1_000_000;
    let cases = [
        (50 * ms, "0.1"),
        (49_990_000, "0.0"),
        (1_250 * ms, "1.3"),
        (1_249_999_999, "1.2"),
        (0, "0.0"),
        (1_260 * SEC, "1260.0"),
        (u64::MAX, "18446744073.7"),
        (u64::MAX / 2, "9223372036.9"),
    ];
    for (ns, text) in cases {
        let snap = snapshot_with(ns, ns);
        assert_eq!(
            snap.to_string(),
            format!("curr=0 pk=0 sess=0 errs=0 (0/0/0/0/0/0) connFor={text}s activeFor={text}s t")
        );
        let expected: f64 = text.parse().unwrap();
        assert_eq!(snap.conn_for_secs(), expected);
        assert_eq!(snap.active_for_secs(), expected);
    }
}

#[test]
fn busy_and_busy_peak() {
    let mut t = Tracker::new("t");
    for key in 0u32..3 {
        t.conn_state(key, 0, ConnState::New);
        t.conn_state(key, SEC, ConnState::Active);
    }
    t.conn_state(0, 2 * SEC, ConnState::Idle);
    t.conn_state(1, 2 * SEC, ConnState::Closed);
    let snap = t.snapshot(3 * SEC, false);
    assert_eq!((snap.busy, snap.busy_peak), (1, 3));
    // Overwriting an active record must also release its busy slot.
    t.conn_state(2, 3 * SEC, ConnState::New);
    let snap = t.snapshot(3 * SEC, false);
    assert_eq!((snap.busy, snap.busy_peak), (0, 3));
}

#[test]
fn active_twice_keeps_earlier_start() {
    let mut t = Tracker::new("t");
    t.conn_state(1u32, 0, ConnState::New);
    assert!(t.conn_state(1, SEC, ConnState::Active));
    assert!(t.conn_state(1, 3 * SEC, ConnState::Active));
    assert!(t.conn_state(1, 4 * SEC, ConnState::Idle));
    let snap = t.snapshot(4 * SEC, false);
    assert_eq!(snap.active_for_ns, 3 * SEC);
    assert_eq!((snap.busy, snap.busy_peak), (0, 1));
    assert_eq!(snap.errors.total(), 0);
}

#[test]
fn idle_without_active_is_harmless() {
    let mut t = Tracker::new("t");
    t.conn_state(1u32, 0, ConnState::New);
    assert!(t.conn_state(1, SEC, ConnState::Idle));
    assert!(t.conn_state(1, 2 * SEC, ConnState::Idle));
    let snap = t.snapshot(2 * SEC, false);
    assert_eq!(snap.active_for_ns, 0);
    assert_eq!(snap.busy, 0);
    assert_eq!(snap.errors.total(), 0);
}

#[test]
fn out_of_order_timestamps_saturate() {
    let mut t = Tracker::new("t");
    t.conn_state(1u32, 10 * SEC, ConnState::New);
    t.conn_state(1, 12 * SEC, ConnState::Active);
    t.conn_state(1, 11 * SEC, ConnState::Idle);
    let snap = t.snapshot(5 * SEC, true);
    assert_eq!((snap.conn_for_ns, snap.active_for_ns), (0, 0));
    // The reset at 5 s must not move the start back before 10 s.
    assert_eq!(t.snapshot(20 * SEC, false).conn_for_ns, 10 * SEC);
    t.conn_state(1, 14 * SEC, ConnState::Active);
    t.snapshot(13 * SEC, true);
    t.conn_state(1, 0, ConnState::Closed);
    let snap = t.snapshot(0, false);
    assert_eq!((snap.conn_for_ns, snap.active_for_ns), (0, 0));
    assert_eq!(snap.busy, 0);
    assert_eq!(snap.closed, 1);
}

#[test]
fn opened_and_closed_counts() {
    let mut t = Tracker::new("t");
    for key in 0u32..4 {
        t.conn_state(key, 0, ConnState::New);
    }
    t.conn_state(0, SEC, ConnState::Closed);
    t.conn_state(1, SEC, ConnState::Hijacked);
    t.conn_state(1, SEC, ConnState::Closed);
    t.conn_state(9, SEC, ConnState::Closed);
    let snap = t.snapshot(SEC, false);
    assert_eq!((snap.opened, snap.closed), (4, 2));
    assert_eq!(snap.curr, 2);
    let mut keys: Vec<_> = t.keys().copied().collect();
    keys.sort_unstable();
    assert_eq!(keys, [2, 3]);
    assert!(t.contains(&2) && !t.contains(&0));
    assert_eq!(t.name(), "t");
}

#[test]
fn interval_snapshots_add_up_to_the_snapshot_without_resets() {
    let mut once = Tracker::new("t");
    let mut intervals = Tracker::new("t");
    let mut running: Option<Snapshot> = None;
    let steps: [(u32, Nanos, ConnState); 9] = [
        (1, 0, ConnState::New),
        (2, SEC, ConnState::New),
        (1, 2 * SEC, ConnState::Active),
        (3, 3 * SEC, ConnState::Idle),
        (2, 4 * SEC, ConnState::Active),
        (1, 5 * SEC, ConnState::Closed),
        (3, 6 * SEC, ConnState::New),
        (2, 7 * SEC, ConnState::Idle),
        (3, 8 * SEC, ConnState::Closed),
    ];
    for (n, &(key, at, state)) in steps.iter().enumerate() {
        for tracker in [&mut once, &mut intervals] {
            tracker.conn_state(key, at, state);
            if key == 2 && state == ConnState::Active {
                tracker.session_add(&2);
                tracker.session_add(&2);
            }
        }
        if n % 2 == 1 {
            let interval = intervals.snapshot(at, true);
            running = Some(match running {
                None => interval,
                Some(before) => before.then(&interval),
            });
        }
    }
    let last = intervals.snapshot(9 * SEC, true);
    let summed = running.expect("intervals were taken").then(&last);
    assert_eq!(summed, once.snapshot(9 * SEC, false));
    assert_eq!((summed.opened, summed.closed, summed.peak), (3, 2, 2));
    assert_eq!(summed.errors.total(), 1);
}
