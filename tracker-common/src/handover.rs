//! Closing phases the kernel hands on to a time-wait socket: a connection the server has
//! `close()`d that reaches FIN_WAIT2 is replaced at once by a time-wait socket in FIN_WAIT2
//! (`tcp_time_wait`), which waits there for the client's FIN, and the full socket goes to
//! CLOSE. No tracepoint fires for time-wait sockets, so the state change program records such
//! a connection here instead of ending its closing phase, and the daemon ends it when the
//! kernel's table (`sock_diag`) shows the time-wait socket past FIN_WAIT2 or gone.

use crate::Endpoint;

/// Name of the hash map of [`HandedOver`] by [`ConnKey`](crate::ConnKey): connections whose
/// closing phase a time-wait socket in FIN_WAIT2 carries on. The kernel only inserts; the
/// daemon, which ends each one's closing phase, removes it.
pub const HANDED_OVER_MAP: &str = "HANDED_OVER";
/// Capacity of [`HANDED_OVER_MAP`]: time-wait sockets in FIN_WAIT2 of the daemon's network
/// namespace at once (a server closing 1,000 connections a second whose clients keep their end
/// open for `tcp_fin_timeout`, 60 s, holds 60,000). Allocated on demand.
pub const HANDED_OVER_MAX_ENTRIES: u32 = 1 << 17;

/// `SOCK_DONE` in `sock.sk_flags` (`enum sock_flags`, bit 1): set when the socket received the
/// client's FIN (`tcp_fin`). A FIN_WAIT2 socket going to CLOSE without it was handed to a
/// time-wait socket still in FIN_WAIT2 (or, rarely, aborted); with it, to one in TIME_WAIT.
pub const SOCK_DONE: u64 = 1 << 1;

/// A connection whose closing phase went on in a time-wait socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct HandedOver {
    /// The local endpoint its closing phase is counted under.
    pub endpoint: Endpoint,
    /// When the full socket was handed over (`bpf_ktime_get_ns()`).
    pub at_ns: u64,
}
