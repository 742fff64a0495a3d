//! `tcp_sendmsg`: the server handed payload to a TCP socket, on kernels without
//! `sock:sock_send_length` (before 6.6).
//!
//! Why this hook: the send-side twin of `tcp_recvmsg` (see there for the attach methods).
//! `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)` has kept its
//! parameters since 4.x, so one program per method serves every kernel; the firing feeds
//! `sock_send_length::on_send` unchanged. Before 6.5, `sendfile` and `splice` reach TCP
//! through `tcp_sendpage` instead: a response whose body goes that way ends its turn at its
//! last `tcp_sendmsg` (typically the headers), a few microseconds early.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, kprobe, kretprobe, map},
    maps::HashMap,
    programs::{FExitContext, ProbeContext, RetProbeContext},
};

use crate::maps::TRACKED;
use crate::probes::sock_send_length::on_send;
use crate::record::{SockLength, btf_arg_value};

/// Sends in progress on tracked sockets by thread (`pid_tgid`), from kprobe to kretprobe.
#[map]
static SEND_CALLS: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

#[fexit(function = "tcp_sendmsg")]
pub fn fexit_tcp_sendmsg(ctx: FExitContext) -> i32 {
    finish(&ctx, btf_arg_value(&ctx, 0), ctx.arg::<u64>(3));
    0
}

#[kprobe]
pub fn kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    let Some(skaddr) = ctx.arg::<u64>(0) else {
        return 0;
    };
    // SAFETY: presence test only.
    if unsafe { TRACKED.get(&skaddr) }.is_some() {
        let _ = SEND_CALLS.insert(&bpf_get_current_pid_tgid(), &skaddr, 0);
    }
    0
}

#[kretprobe]
pub fn kretprobe_tcp_sendmsg(ctx: RetProbeContext) -> u32 {
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(skaddr) = (unsafe { SEND_CALLS.get(&thread) }).copied() else {
        return 0;
    };
    let _ = SEND_CALLS.remove(&thread);
    finish(&ctx, skaddr, ctx.ret::<u64>());
    0
}

#[inline(always)]
fn finish<C: EbpfContext>(ctx: &C, skaddr: u64, ret: u64) {
    on_send(
        ctx,
        SockLength {
            skaddr,
            // `int` return value, widened to 64 bits.
            bytes: ret as i32,
            flags: 0,
        },
    );
}
