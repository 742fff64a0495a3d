//! One module per hook. Each exposes two program entry points, `raw_x` for the raw tracepoint
//! and `x` for the classic one (see `record`), around one body.

pub mod inet_sock_set_state;
pub mod sock_recv_length;
pub mod sock_send_length;
