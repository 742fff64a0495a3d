//! `sock:sock_send_length`: the server handed payload to a socket (kernel 6.6+).
//!
//! Why this hook: the send-side twin of `sock_recv_length` (same arguments and format, see
//! there; attached the same two ways), fired in `sock_sendmsg` for every write path including
//! sendfile/splice. A send inside a turn records its time in the connection's map entry and
//! restarts the turn's `answered` span in the endpoint's totals: the turn's end is the last send
//! before the next inbound payload, known only when that payload (or the close) arrives, so no
//! event here for it. On HTTP/2 connections the frames sent are walked (see `payload`); on HTTP/1
//! ones the first bytes of each answer are read for its status: an interim `1xx` is not the
//! answer (the request goes on), a `101 Switching Protocols` ends the turn and HTTP/1 at once.

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::payload::Source;
use crate::record::SockLength;
use crate::turns::on_send;

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn raw_sock_send_length(ctx: RawTracePointContext) -> i32 {
    on_send(&ctx, SockLength::from_raw(&ctx), Source::Syscall);
    0
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    // SAFETY: attached to sock:sock_send_length only, after its layout was checked.
    on_send(
        &ctx,
        unsafe { SockLength::from_record(&ctx) },
        Source::Syscall,
    );
    0
}
