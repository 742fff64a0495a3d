//! tracker: per-listener TCP occupancy from kernel events.
//!
//! * [`model`]: the connection tracker (plain Rust, no I/O), a port of the original library.
//! * [`event`], [`observer`]: kernel events decoded and mapped onto one tracker per listener.
//! * [`procfs`], [`tracefs`], [`bpf`]: what the daemon reads from and attaches to the kernel.
//! * [`daemon`], [`output`]: the event loop and the report formats.

pub mod bpf;
pub mod btf;
pub mod daemon;
pub mod event;
pub mod hooks;
pub mod model;
pub mod observer;
pub mod output;
pub mod procfs;
pub mod prometheus;
pub mod sessions;
pub mod sockdiag;
pub mod top;
pub mod tracefs;
