//! What the daemon reads of the host itself: processes and their sockets ([`procfs`]), the
//! kernel's table of TCP sockets ([`tcp_table`]), time-wait sockets ([`time_wait`]), cgroups
//! and who runs in them ([`workload`]), and this process's privileges ([`privileges`]).

pub mod privileges;
pub mod procfs;
pub mod tcp_table;
pub mod time_wait;
pub mod workload;
