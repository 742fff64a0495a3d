//! `sock:sock_send_length`: the server handed payload to a socket (kernel 6.6+).
//!
//! Why this hook: the send-side twin of `sock_recv_length` (same arguments and format, see
//! there; attached the same two ways), fired in `sock_sendmsg` for every write path including
//! sendfile/splice. A send inside a turn records its time in the connection's map entry and
//! restarts the turn's `answered` span in the endpoint's totals: the turn's end is the last send
//! before the next inbound payload, known only when that payload (or the close) arrives, so no
//! event here for it. On HTTP/2 connections the frames sent are walked (see `payload`); on HTTP/1
//! ones the first bytes of each answer are read for a `101 Switching Protocols`.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_ktime_get_ns,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracker_common::{DIRECTION_OUT, proto::Protocol};

use crate::maps::{count_answer, served_connection};
use crate::payload::{Source, answer_switches_protocols, walk_frames};
use crate::probes::openssl::{self, ssl_call_on};
use crate::record::SockLength;

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

/// Payload the server sent: to its socket, or as plaintext to its TLS library (see
/// `sock_recv_length::on_recv`).
#[inline(always)]
pub(crate) fn on_send<C: EbpfContext>(ctx: &C, call: SockLength, source: Source) {
    if call.bytes <= 0 {
        return;
    }
    let skaddr = call.skaddr;
    let Some(track) = served_connection(&skaddr) else {
        return;
    };
    if matches!(source, Source::Syscall)
        && matches!(ssl_call_on(skaddr), openssl::READ | openssl::WRITE)
    {
        return;
    }
    // SAFETY: a live map value of this connection.
    let track = unsafe { &mut *track };
    // Outbound connections (`--connect`) are followed for their life only, and so are
    // connections that left HTTP.
    if track.outbound != 0 || track.protocol == Protocol::Hijacked as u32 {
        return;
    }
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // The first send of an HTTP/1 answer: a `101 Switching Protocols` takes the connection out
    // of HTTP/1 (a WebSocket, an h2c upgrade); the client's next bytes say into what.
    if track.protocol == Protocol::Http1 as u32
        && track.in_turn != 0
        && track.last_send_ns == 0
        && answer_switches_protocols(source, call.bytes as u32)
    {
        track.protocol = Protocol::Switching as u32;
    }
    // Sends outside a turn (a greeting before any request) are not busy time.
    if track.in_turn != 0 {
        count_answer(&track.endpoint, track.last_send_ns, now);
        track.last_send_ns = now;
    }
    // Frames of a connection the daemon was never told of would be dropped.
    if track.unreported == 0 && track.protocol == Protocol::Http2 as u32 {
        let buf = source.buffer(DIRECTION_OUT, call.bytes as u32);
        walk_frames(
            ctx,
            &mut track.walk_out,
            skaddr,
            DIRECTION_OUT,
            &buf,
            call.bytes as u32,
            now,
        );
    }
}
