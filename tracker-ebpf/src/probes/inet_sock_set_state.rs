//! `sock:inet_sock_set_state`: every TCP (and SCTP, MPTCP) socket state change.
//!
//! Why this hook: it is a stable tracepoint (kernel 4.16+) that sees listeners open and close,
//! server-side children become established and every socket reach CLOSE, with addresses and
//! ports already decoded, and it needs neither kprobes nor fentry (hardened kernels compile
//! the first out and refuse the second, as on this project's 6.18 hosts). The transitions we
//! keep, as seen on kernel 6.18:
//!
//! * `CLOSE → LISTEN` (in the process calling `listen()`): a listener appears. Its port is 0
//!   here when `listen()` picked an ephemeral port; the daemon then learns it from the kernel's
//!   socket table.
//! * `LISTEN → CLOSE`: the listener goes away.
//! * `SYN_RECV → ESTABLISHED` on a child of a listener (softirq context): a server-side
//!   connection is established. Client sockets go `SYN_SENT → ESTABLISHED` and are ignored,
//!   unless their destination is a `--connect` target (`CONNECT_TARGETS`).
//!   (`LISTEN → SYN_RECV`, the child being cloned from its listener, is ignored too.)
//! * `ESTABLISHED → FIN_WAIT1` (the server closed first) and `CLOSE_WAIT → LAST_ACK` (it
//!   closed after the client) for a socket in `TRACKED`: the server has closed the
//!   connection. Its life as the server sees it ends, and the daemon is told so; the kernel
//!   finishes it from here (its closing phase), counted in the endpoint's totals only. A close
//!   by reset goes to CLOSE at once, with no closing phase.
//! * `* → CLOSE` for a socket in `TRACKED`: the connection is gone. The daemon is told only if
//!   it was not at the server's close (a reset, or an outbound connection). Sockets in
//!   TIME_WAIT have already passed through CLOSE, so a connection is counted closed once, when
//!   its full socket is released from the state machine. Except `FIN_WAIT2 → CLOSE` of one the
//!   server closed, before the client's FIN: the kernel handed it to a time-wait socket that
//!   still waits for that FIN, and its closing phase goes on there; it is recorded in
//!   `HANDED_OVER`, and the daemon counts its end (see `tracker_common::handover`).
//!
//! Attached as a raw tracepoint where the daemon found the socket's field offsets in the
//! kernel's BTF (`TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`):
//! the state pair decides almost every firing, so the fields are read only for the few that
//! matter. Otherwise as the classic tracepoint, whose format on kernel 6.18
//! (`/sys/kernel/tracing/events/sock/inet_sock_set_state/format`) the daemon checks against
//! `tracker_common::inet_sock_set_state` at start-up:
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

use aya_ebpf::bindings::BPF_NOEXIST;
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracker_common::{
    Config, ConnKey, ConnTrack, Endpoint, EventKind, HANDOVER_FULL_SLOT, IPPROTO_TCP, LOST_SLOT,
    NO_SLOT, OPEN_UNTRACKED, SockEvent, TRACK_FULL_SLOT,
    handover::{HandedOver, SOCK_DONE},
    payloads::ConnClosePayload,
    tcp_state,
};

use aya_log_ebpf::warn;

use crate::loss::count_lost;
use crate::record::{RawStateChange, RecordStateChange, StateChange, kernel};
use crate::ring::{EVENTS, emit_for_socket, submit};
use crate::settings::{CONFIG, CONNECT_TARGETS, port_wanted};
use crate::totals::{
    Total, TurnCut, count_close, count_total, counts_in, end_life_at_server_close, slot_of,
    turn_end_at,
};
use crate::tracked::{
    FOLLOWED_OUTBOUND, FOLLOWED_UNTRACKED, FOLLOWS_UNTRACKED, HANDED_OVER, PREEXISTING,
    claim_server_close, following_by_endpoints, track_connection, tracked_entry, untrack,
};
use crate::zeroed::zero_words;

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn raw_inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let Some(config) = CONFIG.get(0) else {
        return 0;
    };
    let change = RawStateChange {
        ctx: &ctx,
        layout: &config.sock,
    };
    on_state_change(&change, config);
    0
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let Some(config) = CONFIG.get(0) else {
        return 0;
    };
    on_state_change(&RecordStateChange(&ctx), config);
    0
}

// Nothing here can fail in a way worth a return value (tracepoints ignore it): reads fall back
// to zeroes, and the daemon's reconciliation with the kernel's tables is the safety net.
#[inline(always)]
fn on_state_change<C: StateChange>(change: &C, config: &Config) {
    let (old_state, new_state) = change.states();
    let skaddr = change.skaddr();
    let kind = match (old_state, new_state) {
        (tcp_state::CLOSE, tcp_state::LISTEN) => EventKind::ListenerUp,
        (tcp_state::LISTEN, tcp_state::CLOSE) => EventKind::ListenerDown,
        (tcp_state::SYN_RECV, tcp_state::ESTABLISHED) => EventKind::ConnOpen,
        (tcp_state::ESTABLISHED, tcp_state::FIN_WAIT1)
        | (tcp_state::CLOSE_WAIT, tcp_state::LAST_ACK) => {
            server_sent_fin(change, skaddr, config);
            return;
        }
        (tcp_state::SYN_SENT, tcp_state::ESTABLISHED) => {
            if config.connect_targets == 0 || !is_connect_target(change) {
                return;
            }
            EventKind::OutboundOpen
        }
        (_, tcp_state::CLOSE) => {
            // Closes are filtered by TRACKED membership (decided at open time).
            if let Some(close) = closed(change, skaddr, old_state, config) {
                // The daemon knows a tracked socket by its address since its open: a short
                // event, with the end of a turn the close cut short.
                let turn_end_ns = close.turn_end_ns;
                emit_for_socket(skaddr, close.at, ConnClosePayload { turn_end_ns });
            }
            return;
        }
        _ => return,
    };
    // The other kinds are checked here, after the state pair has filtered out nearly every
    // firing: TCP only, outbound connections by destination, the rest by port.
    if change.protocol() != IPPROTO_TCP {
        return;
    }
    let local_port = change.local_port();
    if kind != EventKind::OutboundOpen && !port_wanted(local_port) {
        return;
    }
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    announce(change, (skaddr, local_port), kind, now, config);
}

/// A close the daemon is still to be told of: when it was counted, which is also the time its
/// event carries, and the end of a turn it cut short (0: none).
struct CloseToTell {
    at: u64,
    turn_end_ns: u64,
}

/// Socket `skaddr` reached CLOSE from `old_state`: forgets it and counts its close where that
/// is still to be done. The close to tell the daemon of, if it was not told at the server's
/// close and knows the connection by its address.
#[inline(always)]
fn closed<C: StateChange>(
    change: &C,
    skaddr: u64,
    old_state: i32,
    config: &Config,
) -> Option<CloseToTell> {
    let Some(track) = tracked_entry(&skaddr) else {
        if following_by_endpoints(config) {
            close_followed(change, skaddr, Counted::No, Phase::Close);
        }
        return None;
    };
    // SAFETY: a plain helper call.
    let closed_at = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a live map value; the fields needed are copied out before the entry is
    // removed (not the whole value: its frame walks are most of it).
    let (in_turn, sent, outbound, unreported, local, slot, close) = unsafe {
        (
            (*track).in_turn,
            (*track).last_send_ns,
            (*track).outbound,
            (*track).unreported,
            (*track).endpoint,
            (*track).totals_slot,
            close_at_close(track),
        )
    };
    // The server's close counts the turn it cut (for a shut-down connection, possibly
    // on another CPU right now).
    let closing_turn = in_turn != 0 && !matches!(close, Total::Closed { closing: true, .. });
    // Forget it even if the event below cannot be sent: the map must not fill up with
    // dead sockets. Whoever removes it counts the close, and the end of a turn it was
    // in.
    if untrack(skaddr)
        && outbound == 0
        && !(old_state == tcp_state::FIN_WAIT2
            && matches!(close, Total::Closed { closing: true, .. })
            && handed_to_time_wait(change, skaddr, config, (&local, slot), closed_at))
    {
        let turn = TurnCut {
            ends_at: turn_end_at(closing_turn, sent, closed_at),
            answered_at: if closing_turn { sent } else { 0 },
        };
        count_close(slot, close, turn, closed_at);
    }
    if matches!(close, Total::Closed { closing: true, .. }) {
        // The daemon was told at the server's close.
        return None;
    }
    if unreported != 0 {
        // The daemon knows this connection only if it adopted it since, by endpoints.
        if following_by_endpoints(config) {
            close_followed(change, skaddr, Counted::Yes, Phase::Close);
        }
        return None;
    }
    Some(CloseToTell {
        at: closed_at,
        turn_end_ns: turn_end_at(closing_turn, sent, closed_at),
    })
}

/// Announces the open of a connection (tracked first of all), a listener's appearance or its
/// end to the daemon, at `now`. `local_port` is the socket's, read already.
#[inline(always)]
fn announce<C: StateChange>(
    change: &C,
    (skaddr, local_port): (u64, u16),
    kind: EventKind,
    now: u64,
    config: &Config,
) {
    // Each socket field is read once: this runs for every connection twice.
    let endpoints = change.endpoints_on_port(local_port);
    let netns = netns_of(skaddr, config);
    let local = endpoint(&endpoints, netns);
    // Its counts go to its endpoint's slot, given once here rather than looked up by endpoint
    // at each of them.
    let slot = if kind == EventKind::ConnOpen {
        slot_of(&local)
    } else {
        NO_SLOT
    };
    // A connection goes into TRACKED first of all: the programs on its other hooks (an
    // accept on another CPU may already have it) only see it once it is there.
    let opening = matches!(kind, EventKind::ConnOpen | EventKind::OutboundOpen);
    let outbound = u32::from(kind == EventKind::OutboundOpen);
    // The reservation is tested at once: the verifier (6.1) must see it released on every
    // path, and loses track of a reference whose test is repeated later.
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        count_lost(LOST_SLOT);
        if kind == EventKind::ConnOpen {
            // The daemon is never told of it; tracked unreported, its close is still counted.
            let tracked = track_connection(skaddr, now, |track| {
                track.opened_ns = now;
                track.endpoint = local;
                track.totals_slot = slot;
                track.unreported = 1;
            });
            if !tracked {
                count_lost(TRACK_FULL_SLOT);
            }
            count_total(slot, Total::Opened, now);
        }
        return;
    };
    let tracked = !opening
        || track_connection(skaddr, now, |track| {
            track.opened_ns = now;
            track.endpoint = local;
            track.totals_slot = slot;
            track.outbound = outbound;
        });
    if kind == EventKind::ConnOpen && tracked {
        count_total(slot, Total::Opened, now);
    }
    if !tracked {
        // The table is full, or, allocated on demand, could not take one more entry in a burst
        // (its per-CPU cache of free entries is refilled only after the softirq). Its turns go
        // unseen, but its close is followed by endpoints like an adopted connection's, so that
        // opens and closes stay exact. Only if that fails too is the open not reported: an
        // open whose close can never follow would stay counted forever.
        count_lost(TRACK_FULL_SLOT);
        if !follow_close_by_endpoints(&endpoints, kind) {
            entry.discard(0);
            if kind == EventKind::ConnOpen {
                count_total(slot, Total::Opened, now);
            }
            warn!(
                change,
                "connection table full: a connection on port {} is not tracked",
                endpoints.local_port
            );
            return;
        }
        if kind == EventKind::ConnOpen {
            count_total(slot, Total::OpenedUntracked, now);
        }
    }

    // Its accept cannot be seen if untracked: its life starts now.
    let detail = if tracked { 0 } else { OPEN_UNTRACKED };
    write_connection_event(
        entry.as_mut_ptr(),
        kind,
        skaddr,
        now,
        &endpoints,
        netns,
        detail,
    );
    submit(entry);
}

/// The server sent its FIN on connection `skaddr` (ESTABLISHED → FIN_WAIT1, CLOSE_WAIT →
/// LAST_ACK): it closed the connection, or shut it down where the close hook serves, and the
/// kernel still has to finish it. At a close its life ends here for the daemon, and its
/// closing phase starts. Nothing is done for an outbound
/// connection (no server there; it ends at CLOSE) or one already closing.
#[inline(always)]
fn server_sent_fin<C: StateChange>(change: &C, skaddr: u64, config: &Config) {
    let Some(track) = tracked_entry(&skaddr) else {
        if following_by_endpoints(config) {
            close_followed(change, skaddr, Counted::No, Phase::ServerClose);
        }
        return;
    };
    // SAFETY: a live map value of this connection; state changes of one socket are
    // serialised by the kernel.
    let track = unsafe { &mut *track };
    if track.outbound != 0 || track.server_closed_ns != 0 {
        return;
    }
    if config.close_hook != 0 && track.close_called == 0 && track.unreported == 0 {
        // A `shutdown()`, not a `close()`: the server still holds the connection, and may
        // still read from it. Its life ends at its `close()` (see `tcp_close`), or at CLOSE if
        // the client finishes it first.
        track.shut_down = 1;
        return;
    }
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    track.server_closed_ns = now;
    let turn = end_life_at_server_close(track, now);
    if track.unreported != 0 {
        if following_by_endpoints(config) {
            // Its close is counted at CLOSE, with its closing phase.
            close_followed(change, skaddr, Counted::Yes, Phase::ServerClose);
        }
        return;
    }
    emit_for_socket(
        skaddr,
        now,
        ConnClosePayload {
            turn_end_ns: turn.ends_at,
        },
    );
}

/// The close of `track` as its CLOSE counts it. A connection the server shut down but has not
/// closed ends its life here, unless the server's `close()` claimed it first.
///
/// # Safety
/// `track` points into a live map value.
#[inline(always)]
unsafe fn close_at_close(track: *mut ConnTrack) -> Total {
    // SAFETY: the caller's pointer. `u64::MAX` only keeps the close program from claiming it:
    // the entry is removed next.
    unsafe {
        if (*track).shut_down != 0 && claim_server_close(track, u64::MAX) {
            return Total::Closed {
                closing: false,
                accepted: (*track).accepted_ns != 0,
                untracked: false,
            };
        }
        Total::close_of(&*track)
    }
}

/// A connection the server closed leaves FIN_WAIT2 for CLOSE at `at`: if the kernel handed it
/// to a time-wait socket that still waits for the client's FIN (`SOCK_DONE` clear: no FIN
/// came), its closing phase goes on there, unseen by any tracepoint. It is then recorded in
/// `HANDED_OVER`, whose reader, the daemon, counts its close and the end of its closing phase
/// when the time-wait socket is past FIN_WAIT2; true if so. False, and the close is counted
/// now, where the daemon cannot look it up (`sk_flags` unknown, another network namespace, an
/// endpoint the totals do not hold) or the map cannot take it (counted as
/// `HANDOVER_FULL_SLOT`).
#[inline(always)]
fn handed_to_time_wait<C: StateChange>(
    change: &C,
    skaddr: u64,
    config: &Config,
    (local, slot): (&Endpoint, u32),
    at: u64,
) -> bool {
    if config.sock_flags_offset == 0 || local.netns != config.own_netns {
        return false;
    }
    let Some(flags) = kernel::<u64>(skaddr.wrapping_add(u64::from(config.sock_flags_offset)))
    else {
        return false;
    };
    // The closing phase's start is counted in the slot's totals; without them it was not, and
    // no end may be counted later either.
    if flags & SOCK_DONE != 0 || !counts_in(slot) {
        return false;
    }
    let handed = HandedOver {
        endpoint: *local,
        at_ns: at,
    };
    // BPF_NOEXIST: an entry for the same endpoints (a newer connection that took over an
    // older one's time-wait socket) is the daemon's to end; this one ends now.
    if HANDED_OVER
        .insert(&change.endpoints(), &handed, u64::from(BPF_NOEXIST))
        .is_err()
    {
        count_lost(HANDOVER_FULL_SLOT);
        return false;
    }
    true
}

/// The local endpoint of the connection `endpoints` in namespace `netns`.
#[inline(always)]
fn endpoint(endpoints: &ConnKey, netns: u32) -> Endpoint {
    Endpoint {
        netns,
        family: endpoints.family,
        port: endpoints.local_port,
        addr: endpoints.local_addr,
    }
}

/// Puts this connection in `PREEXISTING`, whose closes are reported for sockets not in
/// `TRACKED`, and turns those lookups on. False if that map cannot take it either.
#[inline(always)]
fn follow_close_by_endpoints(endpoints: &ConnKey, kind: EventKind) -> bool {
    let direction = if kind == EventKind::OutboundOpen {
        FOLLOWED_OUTBOUND
    } else {
        FOLLOWED_UNTRACKED
    };
    if PREEXISTING.insert(endpoints, &direction, 0).is_err() {
        return false;
    }
    if let Some(set) = FOLLOWS_UNTRACKED.get_ptr_mut(0) {
        // SAFETY: a live map value; a racing writer can only write the same 1.
        unsafe { *set = 1 };
    }
    true
}

/// Whether a close was already counted in `ENDPOINT_TOTALS` (or will be, at CLOSE).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counted {
    Yes,
    No,
}

/// Which close of a followed connection this is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The server's (`ESTABLISHED → FIN_WAIT1`, `CLOSE_WAIT → LAST_ACK`): the end of an
    /// inbound connection's life.
    ServerClose,
    /// CLOSE: the end of an outbound connection's life, or of an inbound one the server did
    /// not close (a reset).
    Close,
}

/// A socket the daemon does not know by address closed: if the daemon adopted it from the
/// kernel's table, or it could not be tracked (see `PREEXISTING`), count and report its close
/// like any other.
#[inline(always)]
fn close_followed<C: StateChange>(change: &C, skaddr: u64, counted: Counted, phase: Phase) {
    if change.protocol() != IPPROTO_TCP {
        return;
    }
    let endpoints = change.endpoints();
    // SAFETY: a plain value read; the entry may go away meanwhile, then the remove fails.
    let Some(&direction) = (unsafe { PREEXISTING.get(&endpoints) }) else {
        return;
    };
    if direction == FOLLOWED_OUTBOUND && phase == Phase::ServerClose {
        return;
    }
    // Whoever removes the entry reports the close: here, or the daemon when it finds the
    // connection gone before it asked (see `Probes::stop_following_close`).
    if PREEXISTING.remove(&endpoints).is_err() {
        return;
    }
    let Some(config) = CONFIG.get(0) else {
        return;
    };
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let netns = netns_of(skaddr, config);
    if direction != FOLLOWED_OUTBOUND && counted == Counted::No {
        // Its life ends here; the kernel does not follow its closing phase. One the daemon
        // adopted counts as accepted: the daemon counts its start in whichever life it reports.
        let close = Total::Closed {
            closing: false,
            accepted: direction != FOLLOWED_UNTRACKED,
            untracked: direction == FOLLOWED_UNTRACKED,
        };
        let local = endpoint(&endpoints, netns);
        count_total(slot_of(&local), close, now);
    }
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        count_lost(LOST_SLOT);
        return;
    };
    write_connection_event(
        entry.as_mut_ptr(),
        EventKind::ConnClose,
        skaddr,
        now,
        &endpoints,
        netns,
        0,
    );
    submit(entry);
}

/// Whether this client-side connection goes to a `--connect` destination.
#[inline(always)]
fn is_connect_target<C: StateChange>(change: &C) -> bool {
    let endpoints = change.endpoints();
    let target = ConnKey {
        family: endpoints.family,
        remote_port: endpoints.remote_port,
        remote_addr: endpoints.remote_addr,
        ..ConnKey::default()
    };
    // SAFETY: presence test only.
    unsafe { CONNECT_TARGETS.get(&target) }.is_some()
}

/// Writes the event for a socket with these endpoints in namespace `netns` into `event`, a
/// record reserved in the ring, field by field: built on the stack first, its 96 bytes would
/// pass the 512 that older verifiers allow the lifecycle program, which every count is inlined
/// into. Listener events are stamped with the current task (listen() runs in the caller's
/// context), and a listener's appearance with its cgroup v2 id, read here because the caller
/// may be gone by the time the daemon looks; the others run wherever the packet was processed,
/// so they carry no task.
#[inline(always)]
fn write_connection_event(
    event: *mut SockEvent,
    kind: EventKind,
    skaddr: u64,
    now: u64,
    endpoints: &ConnKey,
    netns: u32,
    detail: u32,
) {
    let in_task = matches!(kind, EventKind::ListenerUp | EventKind::ListenerDown);
    // SAFETY: `event` is a reserved ring record of this type, written only here before it is
    // submitted; the helpers are plain calls (tracing programs may read the cgroup id since
    // kernel 4.18).
    unsafe {
        (*event).kind = kind as u32;
        (*event).pid = if in_task {
            (bpf_get_current_pid_tgid() >> 32) as u32
        } else {
            0
        };
        (*event).timestamp_ns = now;
        (*event).skaddr = skaddr;
        (*event).family = endpoints.family;
        (*event).local_port = endpoints.local_port;
        (*event).remote_port = endpoints.remote_port;
        (*event)._pad = 0;
        (*event).local_addr = endpoints.local_addr;
        (*event).remote_addr = endpoints.remote_addr;
        if in_task {
            (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        } else {
            // The record is 8-byte aligned, and so is the field.
            zero_words(&raw mut (*event).comm);
        }
        (*event).aux = if matches!(kind, EventKind::ListenerUp) {
            bpf_get_current_cgroup_id()
        } else {
            0
        };
        (*event).detail = detail;
        (*event).netns = netns;
    }
}

/// Inode number of the network namespace of socket `skaddr`, through the offsets the daemon
/// found in the kernel's BTF; 0 when they are unknown or a read fails.
#[inline(always)]
fn netns_of(skaddr: u64, config: &Config) -> u32 {
    if config.sock_net_offset == 0 {
        return 0;
    }
    let net: u64 =
        kernel(skaddr.wrapping_add(u64::from(config.sock_net_offset))).unwrap_or_default();
    if net == 0 {
        return 0;
    }
    kernel(net.wrapping_add(u64::from(config.net_inum_offset))).unwrap_or_default()
}
