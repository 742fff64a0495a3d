//! The kernel's own counts per local endpoint: periods (lives, closing phases, turns) as counts
//! and stamp sums, from which the daemon derives time spent without a record per period.

/// Name of the map that gives each local [`Endpoint`](crate::Endpoint) with server-side
/// connections its slot (`u32`) in [`SLOT_TOTALS_MAP`]. The state change program gives the slot
/// once, at a connection's open, and the connection carries it
/// ([`ConnTrack::totals_slot`](crate::ConnTrack::totals_slot)), so its later counts are an
/// array access rather than a lookup hashed on the endpoint. Slots are never taken back.
pub const ENDPOINT_SLOTS_MAP: &str = "ENDPOINT_SLOTS";
/// Capacity of [`ENDPOINT_SLOTS_MAP`]: local addresses times listening ports, with room for
/// hosts that give every container its own address.
pub const ENDPOINT_SLOTS_MAX_ENTRIES: u32 = 4096;
/// Name of the per-CPU array of [`EndpointTotals`] by endpoint slot: the kernel's own count of
/// the server-side connections opened and closed at each local endpoint, of the closing phases
/// that the server's closes start, and of their request/response turns. Counted before any
/// event is sent, these totals survive a full ring or a stalled daemon; the daemon adds them up
/// per listener.
pub const SLOT_TOTALS_MAP: &str = "SLOT_TOTALS";
/// A connection's [`ConnTrack::totals_slot`](crate::ConnTrack::totals_slot) when its endpoint
/// could not be given one ([`ENDPOINT_SLOTS_MAP`] full): its counts are lost, and counted so
/// (`TOTALS_FULL_SLOT`).
pub const NO_SLOT: u32 = u32::MAX;
/// What the daemon lets [`SLOT_TOTALS_MAP`] take in all: an array is allocated whole, for every
/// possible CPU, so a host with many CPUs gets fewer slots rather than more memory.
pub const SLOT_TOTALS_BUDGET_BYTES: usize = 16 << 20;
/// The fewest slots [`slot_totals_entries`] gives, however many CPUs: more listening endpoints
/// than a host usually has.
pub const SLOT_TOTALS_MIN_ENTRIES: u32 = 256;

/// How many endpoint slots [`SLOT_TOTALS_MAP`] has on a host with `cpus` possible CPUs: as many
/// as [`ENDPOINT_SLOTS_MAP`] holds where [`SLOT_TOTALS_BUDGET_BYTES`] allows, never fewer than
/// [`SLOT_TOTALS_MIN_ENTRIES`].
pub fn slot_totals_entries(cpus: usize) -> u32 {
    let per_slot = core::mem::size_of::<EndpointTotals>() * cpus.max(1);
    let affordable = u32::try_from(SLOT_TOTALS_BUDGET_BYTES / per_slot).unwrap_or(u32::MAX);
    affordable.clamp(SLOT_TOTALS_MIN_ENTRIES, ENDPOINT_SLOTS_MAX_ENTRIES)
}

/// Periods of one kind that started and ended, with the sums of their `bpf_ktime_get_ns()`
/// stamps. With the number still running, the sums give the nanoseconds the periods lasted up
/// to any instant (see [`Spans::ns_at`]) without a record per period. The sums wrap; only
/// their differences mean anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Spans {
    pub started: u64,
    pub ended: u64,
    /// Sum of the stamps of the starts counted in `started`, wrapping.
    pub started_at_sum: u64,
    /// Sum of the stamps of the ends counted in `ended`, wrapping.
    pub ended_at_sum: u64,
}

impl Spans {
    /// One period started at `at`.
    pub const fn start(at: u64) -> Self {
        Self {
            started: 1,
            ended: 0,
            started_at_sum: at,
            ended_at_sum: 0,
        }
    }

    /// One period ended at `at`.
    pub const fn end(at: u64) -> Self {
        Self {
            started: 0,
            ended: 1,
            started_at_sum: 0,
            ended_at_sum: at,
        }
    }

    /// Counts one more period started at `at`, in place.
    #[inline(always)]
    pub fn count_start(&mut self, at: u64) {
        self.started = self.started.wrapping_add(1);
        self.started_at_sum = self.started_at_sum.wrapping_add(at);
    }

    /// Counts one more period ended at `at`, in place.
    #[inline(always)]
    pub fn count_end(&mut self, at: u64) {
        self.ended = self.ended.wrapping_add(1);
        self.ended_at_sum = self.ended_at_sum.wrapping_add(at);
    }

    /// Field by field wrapping sum: the counts of two CPUs, or two endpoints.
    pub fn plus(&self, other: &Self) -> Self {
        Self {
            started: self.started.wrapping_add(other.started),
            ended: self.ended.wrapping_add(other.ended),
            started_at_sum: self.started_at_sum.wrapping_add(other.started_at_sum),
            ended_at_sum: self.ended_at_sum.wrapping_add(other.ended_at_sum),
        }
    }

    /// What was counted since `earlier`, field by field (wrapping).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            started: self.started.wrapping_sub(earlier.started),
            ended: self.ended.wrapping_sub(earlier.ended),
            started_at_sum: self.started_at_sum.wrapping_sub(earlier.started_at_sum),
            ended_at_sum: self.ended_at_sum.wrapping_sub(earlier.ended_at_sum),
        }
    }

    /// Periods started and not ended (wrapping: negative when ends were counted whose
    /// starts were not).
    pub fn running(&self) -> u64 {
        self.started.wrapping_sub(self.ended)
    }

    /// Nanoseconds the periods lasted, each from its start to its end or to `now`: every
    /// ended period gives `end − start`, every running one `now − start`, so the total is
    /// `ends − starts + now × running`. Exact in wrapping arithmetic as long as the true
    /// total fits in 64 bits (585 years).
    pub fn ns_at(&self, now: u64) -> u64 {
        self.ended_at_sum
            .wrapping_sub(self.started_at_sum)
            .wrapping_add(now.wrapping_mul(self.running()))
    }
}

/// Server-side connections of one [`Endpoint`](crate::Endpoint) since the programs were loaded, on one CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EndpointTotals {
    /// From the handshake's end (`SYN_RECV → ESTABLISHED`) to CLOSE, for tracked or followed
    /// connections.
    pub connections: Spans,
    /// From the server's close (`ESTABLISHED → FIN_WAIT1`, `CLOSE_WAIT → LAST_ACK`) to CLOSE,
    /// for tracked connections: the part of their life that only the kernel still holds.
    pub closing: Spans,
    /// From the server's accept to its close (or CLOSE, if that comes first), for tracked
    /// connections, where the kernel has an accept hook: the life the server itself sees. The
    /// accept program counts the starts and the state change program the ends, so the two
    /// never write the same field.
    pub accepted: Spans,
    /// From the handshake's end to the server's close, for connections `TRACKED` could not
    /// take (followed by endpoints instead): their accept cannot be seen, so where lives start
    /// at the accept, theirs start at the handshake.
    pub untracked: Spans,
    /// Request/response turns of tracked connections (see "Busy time" in docs/sessions.md), from
    /// the server reading a request's first payload to the end of its answer: the server's
    /// last send before the next request, or the close (the connection's last send, or the
    /// close itself if it never answered). The end is counted only when it is certain, at the
    /// next request or the close, with the stamp of that last send.
    pub turns: Spans,
    /// The part of each turn after the server's latest send in it, while it may still send
    /// more: a span starts at each send in a turn (ending the one the previous send started)
    /// and the last one ends with the turn, at that same send's stamp, so a finished turn
    /// leaves 0 here. What runs is the time turns that have answered have waited since.
    pub answered: Spans,
}

impl EndpointTotals {
    /// Field by field wrapping sum.
    pub fn plus(&self, other: &Self) -> Self {
        Self {
            connections: self.connections.plus(&other.connections),
            closing: self.closing.plus(&other.closing),
            accepted: self.accepted.plus(&other.accepted),
            untracked: self.untracked.plus(&other.untracked),
            turns: self.turns.plus(&other.turns),
            answered: self.answered.plus(&other.answered),
        }
    }

    /// From the handshake's end to the server's close: `connections` less their closing
    /// phases. A connection the server closed ends when its closing phase starts; one closed
    /// by a reset (no closing phase) when it reaches CLOSE.
    pub fn established_until_server_close(&self) -> Spans {
        Spans {
            started: self.connections.started,
            ended: self
                .connections
                .ended
                .wrapping_sub(self.closing.ended)
                .wrapping_add(self.closing.started),
            started_at_sum: self.connections.started_at_sum,
            ended_at_sum: self
                .connections
                .ended_at_sum
                .wrapping_sub(self.closing.ended_at_sum)
                .wrapping_add(self.closing.started_at_sum),
        }
    }

    /// Busy-nanoseconds of this endpoint's connections up to `now`: their turns, each until
    /// its end or, while it runs, until the server's latest send in it (a turn that has
    /// answered is idle from there unless the server sends more, and then its time until
    /// that send is added when it comes).
    pub fn busy_ns_at(&self, now: u64) -> u64 {
        self.turns.ns_at(now).wrapping_sub(self.answered.ns_at(now))
    }

    /// Connections busy now: in a turn whose server has not sent anything in it yet
    /// (wrapping, like [`Spans::running`]).
    pub fn busy_now(&self) -> u64 {
        self.turns.running().wrapping_sub(self.answered.running())
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]`, made only of `u64`s, so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::EndpointTotals {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_fill_the_budget_between_the_floor_and_the_endpoint_table() {
        // 192 bytes a slot per CPU: 2 CPUs afford far more than the table holds.
        assert_eq!(size_of::<EndpointTotals>(), 192);
        assert_eq!(slot_totals_entries(2), ENDPOINT_SLOTS_MAX_ENTRIES);
        assert_eq!(slot_totals_entries(64), 1365);
        assert_eq!(slot_totals_entries(4096), SLOT_TOTALS_MIN_ENTRIES);
        assert_eq!(slot_totals_entries(0), ENDPOINT_SLOTS_MAX_ENTRIES);
    }

    /// Periods started at `starts` and ended at `ends`, counted the way the kernel does.
    fn spans_of(starts: &[u64], ends: &[u64]) -> Spans {
        let mut spans = Spans::default();
        for &at in starts {
            spans = spans.plus(&Spans::start(at));
        }
        for &at in ends {
            spans = spans.plus(&Spans::end(at));
        }
        spans
    }

    #[test]
    fn time_follows_from_the_stamp_sums() {
        // Started at 10 and 20; the first ended at 50. At 100: 40 + 80.
        let spans = spans_of(&[10, 20], &[50]);
        assert_eq!(spans.ns_at(100), 120);
        assert_eq!(spans.ns_at(50), 40 + 30);
        // Time added between two instants is what the running period lasted in between.
        assert_eq!(spans.ns_at(160) - spans.ns_at(100), 60);
        // The difference of two readings covers the periods counted in between.
        let later = spans_of(&[10, 20, 120], &[50, 130]);
        let since = later.since(&spans);
        assert_eq!((since.started, since.ended), (1, 1));
        assert_eq!(later.ns_at(200), 40 + 110 + 80);
    }

    #[test]
    fn time_is_exact_when_the_stamp_sums_wrap() {
        // Stamps near the end of the clock's range: the sums wrap, the difference does not.
        let base = u64::MAX - 1_000;
        let spans = spans_of(&[base, base + 100, base + 200], &[base + 300]);
        assert!(spans.started_at_sum < base);
        let now = base + 500;
        assert_eq!(spans.ns_at(now), 300 + 400 + 300);
        // An end counted without its start (a connection that predates the counts) gives
        // `end − now` until its start is added by whoever knows it.
        let predating = spans_of(&[], &[base + 100]).plus(&spans_of(&[base], &[]));
        assert_eq!(predating.ns_at(now), 100);
        assert_eq!(spans_of(&[], &[base]).running(), u64::MAX);
    }

    #[test]
    fn life_until_the_server_close_leaves_out_the_closing_phases() {
        // Opened at 10, 20 and 30. The first: the server closed it at 50 and the kernel was
        // done at 80. The second: reset at 60, no closing phase. The third: server closed at 90.
        let totals = EndpointTotals {
            connections: spans_of(&[10, 20, 30], &[80, 60]),
            closing: spans_of(&[50, 90], &[80]),
            ..EndpointTotals::default()
        };
        let served = totals.established_until_server_close();
        assert_eq!((served.started, served.ended, served.running()), (3, 3, 0));
        assert_eq!(served.ns_at(100), 40 + 40 + 60);
        // Before the third's close it runs: 40 + 40 + (85 − 30).
        let before = EndpointTotals {
            connections: spans_of(&[10, 20, 30], &[80, 60]),
            closing: spans_of(&[50], &[80]),
            ..EndpointTotals::default()
        };
        assert_eq!(
            before.established_until_server_close().ns_at(85),
            40 + 40 + 55
        );
    }

    #[test]
    fn busy_time_runs_from_each_request_to_the_last_send_of_its_answer() {
        // Turn one: request at 10, sends at 20 and 30, next request at 50 (ends at 30).
        // Turn two: request at 50, nothing sent yet at 60. Turn three on another connection:
        // request at 40, one send at 45, still open.
        let totals = EndpointTotals {
            turns: spans_of(&[10, 50, 40], &[30]),
            answered: spans_of(&[20, 30, 45], &[20, 30]),
            ..EndpointTotals::default()
        };
        // 20 + 10 + 5: the open turn that has answered counts to its send.
        assert_eq!(totals.busy_ns_at(60), 20 + 10 + 5);
        assert_eq!(totals.busy_now(), 1);
        // Turn three sends again at 70: its idle wait was busy after all.
        let sent_again = EndpointTotals {
            answered: totals.answered.plus(&spans_of(&[70], &[45])),
            ..totals
        };
        assert_eq!(sent_again.busy_ns_at(80), 20 + 30 + 30);
    }
}
