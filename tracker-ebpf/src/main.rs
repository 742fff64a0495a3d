//! The tracker's kernel side: tracepoint programs that turn TCP state changes and socket
//! reads and writes into [`SockEvent`](tracker_common::SockEvent)s and
//! [`ShortEvent`](tracker_common::ShortEvent)s on a ring buffer.
//!
//! Only events the daemon needs reach the ring: listeners appearing and going away, server-side
//! connections becoming established and closing, their request/response turns and the HTTP/2
//! frames that open or end streams. Client-side sockets and other protocols are dropped here,
//! in the kernel, so their cost is a few instructions.
#![no_std]
#![no_main]
// Compare-and-swap for the live gauges (see `gauges`).
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "the atomic intrinsics are the only compare-and-swap the BPF target offers"
)]

mod gauges;
mod loss;
mod payload;
mod probes;
mod record;
mod ring;
mod settings;
mod tls_calls;
mod totals;
mod tracked;
mod turns;
mod zeroed;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic; this is never executed.
    loop {}
}

/// A GPL-compatible licence is what makes `bpf_probe_read_kernel`, `bpf_probe_read_user`,
/// `bpf_get_current_task_btf` and the ring buffer helpers available to the programs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
