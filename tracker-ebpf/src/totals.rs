//! The kernel's own counts per local endpoint (`tracker_common::totals`): opens, closes,
//! closing phases and turns, counted before any record is sent, so they survive a full ring.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use tracker_common::{
    ConnTrack, ENDPOINT_SLOTS_MAX_ENTRIES, Endpoint, EndpointTotals, NO_SLOT, TOTALS_FULL_SLOT,
};

use crate::gauges::{self, Step};
use crate::loss::count_lost;

/// Each local endpoint's slot in [`SLOT_TOTALS`] (see `ENDPOINT_SLOTS_MAP`). Only [`slot_of`]
/// inserts, and nothing removes.
#[map]
pub static ENDPOINT_SLOTS: HashMap<Endpoint, u32> =
    HashMap::with_max_entries(ENDPOINT_SLOTS_MAX_ENTRIES, 0);

/// The kernel's own count of server-side opens, closes, closing phases and turns per endpoint
/// slot (see `SLOT_TOTALS_MAP`), per CPU. The daemon sizes it at load for the host's CPUs
/// (`slot_totals_entries`); a slot past its end counts as [`TOTALS_FULL_SLOT`].
#[map]
static SLOT_TOTALS: PerCpuArray<EndpointTotals> =
    PerCpuArray::with_max_entries(ENDPOINT_SLOTS_MAX_ENTRIES, 0);

/// The next endpoint slot to give, taken by compare-and-swap: endpoints appear on any CPU. A
/// `u64`, since the eBPF build's CPU version has compare-and-swap on 64 bits only.
#[map]
static NEXT_SLOT: Array<u64> = Array::with_max_entries(1, 0);

/// Compare-and-swap tries for a new slot before giving up (the verifier needs a bound): each
/// failure means another CPU took a slot in between.
const SLOT_TRIES: u32 = 8;

/// Which of an endpoint's totals to count.
#[derive(Clone, Copy)]
pub enum Total {
    Opened,
    /// Opened, and `TRACKED` could not take it: it is followed by endpoints (see
    /// `EndpointTotals::untracked`).
    OpenedUntracked,
    /// The server took the connection off its accept queue (counted by the accept program,
    /// which writes no other field).
    Accepted,
    /// The server closed a connection that is not yet CLOSE: its closing phase starts, and
    /// its life as the server sees it ends (`accepted`: it was counted accepted).
    ServerClosed {
        accepted: bool,
    },
    /// A connection reached CLOSE (`closing`: the server had closed it before, so its closing
    /// phase ends; `accepted`: it was counted accepted and the server had not closed it), or,
    /// for one followed by endpoints, the server closed it (`untracked`: counted so at its
    /// open).
    Closed {
        closing: bool,
        accepted: bool,
        untracked: bool,
    },
}

impl Total {
    /// How this moves the live gauges, `(by_handshake, by_accept)`: the same starts and ends
    /// as the spans the daemon reads as lives (`EndpointTotals::established_until_server_close`,
    /// and `accepted` plus `untracked`).
    #[inline(always)]
    fn life_steps(self) -> (Step, Step) {
        let down_if = |ends: bool| Step::of(false, ends);
        match self {
            Self::Opened => (Step::Up, Step::Still),
            Self::OpenedUntracked => (Step::Up, Step::Up),
            Self::Accepted => (Step::Still, Step::Up),
            Self::ServerClosed { accepted } => (Step::Down, down_if(accepted)),
            Self::Closed {
                closing,
                accepted,
                untracked,
            } => (down_if(!closing), down_if(accepted || untracked)),
        }
    }

    /// The close of the connection `track` describes.
    #[inline(always)]
    pub fn close_of(track: &ConnTrack) -> Self {
        let closing = track.server_closed_ns != 0;
        Self::Closed {
            closing,
            accepted: track.accepted_ns != 0 && !closing,
            untracked: false,
        }
    }
}

/// The turn a close cuts short, as `EndpointTotals::turns` and `answered` count its end.
#[derive(Clone, Copy, Default)]
pub struct TurnCut {
    /// When the turn ended (see [`turn_end_at`]); 0: the connection was not in a turn.
    pub ends_at: u64,
    /// The server's last send in it, which ends its `answered` span; 0: it never answered.
    pub answered_at: u64,
}

impl TurnCut {
    /// The turn of `track`, if it is in one, cut at `at`.
    #[inline(always)]
    pub fn of(track: &ConnTrack, at: u64) -> Self {
        let in_turn = track.in_turn != 0;
        Self {
            ends_at: turn_end_at(in_turn, track.last_send_ns, at),
            answered_at: if in_turn { track.last_send_ns } else { 0 },
        }
    }

    /// A turn ends here that the server never answered: it was busy until now.
    #[inline(always)]
    fn unanswered(self) -> bool {
        self.ends_at != 0 && self.answered_at == 0
    }

    #[inline(always)]
    fn count_on(self, totals: &mut EndpointTotals) {
        if self.ends_at != 0 {
            totals.turns.count_end(self.ends_at);
        }
        if self.answered_at != 0 {
            totals.answered.count_end(self.answered_at);
        }
    }
}

/// Counts `total` of `endpoint` on this CPU, stamped `at`, before any event is sent: the totals
/// are exact whatever becomes of the ring.
#[inline(always)]
pub fn count_total(slot: u32, total: Total, at: u64) {
    count_close(slot, total, TurnCut::default(), at);
}

/// The server's close of `track` at `now` ends its life as the server sees it and starts its
/// closing phase: the turn it was in ends here, counted with the close, and nothing of it is
/// followed after. The caller has set (or claimed) its `server_closed_ns`; returns the turn cut.
#[inline(always)]
pub fn end_life_at_server_close(track: &mut ConnTrack, now: u64) -> TurnCut {
    let turn = TurnCut::of(track, now);
    track.in_turn = 0;
    count_close(
        track.totals_slot,
        Total::ServerClosed {
            accepted: track.accepted_ns != 0,
        },
        turn,
        now,
    );
    turn
}

/// [`count_total`] for a close (`Total::ServerClosed` or `Total::Closed`) that ends the turn
/// `turn`. The turn travels apart from `total`: inside it, the lifecycle program's stack (where
/// every count is inlined) would pass what older verifiers allow.
#[inline(always)]
pub fn count_close(slot: u32, total: Total, turn: TurnCut, at: u64) {
    let (by_handshake, by_accept) = total.life_steps();
    gauges::count(slot, by_handshake, by_accept);
    if turn.unanswered() {
        gauges::count_busy(slot, Step::Down);
    }
    let Some(totals) = totals_here(slot) else {
        return;
    };
    match total {
        Total::Opened => totals.connections.count_start(at),
        Total::OpenedUntracked => {
            totals.connections.count_start(at);
            totals.untracked.count_start(at);
        }
        Total::Accepted => totals.accepted.count_start(at),
        Total::ServerClosed { accepted } => {
            totals.closing.count_start(at);
            if accepted {
                totals.accepted.count_end(at);
            }
        }
        Total::Closed {
            closing,
            accepted,
            untracked,
        } => {
            totals.connections.count_end(at);
            if closing {
                totals.closing.count_end(at);
            }
            if accepted {
                totals.accepted.count_end(at);
            }
            if untracked {
                totals.untracked.count_end(at);
            }
        }
    }
    turn.count_on(totals);
}

/// A connection's turn changes: the turn it was in ends (`cut`), and at a request's first
/// payload a new one starts at `starts_at` (0: none, the server's `101` took the connection out
/// of HTTP/1).
#[inline(always)]
pub fn count_turn(slot: u32, cut: TurnCut, starts_at: u64) {
    gauges::count_busy(slot, Step::of(starts_at != 0, cut.unanswered()));
    let Some(totals) = totals_here(slot) else {
        return;
    };
    cut.count_on(totals);
    if starts_at != 0 {
        totals.turns.count_start(starts_at);
    }
}

/// The server sent payload at `at` in a turn, whose previous send was at `previous` (0: this
/// is its first): the turn's answered span starts again from here.
#[inline(always)]
pub fn count_answer(slot: u32, previous: u64, at: u64) {
    // The first answer takes the connection off the busy gauge.
    gauges::count_busy(slot, Step::of(false, previous == 0));
    let Some(totals) = totals_here(slot) else {
        return;
    };
    if previous != 0 {
        totals.answered.count_end(previous);
    }
    totals.answered.count_start(at);
}

/// This CPU's totals at an endpoint's `slot`; counts [`TOTALS_FULL_SLOT`] when the endpoint
/// has none in [`SLOT_TOTALS`] ([`NO_SLOT`], or one past its end). Slots are given only by
/// [`slot_of`], where a connection opens or an adopted one closes, and are not looked up again
/// here: each branch at every inlined count multiplies what the verifier walks, which kernel
/// 6.1's takes seconds to under emulation.
#[inline(always)]
fn totals_here(slot: u32) -> Option<&'static mut EndpointTotals> {
    let Some(totals) = SLOT_TOTALS.get_ptr_mut(slot) else {
        count_lost(TOTALS_FULL_SLOT);
        return None;
    };
    // SAFETY: this CPU's value in a live map entry. Plain adds are exact: the state change
    // program writes every field but the accepted starts (the accept program's) and the turns
    // (the socket programs'), and the kernel never runs a program nested in itself on one CPU
    // (a softirq that fires it while it runs in a task is skipped and counted as a miss).
    Some(unsafe { &mut *totals })
}

/// Whether an endpoint's `slot` has totals in [`SLOT_TOTALS`] (not one past its end, nor
/// [`NO_SLOT`]).
#[inline(always)]
pub fn counts_in(slot: u32) -> bool {
    SLOT_TOTALS.get_ptr(slot).is_some()
}

/// The slot of `endpoint` in [`SLOT_TOTALS`], given now if it has none; [`NO_SLOT`] if
/// [`ENDPOINT_SLOTS`] is full or other CPUs took slots through every try.
///
/// A function of its own in the object, not inlined: its several outcomes would otherwise
/// each be carried through the rest of the open, and kernel 6.1's verifier took three times
/// as long over the lifecycle program (15 s instead of 5 s under emulation).
#[inline(never)]
pub fn slot_of(endpoint: &Endpoint) -> u32 {
    // SAFETY: a plain `u32` read from a live map value.
    if let Some(&slot) = unsafe { ENDPOINT_SLOTS.get(endpoint) } {
        return slot;
    }
    let Some(taken) = take_slot(&NEXT_SLOT) else {
        return NO_SLOT;
    };
    // Past `u32`'s range a slot is far past the totals' end, as `NO_SLOT` is.
    let slot = u32::try_from(taken).unwrap_or(NO_SLOT);
    gauges::give_gauge_slot(slot, endpoint);
    // BPF_NOEXIST: another CPU may have given this endpoint a slot meanwhile; then that one
    // stands and this one is never used.
    let _ = ENDPOINT_SLOTS.insert(endpoint, &slot, u64::from(BPF_NOEXIST));
    // SAFETY: as the first read.
    unsafe { ENDPOINT_SLOTS.get(endpoint) }.map_or(NO_SLOT, |&slot| slot)
}

/// Takes the next slot from the counter in `next` (its only entry), by compare-and-swap: slots
/// are given on any CPU. None if other CPUs took slots through every try.
#[inline(always)]
pub fn take_slot(next: &Array<u64>) -> Option<u64> {
    let next = next.get_ptr_mut(0)?;
    // SAFETY: a live map value, changed only by compare-and-swap; a stale read costs a try.
    let mut seen = unsafe { core::ptr::read_volatile(next) };
    let mut taken = None;
    // Only the swap is in the loop, so the verifier walks the caller's map updates once.
    for _ in 0..SLOT_TRIES {
        // SAFETY: as above.
        let (before, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                next,
                seen,
                seen.wrapping_add(1),
            )
        };
        if swapped {
            taken = Some(seen);
            break;
        }
        seen = before;
    }
    taken
}

/// When a connection's turn ended, as its turn events and close carry it: at the server's last
/// send in it, or, if the server never answered, `now`; 0 when it was not in a turn.
#[inline(always)]
pub fn turn_end_at(in_turn: bool, last_send_ns: u64, now: u64) -> u64 {
    match (in_turn, last_send_ns) {
        (false, _) => 0,
        (true, 0) => now,
        (true, sent) => sent,
    }
}
