//! Maps shared by the probes. Names match the `*_MAP` constants in `tracker-common`, which the
//! daemon uses to find them.

use crate::gauges::{self, Step};
use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use core::intrinsics::{AtomicOrdering, atomic_cxchg};
use tracker_common::{
    CONNECT_TARGETS_MAX_ENTRIES, Config, ConnKey, ConnTrack, DEFAULT_RING_BYTES,
    ENDPOINT_TOTALS_MAX_ENTRIES, Endpoint, EndpointTotals, LOST_SLOT, LOST_SLOTS,
    PORTS_MAX_ENTRIES, PREEXISTING_MAX_ENTRIES, SYSCALL_BUFFERS_MAX_ENTRIES, SockNote,
    TOTALS_FULL_SLOT, TRACKED_MAX_ENTRIES,
    handover::{HANDED_OVER_MAX_ENTRIES, HandedOver},
};

/// Events to the daemon. The daemon may resize it at load time (a tiny ring lets tests force
/// loss).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Per-CPU loss counters (see `LOST_SLOT`, `TRACK_FULL_SLOT`). Per-CPU so that counting never
/// contends between CPUs; the daemon sums the slots.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

/// Server-side connections the daemon has been told about, keyed by socket address, with their
/// turn state. A close (or payload) is reported only for sockets in here, which is what keeps
/// client-side sockets out of the ring.
#[map]
pub static TRACKED: HashMap<u64, ConnTrack> =
    HashMap::with_max_entries(TRACKED_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Which system calls carry a payload buffer, by number (see `SYSCALL_BUFFERS_MAP`).
#[map]
pub static SYSCALL_BUFFERS: Array<u32> = Array::with_max_entries(SYSCALL_BUFFERS_MAX_ENTRIES, 0);

/// Connections found in the kernel's table rather than seen open (see `PREEXISTING_MAP`).
/// Value: 0 for an inbound connection the daemon adopted, [`FOLLOWED_OUTBOUND`] for an
/// outbound one, [`FOLLOWED_UNTRACKED`] for an inbound one `TRACKED` could not take.
#[map]
pub static PREEXISTING: HashMap<ConnKey, u8> =
    HashMap::with_max_entries(PREEXISTING_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// The [`PREEXISTING`] value of an outbound connection, whose close is not a server-side one.
pub const FOLLOWED_OUTBOUND: u8 = 1;

/// The [`PREEXISTING`] value of an inbound connection seen open that `TRACKED` could not
/// take: its open was counted, its accept could not be.
pub const FOLLOWED_UNTRACKED: u8 = 2;

/// The kernel's own count of server-side opens, closes and closing phases per local endpoint
/// (see `ENDPOINT_TOTALS_MAP`). Allocated as endpoints appear: each entry is per CPU, so a
/// preallocated table would cost its full size on every CPU of a large host. An allocation
/// that fails counts as [`TOTALS_FULL_SLOT`].
#[map]
pub static ENDPOINT_TOTALS: PerCpuHashMap<Endpoint, EndpointTotals> =
    PerCpuHashMap::with_max_entries(ENDPOINT_TOTALS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// One zeroed [`EndpointTotals`], never written: the value a new endpoint's entry starts from,
/// passed to the insert from here rather than built on the programs' 512-byte stack.
#[map]
static ZERO_TOTALS: Array<EndpointTotals> = Array::with_max_entries(1, 0);

/// Connections whose closing phase a time-wait socket in FIN_WAIT2 carries on (see
/// `tracker_common::handover`). Only the state change program inserts; the daemon removes.
#[map]
pub static HANDED_OVER: HashMap<ConnKey, HandedOver> =
    HashMap::with_max_entries(HANDED_OVER_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Destinations of tracked outbound connections (see `CONNECT_TARGETS_MAP`). Value unused.
#[map]
pub static CONNECT_TARGETS: HashMap<ConnKey, u8> =
    HashMap::with_max_entries(CONNECT_TARGETS_MAX_ENTRIES, 0);

/// Local ports to watch, when `Config::filter_ports` is set. Value unused (a set).
#[map]
pub static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(PORTS_MAX_ENTRIES, 0);

/// Run-time configuration, written by the daemon before attaching.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Adds one to a loss counter slot of the current CPU.
#[inline(always)]
pub fn count_lost(slot: u32) {
    if let Some(counter) = LOST.get_ptr_mut(slot) {
        // SAFETY: the pointer is this CPU's slot of a live map. The non-atomic add can only race
        // with a softirq-context invocation on the same CPU, which at worst loses one count of a
        // counter that is already reporting trouble.
        unsafe { *counter += 1 };
    }
}

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
pub fn count_total(endpoint: &Endpoint, total: Total, at: u64) {
    count_close(endpoint, total, TurnCut::default(), at);
}

/// The server's close of `track` at `now` ends its life as the server sees it and starts its
/// closing phase: the turn it was in ends here, counted with the close, and nothing of it is
/// followed after. The caller has set (or claimed) its `server_closed_ns`; returns the turn cut.
#[inline(always)]
pub fn end_life_at_server_close(track: &mut ConnTrack, now: u64) -> TurnCut {
    let turn = TurnCut::of(track, now);
    track.in_turn = 0;
    count_close(
        &track.endpoint,
        Total::ServerClosed {
            accepted: track.accepted_ns != 0,
        },
        turn,
        now,
    );
    turn
}

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

/// [`count_total`] for a close (`Total::ServerClosed` or `Total::Closed`) that ends the turn
/// `turn`. The turn travels apart from `total`: inside it, the lifecycle program's stack (where
/// every count is inlined) would pass what older verifiers allow.
#[inline(always)]
pub fn count_close(endpoint: &Endpoint, total: Total, turn: TurnCut, at: u64) {
    let (by_handshake, by_accept) = total.life_steps();
    gauges::count(endpoint, by_handshake, by_accept);
    if turn.unanswered() {
        gauges::count_busy(endpoint, Step::Down);
    }
    let Some(totals) = totals_here(endpoint) else {
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
pub fn count_turn(endpoint: &Endpoint, cut: TurnCut, starts_at: u64) {
    gauges::count_busy(endpoint, Step::of(starts_at != 0, cut.unanswered()));
    let Some(totals) = totals_here(endpoint) else {
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
pub fn count_answer(endpoint: &Endpoint, previous: u64, at: u64) {
    // The first answer takes the connection off the busy gauge.
    gauges::count_busy(endpoint, Step::of(false, previous == 0));
    let Some(totals) = totals_here(endpoint) else {
        return;
    };
    if previous != 0 {
        totals.answered.count_end(previous);
    }
    totals.answered.count_start(at);
}

/// This CPU's totals of `endpoint`, added if new; counts [`TOTALS_FULL_SLOT`] when the map
/// cannot take it.
#[inline(always)]
fn totals_here(endpoint: &Endpoint) -> Option<&'static mut EndpointTotals> {
    let mut totals = ENDPOINT_TOTALS.get_ptr_mut(endpoint);
    if totals.is_none()
        && let Some(zero) = ZERO_TOTALS.get(0)
    {
        // BPF_NOEXIST: another program on this CPU may have added it meanwhile; either way
        // the entry exists afterwards unless the map is full.
        let _ = ENDPOINT_TOTALS.insert(endpoint, zero, u64::from(BPF_NOEXIST));
        totals = ENDPOINT_TOTALS.get_ptr_mut(endpoint);
    }
    let Some(totals) = totals else {
        count_lost(TOTALS_FULL_SLOT);
        return None;
    };
    // SAFETY: this CPU's value in a live map entry. Plain adds are exact: the state change
    // program writes every field but the accepted starts (the accept program's) and the turns
    // (the socket programs'), and the kernel never runs a program nested in itself on one CPU
    // (a softirq that fires it while it runs in a task is skipped and counted as a miss).
    Some(unsafe { &mut *totals })
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

/// Whether events for `local_port` should be emitted under the current configuration.
#[inline(always)]
pub fn port_wanted(local_port: u16) -> bool {
    let filtering = CONFIG.get(0).is_some_and(|config| config.filter_ports != 0);
    // SAFETY: the value is a plain `u8` read through a map lookup; we only test presence.
    !filtering || unsafe { PORTS.get(&local_port) }.is_some()
}

/// A new connection's [`TRACKED`] value is put together here, per CPU, rather than on the
/// state change program's stack: with the event it sends, it would take the stack past the
/// 512 bytes older verifiers allow. Programs do not nest on one CPU, so the slot is free.
#[map]
static TRACK_SCRATCH: PerCpuArray<ConnTrack> = PerCpuArray::with_max_entries(1, 0);

/// Inserts `track` for `skaddr`, opened at `at`, copying it through [`TRACK_SCRATCH`]. False
/// if the table cannot take it (full, or allocated on demand and short in a burst).
#[inline(always)]
pub fn track_connection(skaddr: u64, at: u64, track: impl FnOnce(&mut ConnTrack)) -> bool {
    retire_stale(skaddr, at);
    let Some(scratch) = TRACK_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch slot; the programs using it do not nest on one CPU.
    let scratch = unsafe { &mut *scratch };
    *scratch = ConnTrack::default();
    track(scratch);
    TRACKED
        .insert(&skaddr, scratch, u64::from(BPF_NOEXIST))
        .is_ok()
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
    let (outbound, local, close, turn) = unsafe {
        let stale = &*stale;
        (
            stale.outbound,
            stale.endpoint,
            Total::close_of(stale),
            TurnCut::of(stale, at),
        )
    };
    if TRACKED.remove(&skaddr).is_ok() && outbound == 0 {
        count_close(&local, close, turn, at);
    }
}

/// Sends a short event about a socket the daemon knows by address. Counts a loss when the
/// ring is full.
#[inline(always)]
pub fn emit_for_socket(kind: u32, skaddr: u64, timestamp_ns: u64, aux: u64, detail: u32) {
    let Some(mut entry) = EVENTS.reserve::<SockNote>(0) else {
        count_lost(LOST_SLOT);
        return;
    };
    entry.write(SockNote {
        kind,
        detail,
        timestamp_ns,
        skaddr,
        aux,
    });
    submit(entry);
}

/// Commits a ring entry, waking the daemon only when enough data waits (see
/// `Config::wakeup_bytes`); otherwise the daemon's timer collects it.
#[inline(always)]
pub fn submit<T: 'static>(entry: aya_ebpf::maps::ring_buf::RingBufEntry<T>) {
    let threshold = CONFIG
        .get(0)
        .map_or(0, |config| u64::from(config.wakeup_bytes));
    let flags = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(flags));
}
