//! What the daemon loads into and reads from the kernel: the eBPF programs and their maps
//! ([`bpf`], attached through [`hooks`]), the kernel's BTF ([`btf`]), tracefs for classic
//! tracepoints ([`tracefs`]), the live gauges ([`gauges`]), the programs' own accounting
//! ([`prog_info`]), and the uprobes on servers' TLS libraries ([`tls`]).

pub mod bpf;
pub mod bpf_atomics;
pub mod btf;
pub mod gauges;
pub mod hooks;
#[cfg(test)]
mod object_checks;
mod prog_info;
pub mod tls;
pub mod tracefs;
