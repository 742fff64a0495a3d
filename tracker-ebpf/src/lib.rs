//! Empty library target: lets host-side tooling (`cargo check -p tracker-ebpf`, and tracker-user's
//! build dependency on this crate) resolve the package. The programs are in the `tracker-probes` binary.
#![no_std]
