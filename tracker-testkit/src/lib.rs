//! The test kit: what tracker's integration tests (in `tracker-user/tests/`) and its bench
//! (`cargo xtask bench`) both drive, written once.
//!
//! - [`Daemon`]: the real `tracker` daemon as an RAII guard, with readers for its reports and
//!   its log.
//! - Servers: [`Nginx`] (Debian's nginx-light), [`Python`] scripts, a [`slow_backend`].
//! - Clients and the kernel's own view: [`connect_many`], [`run_client`], `ss`
//!   ([`server_side_sockets`]).
//! - Ports the kernel picks ([`free_port`]), and how long a wait may take on this machine
//!   ([`patience`]).
//!
//! Helpers fail the calling test with a message that says what was not reached; the bench's
//! entry points return errors instead where a run should end with a line, not a panic.

mod clients;
mod daemon;
mod kernel_table;
mod lines;
mod nginx;
mod patience;
mod process;
mod reports;
mod servers;
mod sockets;

pub use clients::run_client;
pub use daemon::{Daemon, DaemonBinary};
pub use kernel_table::{established_server_side, server_side_sockets};
pub use lines::{ReadGate, forward_lines, wait_for_line};
pub use nginx::{Nginx, nginx_config};
pub use patience::{TimedOut, note_for_this_kernel, patience, slowdown, wait_until};
pub use process::{signal, stop};
pub use reports::{max, sum};
pub use servers::{PYTHON, Python, SlowBackend, slow_backend};
pub use sockets::{Conn, connect_many, free_port, set_backlog};
