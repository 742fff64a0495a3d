//! `tcp_recvmsg`: the server consumed payload from a TCP socket, on kernels without
//! `sock:sock_recv_length` (before 6.6: Debian 12 and Amazon Linux 2023 on 6.1, RHEL 9 on
//! 5.14, Ubuntu 22.04 on 5.15).
//!
//! Why this hook: every TCP read (read, recv, recvmsg, readv, io_uring) goes through
//! `inet_recvmsg` to `tcp_recvmsg`, which returns the bytes copied, the same figure the
//! tracepoint reports; the firing feeds the tracepoint program's handler
//! (`sock_recv_length::on_recv`) unchanged, so turns, protocol detection and the HTTP/2 walk
//! are one code path whichever hook serves them. The payload itself is still found through
//! the task's saved system call registers, as on the tracepoint path.
//!
//! Attached as fexit where the kernel allows BPF trampolines (one program run after the
//! function, with its arguments and return value), else as a kprobe that notes the socket and
//! flags per thread plus a kretprobe that reads the return value (two runs and two map
//! operations per read of a tracked socket; untracked sockets cost one lookup).
//!
//! The parameter list changed twice: 5.19 dropped `nonblock` and 6.16 `addr_len`:
//! `(sk, msg, len, nonblock, flags, addr_len)`, then `(sk, msg, len, flags, addr_len)`, then
//! `(sk, msg, len, flags)`. `flags` (for `MSG_PEEK`, whose bytes stay queued and are not counted) and, for
//! fexit, the return value sit at different positions, so each list has its own program and
//! the daemon loads the one the kernel's BTF describes.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, kprobe, kretprobe, map},
    maps::HashMap,
    programs::{FExitContext, ProbeContext, RetProbeContext},
};

use crate::maps::TRACKED;
use crate::probes::sock_recv_length::on_recv;
use crate::record::{SockLength, btf_arg_value};

/// A read in progress on a tracked socket, from kprobe to kretprobe.
#[derive(Clone, Copy)]
pub struct RecvCall {
    skaddr: u64,
    flags: i32,
    _pad: u32,
}

/// Reads in progress by thread (`pid_tgid`): a thread is in at most one `tcp_recvmsg` at a
/// time. Sized for many threads reading tracked sockets at once; an entry is removed by the
/// kretprobe, and a read that finds the map full is simply not counted.
#[map]
static RECV_CALLS: HashMap<u64, RecvCall> = HashMap::with_max_entries(16384, 0);

/// 6.16+: `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags)`.
#[fexit(function = "tcp_recvmsg")]
pub fn fexit_tcp_recvmsg_4(ctx: FExitContext) -> i32 {
    finish(
        &ctx,
        btf_arg_value(&ctx, 0),
        ctx.arg::<u64>(3) as i32,
        ctx.arg::<u64>(4),
    );
    0
}

/// 5.19 to 6.15: `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags,
/// int *addr_len)`.
#[fexit(function = "tcp_recvmsg")]
pub fn fexit_tcp_recvmsg_5(ctx: FExitContext) -> i32 {
    finish(
        &ctx,
        btf_arg_value(&ctx, 0),
        ctx.arg::<u64>(3) as i32,
        ctx.arg::<u64>(5),
    );
    0
}

/// Before 5.19: `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len,
/// int nonblock, int flags, int *addr_len)`.
#[fexit(function = "tcp_recvmsg")]
pub fn fexit_tcp_recvmsg_6(ctx: FExitContext) -> i32 {
    finish(
        &ctx,
        btf_arg_value(&ctx, 0),
        ctx.arg::<u64>(4) as i32,
        ctx.arg::<u64>(6),
    );
    0
}

/// 5.19+: `flags` is the fourth parameter.
#[kprobe]
pub fn kprobe_tcp_recvmsg(ctx: ProbeContext) -> u32 {
    start(ctx.arg(0), ctx.arg::<u64>(3));
    0
}

/// Before 5.19: `flags` is the fifth parameter.
#[kprobe]
pub fn kprobe_tcp_recvmsg_6(ctx: ProbeContext) -> u32 {
    start(ctx.arg(0), ctx.arg::<u64>(4));
    0
}

#[kretprobe]
pub fn kretprobe_tcp_recvmsg(ctx: RetProbeContext) -> u32 {
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { RECV_CALLS.get(&thread) }).copied() else {
        return 0;
    };
    let _ = RECV_CALLS.remove(&thread);
    finish(&ctx, call.skaddr, call.flags, ctx.ret::<u64>());
    0
}

/// Notes a read of a tracked socket for the kretprobe (others are not followed).
#[inline(always)]
fn start(skaddr: Option<u64>, flags: Option<u64>) {
    let (Some(skaddr), Some(flags)) = (skaddr, flags) else {
        return;
    };
    // SAFETY: presence test only.
    if unsafe { TRACKED.get(&skaddr) }.is_none() {
        return;
    }
    let call = RecvCall {
        skaddr,
        flags: flags as i32,
        _pad: 0,
    };
    let _ = RECV_CALLS.insert(&bpf_get_current_pid_tgid(), &call, 0);
}

/// A read returned `ret` (bytes, or a negative error): hand it to the shared handler.
#[inline(always)]
fn finish<C: EbpfContext>(ctx: &C, skaddr: u64, flags: i32, ret: u64) {
    on_recv(
        ctx,
        SockLength {
            skaddr,
            // `int` return value, widened to 64 bits.
            bytes: ret as i32,
            flags,
        },
    );
}
