//! Payload the server read, from its socket or from its TLS library: where a turn starts.

use aya_ebpf::{EbpfContext, helpers::bpf_ktime_get_ns};
use tracker_common::{
    ConnTrack, DIRECTION_IN, MSG_PEEK,
    payloads::{Decided, TurnPayload},
    proto::Protocol,
    walk::SyscallBuffer,
};

use crate::payload::{Source, detect_protocol, switch_protocol, walk_frames};
use crate::record::SockLength;
use crate::ring::emit_for_socket;
use crate::tls_calls::{self, may_be_in_tls_call, ssl_call_on};
use crate::totals::{TurnCut, count_turn};
use crate::tracked::served_connection;

/// Payload the server read: from its socket (`Source::Syscall`), or as plaintext from its TLS
/// library (`Source::Plaintext`, see `openssl`), whose socket reads are then left alone.
#[inline(always)]
pub fn on_recv<C: EbpfContext>(ctx: &C, call: SockLength, source: Source) {
    // Failed reads (a non-blocking server's EAGAIN) and peeks first: they cost no lookup.
    if call.bytes <= 0 || call.flags & MSG_PEEK != 0 {
        return;
    }
    let skaddr = call.skaddr;
    let Some(track) = served_connection(&skaddr) else {
        return;
    };
    // SAFETY: a live map value of this connection; concurrent readers of one socket are rare
    // and at worst split a turn in two.
    let track = unsafe { &mut *track };
    let ssl_call = match source {
        Source::Syscall if may_be_in_tls_call(track) => ssl_call_on(skaddr),
        Source::Syscall | Source::Plaintext(_) => 0,
    };
    if ssl_call == tls_calls::READ || ssl_call == tls_calls::WRITE {
        return;
    }
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
    let Some(decided) = decide(track, &buf, bytes, (undecided, switching), ssl_call) else {
        return;
    };
    let reported = track.unreported == 0;
    start_turn_if_new(track, skaddr, now, decided, reported);
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

/// The protocol this payload decides, as the daemon gets it with the turn (0: nothing new):
/// at a connection's first payload (`undecided`), and at the first after a `101`
/// (`switching`), when None means it is no request at all (the connection left HTTP).
#[inline(always)]
fn decide(
    track: &mut ConnTrack,
    buf: &SyscallBuffer,
    bytes: u32,
    (undecided, switching): (bool, bool),
    ssl_call: u32,
) -> Option<Decided> {
    if undecided {
        let protocol = detect_protocol(track, buf, bytes);
        if protocol == Protocol::Tls as u32 {
            track.tls = 1;
            if ssl_call == tls_calls::HANDSHAKE {
                return Some(Decided::tls_followed());
            }
        }
        return Some(Decided::protocol(protocol));
    }
    if switching {
        // The `101` ended the upgrade request's turn and was counted then (see `on_send`):
        // what the client sends next either starts HTTP/2's first turn or is no request at
        // all.
        let protocol = switch_protocol(track, buf, bytes);
        if protocol == Protocol::Hijacked {
            return None;
        }
        return Some(Decided::protocol(protocol as u32));
    }
    Some(Decided::NOTHING)
}

/// Payload read at `now` starts a turn unless it continues the current one: the turn it ends
/// is counted, and the daemon told if it knows the connection (`reported`), with the
/// protocol just `decided`.
#[inline(always)]
fn start_turn_if_new(
    track: &mut ConnTrack,
    skaddr: u64,
    now: u64,
    decided: Decided,
    reported: bool,
) {
    let turn_starts = if track.in_turn == 0 {
        Some(0)
    } else if track.last_send_ns != 0 {
        // The server answered since the turn began: this payload starts the next turn.
        Some(track.last_send_ns)
    } else if !decided.is_nothing() {
        // A TLS connection's first plaintext while its handshake's turn is still open (the
        // server sent nothing after the client's last handshake record): the handshake's turn
        // ends here and the request's begins, whose event carries the protocol.
        Some(now)
    } else {
        // More of the same request: still one turn.
        None
    };
    // Its open never reached the daemon (not `reported`): its turns are counted, nothing
    // more is sent.
    let Some(previous_turn_end) = turn_starts else {
        return;
    };
    let cut = TurnCut {
        ends_at: previous_turn_end,
        answered_at: if previous_turn_end != 0 {
            track.last_send_ns
        } else {
            0
        },
    };
    count_turn(track.totals_slot, cut, now);
    track.in_turn = 1;
    track.last_send_ns = 0;
    if reported {
        let note = TurnPayload {
            previous_end_ns: previous_turn_end,
            decided,
        };
        emit_for_socket(skaddr, now, note);
    }
}
