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
    Endpoint, GAUGES_MISSED_SLOT,
    gauge::{Gauge, GaugeKey, LIVE_GAUGES_MAX_ENTRIES, LiveGauges, Peak},
};

use crate::loss::count_lost;

/// See `tracker_common::gauge::LIVE_GAUGES_MAP`.
#[map]
static LIVE_GAUGES: HashMap<GaugeKey, LiveGauges> =
    HashMap::with_max_entries(LIVE_GAUGES_MAX_ENTRIES, 0);

/// One zeroed [`LiveGauges`], never written: the value a new port's gauges start from, passed
/// to the insert from here rather than built on the lifecycle program's stack, which every
/// count is inlined into and which older verifiers cap at 512 bytes.
#[map]
static ZERO_GAUGES: Array<LiveGauges> = Array::with_max_entries(1, 0);

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

/// Moves the lives gauges of `endpoint`'s port by `by_handshake` and `by_accept`.
#[inline(always)]
pub fn count(endpoint: &Endpoint, by_handshake: Step, by_accept: Step) {
    if by_handshake == Step::Still && by_accept == Step::Still {
        return;
    }
    let epoch = current_epoch();
    let Some(gauges) = gauges_of(endpoint) else {
        return;
    };
    // SAFETY: fields of a live map value, changed only through atomic instructions.
    unsafe {
        step(&raw mut (*gauges).by_handshake, by_handshake, epoch);
        step(&raw mut (*gauges).by_accept, by_accept, epoch);
    }
}

/// Moves the busy gauge of `endpoint`'s port by `busy`. Apart from `count`, so that the
/// lifecycle program, which moves it only at the rare close of an unanswered turn, does not
/// carry a third inlined compare-and-swap loop at each of its counts (its stack would pass
/// what older verifiers allow).
#[inline(always)]
pub fn count_busy(endpoint: &Endpoint, busy: Step) {
    if busy == Step::Still {
        return;
    }
    let epoch = current_epoch();
    let Some(gauges) = gauges_of(endpoint) else {
        return;
    };
    // SAFETY: a field of a live map value, changed only through atomic instructions.
    unsafe { step(&raw mut (*gauges).busy, busy, epoch) };
}

/// The gauges of `endpoint`'s port, added if new; counts a miss when the table cannot take
/// them.
#[inline(always)]
fn gauges_of(endpoint: &Endpoint) -> Option<*mut LiveGauges> {
    let key = GaugeKey {
        netns: endpoint.netns,
        family: endpoint.family,
        port: endpoint.port,
    };
    let mut gauges = LIVE_GAUGES.get_ptr_mut(&key);
    if gauges.is_none()
        && let Some(zero) = ZERO_GAUGES.get(0)
    {
        // BPF_NOEXIST: another CPU may have added it meanwhile; either way it exists afterwards
        // unless the map is full. Its peaks are 0 in epoch 0, which any later epoch replaces
        // (`Peak::raised`), but the one before it wraps to 0.
        let _ = LIVE_GAUGES.insert(&key, zero, u64::from(BPF_NOEXIST));
        gauges = LIVE_GAUGES.get_ptr_mut(&key);
    }
    if gauges.is_none() {
        count_lost(GAUGES_MISSED_SLOT);
    }
    gauges
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
