//! tracker: per-listener TCP occupancy from kernel events.
//!
//! * [`model`]: the connection tracker (plain Rust, no I/O), a port of the original library.
//! * [`event`], [`observer`]: kernel events decoded and mapped onto one tracker per listener
//!   or destination.
//! * [`procfs`], [`tcp_table`], [`tracefs`], [`bpf`], [`tls`]: what the daemon reads from and
//!   attaches to the kernel (and to servers' TLS libraries).
//! * [`tracker_id`]: the identity every tracker's report goes by.
//! * [`cli`]: the command line, and the man page and shell completions made from it.
//! * [`workload`]: the systemd unit, container and pod a listener's cgroup names.
//! * [`time_wait`]: the ends of closing phases the kernel hands on to time-wait sockets.
//! * [`daemon`]: the event loop; [`sink`]: where reports go (lines, Prometheus, the live view).

pub mod bpf;
pub mod bpf_atomics;
pub mod btf;
pub mod cli;
pub mod daemon;
pub mod event;
pub mod hooks;
pub mod kernel_gauges;
pub mod log_pipe;
pub mod model;
pub mod observer;
pub mod privileges;
pub mod procfs;
mod prog_info;
pub mod sessions;
pub mod sink;
pub mod tcp_table;
#[cfg(test)]
mod test_writer;
pub mod time_wait;
pub mod tls;
pub mod tracefs;
pub mod tracker_id;
pub mod workload;
