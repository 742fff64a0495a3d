//! `sock:inet_sock_set_state`: every TCP (and SCTP, MPTCP) socket state change.
//!
//! Why this hook: it is a stable tracepoint (kernel 4.16+) that sees listeners open and close,
//! server-side children become established and every socket reach CLOSE, with addresses and
//! ports already decoded, and it needs neither kprobes nor BTF-based attach (both unavailable on
//! the machines we target). The transitions we keep, as seen on kernel 6.18:
//!
//! * `CLOSE → LISTEN` (in the process calling `listen()`): a listener appears. Its port is 0
//!   here when `listen()` picked an ephemeral port; the daemon then learns it from the kernel's
//!   socket table.
//! * `LISTEN → CLOSE`: the listener goes away.
//! * `SYN_RECV → ESTABLISHED` on a child of a listener (softirq context): a server-side
//!   connection is established. Client sockets go `SYN_SENT → ESTABLISHED` and are ignored,
//!   unless their destination is a `--connect` target (`CONNECT_TARGETS`).
//!   (`LISTEN → SYN_RECV`, the child being cloned from its listener, is ignored too.)
//! * `* → CLOSE` for a socket in `TRACKED`: the connection is gone. Sockets in TIME_WAIT have
//!   already passed through CLOSE, so a connection is counted closed once, when its full socket
//!   is released from the state machine.
//!
//! Format on kernel 6.18 (`/sys/kernel/tracing/events/sock/inet_sock_set_state/format`), checked
//! against `tracker_common::inet_sock_set_state` by the daemon at start-up:
//!
//! ```text
//! field:unsigned short common_type;       offset:0;       size:2; signed:0;
//! field:unsigned char common_flags;       offset:2;       size:1; signed:0;
//! field:unsigned char common_preempt_count;       offset:3;       size:1; signed:0;
//! field:int common_pid;   offset:4;       size:4; signed:1;
//!
//! field:const void * skaddr;      offset:8;       size:8; signed:0;
//! field:int oldstate;     offset:16;      size:4; signed:1;
//! field:int newstate;     offset:20;      size:4; signed:1;
//! field:__u16 sport;      offset:24;      size:2; signed:0;
//! field:__u16 dport;      offset:26;      size:2; signed:0;
//! field:__u16 family;     offset:28;      size:2; signed:0;
//! field:__u16 protocol;   offset:30;      size:2; signed:0;
//! field:__u8 saddr[4];    offset:32;      size:4; signed:0;
//! field:__u8 daddr[4];    offset:36;      size:4; signed:0;
//! field:__u8 saddr_v6[16];        offset:40;      size:16;        signed:0;
//! field:__u8 daddr_v6[16];        offset:56;      size:16;        signed:0;
//! ```

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use tracker_common::{
    AF_INET, AF_INET6, ConnKey, ConnTrack, EventKind, IPPROTO_TCP, LOST_SLOT, SockEvent,
    TRACK_FULL_SLOT, inet_sock_set_state as field, tcp_state,
};

use aya_log_ebpf::warn;

use crate::maps::{
    CONFIG, CONNECT_TARGETS, EVENTS, PREEXISTING, TRACKED, count_lost, port_wanted, submit,
};

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // A failed field read has nowhere to be reported but the return value, which tracepoints
    // ignore; the daemon's reconciliation with the kernel's tables is the safety net.
    try_inet_sock_set_state(&ctx).unwrap_or(1)
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<u32, i64> {
    // SAFETY (all `field` below): offsets and sizes are those of the tracepoint's format,
    // verified by the daemon before this program is attached.
    let protocol: u16 = unsafe { crate::record::field(ctx, field::PROTOCOL) }.map_err(i64::from)?;
    if protocol != IPPROTO_TCP {
        return Ok(0);
    }
    let old_state: i32 =
        unsafe { crate::record::field(ctx, field::OLDSTATE) }.map_err(i64::from)?;
    let new_state: i32 =
        unsafe { crate::record::field(ctx, field::NEWSTATE) }.map_err(i64::from)?;
    let skaddr: u64 = unsafe { crate::record::field(ctx, field::SKADDR) }.map_err(i64::from)?;

    // SAFETY: TracePointContext helpers are plain calls.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut turn_end_ns = 0;
    let kind = match (old_state, new_state) {
        (tcp_state::CLOSE, tcp_state::LISTEN) => EventKind::ListenerUp,
        (tcp_state::LISTEN, tcp_state::CLOSE) => EventKind::ListenerDown,
        (tcp_state::SYN_RECV, tcp_state::ESTABLISHED) => EventKind::ConnOpen,
        (tcp_state::SYN_SENT, tcp_state::ESTABLISHED) => {
            if !is_connect_target(ctx) {
                return Ok(0);
            }
            EventKind::OutboundOpen
        }
        (_, tcp_state::CLOSE) => {
            let Some(track) = TRACKED.get_ptr(&skaddr) else {
                return close_preexisting(ctx, skaddr, now);
            };
            // SAFETY: a live map value; copied out before the entry is removed.
            let track = unsafe { *track };
            if track.in_turn != 0 {
                // The open turn ended with the server's last send, or, if it never answered,
                // now.
                turn_end_ns = if track.last_send_ns != 0 {
                    track.last_send_ns
                } else {
                    now
                };
            }
            // Forget it even if the event below cannot be sent: the map must not fill up with
            // dead sockets.
            let _ = TRACKED.remove(&skaddr);
            EventKind::ConnClose
        }
        _ => return Ok(0),
    };

    let local_port: u16 = unsafe { crate::record::field(ctx, field::SPORT) }.map_err(i64::from)?;
    // Closes are filtered by TRACKED membership (decided at open time), outbound connections
    // by destination, the rest by port.
    if !matches!(kind, EventKind::ConnClose | EventKind::OutboundOpen) && !port_wanted(local_port) {
        return Ok(0);
    }

    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        count_lost(LOST_SLOT);
        return Ok(0);
    };

    let track = ConnTrack {
        outbound: u32::from(kind == EventKind::OutboundOpen),
        ..ConnTrack::default()
    };
    if matches!(kind, EventKind::ConnOpen | EventKind::OutboundOpen)
        && TRACKED
            .insert(&skaddr, &track, u64::from(BPF_NOEXIST))
            .is_err()
    {
        // Untrackable: its close would never be reported. Tell the daemon through the counter
        // rather than reporting an open whose close can never follow.
        entry.discard(0);
        count_lost(TRACK_FULL_SLOT);
        warn!(
            ctx,
            "connection table full: a connection on port {} is not tracked", local_port
        );
        return Ok(0);
    }

    entry.write(connection_event(
        kind,
        skaddr,
        now,
        &read_endpoints(ctx),
        turn_end_ns,
    ));
    submit(entry);
    Ok(0)
}

/// The socket's endpoints. Every read has a fallback (zeroes): callers may hold a ring entry
/// that must be submitted or discarded whatever happens.
#[inline(always)]
fn read_endpoints(ctx: &TracePointContext) -> ConnKey {
    // SAFETY (all `field`): offsets checked against the format file at start-up.
    let family: u16 = unsafe { crate::record::field(ctx, field::FAMILY) }.unwrap_or(0);
    let mut key = ConnKey {
        family,
        local_port: unsafe { crate::record::field(ctx, field::SPORT) }.unwrap_or(0),
        remote_port: unsafe { crate::record::field(ctx, field::DPORT) }.unwrap_or(0),
        ..ConnKey::default()
    };
    if family == AF_INET {
        let local: [u8; 4] = unsafe { crate::record::field(ctx, field::SADDR) }.unwrap_or([0; 4]);
        let remote: [u8; 4] = unsafe { crate::record::field(ctx, field::DADDR) }.unwrap_or([0; 4]);
        key.local_addr[..4].copy_from_slice(&local);
        key.remote_addr[..4].copy_from_slice(&remote);
    } else if family == AF_INET6 {
        key.local_addr = unsafe { crate::record::field(ctx, field::SADDR_V6) }.unwrap_or([0; 16]);
        key.remote_addr = unsafe { crate::record::field(ctx, field::DADDR_V6) }.unwrap_or([0; 16]);
    }
    key
}

/// A socket not seen open reached CLOSE: if the daemon adopted it from the kernel's table
/// (see `PREEXISTING`), report its close like any other.
#[inline(always)]
fn close_preexisting(ctx: &TracePointContext, skaddr: u64, now: u64) -> Result<u32, i64> {
    if CONFIG.get(0).is_none_or(|config| config.preexisting == 0) {
        return Ok(0);
    }
    let endpoints = read_endpoints(ctx);
    // SAFETY: presence test only.
    if unsafe { PREEXISTING.get(&endpoints) }.is_none() {
        return Ok(0);
    }
    let _ = PREEXISTING.remove(&endpoints);
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        count_lost(LOST_SLOT);
        return Ok(0);
    };
    entry.write(connection_event(
        EventKind::ConnClose,
        skaddr,
        now,
        &endpoints,
        0,
    ));
    submit(entry);
    Ok(0)
}

/// Whether this client-side connection goes to a `--connect` destination.
#[inline(always)]
fn is_connect_target(ctx: &TracePointContext) -> bool {
    if CONFIG
        .get(0)
        .is_none_or(|config| config.connect_targets == 0)
    {
        return false;
    }
    let endpoints = read_endpoints(ctx);
    let target = ConnKey {
        family: endpoints.family,
        remote_port: endpoints.remote_port,
        remote_addr: endpoints.remote_addr,
        ..ConnKey::default()
    };
    // SAFETY: presence test only.
    unsafe { CONNECT_TARGETS.get(&target) }.is_some()
}

/// The event for a socket with these endpoints, stamped with the current task (meaningful
/// for listen(), which runs in the caller's context).
#[inline(always)]
fn connection_event(
    kind: EventKind,
    skaddr: u64,
    now: u64,
    endpoints: &ConnKey,
    aux: u64,
) -> SockEvent {
    SockEvent {
        kind: kind as u32,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        timestamp_ns: now,
        skaddr,
        family: endpoints.family,
        local_port: endpoints.local_port,
        remote_port: endpoints.remote_port,
        _pad: 0,
        local_addr: endpoints.local_addr,
        remote_addr: endpoints.remote_addr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        aux,
        detail: 0,
        netns: netns_of(skaddr),
    }
}

/// Inode number of the network namespace of socket `skaddr`, through the offsets the daemon
/// found in the kernel's BTF; 0 when they are unknown or a read fails.
#[inline(always)]
fn netns_of(skaddr: u64) -> u32 {
    let Some(config) = CONFIG.get(0) else {
        return 0;
    };
    if config.sock_net_offset == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel fails cleanly on a bad address.
    let net: u64 = unsafe {
        bpf_probe_read_kernel(skaddr.wrapping_add(u64::from(config.sock_net_offset)) as *const u64)
    }
    .unwrap_or(0);
    if net == 0 {
        return 0;
    }
    // SAFETY: as above.
    unsafe {
        bpf_probe_read_kernel(net.wrapping_add(u64::from(config.net_inum_offset)) as *const u32)
    }
    .unwrap_or(0)
}
