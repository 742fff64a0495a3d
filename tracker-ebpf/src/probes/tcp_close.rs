//! `tcp_close`: the server let go of a TCP socket (its last file reference was closed).
//!
//! Why this hook: `close()` on a connection reaches `tcp_close` before the socket changes
//! state, so it tells the server's close from the peer's (a connection the client closed
//! first is closed by the server only when it notices). `sock:inet_sock_set_state` sees the
//! state changes, not who caused them, and no tracepoint marks the call. Only sockets in
//! `TRACKED` produce an event. A socket that already reached CLOSE (a reset, say) has left
//! `TRACKED`, so its later `tcp_close` is not reported.
//!
//! fentry where BPF trampolines work, else kprobe; `void tcp_close(struct sock *sk, long
//! timeout)` has kept its parameters since 2.6, and only the first is read.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use tracker_common::EventKind;

use crate::maps::{emit_for_socket, reported_connection};
use crate::record::btf_arg_value;

#[fentry(function = "tcp_close")]
pub fn fentry_tcp_close(ctx: FEntryContext) -> i32 {
    closing(btf_arg_value(&ctx, 0));
    0
}

#[kprobe]
pub fn kprobe_tcp_close(ctx: ProbeContext) -> u32 {
    closing(ctx.arg(0).unwrap_or(0));
    0
}

#[inline(always)]
fn closing(skaddr: u64) {
    if skaddr == 0 || reported_connection(&skaddr).is_none() {
        return;
    }
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    emit_for_socket(EventKind::ServerClosed as u32, skaddr, now, 0, 0);
}
