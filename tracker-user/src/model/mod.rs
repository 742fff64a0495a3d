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

    /// Adds every counter of `other` to this one's.
    pub fn add(&mut self, other: &ErrorCounts) {
        for (sum, n) in self.0.iter_mut().zip(other.0) {
            *sum = sum.saturating_add(n);
        }
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
    /// Sessions added in the interval.
    sessions_started: u64,
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
            sessions_started: 0,
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
        self.sessions_started = self.sessions_started.saturating_add(1);
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
            sessions: self.sessions_started,
            busy: self.busy,
            busy_peak: self.busy_peak,
        };
        if reset {
            self.reset(now);
        }
        snapshot
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
        self.sessions_started = 0;
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
///
/// The model is the source of every field for outbound trackers and where the kernel keeps
/// no totals. For a listener where it does, the observer's report takes `opened`, `closed`,
/// `conn_for_ns`, `peak`, `active_for_ns`, `busy` and `busy_peak` from the kernel's ledger
/// instead (`observer::kernel_totals::KernelFigures`), which stays exact when events are lost;
/// `curr`, the sessions and the errors are always the model's.
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
    /// Sessions that started in the interval (SessionAdd calls on known connections).
    pub sessions: u64,
    /// Connections active at the snapshot time.
    pub busy: usize,
    /// Peak of `busy` in the interval.
    pub busy_peak: usize,
}

impl Snapshot {
    /// Running totals: `self` covers the time from some start up to where `next`, the
    /// following interval's snapshot (taken with a reset before it), begins. The result is
    /// what one snapshot without resets would have said at the end of `next`: counts and times
    /// add up, peaks are the larger, and current figures are `next`'s.
    pub fn then(&self, next: &Snapshot) -> Snapshot {
        let mut errors = self.errors;
        errors.add(&next.errors);
        Snapshot {
            name: next.name.clone(),
            curr: next.curr,
            peak: self.peak.max(next.peak),
            peak_sessions: self.peak_sessions.max(next.peak_sessions),
            errors,
            conn_for_ns: self.conn_for_ns.saturating_add(next.conn_for_ns),
            active_for_ns: self.active_for_ns.saturating_add(next.active_for_ns),
            opened: self.opened.saturating_add(next.opened),
            closed: self.closed.saturating_add(next.closed),
            sessions: self.sessions.saturating_add(next.sessions),
            busy: next.busy,
            busy_peak: self.busy_peak.max(next.busy_peak),
        }
    }

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
/// Nanoseconds in seconds, rounded to 0.1 s like the text report.
pub fn secs_to_tenths(ns: u64) -> f64 {
    tenths_to_secs(round_to_tenths(ns))
}

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
mod tests;
