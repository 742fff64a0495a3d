//! `tcp_close`: the server let go of a TCP socket (its last file reference was closed).
//!
//! Why this hook: `close()` on a connection reaches `tcp_close` before the socket changes
//! state, so it tells the server's close from the peer's (a connection the client closed
//! first is closed by the server only when it notices). `sock:inet_sock_set_state` sees the
//! state changes, not who caused them, and no tracepoint marks the call. Only sockets in
//! `TRACKED` produce an event. A socket that already reached CLOSE (a reset, say) has left
//! `TRACKED`, so its later `tcp_close` is not reported. It also tells `shutdown()` from
//! `close()`: both send the server's FIN (`ESTABLISHED → FIN_WAIT1`), but only after a
//! `close()` has the server let go, so a connection shut down first ends its life here.
//!
//! fentry where BPF trampolines work, else kprobe; `void tcp_close(struct sock *sk, long
//! timeout)` has kept its parameters since 2.6, and only the first is read.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use tracker_common::payloads::{CloseCalledPayload, ConnClosePayload};

use crate::record::btf_arg_value;
use crate::ring::emit_for_socket;
use crate::totals::end_life_at_server_close;
use crate::tracked::{claim_server_close, reported_connection};

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
    if skaddr == 0 {
        return;
    }
    let Some(track) = reported_connection(&skaddr) else {
        return;
    };
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a live map value of this connection. `close_called` is read only by the state
    // changes this `close()` makes next, on this CPU.
    unsafe { (*track).close_called = 1 };
    emit_for_socket(skaddr, now, CloseCalledPayload);
    // SAFETY: as above; the stamp is claimed against a CLOSE on another CPU.
    if unsafe { (*track).shut_down != 0 && claim_server_close(track, now) } {
        // Shut down earlier, so no state change follows to end its life: it ends here.
        // SAFETY: as above; this call owns the connection's close now.
        let turn = end_life_at_server_close(unsafe { &mut *track }, now);
        emit_for_socket(
            skaddr,
            now,
            ConnClosePayload {
                turn_end_ns: turn.ends_at,
            },
        );
    }
}
