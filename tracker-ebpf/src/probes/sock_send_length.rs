//! `sock:sock_send_length`: the server handed payload to a socket (kernel 6.6+).
//!
//! Why this hook: the send-side twin of `sock_recv_length` (same format, see there), fired in
//! `sock_sendmsg` for every write path including sendfile/splice. A send inside a turn only
//! records its time in the connection's map entry: the turn's end is the last send before the
//! next inbound payload, known only when that payload (or the close) arrives, so no event
//! here for it. On HTTP/2 connections the frames sent are walked (see `payload`).

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tracker_common::{DIRECTION_OUT, proto::Protocol, sock_length as field};

use crate::maps::TRACKED;
use crate::payload::{take_user_buf, walk_frames};

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    try_sock_send_length(&ctx).unwrap_or(1)
}

fn try_sock_send_length(ctx: &TracePointContext) -> Result<u32, i64> {
    // SAFETY (all `field`): offsets checked against the format file at start-up.
    let skaddr: u64 = unsafe { crate::record::field(ctx, field::SK) }.map_err(i64::from)?;
    let Some(track) = TRACKED.get_ptr_mut(&skaddr) else {
        return Ok(0);
    };
    let bytes: i32 = unsafe { crate::record::field(ctx, field::RET) }.map_err(i64::from)?;
    if bytes <= 0 {
        return Ok(0);
    }
    // SAFETY: a live map value of this connection.
    let track = unsafe { &mut *track };
    // Outbound connections (`--connect`) are followed for their life only.
    if track.outbound != 0 {
        return Ok(0);
    }
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // Sends outside a turn (a greeting before any request) are not busy time.
    if track.in_turn != 0 {
        track.last_send_ns = now;
    }
    if track.protocol == Protocol::Http2 as u32 {
        let buf = take_user_buf(DIRECTION_OUT);
        walk_frames(
            ctx,
            &mut track.walk_out,
            skaddr,
            DIRECTION_OUT,
            &buf,
            bytes as u32,
            now,
        );
    }
    Ok(0)
}
