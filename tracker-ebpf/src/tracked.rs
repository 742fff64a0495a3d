//! The connections the programs follow, keyed by socket address, and the ones followed by
//! endpoints instead (adopted at start-up, or not trackable).

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use core::intrinsics::{AtomicOrdering, atomic_cxchg};
use tracker_common::{
    Config, ConnKey, ConnTrack, PREEXISTING_MAX_ENTRIES, TRACKED_MAX_ENTRIES,
    handover::{HANDED_OVER_MAX_ENTRIES, HandedOver},
};

use crate::totals::{Total, TurnCut, count_close};

/// Server-side connections the daemon has been told about, keyed by socket address, with their
/// turn state. A close (or payload) is reported only for sockets in here, which is what keeps
/// client-side sockets out of the ring.
#[map]
pub static TRACKED: HashMap<u64, ConnTrack> =
    HashMap::with_max_entries(TRACKED_MAX_ENTRIES, BPF_F_NO_PREALLOC);

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
    let track = TRACKED.get_ptr_mut(skaddr)?;
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
    // SAFETY: this CPU's scratch slot; the programs using it do not nest on one CPU.
    let scratch = unsafe { &mut *scratch };
    *scratch = ConnTrack::default();
    track(scratch);
    match TRACKED.insert(&skaddr, &*scratch, u64::from(BPF_NOEXIST)) {
        Ok(()) => true,
        Err(EEXIST) => {
            retire_stale(skaddr, at);
            TRACKED
                .insert(&skaddr, &*scratch, u64::from(BPF_NOEXIST))
                .is_ok()
        }
        Err(_) => false,
    }
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
    let (outbound, local, slot, close, turn) = unsafe {
        let stale = &*stale;
        (
            stale.outbound,
            stale.endpoint,
            stale.totals_slot,
            Total::close_of(stale),
            TurnCut::of(stale, at),
        )
    };
    if TRACKED.remove(&skaddr).is_ok() && outbound == 0 {
        count_close(&local, slot, close, turn, at);
    }
}
