//! Types and code shared by the eBPF programs (`tracker-ebpf`) and the daemon (`tracker-user`).
//!
//! Everything here is `no_std`. What crosses the ring buffer and the maps is `#[repr(C)]`, so
//! both sides agree on its byte layout, and each field that is packed on one side and unpacked
//! on the other has its codec beside its type ([`FrameDetail`], [`wire_addr`], [`ConnKey::new`]).
//! The daemon-only trait impls (`aya::Pod`) sit behind the `user` feature so the BPF build never
//! pulls in aya.
//!
//! [`proto`] (protocol detection, the HTTP/2 frame walker) and [`walk`] (finding a system
//! call's bytes and driving the walker through them) are the payload reading the kernel runs,
//! written as plain Rust the verifier accepts, so that the host's property tests and the fuzzer
//! (through the `sim` feature's simulated user memory) run the very code the eBPF program runs.
#![no_std]

use core::net::{IpAddr, SocketAddr};

pub mod gauge;
pub mod handover;
pub mod payloads;
pub mod proto;
pub mod totals;
pub mod walk;

pub use totals::{
    ENDPOINT_SLOTS_MAP, ENDPOINT_SLOTS_MAX_ENTRIES, EndpointTotals, NO_SLOT, SLOT_TOTALS_MAP,
    Spans, slot_totals_entries,
};

/// Name of the ring buffer map that carries [`SockEvent`]s to the daemon.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array whose slot [`LOST_SLOT`] counts ring-buffer reservations that
/// failed (the ring was full), so loss is never silent.
pub const LOST_MAP: &str = "LOST";
/// Slot of [`LOST_MAP`] counting events dropped because the ring was full.
pub const LOST_SLOT: u32 = 0;
/// Slot of [`LOST_MAP`] counting accepted connections that could not be tracked in the kernel
/// because the tracking map was full (their closes would be missed).
pub const TRACK_FULL_SLOT: u32 = 1;
/// Slot of [`LOST_MAP`] counting opens, closes and turns that [`SLOT_TOTALS_MAP`] could not
/// count because their endpoint got no slot (a host with more local endpoints than it holds).
pub const TOTALS_FULL_SLOT: u32 = 2;
/// Slot of [`LOST_MAP`] counting live gauge updates missed (see [`gauge`]): its table was full,
/// or other CPUs kept changing a peak through every try. The interval's kernel peak is then
/// not used.
pub const GAUGES_MISSED_SLOT: u32 = 3;
/// Slot of [`LOST_MAP`] counting closing phases handed on to a time-wait socket that
/// [`handover::HANDED_OVER_MAP`] could not take: they end when the full socket does.
pub const HANDOVER_FULL_SLOT: u32 = 4;
/// Number of slots in [`LOST_MAP`].
pub const LOST_SLOTS: u32 = 5;
/// Name of the array of local ports to watch, one byte per port number (non-zero: watched);
/// consulted only when [`Config::filter_ports`] is set. An array rather than a set: a port is
/// checked at every connection's open, and an array index costs less than a hashed lookup.
pub const PORTS_MAP: &str = "PORTS";
/// Name of the one-slot array holding the [`Config`].
pub const CONFIG_MAP: &str = "CONFIG";
/// Name of the kernel-side table of accepted connections being tracked, keyed by socket address.
pub const TRACKED_MAP: &str = "TRACKED";
/// Capacity of [`TRACKED_MAP`]. Sized for hosts with a few hundred thousand concurrent
/// connections; entries are allocated on demand (`BPF_F_NO_PREALLOC`), so an idle host pays
/// nothing for the headroom.
pub const TRACKED_MAX_ENTRIES: u32 = 1 << 20;
/// Name of the array of counts, by a hash of the socket address, of the sockets in
/// [`TRACKED_MAP`]: the programs rule out an untracked socket (a zero) before the hashed lookup.
/// Only the programs write it.
pub const TRACKED_HINTS_MAP: &str = "TRACKED_HINTS";
/// Bits of the hash that index [`TRACKED_HINTS_MAP`]: 65,536 counts (256 KiB), so that a host's
/// client sockets rarely share a slot with a tracked connection until it tracks tens of
/// thousands.
pub const TRACKED_HINT_BITS: u32 = 16;

/// The [`TRACKED_HINTS_MAP`] slot of the socket at kernel address `skaddr`. Socket addresses
/// share their low bits (slab objects are aligned) and their high ones (the kernel's direct
/// map), and one multiply folds some slab strides onto a few slots, so the bits are mixed twice
/// (SplitMix64's finalizer).
#[inline(always)]
pub const fn tracked_hint_slot(skaddr: u64) -> u32 {
    let mut mixed = skaddr >> 6;
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((mixed ^ (mixed >> 31)) >> (64 - TRACKED_HINT_BITS)) as u32
}
/// Capacity of [`PORTS_MAP`]: one entry per port number, so any `--port` fits.
pub const PORTS_MAX_ENTRIES: u32 = 1 << 16;
/// Default ring buffer size in bytes (a power of two multiple of the page size, as the kernel
/// requires). 4 MiB holds about 35k events, more than a second of the highest churn measured on
/// a 2-core machine.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// Program names, one per hook and attach method: `RAW_*` for the raw tracepoint (preferred:
/// the program gets the tracepoint's arguments directly, without the kernel first formatting a
/// perf record), the others for the classic tracepoint (fallback).
pub const PROG_INET_SOCK_SET_STATE: &str = "inet_sock_set_state";
pub const PROG_RAW_INET_SOCK_SET_STATE: &str = "raw_inet_sock_set_state";
pub const PROG_SOCK_RECV_LENGTH: &str = "sock_recv_length";
pub const PROG_RAW_SOCK_RECV_LENGTH: &str = "raw_sock_recv_length";
pub const PROG_SOCK_SEND_LENGTH: &str = "sock_send_length";
pub const PROG_RAW_SOCK_SEND_LENGTH: &str = "raw_sock_send_length";

/// Program names of the function hooks (fentry/fexit, else kprobe/kretprobe), for kernels
/// without `sock:sock_{recv,send}_length` and for the server's accept and close. Where a
/// function's parameter list changed across kernels there is one program per list, named by
/// its parameter count: fentry/fexit programs read arguments at fixed positions the verifier
/// checks against the kernel's BTF, and the daemon picks the variant the BTF describes.
pub const PROG_FEXIT_TCP_RECVMSG_4: &str = "fexit_tcp_recvmsg_4";
pub const PROG_FEXIT_TCP_RECVMSG_5: &str = "fexit_tcp_recvmsg_5";
pub const PROG_FEXIT_TCP_RECVMSG_6: &str = "fexit_tcp_recvmsg_6";
/// For 4 or 5 parameters (`flags` is the fourth of both lists).
pub const PROG_KPROBE_TCP_RECVMSG: &str = "kprobe_tcp_recvmsg";
pub const PROG_KPROBE_TCP_RECVMSG_6: &str = "kprobe_tcp_recvmsg_6";
pub const PROG_KPROBE_TCP_CLEANUP_RBUF: &str = "kprobe_tcp_cleanup_rbuf";
pub const PROG_FEXIT_TCP_SENDMSG: &str = "fexit_tcp_sendmsg";
pub const PROG_KPROBE_TCP_SENDMSG: &str = "kprobe_tcp_sendmsg";
pub const PROG_KRETPROBE_TCP_SENDMSG: &str = "kretprobe_tcp_sendmsg";
pub const PROG_FEXIT_INET_CSK_ACCEPT_2: &str = "fexit_inet_csk_accept_2";
pub const PROG_FEXIT_INET_CSK_ACCEPT_4: &str = "fexit_inet_csk_accept_4";
pub const PROG_FENTRY_SECURITY_SOCK_GRAFT: &str = "fentry_security_sock_graft";
pub const PROG_KPROBE_SECURITY_SOCK_GRAFT: &str = "kprobe_security_sock_graft";
pub const PROG_KRETPROBE_INET_CSK_ACCEPT: &str = "kretprobe_inet_csk_accept";
pub const PROG_FENTRY_TCP_CLOSE: &str = "fentry_tcp_close";
pub const PROG_KPROBE_TCP_CLOSE: &str = "kprobe_tcp_close";

/// Program names of the TLS library hooks (uprobes on OpenSSL's libssl, attached per library
/// file once a listener's owner is seen using it): one entry program per function whose
/// arguments differ, and one return program for all of them.
pub const PROG_UPROBE_SSL_READ: &str = "uprobe_ssl_read";
pub const PROG_UPROBE_SSL_READ_EX: &str = "uprobe_ssl_read_ex";
pub const PROG_UPROBE_SSL_WRITE: &str = "uprobe_ssl_write";
pub const PROG_UPROBE_SSL_WRITE_EX: &str = "uprobe_ssl_write_ex";
pub const PROG_UPROBE_SSL_DO_HANDSHAKE: &str = "uprobe_ssl_do_handshake";
pub const PROG_URETPROBE_SSL: &str = "uretprobe_ssl";
/// The OpenSSL functions each TLS entry program is attached to, with the return program on
/// every one of them.
pub const SSL_FUNCTIONS: [(&str, &str); 5] = [
    ("SSL_read", PROG_UPROBE_SSL_READ),
    ("SSL_read_ex", PROG_UPROBE_SSL_READ_EX),
    ("SSL_write", PROG_UPROBE_SSL_WRITE),
    ("SSL_write_ex", PROG_UPROBE_SSL_WRITE_EX),
    ("SSL_do_handshake", PROG_UPROBE_SSL_DO_HANDSHAKE),
];

/// `MSG_PEEK`: a read that leaves the bytes queued; not payload consumed by the server.
pub const MSG_PEEK: i32 = 2;

/// Per-connection state kept in the kernel for a tracked connection ([`TRACKED_MAP`] value).
/// Turn boundaries are decided here so that the ring carries one event per request/response
/// turn, not one per system call.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct ConnTrack {
    /// When the server last sent payload in the current turn (0: not yet).
    pub last_send_ns: u64,
    /// When the connection opened (its open event's timestamp): with the socket address,
    /// what tells this connection from a later one on the same socket memory.
    pub opened_ns: u64,
    /// Non-zero while a turn is open: the client sent payload and the next client payload
    /// after a server send starts a new turn. `u32` rather than `bool` so every bit pattern
    /// is valid.
    pub in_turn: u32,
    /// The connection's [`proto::Protocol`] as `u32` (0: not decided yet).
    pub protocol: u32,
    /// HTTP/2 frame walk of what the client sent.
    pub walk_in: proto::H2Walk,
    /// HTTP/2 frame walk of what the server sent.
    pub walk_out: proto::H2Walk,
    /// Non-zero for a connection this host opened (`--connect`): no turns or sessions are
    /// followed on it, only its life.
    pub outbound: u32,
    /// Non-zero when the daemon was never told of this connection (its open event found the
    /// ring full): the kernel still counts its close in [`SLOT_TOTALS_MAP`], and reports it
    /// only if the daemon has adopted the connection since (through [`PREEXISTING_MAP`]).
    pub unreported: u32,
    /// Non-zero once the server called `close()` on it (seen by the close program, before the
    /// state change that call makes).
    pub close_called: u32,
    /// Non-zero when the server shut its sending side down (`shutdown()`) before any
    /// `close()`: where the close program runs, its life goes on until that `close()`.
    pub shut_down: u32,
    /// Its local endpoint, as counted at its open: the close counts there without reading the
    /// socket again.
    pub endpoint: Endpoint,
    /// Its endpoint's slot in [`SLOT_TOTALS_MAP`], given at its open ([`NO_SLOT`]: none
    /// could be).
    pub totals_slot: u32,
    /// Non-zero once its payload was seen to be TLS: only then can its socket I/O be inside
    /// a TLS library call, which the socket hooks must leave to the library's hooks. A
    /// connection decided plaintext from its own bytes never pays that check again.
    pub tls: u32,
    /// When the server closed it (0: not yet, or it closed by a reset, with no closing phase).
    /// From then on the daemon has been told it is closed, and nothing more is reported of it.
    pub server_closed_ns: u64,
    /// When the server accepted it (0: not yet, or the kernel has no accept hook).
    pub accepted_ns: u64,
}

/// Field offsets of `sock:sock_recv_length` and `sock:sock_send_length` (same layout),
/// checked at start-up like [`inet_sock_set_state`].
pub mod sock_length {
    pub const FIELDS: [(&str, usize, usize); 3] =
        [("sk", SK, 8), ("ret", RET, 4), ("flags", FLAGS, 4)];
    pub const SK: usize = 8;
    pub const RET: usize = 20;
    pub const FLAGS: usize = 24;
}

/// How a system call passes its buffer ([`SYSCALL_BUFFERS_MAP`] values, with a direction).
pub mod buf_shape {
    /// `read`, `recvfrom`, `write`, `sendto`: one buffer.
    pub const FLAT: u32 = 1;
    /// `readv`, `writev`: an array of `struct iovec`.
    pub const IOVEC: u32 = 2;
    /// `recvmsg`, `sendmsg`: a `struct user_msghdr` holding an iovec array.
    pub const MSGHDR: u32 = 3;
}

/// Payload the server received.
pub const DIRECTION_IN: u32 = 0;
/// Payload the server sent.
pub const DIRECTION_OUT: u32 = 1;

/// Name of the array, indexed by system call number, saying which calls carry a payload
/// buffer and how: `shape | direction << 8` (see [`buf_shape`], [`DIRECTION_IN`]); 0 for every
/// other call. Filled by the daemon, which knows its architecture's numbers.
pub const SYSCALL_BUFFERS_MAP: &str = "SYSCALL_BUFFERS";
/// Capacity of [`SYSCALL_BUFFERS_MAP`]: above every system call number in use.
pub const SYSCALL_BUFFERS_MAX_ENTRIES: u32 = 1024;

/// A connection by its endpoints, as the tracepoint shows them: the key of
/// [`PREEXISTING_MAP`]. Addresses as in [`SockEvent`] (IPv4 in the first four bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct ConnKey {
    pub family: u16,
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    /// Explicit padding (required for `Pod`; always 0 so keys compare byte for byte).
    pub _pad: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

impl ConnKey {
    /// The key of the connection between `local` and `remote`. A pair with an IPv6 side is
    /// an AF_INET6 socket, whose IPv4 side (if any) the kernel shows IPv4-mapped.
    pub fn new(local: SocketAddr, remote: SocketAddr) -> Self {
        let (family, local_addr, remote_addr) = match (local.ip(), remote.ip()) {
            (IpAddr::V4(l), IpAddr::V4(r)) => (
                AF_INET,
                wire_addr::v4(l.octets()),
                wire_addr::v4(r.octets()),
            ),
            (l, r) => (AF_INET6, wire_addr::v6(l), wire_addr::v6(r)),
        };
        Self {
            family,
            local_port: local.port(),
            remote_port: remote.port(),
            _pad: 0,
            local_addr,
            remote_addr,
        }
    }

    /// The key of a [`CONNECT_TARGETS_MAP`] destination: its local side zeroed.
    pub fn destination(remote: SocketAddr) -> Self {
        let key = Self::new(remote, remote);
        Self {
            local_port: 0,
            local_addr: [0; 16],
            ..key
        }
    }
}

/// How [`SockEvent`] and [`ConnKey`] carry an IP address: 16 bytes, an IPv4 address in the
/// first four (the rest zero), an IPv6 address whole; the `family` beside it says which.
pub mod wire_addr {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use crate::{AF_INET, AF_INET6};

    /// An IPv4 address (network byte order, as the kernel keeps it).
    #[inline(always)]
    pub fn v4(octets: [u8; 4]) -> [u8; 16] {
        // As a number rather than a zeroed array the bytes are copied into: in the eBPF
        // programs that zeroing is a byte-by-byte `memset` call.
        u128::from(u32::from_le_bytes(octets)).to_le_bytes()
    }

    /// An address of an AF_INET6 socket: IPv4 addresses IPv4-mapped.
    pub fn v6(ip: IpAddr) -> [u8; 16] {
        match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    /// The address in `bytes` of a socket of `family`; `Err(family)` for a family that is
    /// neither [`AF_INET`] nor [`AF_INET6`].
    pub fn decode(family: u16, bytes: [u8; 16]) -> Result<IpAddr, u16> {
        match family {
            AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(bytes))),
            other => Err(other),
        }
    }
}

/// Name of the map of server-side connections that the daemon found in the kernel's table
/// rather than saw open (they existed before it started, or their open event was lost): the
/// kernel reports their close too. Keyed by [`ConnKey`] because their socket address is not
/// known to the daemon.
pub const PREEXISTING_MAP: &str = "PREEXISTING";
/// Name of the one-entry array (`u32`) the programs set, and nothing clears, once they put a
/// connection `TRACKED` could not take in [`PREEXISTING_MAP`]: its close is then looked up
/// there, as for [`Config::preexisting`]. Apart from [`CONFIG_MAP`], which the daemon writes
/// whole.
pub const FOLLOWS_UNTRACKED_MAP: &str = "FOLLOWS_UNTRACKED";
/// Capacity of [`PREEXISTING_MAP`].
pub const PREEXISTING_MAX_ENTRIES: u32 = 1 << 18;

/// The local side of server-side connections: their network namespace (inode number, 0 when
/// unknown), address and port. Addresses as in [`SockEvent`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Endpoint {
    pub netns: u32,
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    pub addr: [u8; 16],
}

/// Name of the map of destinations whose outbound connections are tracked (`--connect`),
/// keyed by a [`ConnKey`] with only `family`, `remote_addr` and `remote_port` set.
pub const CONNECT_TARGETS_MAP: &str = "CONNECT_TARGETS";
/// Capacity of [`CONNECT_TARGETS_MAP`].
pub const CONNECT_TARGETS_MAX_ENTRIES: u32 = 1024;

/// Kernel TCP states (`include/net/tcp_states.h`), as the tracepoint reports them.
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const FIN_WAIT1: i32 = 4;
    pub const FIN_WAIT2: i32 = 5;
    pub const TIME_WAIT: i32 = 6;
    pub const CLOSE: i32 = 7;
    pub const CLOSE_WAIT: i32 = 8;
    pub const LAST_ACK: i32 = 9;
    pub const LISTEN: i32 = 10;
}

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;

/// Field offsets of `sock:inet_sock_set_state` this program reads. The daemon compares them
/// with the tracepoint's `format` file at start-up and refuses to run on a kernel whose layout
/// differs, instead of reporting garbage.
pub mod inet_sock_set_state {
    /// `(field name, offset, size)` for every field the program reads.
    pub const FIELDS: [(&str, usize, usize); 11] = [
        ("skaddr", SKADDR, 8),
        ("oldstate", OLDSTATE, 4),
        ("newstate", NEWSTATE, 4),
        ("sport", SPORT, 2),
        ("dport", DPORT, 2),
        ("family", FAMILY, 2),
        ("protocol", PROTOCOL, 2),
        ("saddr", SADDR, 4),
        ("daddr", DADDR, 4),
        ("saddr_v6", SADDR_V6, 16),
        ("daddr_v6", DADDR_V6, 16),
    ];

    pub const SKADDR: usize = 8;
    pub const OLDSTATE: usize = 16;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 36;
    pub const SADDR_V6: usize = 40;
    pub const DADDR_V6: usize = 56;
}

/// Kind of a [`SockEvent`], carried as a plain `u32` in [`SockEvent::kind`] and decoded with
/// `TryFrom<u32>`: a value the daemon does not know is an error it can count, never undefined
/// behaviour as reading an out-of-range enum would be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum EventKind {
    /// A socket entered LISTEN (runs in the context of the process calling `listen()`).
    /// `aux` is that process's cgroup v2 id (the inode of its cgroup's directory in cgroupfs).
    ListenerUp = 1,
    /// A listening socket left LISTEN for CLOSE.
    ListenerDown = 2,
    /// A server-side child socket went SYN_RECV → ESTABLISHED.
    ConnOpen = 3,
    /// A tracked server-side connection reached CLOSE. `aux` is when its last turn ended
    /// (0: it was idle), see [`EventKind::Turn`]. Endpoints (`family` non-zero) only for a
    /// connection the daemon adopted from the kernel's table; the others it knows by socket.
    ConnClose = 4,
    /// A tracked connection received payload while idle, or after the server had answered:
    /// a request/response turn begins at `timestamp_ns`. `aux` is when the previous turn
    /// ended (the server's last send before this payload), or 0 if the connection was idle.
    /// `detail` is non-zero on a connection's first turn only: the [`proto::Protocol`] (as
    /// `u32`) decided from that first payload, carried here rather than in an event of its
    /// own to save one event per connection.
    Turn = 5,
    /// An HTTP/2 frame that opens or ends streams. `detail` is a packed [`FrameDetail`];
    /// `aux` the stream id and a GOAWAY's last stream id, see [`FrameDetail::aux`].
    H2Frame = 7,
    /// The frame walker of a connection lost its place (a read failed, or too many frames in
    /// one system call): its sessions are unknown from now on.
    WalkLost = 8,
    /// A connection this host opened (SYN_SENT → ESTABLISHED) to a destination in
    /// [`CONNECT_TARGETS_MAP`] was established. Its close comes as [`EventKind::ConnClose`].
    OutboundOpen = 9,
    /// The server accepted tracked connection `skaddr` (`inet_csk_accept` returned it).
    Accepted = 10,
    /// The server closed tracked connection `skaddr` (`tcp_close`, its last reference to
    /// the socket went away), before the socket reached CLOSE.
    CloseCalled = 11,
}

/// The `detail` of an [`EventKind::H2Frame`]: which frame, and which way it went. Packed by
/// the kernel, unpacked by the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameDetail {
    /// Frame type, see [`proto::frame`].
    pub kind: u8,
    /// Frame flags, see [`proto::flag`].
    pub flags: u8,
    /// [`DIRECTION_IN`] or [`DIRECTION_OUT`].
    pub direction: u32,
}

impl FrameDetail {
    #[inline(always)]
    pub fn new(header: &proto::FrameHeader, direction: u32) -> Self {
        Self {
            kind: header.kind,
            flags: header.flags,
            direction,
        }
    }

    /// Type in bits 0..8, flags in 8..16, direction in 16..24.
    #[inline(always)]
    pub const fn pack(self) -> u32 {
        self.kind as u32 | (self.flags as u32) << 8 | (self.direction & 0xff) << 16
    }

    pub const fn unpack(detail: u32) -> Self {
        let [kind, flags, direction, _] = detail.to_le_bytes();
        Self {
            kind,
            flags,
            direction: direction as u32,
        }
    }
}

impl TryFrom<u32> for EventKind {
    type Error = u32;

    fn try_from(raw: u32) -> Result<Self, u32> {
        match raw {
            1 => Ok(Self::ListenerUp),
            2 => Ok(Self::ListenerDown),
            3 => Ok(Self::ConnOpen),
            4 => Ok(Self::ConnClose),
            5 => Ok(Self::Turn),
            7 => Ok(Self::H2Frame),
            8 => Ok(Self::WalkLost),
            9 => Ok(Self::OutboundOpen),
            10 => Ok(Self::Accepted),
            11 => Ok(Self::CloseCalled),
            other => Err(other),
        }
    }
}

/// Run-time settings written by the daemon before the programs are attached.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Config {
    /// Non-zero: only sockets whose local port is in [`PORTS_MAP`] produce events. A `u32`
    /// rather than `bool` so the type has no padding and every bit pattern is valid (`Pod`).
    pub filter_ports: u32,
    /// Wake the daemon only once this many bytes wait in the ring; below it events are
    /// submitted without a wakeup and the daemon collects them on its own timer. Waking the
    /// reader for every event costs a context switch per event, which dominated the
    /// observer's overhead on a busy server.
    pub wakeup_bytes: u32,
    /// Non-zero while connections the daemon adopted may still be in [`PREEXISTING_MAP`]:
    /// closes of sockets not in [`TRACKED_MAP`] are then looked up there (the endpoints' reads
    /// and one more lookup at every FIN and CLOSE of every untracked socket on the host). The
    /// daemon sets it before it adds any and clears it once it has none left open; only the
    /// daemon writes it (the programs' own entries are flagged in [`FOLLOWS_UNTRACKED_MAP`]).
    pub preexisting: u32,
    /// Non-zero when [`CONNECT_TARGETS_MAP`] holds destinations (`--connect`): client-side
    /// connections are then checked against it when established.
    pub connect_targets: u32,
    /// Offset of the `struct net *` in a socket (`sock_common.skc_net`), found by the daemon
    /// in the kernel's BTF; 0 when unknown (events then carry netns 0).
    pub sock_net_offset: u32,
    /// Offset of the namespace's inode number in `struct net` (`ns.inum`).
    pub net_inum_offset: u32,
    /// Non-zero: read payload to detect protocols and follow HTTP/2 streams (sessions). Zero
    /// with `--no-sessions`, or when [`Config::regs`] is unknown.
    pub payload: u32,
    /// Non-zero once TLS library hooks are attached: the socket programs then check whether
    /// the current thread is inside a TLS library call (one more lookup per payload of a
    /// tracked connection not yet read as plaintext HTTP, see [`ConnTrack::tls`]), whose
    /// plaintext those hooks follow instead of the ciphertext.
    pub tls: u32,
    /// Offset of `sock.sk_flags` (`unsigned long`), found by the daemon in the kernel's BTF;
    /// 0 when unknown or when the daemon cannot read time-wait sockets: closing phases then
    /// end when the full socket reaches CLOSE (see [`handover`]).
    pub sock_flags_offset: u32,
    /// The daemon's network namespace as events name it (its inode, or 0 where events carry
    /// none): only its time-wait sockets can be looked up, so only its connections are
    /// recorded in [`handover::HANDED_OVER_MAP`].
    pub own_netns: u32,
    /// Non-zero once the close program (`tcp_close`) is attached: a `shutdown()` then only
    /// starts the server's close, which ends the connection's life at its `close()`.
    pub close_hook: u32,
    /// Where the fields the raw `inet_sock_set_state` program reads sit in a socket.
    pub sock: SockLayout,
    /// Where a task's saved user registers keep the system call number and arguments.
    pub regs: RegsLayout,
}

/// Where the raw-tracepoint lifecycle program finds the fields of `struct sock` it reads,
/// found by the daemon in the kernel's BTF (the classic tracepoint copies them into its record
/// instead). The endpoints are copied in two reads, [`SockHead`] and the IPv6 address pair,
/// rather than field by field. When the daemon cannot find the fields, or they are not laid
/// out that way, it attaches the classic tracepoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SockLayout {
    /// `sk_protocol` (`u16`).
    pub protocol: u32,
    /// `inet_sock.inet_sport`: local port, network byte order (`__be16`). Not
    /// `__sk_common.skc_num`, which the kernel clears when a closing socket gives its port
    /// back, before the state change is traced.
    pub local_port: u32,
    /// `__sk_common.skc_daddr`, where [`SockHead`] starts.
    pub head: u32,
    /// `__sk_common.skc_v6_daddr`, followed by `skc_v6_rcv_saddr` (two `struct in6_addr`).
    pub v6_pair: u32,
}

/// Offsets of the `struct sock` fields the lifecycle program reads, as the kernel's BTF gives
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    pub protocol: u32,
    pub local_port: u32,
    /// `__sk_common.skc_family`.
    pub family: u32,
    /// `__sk_common.skc_dport`.
    pub remote_port: u32,
    /// `__sk_common.skc_rcv_saddr`.
    pub local_v4: u32,
    /// `__sk_common.skc_daddr`.
    pub remote_v4: u32,
    /// `__sk_common.skc_v6_rcv_saddr`.
    pub local_v6: u32,
    /// `__sk_common.skc_v6_daddr`.
    pub remote_v6: u32,
}

impl SockLayout {
    /// The layout for these offsets, if the endpoint fields lie as [`SockHead`] and the IPv6
    /// pair expect (as in every kernel since 3.x).
    pub const fn new(offsets: &SockOffsets) -> Option<Self> {
        let head = offsets.remote_v4;
        let as_head = offsets.local_v4 == head + SockHead::LOCAL_V4
            && offsets.remote_port == head + SockHead::REMOTE_PORT
            && offsets.family == head + SockHead::FAMILY;
        if !as_head || offsets.local_v6 != offsets.remote_v6 + 16 {
            return None;
        }
        Some(Self {
            protocol: offsets.protocol,
            local_port: offsets.local_port,
            head,
            v6_pair: offsets.remote_v6,
        })
    }
}

/// The start of `struct sock_common`, from `skc_daddr` to `skc_family`: both IPv4 addresses,
/// the remote port and the family, copied in one read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SockHead {
    /// `skc_daddr`.
    pub remote_v4: [u8; 4],
    /// `skc_rcv_saddr`.
    pub local_v4: [u8; 4],
    /// `skc_hash`.
    pub hash: u32,
    /// `skc_dport`, network byte order.
    pub remote_port: u16,
    /// `skc_num`.
    pub num: u16,
    /// `skc_family`.
    pub family: u16,
}

impl SockHead {
    const LOCAL_V4: u32 = core::mem::offset_of!(Self, local_v4) as u32;
    const REMOTE_PORT: u32 = core::mem::offset_of!(Self, remote_port) as u32;
    const FAMILY: u32 = core::mem::offset_of!(Self, family) as u32;
}

/// Byte offsets in the kernel's `struct pt_regs` (the user registers saved when a task
/// entered the kernel) of the system call number and of its second and third arguments,
/// which name the payload buffer of read/write-family calls. Architecture-specific and fixed
/// by its ABI; the daemon fills them in for the architecture it was built for (all zero:
/// unknown, payload is not read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RegsLayout {
    /// Read as 32 bits (see [`RegsLayout::AARCH64`]).
    pub syscall_nr: u32,
    pub arg2: u32,
    pub arg3: u32,
    /// Start of a [`RegsLayout::WINDOW_BYTES`] span of `pt_regs` holding all three, so the
    /// programs copy them in one read rather than three ([`RegsLayout::NO_WINDOW`]: they lie
    /// further apart, as on arm64, and are read one by one).
    pub window: u32,
}

impl RegsLayout {
    /// x86_64: `r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax`,
    /// so the number (`orig_ax`) and the arguments (`si`, `dx`) share one window from `dx`.
    pub const X86_64: Self = Self::new(15 * 8, 13 * 8, 12 * 8);
    /// arm64: `regs[0..31]`, `sp`, `pc`, `pstate` and `orig_x0` come first, then the number, a
    /// 32-bit `syscallno` (the programs read 32 bits: the ones after it are `pmr` in newer
    /// kernels); the arguments are in `regs[1]` and `regs[2]`.
    pub const AARCH64: Self = Self::new((31 + 4) * 8, 8, 2 * 8);

    /// Bytes copied at once when the three registers are close together.
    pub const WINDOW_BYTES: u32 = 32;
    /// [`RegsLayout::window`] when they are not.
    pub const NO_WINDOW: u32 = u32::MAX;

    /// The layout of these three offsets (each of an 8-byte register), with the window that
    /// holds them if one does.
    pub const fn new(syscall_nr: u32, arg2: u32, arg3: u32) -> Self {
        let low = min(syscall_nr, min(arg2, arg3));
        let high = max(syscall_nr, max(arg2, arg3));
        let aligned =
            syscall_nr.is_multiple_of(8) && arg2.is_multiple_of(8) && arg3.is_multiple_of(8);
        Self {
            syscall_nr,
            arg2,
            arg3,
            window: if aligned && high + 8 - low <= Self::WINDOW_BYTES {
                low
            } else {
                Self::NO_WINDOW
            },
        }
    }

    /// Which 8-byte word of the window holds the register at `offset` (in `0..4` when the
    /// layout has a window).
    #[inline(always)]
    pub const fn word_in_window(&self, offset: u32) -> u32 {
        offset.wrapping_sub(self.window) / 8
    }
}

const fn min(a: u32, b: u32) -> u32 {
    if a < b { a } else { b }
}

const fn max(a: u32, b: u32) -> u32 {
    if a > b { a } else { b }
}

/// One event from the kernel. Fixed size (96 bytes, a multiple of 8 with no padding) so the program reserves ring space without
/// computing lengths.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct SockEvent {
    /// An [`EventKind`] as `u32` (decoded by the daemon with `TryFrom`).
    pub kind: u32,
    /// Thread-group id (pid) of the current task. Meaningful for [`EventKind::ListenerUp`]
    /// (the process calling `listen()`); for the others it is whoever the kernel was running.
    pub pid: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds, the clock the daemon reads too.
    pub timestamp_ns: u64,
    /// Kernel address of the socket: the identity of a connection while it lives.
    pub skaddr: u64,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Local port, host byte order.
    pub local_port: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// Explicit padding so the layout has no hidden bytes (required for `Pod`).
    pub _pad: u16,
    /// Local address: IPv4 in the first four bytes, or IPv6.
    pub local_addr: [u8; 16],
    /// Remote address: IPv4 in the first four bytes, or IPv6.
    pub remote_addr: [u8; 16],
    /// `comm` of the current task, NUL-padded.
    pub comm: [u8; 16],
    /// A second timestamp, or a value, whose meaning depends on `kind` (see [`EventKind`]);
    /// 0 when unused.
    pub aux: u64,
    /// A value whose meaning depends on `kind` (for `ConnOpen`, [`OPEN_UNTRACKED`]); 0 when
    /// unused.
    pub detail: u32,
    /// Inode number of the socket's network namespace (as in `/proc/<pid>/ns/net`), for
    /// connection and listener events; 0 when unknown.
    pub netns: u32,
}

/// A `ConnOpen` event's `detail` when `TRACKED` could not take the connection: the kernel
/// follows it by endpoints, and cannot see its accept, so its life starts at the handshake.
pub const OPEN_UNTRACKED: u32 = 1;

/// A short event about a socket the daemon already knows by address ([`EventKind::Turn`],
/// [`EventKind::ConnClose`] of a tracked connection, [`EventKind::H2Frame`],
/// [`EventKind::WalkLost`]); fields as in [`SockEvent`], the rest of which would be zeroes.
/// 32 bytes rather than 96: these are most of the ring's traffic (two or three per
/// connection), and the bytes written and read again by the daemon were a measurable part of
/// each event's cost. The daemon tells the two apart by record length.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct ShortEvent {
    pub kind: u32,
    pub detail: u32,
    pub timestamp_ns: u64,
    pub skaddr: u64,
    pub aux: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both types are `#[repr(C)]`, made only of integers and byte arrays, with every
    // padding byte spelled out, so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::SockEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ShortEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnTrack {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Endpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::handover::HandedOver {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::gauge::GaugeKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::gauge::LiveGauges {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_layout_is_stable() {
        assert_eq!(core::mem::size_of::<SockEvent>(), 96);
        assert_eq!(core::mem::align_of::<SockEvent>(), 8);
        assert_eq!(core::mem::size_of::<ShortEvent>(), 32);
        // A `TRACKED` value per connection: its flags fill padding rather than add to it.
        assert_eq!(core::mem::size_of::<ConnTrack>(), 136);
    }

    #[test]
    fn registers_close_together_are_read_in_one_window() {
        let x86 = RegsLayout::X86_64;
        assert_eq!(x86.window, 12 * 8);
        assert_eq!(
            [x86.syscall_nr, x86.arg2, x86.arg3].map(|offset| x86.word_in_window(offset)),
            [3, 1, 0]
        );
        // arm64's number lies at byte 280, after 35 registers, far from x1 and x2.
        let arm64 = RegsLayout::AARCH64;
        assert_eq!(
            [arm64.syscall_nr, arm64.arg2, arm64.arg3, arm64.window],
            [280, 8, 16, RegsLayout::NO_WINDOW]
        );
        // Just too far apart, or not on register boundaries.
        assert_eq!(RegsLayout::new(0, 8, 32).window, RegsLayout::NO_WINDOW);
        assert_eq!(RegsLayout::new(0, 8, 24).window, 0);
        assert_eq!(RegsLayout::new(4, 12, 20).window, RegsLayout::NO_WINDOW);
    }

    #[test]
    fn the_socket_endpoints_are_read_in_two_copies_where_they_lie_together() {
        // Linux 6.x on x86_64.
        let offsets = SockOffsets {
            protocol: 516,
            local_port: 796,
            family: 16,
            remote_port: 12,
            local_v4: 4,
            remote_v4: 0,
            local_v6: 72,
            remote_v6: 56,
        };
        let layout = SockLayout::new(&offsets).expect("the usual layout");
        assert_eq!((layout.head, layout.v6_pair), (0, 56));
        assert_eq!((layout.protocol, layout.local_port), (516, 796));
        // Any field elsewhere: no layout, and the daemon uses the classic tracepoint.
        for moved in [
            SockOffsets {
                family: 18,
                ..offsets
            },
            SockOffsets {
                local_v4: 8,
                ..offsets
            },
            SockOffsets {
                remote_port: 14,
                ..offsets
            },
            SockOffsets {
                local_v6: 56,
                remote_v6: 72,
                ..offsets
            },
        ] {
            assert_eq!(SockLayout::new(&moved), None, "{moved:?}");
        }
        // The same layout further into a bigger struct.
        let shifted = SockOffsets {
            family: 48,
            remote_port: 44,
            local_v4: 36,
            remote_v4: 32,
            ..offsets
        };
        assert_eq!(
            SockLayout::new(&shifted).map(|layout| layout.head),
            Some(32)
        );
    }

    #[test]
    fn sockets_of_one_slab_rarely_share_a_tracked_hint() {
        // TCP sockets come from one slab cache, objects a fixed stride apart (about 2.3 KiB
        // for IPv4 on 6.x kernels, 2.5 KiB for IPv6), in pages of the kernel's direct map.
        for stride in [2_304_u64, 2_368, 2_496] {
            let base = 0xffff_8881_0a40_0000_u64;
            let mut taken = [false; 1 << TRACKED_HINT_BITS];
            let mut distinct = 0;
            for object in 0..4_096 {
                let slot = &mut taken[tracked_hint_slot(base + object * stride) as usize];
                distinct += usize::from(!*slot);
                *slot = true;
            }
            // About 3,970 for slots drawn at random; one multiply by the golden ratio gives
            // 3,064 for the first stride, the plain low bits a few hundred.
            assert!(distinct > 3_900, "stride {stride}: {distinct} slots");
        }
    }

    #[test]
    fn frame_detail_round_trips() {
        let header = proto::FrameHeader {
            length: 9,
            kind: proto::frame::HEADERS,
            flags: proto::flag::END_STREAM | 0x4,
            stream_id: 3,
        };
        for direction in [DIRECTION_IN, DIRECTION_OUT] {
            let detail = FrameDetail::new(&header, direction);
            assert_eq!(FrameDetail::unpack(detail.pack()), detail);
        }
        assert_eq!(FrameDetail::new(&header, DIRECTION_OUT).pack(), 0x01_05_01);
    }

    #[test]
    fn addresses_round_trip_through_the_wire_layout() {
        let key = ConnKey::new(
            "127.0.0.1:80".parse().unwrap(),
            "10.1.2.3:4000".parse().unwrap(),
        );
        assert_eq!(
            (key.family, key.local_port, key.remote_port),
            (AF_INET, 80, 4000)
        );
        assert_eq!(
            key.remote_addr,
            [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            wire_addr::decode(key.family, key.local_addr),
            Ok("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            wire_addr::decode(key.family, key.remote_addr),
            Ok("10.1.2.3".parse().unwrap())
        );
        // A pair with an IPv6 side is an IPv6 socket: its IPv4 side is mapped.
        let key = ConnKey::new(
            "[::1]:443".parse().unwrap(),
            "192.0.2.7:5000".parse().unwrap(),
        );
        assert_eq!(key.family, AF_INET6);
        assert_eq!(
            wire_addr::decode(key.family, key.local_addr),
            Ok("::1".parse().unwrap())
        );
        assert_eq!(
            wire_addr::decode(key.family, key.remote_addr),
            Ok("::ffff:192.0.2.7".parse().unwrap())
        );
        let target = ConnKey::destination("192.0.2.7:5000".parse().unwrap());
        assert_eq!((target.local_port, target.local_addr), (0, [0; 16]));
        assert_eq!(
            (target.remote_port, target.remote_addr),
            (5000, wire_addr::v4([192, 0, 2, 7]))
        );
        assert_eq!(wire_addr::decode(3, [0; 16]), Err(3));
    }

    #[test]
    fn event_kind_round_trips_and_rejects_unknown() {
        for kind in [
            EventKind::ListenerUp,
            EventKind::ListenerDown,
            EventKind::ConnOpen,
            EventKind::ConnClose,
            EventKind::Turn,
            EventKind::H2Frame,
            EventKind::WalkLost,
            EventKind::OutboundOpen,
            EventKind::Accepted,
            EventKind::CloseCalled,
        ] {
            assert_eq!(EventKind::try_from(kind as u32), Ok(kind));
        }
        assert_eq!(EventKind::try_from(0), Err(0));
        assert_eq!(EventKind::try_from(6), Err(6));
        assert_eq!(EventKind::try_from(99), Err(99));
    }
}
