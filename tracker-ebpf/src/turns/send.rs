//! Payload the server sent, to its socket or to its TLS library: a turn's answer.

use aya_ebpf::{EbpfContext, helpers::bpf_ktime_get_ns};
use tracker_common::{
    ConnTrack, DIRECTION_OUT,
    payloads::{Decided, TurnPayload},
    proto::{AnswerStatus, Protocol},
};

use crate::payload::{Source, answer_status, walk_frames};
use crate::record::SockLength;
use crate::ring::emit_for_socket;
use crate::tls_calls::{self, may_be_in_tls_call, ssl_call_on};
use crate::totals::{TurnCut, count_answer, count_turn};
use crate::tracked::served_connection;

/// Payload the server sent: to its socket, or as plaintext to its TLS library (see
/// `on_recv`).
#[inline(always)]
pub fn on_send<C: EbpfContext>(ctx: &C, call: SockLength, source: Source) {
    if call.bytes <= 0 {
        return;
    }
    let skaddr = call.skaddr;
    let Some(track) = served_connection(&skaddr) else {
        return;
    };
    // SAFETY: a live map value of this connection.
    let track = unsafe { &mut *track };
    if matches!(source, Source::Syscall)
        && may_be_in_tls_call(track)
        && matches!(ssl_call_on(skaddr), tls_calls::READ | tls_calls::WRITE)
    {
        return;
    }
    // Outbound connections (`--connect`) are followed for their life only, and so are
    // connections that left HTTP or are leaving it (the client has not said for what yet).
    if track.outbound != 0
        || track.protocol == Protocol::Hijacked as u32
        || track.protocol == Protocol::Switching as u32
    {
        return;
    }
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // The first send of an HTTP/1 answer says what it is.
    if track.protocol == Protocol::Http1 as u32 && track.in_turn != 0 && track.last_send_ns == 0 {
        match answer_status(source, call.bytes as u32) {
            // `100 Continue` and the like: the request goes on (the client may send its body
            // next, which is no new request), and it is still busy until its answer.
            AnswerStatus::Interim => return,
            AnswerStatus::Switching => {
                switch_protocols(track, skaddr, now);
                return;
            }
            AnswerStatus::Final => {}
        }
    }
    // Sends outside a turn (a greeting before any request) are not busy time.
    if track.in_turn != 0 {
        count_answer(track.totals_slot, track.last_send_ns, now);
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

/// The server sent a `101 Switching Protocols` at `now`, the first send of its answer to the
/// upgrade request: that request's turn ends here, and the connection leaves HTTP/1, counted
/// upgraded now, whatever the client does next. No turn is open until the client's next bytes
/// say what follows: an h2c upgrade's preface starts one as HTTP/2, a WebSocket never does,
/// however much the server pushes.
#[inline(always)]
fn switch_protocols(track: &mut ConnTrack, skaddr: u64, now: u64) {
    let cut = TurnCut {
        ends_at: now,
        answered_at: 0,
    };
    count_turn(track.totals_slot, cut, 0);
    track.in_turn = 0;
    track.last_send_ns = 0;
    track.protocol = Protocol::Switching as u32;
    if track.unreported == 0 {
        let note = TurnPayload {
            previous_end_ns: now,
            decided: Decided::upgraded(),
        };
        emit_for_socket(skaddr, now, note);
    }
}
