//! `tcp_sendmsg`: the server handed payload to a TCP socket, on kernels without
//! `sock:sock_send_length` (before 6.6).
//!
//! Why this hook: the send-side twin of `tcp_recvmsg` (see there for fexit).
//! `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)` has kept its
//! parameters since 4.x, so one program per method serves every kernel; the firing feeds
//! `turns::on_send` unchanged. Before 6.5, `sendfile` and `splice` reach TCP
//! through `tcp_sendpage` instead: a response whose body goes that way ends its turn at its
//! last `tcp_sendmsg` (typically the headers), a few microseconds early.
//!
//! Without fexit, a kprobe notes the socket per thread and a kretprobe takes the byte count.
//! Unlike reads, no function called at the end of `tcp_sendmsg_locked` carries the count, and
//! the requested size is not what a non-blocking send of a full buffer copies (the HTTP/2
//! walk must see exactly the bytes sent). The kretprobe's instance pool (max(10, 2 × CPUs))
//! is held only by threads blocked in a send (a full send buffer on a blocking socket); more
//! such threads than that lose the returns of other sends meanwhile. A note whose return was
//! lost must not be matched with the thread's next send: every entry replaces or drops the
//! thread's note.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, kprobe, kretprobe, map},
    maps::HashMap,
    programs::{FExitContext, ProbeContext, RetProbeContext},
};

use crate::payload::Source;
use crate::record::{SockLength, btf_arg_value};
use crate::tracked::tracked_entry;
use crate::turns::on_send;

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
    let thread = bpf_get_current_pid_tgid();
    if tracked_entry(&skaddr).is_some() {
        let _ = SEND_CALLS.insert(&thread, &skaddr, 0);
    } else {
        // Usually absent: only a send whose return was lost leaves one behind.
        let _ = SEND_CALLS.remove(&thread);
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
        Source::Syscall,
    );
}
