//! tracker: per-listener TCP occupancy from kernel events.
//!
//! The tree follows the flow, grouped by what each part talks to:
//! * [`kernel`]: the eBPF programs loaded and attached (with the fallbacks each capability
//!   has), the kernel's BTF, tracefs, its gauges and totals, and servers' TLS libraries.
//! * [`host`]: the host's own tables: processes (`/proc`), the kernel's TCP sockets
//!   (`sock_diag`), time-wait sockets, cgroups and who runs in them, privileges.
//! * [`event`], [`observer`]: kernel events decoded and mapped onto one tracker per listener
//!   or destination; [`model`]: the connection tracker itself (plain Rust, no I/O), a port of
//!   the original library, and [`sessions`], what payload turns into sessions.
//! * [`sink`]: where reports go (lines, Prometheus, the live view).
//! * [`daemon`]: the event loop joining them; [`cli`]: the command line, and the man page and
//!   shell completions made from it; [`tracker_id`]: the identity every report goes by.

pub mod cli;
pub mod daemon;
pub mod event;
pub mod host;
pub mod kernel;
pub mod log_pipe;
pub mod model;
pub mod observer;
pub mod sessions;
pub mod sink;
#[cfg(test)]
mod test_writer;
pub mod tracker_id;
