//! `tcp_recvmsg`: the server consumed payload from a TCP socket, on kernels without
//! `sock:sock_recv_length` (before 6.6: Debian 12 and Amazon Linux 2023 on 6.1, RHEL 9 on
//! 5.14, Ubuntu 22.04 on 5.15).
//!
//! Why this hook: every TCP read (read, recv, recvmsg, readv, io_uring) goes through
//! `inet_recvmsg` to `tcp_recvmsg`, which returns the bytes copied, the same figure the
//! tracepoint reports; the firing feeds the tracepoint program's handler
//! (`turns::on_recv`) unchanged, so turns, protocol detection and the HTTP/2 walk
//! are one code path whichever hook serves them. The payload itself is still found through
//! the task's saved system call registers, as on the tracepoint path.
//!
//! Attached as fexit where the kernel allows BPF trampolines (one program run after the
//! function, with its arguments and return value). Else two kprobes, never a kretprobe: a
//! kretprobe takes an instance from a small per-probe pool (max(10, 2 × CPUs)) at every
//! entry, and every thread blocked in a read of any socket holds one until its read returns.
//! A few idle keep-alive readers exhaust the pool, later returns go unseen, and a thread's
//! unfinished note would then be matched with its next, unrelated read. Instead the entry
//! kprobe notes the socket and flags per thread, and a kprobe on `tcp_cleanup_rbuf(sk,
//! copied)` takes the byte count: `tcp_recvmsg_locked` calls it (out of line on Debian's 6.1
//! and 6.12, checked with a kprobe stack) once before each wait for data, with what it has
//! copied so far, and once at the end with the result. The first call that reports bytes for
//! the noted socket is the read's event and ends the note; calls for other sockets (other
//! paths that consume a socket's queue) leave it alone. A read that waits for more after its
//! first bytes (`MSG_WAITALL`, `SO_RCVLOWAT`) is therefore seen with its first bytes only.
//!
//! The parameter list changed twice: 5.19 dropped `nonblock` and 6.16 `addr_len`:
//! `(sk, msg, len, nonblock, flags, addr_len)`, then `(sk, msg, len, flags, addr_len)`, then
//! `(sk, msg, len, flags)`. `flags` (for `MSG_PEEK`, whose bytes stay queued and are not counted) and, for
//! fexit, the return value sit at different positions, so each list has its own program and
//! the daemon loads the one the kernel's BTF describes.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, kprobe, map},
    maps::LruHashMap,
    programs::{FExitContext, ProbeContext},
};

use crate::payload::Source;
use crate::record::{SockLength, btf_arg_value};
use crate::tracked::tracked_entry;
use crate::turns::on_recv;

/// A read in progress on a tracked socket, from `tcp_recvmsg` to its first bytes.
#[derive(Clone, Copy)]
pub struct RecvCall {
    skaddr: u64,
    flags: i32,
    _pad: u32,
}

/// Reads in progress by thread (`pid_tgid`): a thread is in at most one `tcp_recvmsg` at a
/// time. A read that returns no bytes (an error, the end of the stream) leaves its note until
/// the thread's next read of a tracked socket replaces it; least recently used notes make
/// room when more threads than this have such notes (a thread that exited, or that has not
/// read since).
#[map]
static RECV_CALLS: LruHashMap<u64, RecvCall> = LruHashMap::with_max_entries(16384, 0);

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

/// `void tcp_cleanup_rbuf(struct sock *sk, int copied)`, from within `tcp_recvmsg`.
#[kprobe]
pub fn kprobe_tcp_cleanup_rbuf(ctx: ProbeContext) -> u32 {
    let (Some(skaddr), Some(copied)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    // Before a wait for data (nothing copied yet) and after errors: not the read's event.
    if copied as i32 <= 0 {
        return 0;
    }
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { RECV_CALLS.get(&thread) }).copied() else {
        return 0;
    };
    if call.skaddr != skaddr {
        return 0;
    }
    let _ = RECV_CALLS.remove(&thread);
    finish(&ctx, call.skaddr, call.flags, copied);
    0
}

/// Notes a read of a tracked socket for `tcp_cleanup_rbuf` (others are not followed).
#[inline(always)]
fn start(skaddr: Option<u64>, flags: Option<u64>) {
    let (Some(skaddr), Some(flags)) = (skaddr, flags) else {
        return;
    };
    if tracked_entry(&skaddr).is_none() {
        return;
    }
    let call = RecvCall {
        skaddr,
        flags: flags as i32,
        _pad: 0,
    };
    let _ = RECV_CALLS.insert(&bpf_get_current_pid_tgid(), &call, 0);
}

/// A read copied `ret` bytes (or failed, when negative): hand it to the shared handler.
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
        Source::Syscall,
    );
}
