//! `sock:sock_recv_length`: the server consumed payload from a socket (kernel 6.6+).
//!
//! Why this hook: it fires in `sock_recvmsg` once the bytes have been copied to the reader,
//! with the socket address and the byte count, for every read path (read, recv, recvmsg,
//! readv, io_uring). Only tracked connections the server still holds
//! (`tracked::served_connection`) go further. The first payload of a turn counts the turn in the
//! endpoint's totals (busy time exact when events are lost) and, for connections the daemon
//! was told of, produces an event, so the ring carries one event per request/response turn.
//!
//! Attached as a raw tracepoint (`TP_PROTO(struct sock *sk, int ret, int flags)`), or as the
//! classic one whose format on kernel 6.18 (`events/sock/sock_recv_length/format`;
//! `sock_send_length` is the same) the daemon checks against `tracker_common::sock_length`:
//!
//! ```text
//! field:void * sk;        offset:8;       size:8; signed:0;
//! field:__u16 family;     offset:16;      size:2; signed:0;
//! field:__u16 protocol;   offset:18;      size:2; signed:0;
//! field:int ret;  offset:20;      size:4; signed:1;
//! field:int flags;        offset:24;      size:4; signed:1;
//! ```

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::payload::Source;
use crate::record::SockLength;
use crate::turns::on_recv;

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn raw_sock_recv_length(ctx: RawTracePointContext) -> i32 {
    on_recv(&ctx, SockLength::from_raw(&ctx), Source::Syscall);
    0
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    // SAFETY: attached to sock:sock_recv_length only, after its layout was checked.
    on_recv(
        &ctx,
        unsafe { SockLength::from_record(&ctx) },
        Source::Syscall,
    );
    0
}
