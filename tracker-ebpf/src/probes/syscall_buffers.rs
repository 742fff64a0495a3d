//! `syscalls:sys_enter_{read,recvfrom,readv,recvmsg,write,sendto,writev,sendmsg}`: remember
//! where the calling thread's user buffer is.
//!
//! Why these hooks: `sock:sock_recv_length` / `sock_send_length` give the socket and byte
//! count but not the bytes. On this kernel each of these system calls runs, in one thread,
//! `sys_enter_X` (with the user buffer), then the socket tracepoint (bytes now in, or taken
//! from, that buffer), then `sys_exit_X`. So the buffer is stored here keyed by thread, and
//! the socket probes read it back, for tracked connections only, to detect the protocol and
//! walk HTTP/2 frame headers. The user-space layouts read (`iovec`, `user_msghdr`) are stable
//! ABI. To keep the cost off clients and unrelated programs, only processes that have called
//! `accept()`/`accept4()` (`sys_enter_accept{,4}`, which mark them in `SERVER_TGIDS`) have
//! their buffers remembered; every other process pays one map lookup per such call.
//!
//! Formats on kernel 6.18 (`events/syscalls/sys_enter_read/format`; the others differ only in
//! argument names, checked by the daemon at start-up):
//!
//! ```text
//! field:int __syscall_nr; offset:8;       size:4; signed:1;
//! field:unsigned int fd;  offset:16;      size:8; signed:0;
//! field:char * buf;       offset:24;      size:8; signed:0;
//! field:size_t count;     offset:32;      size:8; signed:0;
//! ```

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use tracker_common::{DIRECTION_IN, DIRECTION_OUT, UserBuf, buf_shape, syscall_args};

use crate::maps::{SERVER_TGIDS, USER_BUFS};

#[inline(always)]
fn remember(ctx: &TracePointContext, shape: u32, direction: u32) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Only servers' buffers matter: skip every other process with one lookup.
    // SAFETY: presence test only.
    if unsafe { SERVER_TGIDS.get(&((pid_tgid >> 32) as u32)) }.is_none() {
        return 0;
    }
    // SAFETY: offsets checked against the format files at start-up.
    let ptr: u64 = unsafe { crate::record::field(ctx, syscall_args::BUF) }.unwrap_or(0);
    let count: u64 = unsafe { crate::record::field(ctx, syscall_args::COUNT) }.unwrap_or(0);
    if ptr == 0 {
        return 0;
    }
    let buf = UserBuf {
        ptr,
        count,
        shape,
        direction,
    };
    let _ = USER_BUFS.insert(&pid_tgid, &buf, 0);
    0
}

/// A process accepting a connection is a server: from now on its buffers are remembered.
/// (It accepts before it reads what a new connection sends, so nothing is missed.)
#[inline(always)]
fn mark_server() -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: presence test only.
    if unsafe { SERVER_TGIDS.get(&tgid) }.is_none() {
        let _ = SERVER_TGIDS.insert(&tgid, &0, 0);
    }
    0
}

#[tracepoint]
pub fn sys_enter_accept(_ctx: TracePointContext) -> u32 {
    mark_server()
}

#[tracepoint]
pub fn sys_enter_accept4(_ctx: TracePointContext) -> u32 {
    mark_server()
}

#[tracepoint]
pub fn sys_enter_read(ctx: TracePointContext) -> u32 {
    remember(&ctx, buf_shape::FLAT, DIRECTION_IN)
}

#[tracepoint]
pub fn sys_enter_recvfrom(ctx: TracePointContext) -> u32 {
    remember(&ctx, buf_shape::FLAT, DIRECTION_IN)
}

#[tracepoint]
pub fn sys_enter_readv(ctx: TracePointContext) -> u32 {
    remember(&ctx, buf_shape::IOVEC, DIRECTION_IN)
}

#[tracepoint]
pub fn sys_enter_recvmsg(ctx: TracePointContext) -> u32 {
    remember(&ctx, buf_shape::MSGHDR, DIRECTION_IN)
}

#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    remember(&ctx, buf_shape::FLAT, DIRECTION_OUT)
}

#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    remember(&ctx, buf_shape::FLAT, DIRECTION_OUT)
}

#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    remember(&ctx, buf_shape::IOVEC, DIRECTION_OUT)
}

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    remember(&ctx, buf_shape::MSGHDR, DIRECTION_OUT)
}
