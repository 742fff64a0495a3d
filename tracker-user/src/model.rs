//! Connection-occupancy model for one listening socket.
//!
//! A [`Tracker`] follows the lifecycle of every connection accepted on one
//! socket (New → Active ⇄ Idle → Closed/Hijacked), counts the sessions
//! (e.g. requests or streams) running on each connection, and summarises the
//! result as a [`Snapshot`] or as a one-line text report:
//!
//! ```text
//! curr=<n> pk=<n> sess=<n> errs=<n> (<e1>/<e2>/<e3>/<e4>/<e5>/<e6>) connFor=<secs>s activeFor=<secs>s <name>
//! ```
//!
//! `connFor` is the sum of connection lifetimes (connection-seconds) and
//! `activeFor` the sum of the periods during which connections were busy.
//! Inconsistent event sequences are not fatal: they are tallied in six error
//! counters (see [`ErrorKind`]) and the offending call returns `false`.
//!
//! This is a port of a Go connection tracker. The module does no I/O and
//! never reads a clock: every timestamp is passed in by the caller, which
//! keeps it deterministic and testable. The event semantics follow the
//! original except for these deliberate differences:
//!
//! 1. Time is [`Nanos`], `u64` nanoseconds of a monotonic clock. All time
//!    differences use saturating subtraction, because events can arrive
//!    slightly out of order; an "earlier than start" timestamp contributes
//!    zero instead of panicking or wrapping.
//! 2. Reports are per interval and include open connections. A snapshot at
//!    `now` counts, besides the time accrued by connections closed since the
//!    last reset, `now - accounting start` of each open connection (and the
//!    running active period of busy ones). A reset at `now` zeroes counters,
//!    totals and errors, moves every open connection's accounting start (and
//!    active start, if busy) to `now`, drops its accrued active time, sets its
//!    peak sessions to its current sessions, sets the peak connection count to
//!    the current count (the original used 0, but an operator expects
//!    `pk >= curr`) and the busy peak to the current busy count. So each
//!    interval reports the connection-seconds and busy-seconds spent within
//!    it, and a long-lived connection is visible before it closes. The
//!    original open time is kept separately (`opened_at`).
//! 3. `sess` is the maximum of the peak sessions of connections closed in the
//!    interval and those of connections still open.
//! 4. `Active` on an already active connection keeps the earlier active
//!    start (the connection stayed busy); the original restarted the period
//!    and lost the earlier part. It is not an error.
//! 5. Closing a connection with sessions still open still records that
//!    connection's peak sessions (they did happen), besides counting
//!    `conns_lost` and returning `false`.
//! 6. Extra per-interval fields: `opened` (New events), `closed`
//!    (Closed/Hijacked of known connections), `busy` (connections active
//!    now) and `busy_peak` (maximum of `busy` in the interval). `busy` is
//!    maintained incrementally so that no event does an O(n) scan. A New that
//!    overwrites a dangling record drops the old record without accruing its
//!    time (it is counted as `dangling_conn`).

use std::fmt;
use std::hash::Hash;

use rustc_hash::FxHashMap;

/// Nanoseconds of a monotonic clock.
pub type Nanos = u64;

/// Nanoseconds per report resolution step (the report prints tenths of a second).
const TENTH_OF_SECOND_NS: u64 = 100_000_000;

/// Lifecycle event of a connection, mirroring Go's `http.ConnState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    New,
    Active,
    Idle,
    Hijacked,
    Closed,
    /// A raw state value this model does not know; counted as `unknown_state`.
    Unknown(u32),
}

impl ConnState {
    /// Maps the Go numbering (0 = New … 4 = Closed); anything else is `Unknown`.
    pub fn from_raw(raw: u32) -> ConnState {
        match raw {
            0 => ConnState::New,
            1 => ConnState::Active,
            2 => ConnState::Idle,
            3 => ConnState::Hijacked,
            4 => ConnState::Closed,
            other => ConnState::Unknown(other),
        }
    }

    /// Inverse of [`ConnState::from_raw`]; `Unknown(raw)` gives back `raw`.
    pub fn as_raw(self) -> u32 {
        match self {
            ConnState::New => 0,
            ConnState::Active => 1,
            ConnState::Idle => 2,
            ConnState::Hijacked => 3,
            ConnState::Closed => 4,
            ConnState::Unknown(raw) => raw,
        }
    }
}

/// The kinds of inconsistency the tracker counts, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A non-New state for a connection that is not tracked.
    NoConnInMap,
    /// A session event for a connection that is not tracked.
    NoConnForSession,
    /// A New for a key that was still tracked (its close was never seen).
    DanglingConn,
    /// A session end without a matching session start.
    NegativeConcurrency,
    /// A connection closed while sessions were still running on it.
    ConnsLost,
    /// A state value outside the known lifecycle.
    UnknownState,
}

impl ErrorKind {
    /// All kinds, in the order they appear in the report.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::NoConnInMap,
        ErrorKind::NoConnForSession,
        ErrorKind::DanglingConn,
        ErrorKind::NegativeConcurrency,
        ErrorKind::ConnsLost,
        ErrorKind::UnknownState,
    ];

    /// The snake_case counter name used by the original.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NoConnInMap => "no_conn_in_map",
            ErrorKind::NoConnForSession => "no_conn_for_session",
            ErrorKind::DanglingConn => "dangling_conn",
            ErrorKind::NegativeConcurrency => "negative_concurrency",
            ErrorKind::ConnsLost => "conns_lost",
            ErrorKind::UnknownState => "unknown_state",
        }
    }

    /// Position in [`ErrorKind::ALL`] and in [`ErrorCounts`].
    fn index(self) -> usize {
        match self {
            ErrorKind::NoConnInMap => 0,
            ErrorKind::NoConnForSession => 1,
            ErrorKind::DanglingConn => 2,
            ErrorKind::NegativeConcurrency => 3,
            ErrorKind::ConnsLost => 4,
            ErrorKind::UnknownState => 5,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One counter per [`ErrorKind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts([u64; 6]);

impl ErrorCounts {
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind.index()]
    }

    /// Sum of all counters (the report's `errs`).
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |sum, &n| sum.saturating_add(n))
    }

    /// `(kind, count)` pairs in report order.
    pub fn iter(&self) -> impl Iterator<Item = (ErrorKind, u64)> + '_ {
        ErrorKind::ALL
            .into_iter()
            .map(|kind| (kind, self.get(kind)))
    }

    pub fn record(&mut self, kind: ErrorKind) {
        let slot = &mut self.0[kind.index()];
        *slot = slot.saturating_add(1);
    }
}

/// Per-connection record. Kept compact (48 bytes) because a daemon may track
/// on the order of 100k connections.
#[derive(Debug, Clone)]
struct Conn {
    /// When the New event was seen; never moved by resets.
    opened_at: Nanos,
    /// Start of the part of the lifetime not yet reported (moved by resets).
    acct_start: Nanos,
    /// Start of the running active period; meaningful only while `active`.
    active_start: Nanos,
    /// Active time accrued in the current interval, excluding the running period.
    active_ns: u64,
    sessions: u32,
    /// Peak of `sessions` in the current interval.
    peak_sessions: u32,
    active: bool,
}

impl Conn {
    fn opened(now: Nanos) -> Conn {
        Conn {
            opened_at: now,
            acct_start: now,
            active_start: now,
            active_ns: 0,
            sessions: 0,
            peak_sessions: 0,
            active: false,
        }
    }

    /// Connection time within the current interval, up to `now`.
    fn conn_time(&self, now: Nanos) -> u64 {
        now.saturating_sub(self.acct_start)
    }

    /// Active time within the current interval, including the running period.
    fn active_time(&self, now: Nanos) -> u64 {
        if self.active {
            self.active_ns
                .saturating_add(now.saturating_sub(self.active_start))
        } else {
            self.active_ns
        }
    }
}

/// Tracks the connections of one listening socket, keyed by `K`.
#[derive(Debug, Clone)]
pub struct Tracker<K> {
    name: String,
    conns: FxHashMap<K, Conn>,
    /// Peak number of tracked connections in the interval.
    peak: usize,
    /// Peak sessions of connections closed in the interval.
    closed_peak_sessions: u32,
    /// Connection time of connections closed in the interval.
    closed_conn_ns: u64,
    /// Active time of connections closed in the interval.
    closed_active_ns: u64,
    errors: ErrorCounts,
    opened: u64,
    closed: u64,
    busy: usize,
    busy_peak: usize,
}

impl<K: Eq + Hash + Clone> Tracker<K> {
    pub fn new(name: impl Into<String>) -> Self {
        Tracker {
            name: name.into(),
            conns: FxHashMap::default(),
            peak: 0,
            closed_peak_sessions: 0,
            closed_conn_ns: 0,
            closed_active_ns: 0,
            errors: ErrorCounts::default(),
            opened: 0,
            closed: 0,
            busy: 0,
            busy_peak: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Applies a lifecycle event at time `now`. Returns `false` when the
    /// event was inconsistent (an error counter was incremented).
    pub fn conn_state(&mut self, key: K, now: Nanos, state: ConnState) -> bool {
        match state {
            ConnState::New => self.open(key, now),
            ConnState::Active => {
                let Some(conn) = self.conns.get_mut(&key) else {
                    self.errors.record(ErrorKind::NoConnInMap);
                    return false;
                };
                // A second Active keeps the earlier start: the connection
                // has been busy all along.
                if !conn.active {
                    conn.active = true;
                    conn.active_start = now;
                    self.busy += 1;
                    self.busy_peak = self.busy_peak.max(self.busy);
                }
                true
            }
            ConnState::Idle => {
                let Some(conn) = self.conns.get_mut(&key) else {
                    self.errors.record(ErrorKind::NoConnInMap);
                    return false;
                };
                if conn.active {
                    conn.active_ns = conn.active_time(now);
                    conn.active = false;
                    self.busy = self.busy.saturating_sub(1);
                }
                true
            }
            ConnState::Hijacked | ConnState::Closed => self.close(&key, now),
            ConnState::Unknown(_) => {
                self.errors.record(ErrorKind::UnknownState);
                false
            }
        }
    }

    /// Starts a session on `key`'s connection.
    pub fn session_add(&mut self, key: &K) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            self.errors.record(ErrorKind::NoConnForSession);
            return false;
        };
        conn.sessions = conn.sessions.saturating_add(1);
        conn.peak_sessions = conn.peak_sessions.max(conn.sessions);
        true
    }

    /// Ends a session on `key`'s connection.
    pub fn session_done(&mut self, key: &K) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            self.errors.record(ErrorKind::NoConnForSession);
            return false;
        };
        if conn.sessions == 0 {
            self.errors.record(ErrorKind::NegativeConcurrency);
            return false;
        }
        conn.sessions -= 1;
        true
    }

    /// Counts an error detected by the caller outside this model.
    pub fn record_error(&mut self, kind: ErrorKind) {
        self.errors.record(kind);
    }

    pub fn contains(&self, key: &K) -> bool {
        self.conns.contains_key(key)
    }

    /// Number of tracked (open) connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// When the connection under `key` was opened (unaffected by resets).
    pub fn opened_at(&self, key: &K) -> Option<Nanos> {
        self.conns.get(key).map(|conn| conn.opened_at)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.conns.keys()
    }

    /// Summarises the interval up to `now`; with `reset`, starts a new
    /// interval at `now` (see the module documentation).
    pub fn snapshot(&mut self, now: Nanos, reset: bool) -> Snapshot {
        let mut conn_for_ns = self.closed_conn_ns;
        let mut active_for_ns = self.closed_active_ns;
        let mut peak_sessions = self.closed_peak_sessions;
        for conn in self.conns.values() {
            conn_for_ns = conn_for_ns.saturating_add(conn.conn_time(now));
            active_for_ns = active_for_ns.saturating_add(conn.active_time(now));
            peak_sessions = peak_sessions.max(conn.peak_sessions);
        }
        let snapshot = Snapshot {
            name: self.name.clone(),
            curr: self.conns.len(),
            peak: self.peak,
            peak_sessions: to_usize(peak_sessions),
            errors: self.errors,
            conn_for_ns,
            active_for_ns,
            opened: self.opened,
            closed: self.closed,
            busy: self.busy,
            busy_peak: self.busy_peak,
        };
        if reset {
            self.reset(now);
        }
        snapshot
    }

    /// The text report line; same as `snapshot(now, reset).to_string()`.
    pub fn report(&mut self, now: Nanos, reset: bool) -> String {
        self.snapshot(now, reset).to_string()
    }

    fn open(&mut self, key: K, now: Nanos) -> bool {
        self.opened = self.opened.saturating_add(1);
        let replaced = self.conns.insert(key, Conn::opened(now));
        self.peak = self.peak.max(self.conns.len());
        match replaced {
            None => true,
            Some(dangling) => {
                // The dropped record's time is not accrued, but it must stop
                // counting as busy.
                if dangling.active {
                    self.busy = self.busy.saturating_sub(1);
                }
                self.errors.record(ErrorKind::DanglingConn);
                false
            }
        }
    }

    fn close(&mut self, key: &K, now: Nanos) -> bool {
        let Some(conn) = self.conns.remove(key) else {
            self.errors.record(ErrorKind::NoConnInMap);
            return false;
        };
        self.closed = self.closed.saturating_add(1);
        self.closed_conn_ns = self.closed_conn_ns.saturating_add(conn.conn_time(now));
        self.closed_active_ns = self.closed_active_ns.saturating_add(conn.active_time(now));
        if conn.active {
            self.busy = self.busy.saturating_sub(1);
        }
        // Recorded even when sessions were lost: they did run.
        self.closed_peak_sessions = self.closed_peak_sessions.max(conn.peak_sessions);
        if conn.sessions > 0 {
            self.errors.record(ErrorKind::ConnsLost);
            return false;
        }
        true
    }

    fn reset(&mut self, now: Nanos) {
        self.closed_peak_sessions = 0;
        self.closed_conn_ns = 0;
        self.closed_active_ns = 0;
        self.errors = ErrorCounts::default();
        self.opened = 0;
        self.closed = 0;
        self.peak = self.conns.len();
        self.busy_peak = self.busy;
        for conn in self.conns.values_mut() {
            // `max` rather than `now`: a start later than `now` (out-of-order
            // events) contributed nothing yet, so it must not be moved back,
            // or the gap would be counted in the next interval.
            conn.acct_start = conn.acct_start.max(now);
            conn.active_ns = 0;
            if conn.active {
                conn.active_start = conn.active_start.max(now);
            }
            conn.peak_sessions = conn.sessions;
        }
    }
}

fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Counters of one reporting interval (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub name: String,
    /// Connections open at the snapshot time.
    pub curr: usize,
    /// Peak number of open connections in the interval.
    pub peak: usize,
    /// Peak concurrent sessions on any one connection in the interval.
    pub peak_sessions: usize,
    pub errors: ErrorCounts,
    /// Connection-nanoseconds spent within the interval.
    pub conn_for_ns: u64,
    /// Busy-nanoseconds spent within the interval.
    pub active_for_ns: u64,
    /// New events in the interval.
    pub opened: u64,
    /// Closed/Hijacked events of tracked connections in the interval.
    pub closed: u64,
    /// Connections active at the snapshot time.
    pub busy: usize,
    /// Peak of `busy` in the interval.
    pub busy_peak: usize,
}

impl Snapshot {
    /// `conn_for_ns` in seconds, rounded to 0.1 s like the text report.
    pub fn conn_for_secs(&self) -> f64 {
        tenths_to_secs(round_to_tenths(self.conn_for_ns))
    }

    /// `active_for_ns` in seconds, rounded to 0.1 s like the text report.
    pub fn active_for_secs(&self) -> f64 {
        tenths_to_secs(round_to_tenths(self.active_for_ns))
    }
}

/// Rounds to whole tenths of a second, halves away from zero (Go's
/// `Duration.Round(100 * time.Millisecond)`). Counting tenths rather than
/// nanoseconds cannot overflow.
fn round_to_tenths(ns: u64) -> u64 {
    let tenths = ns / TENTH_OF_SECOND_NS;
    if ns % TENTH_OF_SECOND_NS >= TENTH_OF_SECOND_NS / 2 {
        tenths + 1
    } else {
        tenths
    }
}

fn tenths_to_secs(tenths: u64) -> f64 {
    // Lossy only beyond 2^53 tenths (~28 million years).
    tenths as f64 / 10.0
}

/// Formats nanoseconds as seconds with exactly one decimal, exactly.
struct Secs(u64);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = round_to_tenths(self.0);
        write!(f, "{}.{}", tenths / 10, tenths % 10)
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "curr={} pk={} sess={} errs={} (",
            self.curr,
            self.peak,
            self.peak_sessions,
            self.errors.total()
        )?;
        for (position, (_, count)) in self.errors.iter().enumerate() {
            if position > 0 {
                f.write_str("/")?;
            }
            write!(f, "{count}")?;
        }
        write!(
            f,
            ") connFor={}s activeFor={}s {}",
            Secs(self.conn_for_ns),
            Secs(self.active_for_ns),
            self.name
        )
    }
}

#[cfg(test)]
mod tests {
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
            t.report(at(12, 11), true),
            "curr=0 pk=2 sess=0 errs=0 (0/0/0/0/0/0) connFor=1260.0s activeFor=420.0s :8080"
        );
    }

    #[test]
    fn report_equals_snapshot_display() {
        let mut t = Tracker::new("x");
        t.conn_state(1u32, 0, ConnState::New);
        let text = t.report(3 * SEC, false);
        assert_eq!(text, t.snapshot(3 * SEC, false).to_string());
    }

    #[test]
    fn conn_state_raw_mapping() {
        let states = [
            ConnState::New,
            ConnState::Active,
            ConnState::Idle,
            ConnState::Hijacked,
            ConnState::Closed,
        ];
        for (raw, state) in (0u32..).zip(states) {
            assert_eq!(ConnState::from_raw(raw), state);
            assert_eq!(state.as_raw(), raw);
        }
        assert_eq!(ConnState::from_raw(9), ConnState::Unknown(9));
        assert_eq!(ConnState::Unknown(9).as_raw(), 9);
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
        assert!(!t.conn_state(1, 0, ConnState::from_raw(5)));
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
        assert_eq!(t.snapshot(SEC, false).peak_sessions, 5);
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
            t.report(10 * SEC, false),
            "curr=1 pk=1 sess=0 errs=1 (1/0/0/0/0/0) connFor=10.0s activeFor=0.0s t"
        );
        t.conn_state(1, 15 * SEC, ConnState::Closed);
        assert_eq!(
            t.report(20 * SEC, false),
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
                format!(
                    "curr=0 pk=0 sess=0 errs=0 (0/0/0/0/0/0) connFor={text}s activeFor={text}s t"
                )
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
}
