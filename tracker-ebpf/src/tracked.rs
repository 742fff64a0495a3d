//! The connections the programs follow, keyed by socket address, and the ones followed by
//! endpoints instead (adopted at start-up, or not trackable).

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};
use tracker_common::{
    Config, ConnKey, ConnTrack, PREEXISTING_MAX_ENTRIES, TRACKED_HINT_BITS, TRACKED_MAX_ENTRIES,
    handover::{HANDED_OVER_MAX_ENTRIES, HandedOver},
    tracked_hint_slot,
};

use crate::totals::{Total, TurnCut, count_close};
use crate::zeroed::zero_words;

/// Server-side connections the daemon has been told about, keyed by socket address, with their
/// turn state. A close (or payload) is reported only for sockets in here, which is what keeps
/// client-side sockets out of the ring.
#[map]
pub static TRACKED: HashMap<u64, ConnTrack> =
    HashMap::with_max_entries(TRACKED_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// How many of the sockets in [`TRACKED`] have each hash of their address (see
/// `tracker_common::TRACKED_HINTS_MAP`): a zero rules a socket out with one array access, before
/// the hashed lookup. Most sockets the programs see are not tracked (every client socket on the
/// host, at each read, send, FIN and CLOSE), and a hashed miss costs as much as a hit.
#[map]
static TRACKED_HINTS: Array<u32> = Array::with_max_entries(1 << TRACKED_HINT_BITS, 0);

/// Adds `delta` (wrapping: `u32::MAX` takes one away) to the count of `skaddr`'s slot.
#[inline(always)]
fn add_hint(skaddr: u64, delta: u32) {
    if let Some(count) = TRACKED_HINTS.get_ptr_mut(tracked_hint_slot(skaddr)) {
        // SAFETY: a live array value every CPU changes with atomic adds only; the result is
        // unused, so this is the plain atomic add every BPF CPU version has.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(count, delta) };
    }
}

/// The [`TRACKED`] entry of socket `skaddr`, if it has one. Every lookup by socket goes
/// through here: a count is raised before an entry is inserted and lowered after it is
/// removed, so a zero count means no entry. The daemon's own removals (of closes the kernel
/// skipped) leave their count raised, which only costs those slots their shortcut.
#[inline(always)]
pub fn tracked_entry(skaddr: &u64) -> Option<*mut ConnTrack> {
    let count = TRACKED_HINTS.get(tracked_hint_slot(*skaddr))?;
    if *count == 0 {
        return None;
    }
    TRACKED.get_ptr_mut(skaddr)
}

/// Removes socket `skaddr` from [`TRACKED`]: true if this call did (its remover counts its
/// close).
#[inline(always)]
pub fn untrack(skaddr: u64) -> bool {
    let removed = TRACKED.remove(&skaddr).is_ok();
    if removed {
        add_hint(skaddr, u32::MAX);
    }
    removed
}

/// Connections found in the kernel's table rather than seen open (see `PREEXISTING_MAP`).
/// Value: 0 for an inbound connection the daemon adopted, [`FOLLOWED_OUTBOUND`] for an
/// outbound one, [`FOLLOWED_UNTRACKED`] for an inbound one `TRACKED` could not take.
#[map]
pub static PREEXISTING: HashMap<ConnKey, u8> =
    HashMap::with_max_entries(PREEXISTING_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// See `tracker_common::FOLLOWS_UNTRACKED_MAP`.
#[map]
pub static FOLLOWS_UNTRACKED: Array<u32> = Array::with_max_entries(1, 0);

/// Whether closes of sockets not in [`TRACKED`] are to be looked up in [`PREEXISTING`]: while
/// the daemon follows connections it adopted (`config`), or once the programs put one there.
#[inline(always)]
pub fn following_by_endpoints(config: &Config) -> bool {
    config.preexisting != 0 || FOLLOWS_UNTRACKED.get(0).is_some_and(|&set| set != 0)
}

/// The [`PREEXISTING`] value of an outbound connection, whose close is not a server-side one.
pub const FOLLOWED_OUTBOUND: u8 = 1;

/// The [`PREEXISTING`] value of an inbound connection seen open that `TRACKED` could not
/// take: its open was counted, its accept could not be.
pub const FOLLOWED_UNTRACKED: u8 = 2;

/// Connections whose closing phase a time-wait socket in FIN_WAIT2 carries on (see
/// `tracker_common::handover`). Only the state change program inserts; the daemon removes.
#[map]
pub static HANDED_OVER: HashMap<ConnKey, HandedOver> =
    HashMap::with_max_entries(HANDED_OVER_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Stamps `track` as closed by its server at `stamp`, if nothing has yet: true if this call
/// did. A connection the server shut down (`shut_down`) ends either at the server's `close()`
/// (the close program) or at CLOSE, and the two can run at once on two CPUs, since the close
/// program runs before `close()` takes the socket's lock: exactly one of them may count its end.
///
/// # Safety
/// `track` points into a live map value.
#[inline(always)]
pub unsafe fn claim_server_close(track: *mut ConnTrack, stamp: u64) -> bool {
    // SAFETY: the caller's pointer; both claimants change the field only by compare-and-swap.
    let (_, swapped) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*track).server_closed_ns,
            0,
            stamp,
        )
    };
    swapped
}

/// The kernel-side state of a tracked connection, by socket address, while the server holds
/// it: those the server has closed are left out (the daemon was told so and has forgotten
/// them). Connections in [`TRACKED`] unreported (their open found the ring full) are in: their
/// turns count in the totals, though nothing is sent about them (see [`ConnTrack::unreported`]).
#[inline(always)]
pub fn served_connection(skaddr: &u64) -> Option<*mut ConnTrack> {
    let track = tracked_entry(skaddr)?;
    // SAFETY: a field of a live map value.
    if unsafe { (*track).server_closed_ns != 0 } {
        return None;
    }
    Some(track)
}

/// A [`served_connection`] the daemon was told of: one whose open found the ring full is left
/// out, since the daemon would drop whatever is sent about it, and the ring it would take
/// space in is the one that was full.
#[inline(always)]
pub fn reported_connection(skaddr: &u64) -> Option<*mut ConnTrack> {
    let track = served_connection(skaddr)?;
    // SAFETY: a field of a live map value.
    if unsafe { (*track).unreported != 0 } {
        return None;
    }
    Some(track)
}

/// A new connection's [`TRACKED`] value is put together here, per CPU, rather than on the
/// state change program's stack: with the event it sends, it would take the stack past the
/// 512 bytes older verifiers allow. Programs do not nest on one CPU, so the slot is free.
#[map]
static TRACK_SCRATCH: PerCpuArray<ConnTrack> = PerCpuArray::with_max_entries(1, 0);

/// `-EEXIST`: the key is in the table already.
const EEXIST: i32 = -17;

/// Inserts `track` for `skaddr`, opened at `at`, copying it through [`TRACK_SCRATCH`]. False
/// if the table cannot take it (full, or allocated on demand and short in a burst). The insert
/// comes first: an entry already there for the socket is a stale one (see [`retire_stale`]),
/// rare enough not to look for at every open.
#[inline(always)]
pub fn track_connection(skaddr: u64, at: u64, track: impl FnOnce(&mut ConnTrack)) -> bool {
    let Some(scratch) = TRACK_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch slot, a map value; the programs using it do not nest on one
    // CPU.
    let scratch = unsafe {
        zero_words(scratch);
        &mut *scratch
    };
    track(scratch);
    // Counted before it can be found (see `tracked_entry`).
    add_hint(skaddr, 1);
    let inserted = match TRACKED.insert(&skaddr, &*scratch, u64::from(BPF_NOEXIST)) {
        Ok(()) => true,
        Err(EEXIST) => {
            retire_stale(skaddr, at);
            TRACKED
                .insert(&skaddr, &*scratch, u64::from(BPF_NOEXIST))
                .is_ok()
        }
        Err(_) => false,
    };
    if !inserted {
        add_hint(skaddr, u32::MAX);
    }
    inserted
}

/// An entry for a socket that is opening again belongs to a connection whose socket reached
/// CLOSE without the close program running (the kernel skipped the run): its memory now
/// holds a new connection, so that one is certainly gone. Its close is counted here, at `at`,
/// by whoever removes the entry (the daemon may, at reconciliation); the daemon closes it in
/// its model when it sees the new open on the same socket.
#[inline(always)]
fn retire_stale(skaddr: u64, at: u64) {
    let Some(stale) = TRACKED.get_ptr(&skaddr) else {
        return;
    };
    // SAFETY: a live map value; the fields needed are copied before the entry is removed.
    let (outbound, slot, close, turn) = unsafe {
        let stale = &*stale;
        (
            stale.outbound,
            stale.totals_slot,
            Total::close_of(stale),
            TurnCut::of(stale, at),
        )
    };
    if untrack(skaddr) && outbound == 0 {
        count_close(slot, close, turn, at);
    }
}
