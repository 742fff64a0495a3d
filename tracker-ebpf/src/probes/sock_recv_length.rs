//! `sock:sock_recv_length`: the server consumed payload from a socket (kernel 6.6+).
//!
//! Why this hook: it fires in `sock_recvmsg` once the bytes have been copied to the reader,
//! with the socket address and the byte count, for every read path (read, recv, recvmsg,
//! readv, io_uring). Only tracked connections the server still holds
//! (`maps::served_connection`) go further. The first payload of a turn counts the turn in the
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
    EbpfContext,
    helpers::bpf_ktime_get_ns,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracker_common::{
    DIRECTION_IN, EventKind, MSG_PEEK,
    proto::{Protocol, TLS_FOLLOWED},
    walk::SyscallBuffer,
};

use crate::maps::{TurnCut, count_turn, emit_for_socket, served_connection};
use crate::payload::{Source, detect_protocol, switch_protocol, walk_frames};
use crate::probes::openssl::{self, ssl_call_on};
use crate::record::SockLength;

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

/// Payload the server read: from its socket (`Source::Syscall`), or as plaintext from its TLS
/// library (`Source::Plaintext`, see `openssl`), whose socket reads are then left alone.
#[inline(always)]
pub(crate) fn on_recv<C: EbpfContext>(ctx: &C, call: SockLength, source: Source) {
    // Failed reads (a non-blocking server's EAGAIN) and peeks first: they cost no lookup.
    if call.bytes <= 0 || call.flags & MSG_PEEK != 0 {
        return;
    }
    let skaddr = call.skaddr;
    let Some(track) = served_connection(&skaddr) else {
        return;
    };
    let ssl_call = match source {
        Source::Syscall => ssl_call_on(skaddr),
        Source::Plaintext(_) => 0,
    };
    if ssl_call == openssl::READ || ssl_call == openssl::WRITE {
        return;
    }
    // SAFETY: a live map value of this connection; concurrent readers of one socket are rare
    // and at worst split a turn in two.
    let track = unsafe { &mut *track };
    // Outbound connections (`--connect`) are followed for their life only, and so are
    // connections that left HTTP.
    if track.outbound != 0 || track.protocol == Protocol::Hijacked as u32 {
        return;
    }
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let bytes = call.bytes as u32;

    // The payload is looked at only to decide the protocol (at first, and after a `101`), and
    // then for HTTP/2 frames.
    // TLS records are decided again from their plaintext, where the library hooks see it.
    let undecided = track.protocol == Protocol::Undetermined as u32
        || (matches!(source, Source::Plaintext(_)) && track.protocol == Protocol::Tls as u32);
    let switching = track.protocol == Protocol::Switching as u32;
    let http2 = track.protocol == Protocol::Http2 as u32;
    let buf = if undecided || switching || http2 {
        source.buffer(DIRECTION_IN, bytes)
    } else {
        SyscallBuffer::default()
    };
    // Decided before the turn starts, so the daemon knows what a turn means for this
    // connection: the first turn's event carries it.
    let decided = if undecided {
        let protocol = detect_protocol(track, &buf, bytes);
        if protocol == Protocol::Tls as u32 && ssl_call == openssl::HANDSHAKE {
            protocol | TLS_FOLLOWED
        } else {
            protocol
        }
    } else if switching {
        // The `101` ended the upgrade request's turn and was counted then (see
        // `sock_send_length`): what the client sends next either starts HTTP/2's first turn
        // or is no request at all.
        let protocol = switch_protocol(track, &buf, bytes);
        if protocol == Protocol::Hijacked {
            return;
        }
        protocol as u32
    } else {
        0
    };
    let turn_starts = if track.in_turn == 0 {
        Some(0)
    } else if track.last_send_ns != 0 {
        // The server answered since the turn began: this payload starts the next turn.
        Some(track.last_send_ns)
    } else if decided != 0 {
        // A TLS connection's first plaintext while its handshake's turn is still open (the
        // server sent nothing after the client's last handshake record): the handshake's turn
        // ends here and the request's begins, whose event carries the protocol.
        Some(now)
    } else {
        // More of the same request: still one turn.
        None
    };
    // Its open never reached the daemon: its turns are counted, nothing more is sent.
    let reported = track.unreported == 0;
    if let Some(previous_turn_end) = turn_starts {
        let cut = TurnCut {
            ends_at: previous_turn_end,
            answered_at: if previous_turn_end != 0 {
                track.last_send_ns
            } else {
                0
            },
        };
        count_turn(&track.endpoint, cut, now);
        track.in_turn = 1;
        track.last_send_ns = 0;
        if reported {
            emit_for_socket(
                EventKind::Turn as u32,
                skaddr,
                now,
                previous_turn_end,
                decided,
            );
        }
    }

    if reported && track.protocol == Protocol::Http2 as u32 {
        walk_frames(
            ctx,
            &mut track.walk_in,
            skaddr,
            DIRECTION_IN,
            &buf,
            bytes,
            now,
        );
    }
}
