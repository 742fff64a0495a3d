//! One module per hook. Each exposes the program entry point (`x`) that maps the fallible body
//! (`try_x`) onto the return value the kernel expects.

pub mod inet_sock_set_state;
pub mod sock_recv_length;
pub mod sock_send_length;
pub mod syscall_buffers;
