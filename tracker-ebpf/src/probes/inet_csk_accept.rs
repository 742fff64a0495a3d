//! `inet_csk_accept`: the server took a connection off a listener's accept queue.
//!
//! Why this hook: `accept()`, `accept4()` and io_uring's accept all end in
//! `inet_csk_accept`, which returns the accepted socket: the moment the server (not the
//! kernel) starts on a connection, where its life as the server sees it begins. No tracepoint
//! marks it. The accept is counted in the endpoint's totals for every tracked connection, and
//! only connections the daemon was told of produce an event: one short note per accepted
//! connection.
//!
//! fexit where BPF trampolines work. Without them a kprobe on `security_sock_graft` (see
//! there) comes first, and a kretprobe here (the return value is all it needs, so there is
//! no entry half) is the last resort: every thread blocked in `accept()` holds one of its
//! few instances (max(10, 2 × CPUs)), so a server with more waiting workers than that loses
//! accepts. The parameters changed in 6.10: `(sk, flags, err, kern)` before,
//! `(sk, struct proto_accept_arg *arg)` since; the return value follows the last parameter
//! in an fexit program's context, so each list has its own program and the daemon loads the
//! one the kernel's BTF describes. The kretprobe reads the return register and fits both.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{fexit, kretprobe},
    programs::{FExitContext, RetProbeContext},
};
use tracker_common::payloads::AcceptedPayload;

use crate::record::btf_arg_value;
use crate::ring::emit_for_socket;
use crate::totals::{Total, count_total};
use crate::tracked::tracked_entry;

/// 6.10+: `struct sock *inet_csk_accept(struct sock *sk, struct proto_accept_arg *arg)`.
#[fexit(function = "inet_csk_accept")]
pub fn fexit_inet_csk_accept_2(ctx: FExitContext) -> i32 {
    accepted(btf_arg_value(&ctx, 2));
    0
}

/// Before 6.10: `struct sock *inet_csk_accept(struct sock *sk, int flags, int *err,
/// bool kern)`.
#[fexit(function = "inet_csk_accept")]
pub fn fexit_inet_csk_accept_4(ctx: FExitContext) -> i32 {
    accepted(btf_arg_value(&ctx, 4));
    0
}

#[kretprobe]
pub fn kretprobe_inet_csk_accept(ctx: RetProbeContext) -> u32 {
    accepted(ctx.ret());
    0
}

/// `skaddr` was accepted (0: the accept failed): its life as the server sees it starts, in
/// the endpoint's totals (whether or not the daemon was told of its open) and for the daemon.
#[inline(always)]
pub(crate) fn accepted(skaddr: u64) {
    if skaddr == 0 {
        return;
    }
    let Some(track) = tracked_entry(&skaddr) else {
        return;
    };
    // SAFETY: a live map value. The state change program reads `accepted_ns` at the server's
    // close, which cannot come before the accept returns, and at CLOSE, which the socket's lock
    // (held around `security_sock_graft`) defers until this program is done.
    let track = unsafe { &mut *track };
    if track.outbound != 0 || track.accepted_ns != 0 || track.server_closed_ns != 0 {
        return;
    }
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    track.accepted_ns = now;
    count_total(track.totals_slot, Total::Accepted, now);
    if track.unreported == 0 {
        emit_for_socket(skaddr, now, AcceptedPayload);
    }
}
