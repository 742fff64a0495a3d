//! Loss counters: what the programs could not do (a full ring, a full table), per CPU, summed
//! by the daemon. Names match the `*_MAP` constants in `tracker-common`.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use tracker_common::LOST_SLOTS;

/// Per-CPU loss counters (see `LOST_SLOT`, `TRACK_FULL_SLOT`). Per-CPU so that counting never
/// contends between CPUs; the daemon sums the slots.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

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
