//! One module per hook. The tracepoint modules expose two program entry points, `raw_x` for
//! the raw tracepoint and `x` for the classic one (see `record`), around one body; the
//! function modules one per attach method (fentry/fexit, kprobe/kretprobe), feeding the
//! same bodies where they serve the same purpose. The TLS library's uprobes (`openssl`) feed
//! the socket hooks' payload bodies with plaintext.

pub mod inet_csk_accept;
pub mod inet_sock_set_state;
pub mod openssl;
pub mod security_sock_graft;
pub mod sock_recv_length;
pub mod sock_send_length;
pub mod tcp_close;
pub mod tcp_recvmsg;
pub mod tcp_sendmsg;
