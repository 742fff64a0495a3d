//! The live gauges of `tracker_common::gauge`: lives running (and connections busy) now per
//! listening port and their exact peak in the report interval, moved with atomic instructions on a map value shared by
//! all CPUs.
//!
//! Why atomics here and per-CPU counters elsewhere: a sum can be split over CPUs and added up
//! later, a maximum cannot. The cost is one compare-and-swap per open or request (an atomic
//! add per close or answer), and one more when the count reaches a new high for the interval.
//!
//! Rust's BPF target declares no compare-and-swap (`atomic_cas: false`), so
//! `core::sync::atomic` offers only loads and stores there; the instruction exists
//! (`BPF_ATOMIC | BPF_CMPXCHG`, kernel 5.12 and later), and LLVM emits it from the compiler's
//! atomic intrinsics, which this crate's nightly build (it needs `-Z build-std` anyway) can
//! call.

use core::{
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd},
    ptr::read_volatile,
};

use aya_ebpf::{bindings::BPF_NOEXIST, macros::map, maps::Array, maps::HashMap};
use tracker_common::{
    ENDPOINT_SLOTS_MAX_ENTRIES, Endpoint, GAUGES_MISSED_SLOT,
    gauge::{Gauge, GaugeKey, LIVE_GAUGES_MAX_ENTRIES, LiveGauges, Peak},
};

use crate::loss::count_lost;
use crate::totals::take_slot;

/// See `tracker_common::gauge::LIVE_GAUGES_MAP`. Entries start zeroed: no lives, and peaks of
/// 0 in epoch 0, which any later epoch replaces (`Peak::raised`), but the one before it wraps
/// to 0.
#[map]
static LIVE_GAUGES: Array<LiveGauges> = Array::with_max_entries(LIVE_GAUGES_MAX_ENTRIES, 0);

/// See `tracker_common::gauge::GAUGE_SLOTS_MAP`. Only [`give_gauge_slot`] inserts, and
/// nothing removes.
#[map]
static GAUGE_SLOTS: HashMap<GaugeKey, u32> = HashMap::with_max_entries(LIVE_GAUGES_MAX_ENTRIES, 0);

/// See `tracker_common::gauge::ENDPOINT_GAUGES_MAP`.
#[map]
static ENDPOINT_GAUGES: Array<u32> = Array::with_max_entries(ENDPOINT_SLOTS_MAX_ENTRIES, 0);

/// The next gauge slot to give (see `totals::take_slot`).
#[map]
static NEXT_GAUGE_SLOT: Array<u64> = Array::with_max_entries(1, 0);

/// See `tracker_common::gauge::GAUGE_EPOCH_MAP`.
#[map]
static GAUGE_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// Compare-and-swap tries before giving up: each failure means another CPU changed the value
/// in between, and the verifier needs a bound. A give-up is counted (`GAUGES_MISSED_SLOT`).
const TRIES: u32 = 8;

/// How one counted event moves a gauge.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Up,
    Down,
    Still,
}

impl Step {
    /// Up for a start, down for an end, still for both or neither.
    #[inline(always)]
    pub fn of(starts: bool, ends: bool) -> Self {
        match (starts, ends) {
            (true, false) => Self::Up,
            (false, true) => Self::Down,
            _ => Self::Still,
        }
    }
}

/// Moves the lives gauges of the port of the endpoint at `slot` by `by_handshake` and
/// `by_accept`.
#[inline(always)]
pub fn count(slot: u32, by_handshake: Step, by_accept: Step) {
    if by_handshake == Step::Still && by_accept == Step::Still {
        return;
    }
    let epoch = current_epoch();
    let Some(gauges) = gauges_at(slot) else {
        return;
    };
    // SAFETY: fields of a live map value, changed only through atomic instructions.
    unsafe {
        step(&raw mut (*gauges).by_handshake, by_handshake, epoch);
        step(&raw mut (*gauges).by_accept, by_accept, epoch);
    }
}

/// Moves the busy gauge of the port of the endpoint at `slot` by `busy`. Apart from `count`,
/// so that the lifecycle program, which moves it only at the rare close of an unanswered
/// turn, does not carry a third inlined compare-and-swap loop at each of its counts (its
/// stack would pass what older verifiers allow).
#[inline(always)]
pub fn count_busy(slot: u32, busy: Step) {
    if busy == Step::Still {
        return;
    }
    let epoch = current_epoch();
    let Some(gauges) = gauges_at(slot) else {
        return;
    };
    // SAFETY: a field of a live map value, changed only through atomic instructions.
    unsafe { step(&raw mut (*gauges).busy, busy, epoch) };
}

/// The gauges of the port of the endpoint at `slot`; counts a miss when it has none (no
/// endpoint slot, or no gauge slot could be given).
#[inline(always)]
fn gauges_at(slot: u32) -> Option<*mut LiveGauges> {
    let gauges = ENDPOINT_GAUGES
        .get(slot)
        .and_then(|&given| given.checked_sub(1))
        .and_then(|gauge_slot| LIVE_GAUGES.get_ptr_mut(gauge_slot));
    if gauges.is_none() {
        count_lost(GAUGES_MISSED_SLOT);
    }
    gauges
}

/// Records the gauges of `endpoint`'s port for the endpoint slot `slot`, which the caller has
/// just taken and not yet published: the port's gauge slot, given now if it has none. Done
/// before the endpoint slot is published, so no count finds it without its gauges. A port
/// whose gauges could not be given a slot has its moves missed (counted).
///
/// A function of its own in the object, not inlined, for the same reason as `totals::slot_of`.
#[inline(never)]
pub fn give_gauge_slot(slot: u32, endpoint: &Endpoint) {
    let key = GaugeKey {
        netns: endpoint.netns,
        family: endpoint.family,
        port: endpoint.port,
    };
    // SAFETY: a plain `u32` read from a live map value.
    let given = match unsafe { GAUGE_SLOTS.get(&key) } {
        Some(&given) => Some(given),
        None => take_slot(&NEXT_GAUGE_SLOT).and_then(|taken| {
            let taken = u32::try_from(taken).ok()?;
            // BPF_NOEXIST: another CPU may have given this key a slot meanwhile; then that one
            // stands and this one is never used.
            let _ = GAUGE_SLOTS.insert(&key, &taken, u64::from(BPF_NOEXIST));
            // SAFETY: as above.
            unsafe { GAUGE_SLOTS.get(&key) }.copied()
        }),
    };
    if let (Some(given), Some(entry)) = (given, ENDPOINT_GAUGES.get_ptr_mut(slot)) {
        // SAFETY: a live map value no other program writes: the slot is the caller's alone
        // until it publishes it.
        unsafe { *entry = given.wrapping_add(1) };
    }
}

/// The report epoch, read after the count it goes with was taken (see `step`).
#[inline(always)]
fn current_epoch() -> u32 {
    GAUGE_EPOCH.get_ptr(0).map_or(0, |epoch| {
        // SAFETY: a live map value. An aligned 8-byte load is whole (the BPF target has no
        // atomic load instruction to ask for it; a plain one is single-copy atomic).
        (unsafe { read_volatile(epoch) }) as u32
    })
}

/// Moves `gauge` one `step`, raising its peak in `epoch` on the way up.
///
/// # Safety
/// `gauge` points into a live map value.
#[inline(always)]
unsafe fn step(gauge: *mut Gauge, step: Step, epoch: u32) {
    // SAFETY: the caller's pointer; every CPU changes this field with atomic instructions.
    let now = unsafe { &raw mut (*gauge).now };
    match step {
        Step::Still => {}
        Step::Down => {
            // SAFETY: as above. The result is unused, so this is the plain atomic add every
            // BPF CPU version has.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(now, u64::MAX) };
        }
        Step::Up => {
            // The count this open made is needed for the peak, and an add that returns the
            // value before it needs BPF CPU v3, which the eBPF build's flags do not select: the
            // add is a compare-and-swap instead.
            // SAFETY: as above; a stale read only costs one more try.
            let mut before = unsafe { read_volatile(now) };
            for _ in 0..TRIES {
                // SAFETY: as above.
                let (seen, swapped) = unsafe {
                    atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                        now,
                        before,
                        before.wrapping_add(1),
                    )
                };
                if swapped {
                    // SAFETY: as above.
                    unsafe { raise_peak(&raw mut (*gauge).peak, epoch, before.wrapping_add(1)) };
                    return;
                }
                before = seen;
            }
            // Other CPUs won every try: count anyway, and give up this interval's peak.
            // SAFETY: as above.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(now, 1) };
            count_lost(GAUGES_MISSED_SLOT);
        }
    }
}

/// Raises the peak at `peak` to `count` in `epoch`, if that is higher.
///
/// # Safety
/// `peak` points into a live map value.
#[inline(always)]
unsafe fn raise_peak(peak: *mut u64, epoch: u32, count: u64) {
    let Ok(value) = i32::try_from(count as i64) else {
        return;
    };
    // SAFETY: the caller's pointer; a stale read only costs one more try.
    let mut stored = unsafe { read_volatile(peak) };
    for _ in 0..TRIES {
        let Some(raised) = Peak::raised(stored, epoch, value) else {
            return;
        };
        // SAFETY: as above; every CPU changes it by compare-and-swap.
        let (seen, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                peak, stored, raised,
            )
        };
        if swapped {
            return;
        }
        stored = seen;
    }
    count_lost(GAUGES_MISSED_SLOT);
}
