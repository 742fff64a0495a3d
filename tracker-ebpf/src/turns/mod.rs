//! The turns capability: a connection's request/response turns, its protocol and, for HTTP/2,
//! the frames that open and end its streams, from the payload the server reads and sends. One
//! code path for every hook that sees that payload (the socket tracepoints, fexit or kprobes on
//! `tcp_recvmsg`/`tcp_sendmsg`, the TLS library's return probe): each hook file in `probes/` only
//! turns its context into a [`SockLength`](crate::record::SockLength) and calls in here.
//!
//! A turn starts at the first payload the server reads while idle (or after it answered) and is
//! counted at once in the endpoint's totals, so busy time stays exact when records are lost; the
//! turn's end is the server's last send before the next request, known only when that request
//! (or the close) comes. On HTTP/1 the first bytes of each answer say whether it is an interim
//! `1xx` (the request goes on) or a `101` (the connection leaves HTTP/1).

mod recv;
mod send;

pub use recv::on_recv;
pub use send::on_send;
