//! The ring buffer to the daemon, and how records are committed to it.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::RingBuf,
};
use tracker_common::{DEFAULT_RING_BYTES, LOST_SLOT, ShortEvent, payloads::ShortPayload};

use crate::loss::count_lost;
use crate::settings::CONFIG;

/// Events to the daemon. The daemon may resize it at load time (a tiny ring lets tests force
/// loss).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Sends a short event about a socket the daemon knows by address: `payload` says which kind
/// and what it carries. Counts a loss when the ring is full.
#[inline(always)]
pub fn emit_for_socket<P: ShortPayload>(skaddr: u64, timestamp_ns: u64, payload: P) {
    let Some(mut entry) = EVENTS.reserve::<ShortEvent>(0) else {
        count_lost(LOST_SLOT);
        return;
    };
    entry.write(ShortEvent::new(skaddr, timestamp_ns, payload));
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
