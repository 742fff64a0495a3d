//! The tracker's kernel side: tracepoint programs that turn TCP state changes into
//! [`SockEvent`](tracker_common::SockEvent)s on a ring buffer.
//!
//! Only events the daemon needs reach the ring: listeners appearing and going away, server-side
//! connections becoming established, and those same connections closing. Client-side sockets and
//! other protocols are dropped here, in the kernel, so their cost is a few instructions.
#![no_std]
#![no_main]

mod maps;
mod payload;
mod probes;
mod record;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic; this is never executed.
    loop {}
}

/// The tracepoints used read only their own fields, but the GPL licence is what makes
/// `bpf_probe_read_kernel` and the ring buffer helpers available to us.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
