//! The kernel's own count of connections opened and closed at each local endpoint, of their
//! connection time, closing phases and turns, added up per listener: once the daemon passes
//! them, reports take `opened`, `closed`, `connFor`, `activeFor`, `busy` and the closing
//! figures from here. Lives run from the accept or the handshake's end (see [`LifeStart`]) to
//! the server's close.
//!
//! The kernel counts before it sends any event, so these totals stay exact when events are
//! lost (a full ring, a stalled daemon); what only events carry (lifetimes for the histogram,
//! the busy peak, sessions) may then be short, and `curr` is corrected against the kernel's
//! table.
//!
//! Connection time comes from the stamp sums of [`Spans`]: an endpoint's connection-nanoseconds
//! since load up to an instant follow from its totals, so an interval's share is the
//! difference of two readings; closing and busy time likewise. The kernel misses two kinds of
//! connection, and the daemon adds them to a listener's own [`DaemonCounts`]: the opens of
//! connections that predate it (counted from their adoption, as the model does), and the
//! closes it finds itself ([`Observer::close_adopted`], [`Observer::count_unseen_close`]), with
//! the turns the kernel left open in them.

use std::net::SocketAddr;

use rustc_hash::FxHashMap;
use tracker_common::{ConnTrack, Endpoint, EndpointTotals, Spans, wire_addr};

use super::{LifeStart, Observer};
use crate::model::Nanos;

/// What a listener's connections did in the current interval, by the kernel's count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct KernelCounts {
    pub(super) opened: u64,
    pub(super) closed: u64,
    /// Connection-nanoseconds of the interval, by the kernel's stamps (wrapping, as the
    /// readings it is the difference of).
    pub(super) conn_ns: u64,
    /// Nanoseconds connections spent closing in the interval (wrapping likewise).
    pub(super) closing_ns: u64,
    /// Busy-nanoseconds of the interval, by the kernel's turns (wrapping likewise).
    pub(super) busy_ns: u64,
}

/// Opens and closes of a listener's connections that only the daemon knows of, in the form
/// the kernel counts them, and the connection time they gave as of the last report.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DaemonCounts {
    connections: Spans,
    reported_conn_ns: u64,
    /// Ends of turns the kernel left open (in entries of its table the daemon removed), in
    /// the form of [`EndpointTotals::turns`] and [`EndpointTotals::answered`].
    turns: EndpointTotals,
    reported_busy_ns: u64,
}

impl DaemonCounts {
    /// A connection that predates the daemon, adopted at `at`: the kernel will count its
    /// close (or the daemon will, see [`DaemonCounts::closed`]), never its open.
    pub(super) fn opened_before_start(&mut self, at: Nanos) {
        self.add(Spans::start(at));
    }

    /// Takes back [`DaemonCounts::opened_before_start`] at `at`: the kernel counted that open.
    pub(super) fn withdraw_open(&mut self, at: Nanos) {
        self.connections = self.connections.since(&Spans::start(at));
    }

    /// A close the kernel did not count, found at `at`, of a connection in the turn `turn`
    /// left open.
    pub(super) fn closed(&mut self, at: Nanos, turn: Option<TurnLeftOpen>) {
        self.add(Spans::end(at));
        if let Some(turn) = turn {
            self.turns.turns = self.turns.turns.plus(&Spans::end(turn.ends_at));
            if let Some(answered_at) = turn.answered_at {
                self.turns.answered = self.turns.answered.plus(&Spans::end(answered_at));
            }
        }
    }

    /// Connections these count as open now: those adopted and not yet closed, less the
    /// closes of connections the kernel saw open.
    pub(super) fn running(&self) -> u64 {
        self.connections.running()
    }

    fn add(&mut self, counted: Spans) {
        self.connections = self.connections.plus(&counted);
    }

    /// Connection time these gave since the last call, up to `now`.
    fn conn_ns_until(&mut self, now: Nanos) -> u64 {
        let conn_ns = self.connections.ns_at(now);
        conn_ns.wrapping_sub(std::mem::replace(&mut self.reported_conn_ns, conn_ns))
    }

    /// Busy time these gave since the last call, up to `now` (negative, wrapping: they end
    /// turns the kernel counts as running).
    fn busy_ns_until(&mut self, now: Nanos) -> u64 {
        let busy_ns = self.turns.busy_ns_at(now);
        busy_ns.wrapping_sub(std::mem::replace(&mut self.reported_busy_ns, busy_ns))
    }

    /// Connections these count busy now (wrapping: negative, they end turns the kernel
    /// counts as running).
    pub(super) fn busy_now(&self) -> u64 {
        self.turns.busy_now()
    }
}

/// A turn the kernel's table held open for a connection whose close the kernel did not see:
/// it ended at `ends_at`, the server's last send in it (`answered_at`) or the close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnLeftOpen {
    pub ends_at: Nanos,
    pub answered_at: Option<Nanos>,
}

impl TurnLeftOpen {
    /// The turn `track` (an entry removed from the kernel's table) was in, if any, for a
    /// connection found closed at `closed_at`: as the kernel ends a turn at a close.
    pub fn of(track: &ConnTrack, closed_at: Nanos) -> Option<Self> {
        if track.in_turn == 0 {
            return None;
        }
        let answered_at = (track.last_send_ns != 0).then_some(track.last_send_ns);
        Some(Self {
            ends_at: answered_at.unwrap_or(closed_at),
            answered_at,
        })
    }
}

/// The kernel's totals per endpoint when last applied, and when.
#[derive(Debug, Default)]
pub(super) struct Baseline {
    totals: FxHashMap<Endpoint, EndpointTotals>,
    at: Nanos,
}

impl Observer {
    /// Takes the kernel's totals since load per local endpoint (summed over CPUs), read at
    /// `now`, and adds what is new since the last call to the listener that each endpoint's
    /// connections belong to. Counts of an endpoint no listener takes (one that closed and
    /// was forgotten) are dropped, as its events are.
    pub fn apply_kernel_totals(&mut self, totals: &[(Endpoint, EndpointTotals)], now: Nanos) {
        let mut baseline = self.kernel_totals.take().unwrap_or_default();
        for listener in self.listeners.values_mut() {
            listener.ledger.closing = 0;
            listener.ledger.busy = listener.ledger.daemon.busy_now();
        }
        for &(endpoint, kernel) in totals {
            let current = self.with_closing_ends(endpoint, kernel);
            let before = baseline
                .totals
                .insert(endpoint, current)
                .unwrap_or_default();
            if !self.watches(endpoint.port) {
                continue;
            }
            let Ok(ip) = wire_addr::decode(endpoint.family, endpoint.addr) else {
                continue;
            };
            let netns = self.netns_key(endpoint.netns);
            let local = SocketAddr::new(ip, endpoint.port);
            let Some(listener) = self
                .listener_for(netns, local, false)
                .and_then(|id| self.listeners.get_mut(&id))
            else {
                continue;
            };
            let (lives, lives_before) = match self.life_start {
                LifeStart::Handshake => (
                    current.established_until_server_close(),
                    before.established_until_server_close(),
                ),
                LifeStart::Accept => (
                    current.accepted.plus(&current.untracked),
                    before.accepted.plus(&before.untracked),
                ),
            };
            let counted = lives.since(&lives_before);
            let counts = &mut listener.ledger.counts;
            counts.opened = counts.opened.wrapping_add(counted.started);
            counts.closed = counts.closed.wrapping_add(counted.ended);
            counts.conn_ns = counts.conn_ns.wrapping_add(
                lives
                    .ns_at(now)
                    .wrapping_sub(lives_before.ns_at(baseline.at)),
            );
            counts.closing_ns = counts.closing_ns.wrapping_add(
                current
                    .closing
                    .ns_at(now)
                    .wrapping_sub(before.closing.ns_at(baseline.at)),
            );
            counts.busy_ns = counts.busy_ns.wrapping_add(
                current
                    .busy_ns_at(now)
                    .wrapping_sub(before.busy_ns_at(baseline.at)),
            );
            listener.ledger.closing = listener
                .ledger
                .closing
                .wrapping_add(current.closing.running());
            listener.ledger.busy = listener.ledger.busy.wrapping_add(current.busy_now());
        }
        baseline.at = now;
        self.kernel_totals = Some(baseline);
    }
}

impl Observer {
    /// The closing phase of a connection at `endpoint` that the kernel handed on to a
    /// time-wait socket ended at `at` (see [`crate::host::time_wait`]): the kernel counted its start
    /// and leaves its end, and its close, to the daemon.
    pub fn end_handed_over_closing(&mut self, endpoint: Endpoint, at: Nanos) {
        let ends = self.closing_ends.entry(endpoint).or_default();
        *ends = ends.plus(&Spans::end(at));
    }

    /// The kernel's `totals` of `endpoint` with the ends the daemon counted for it: of its
    /// closing phases and of the connections they finish.
    fn with_closing_ends(&self, endpoint: Endpoint, totals: EndpointTotals) -> EndpointTotals {
        let Some(ends) = self.closing_ends.get(&endpoint) else {
            return totals;
        };
        EndpointTotals {
            connections: totals.connections.plus(ends),
            closing: totals.closing.plus(ends),
            ..totals
        }
    }
}

/// What the kernel counted of one listener, with the daemon's own counts of what the kernel
/// could not (connections it adopted, closes it found itself). A listener holds one.
#[derive(Debug, Default)]
pub(super) struct KernelLedger {
    /// The kernel's count of connections opened and closed since the last report.
    pub(super) counts: KernelCounts,
    /// Opens and closes the kernel could not count, which the daemon adds to its counts.
    pub(super) daemon: DaemonCounts,
    /// Connections the server has closed and the kernel is still finishing, by the kernel's
    /// count when last applied (wrapping, see [`KernelLedger::closing_now`]).
    pub(super) closing: u64,
    /// Connections busy now by the kernel's count of turns when last applied (wrapping, see
    /// [`KernelLedger::busy_now`]).
    pub(super) busy: u64,
    /// The interval's peaks by the kernel's live gauges, before the daemon's own counts are
    /// added (see [`Observer::apply_live_gauges`]); `None` when no gauge speaks for this
    /// listener alone.
    pub(super) gauge_peaks: Option<GaugePeaks>,
}

/// The peaks a listener's live gauges reached in an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GaugePeaks {
    /// Connections alive at once.
    pub(super) lives: i64,
    /// Connections busy at once.
    pub(super) busy: i64,
}

/// A listener's figures of one interval whose source is the kernel: its counts, the
/// daemon's own counts of what the kernel could not see, and its live gauges. Where kernel
/// totals serve, a listener's report takes these and the model gives only what events alone
/// carry (`curr`, sessions, errors, the lifetimes of the histogram); without them, and for
/// outbound trackers, the model gives every figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KernelFigures {
    pub(super) opened: u64,
    pub(super) closed: u64,
    pub(super) conn_for_ns: u64,
    /// By the live gauge where one speaks for this listener alone (never below `curr`).
    pub(super) peak: Option<usize>,
    pub(super) active_for_ns: u64,
    pub(super) busy: usize,
    /// By the live gauge where one speaks for this listener alone (never below `busy`).
    pub(super) busy_peak: Option<usize>,
    pub(super) closing: u64,
    pub(super) closing_ns: u64,
}

impl KernelLedger {
    /// The interval's figures up to `now` (see [`KernelFigures`]), and a fresh interval;
    /// `curr` is the connections the listener holds now, which a peak is never below.
    pub(super) fn take_figures(&mut self, now: Nanos, curr: usize) -> KernelFigures {
        let counts = self.take_counts(now);
        let busy = usize::try_from(self.busy_now()).unwrap_or(usize::MAX);
        let peaks = self.gauge_peaks;
        let with_daemon = |peak: i64, daemon: u64, floor: usize| {
            usize::try_from(peak.wrapping_add(daemon as i64))
                .unwrap_or(0)
                .max(floor)
        };
        KernelFigures {
            opened: counts.opened,
            closed: counts.closed,
            conn_for_ns: counts.conn_ns,
            peak: peaks.map(|peaks| with_daemon(peaks.lives, self.daemon.running(), curr)),
            active_for_ns: counts.busy_ns,
            busy,
            busy_peak: peaks.map(|peaks| with_daemon(peaks.busy, self.daemon.busy_now(), busy)),
            closing: self.closing_now(),
            closing_ns: counts.closing_ns,
        }
    }

    /// The interval's counts by the kernel and the daemon's own, up to `now`, and a fresh
    /// interval. Connection time that comes out negative (readings of the per-CPU totals taken
    /// while a connection opened on one CPU and closed on another) counts as none.
    fn take_counts(&mut self, now: Nanos) -> KernelCounts {
        let mut counts = std::mem::take(&mut self.counts);
        counts.conn_ns = counts.conn_ns.wrapping_add(self.daemon.conn_ns_until(now));
        counts.busy_ns = counts.busy_ns.wrapping_add(self.daemon.busy_ns_until(now));
        for ns in [
            &mut counts.conn_ns,
            &mut counts.closing_ns,
            &mut counts.busy_ns,
        ] {
            if *ns > i64::MAX as u64 {
                *ns = 0;
            }
        }
        counts
    }

    /// Connections closing now by the kernel's count (wrapping sums of endpoints whose
    /// readings raced with a close on another CPU can come out negative: none then).
    pub(super) fn closing_now(&self) -> u64 {
        not_negative(self.closing)
    }

    /// Connections busy now by the kernel's count, likewise.
    pub(super) fn busy_now(&self) -> u64 {
        not_negative(self.busy)
    }
}

/// A wrapping count read as signed, negatives as 0.
fn not_negative(count: u64) -> u64 {
    if count > i64::MAX as u64 { 0 } else { count }
}
