//! The arm64 part of the VM matrix: the integration tests cross-built for aarch64 and run
//! under `qemu-system-aarch64 -M virt` on Debian's arm64 kernels, in a root made of Debian's
//! arm64 builds of the servers and clients they drive (see `vm_userland`), with the workspace
//! mounted at its host path so that the tests find the daemon where cargo put it.
//!
//! Which tests: emulating another architecture is slower than the x86_64 VMs, and the whole
//! suite on both arm64 kernels would add more than half an hour to CI, so arm64 runs the
//! tests that exercise the kernel programs, where the architecture shows: connection lives,
//! busy time through each path the kernel has, sessions over HTTP/1, h2c and TLS (the system
//! call registers arm64 saves, the TLS library's uprobes), HTTP/2 frame walks, and counts
//! under lost events. The flags, reports, owners, Prometheus, the package and the container
//! tests run on the host and the x86_64 VMs; nothing in them depends on the architecture.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context as _, bail};

use crate::build::cross_cargo;
use crate::host::workspace_root;
use crate::vm;
use crate::vm_initramfs::GuestRoot;
use crate::vm_kernel::Arch;
use crate::vm_userland;

pub const TRIPLE: &str = "aarch64-unknown-linux-gnu";

/// libtest filters (any one matches) naming the tests run on arm64.
pub const TESTS: &[&str] = &[
    "held_then_closed_in_stages",
    "thousands_of_short_connections_are_counted_exactly",
    "closing::",
    "busy_time_",
    "keep_alive_connections_are_not_busy",
    "sessions::",
    "tls::",
    "http2::",
    "overload::",
    "truth::counts_return_to_the_truth_within_an_interval_after_forced_loss",
];

/// What [`TESTS`] drive, arm64 builds: nginx, h2load, wrk, curl, Python's servers and HTTP/2
/// client, openssl for certificates, modprobe for the kernel's on-demand loading of
/// `tcp_diag`, and busybox for the guest's shell and tools. `libgcc-s1` is what Rust
/// binaries link beside libc.
const PACKAGES: &[&str] = &[
    "busybox-static",
    "libgcc-s1",
    "kmod",
    "nginx-light",
    "nghttp2-client",
    "wrk",
    "curl",
    "openssl",
    "python3",
    "python3-h2",
];

/// The root the arm64 guests boot into.
pub fn guest_root() -> anyhow::Result<GuestRoot> {
    Ok(GuestRoot::Foreign {
        dir: vm_userland::prepare(Arch::Arm64, PACKAGES)?,
        workspace: workspace_root(),
    })
}

/// The test binary's arguments on arm64: [`TESTS`] and the user's extra arguments, or the
/// user's alone when they name tests themselves.
pub fn test_args(user: &[String]) -> Vec<String> {
    let names_tests = user
        .iter()
        .enumerate()
        .any(|(index, arg)| !arg.starts_with('-') && (index == 0 || user[index - 1] != "--skip"));
    if names_tests {
        return user.to_vec();
    }
    TESTS
        .iter()
        .map(|&filter| filter.to_owned())
        .chain(user.iter().cloned())
        .collect()
}

/// Cross-builds the integration tests (and the daemon they run) for aarch64, optimised as on
/// x86_64; the test binary's path.
pub fn build_integration_tests() -> anyhow::Result<PathBuf> {
    let output = cross_cargo(TRIPLE)?
        .args(["test", "--release", "--no-run", "--message-format=json"])
        .args(["--package", "tracker-user", "--test", "integration"])
        .args(["--target", TRIPLE])
        .stderr(Stdio::inherit())
        .output()
        .context("building the integration tests for arm64")?;
    if !output.status.success() {
        bail!(
            "building the integration tests for arm64 failed ({})",
            output.status
        );
    }
    vm::integration_test_binary(&String::from_utf8_lossy(&output.stdout))
        .context("cargo named no arm64 integration test binary")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|&word| word.to_owned()).collect()
    }

    #[test]
    fn the_users_test_names_replace_the_arm64_selection_but_flags_add_to_it() {
        assert_eq!(
            test_args(&strings(&["sessions::h2load", "--nocapture"])),
            ["sessions::h2load", "--nocapture"]
        );
        let flagged = test_args(&strings(&["--skip", "tls::", "--nocapture"]));
        assert_eq!(flagged.len(), TESTS.len() + 3);
        assert_eq!(flagged[..TESTS.len()], strings(TESTS));
        assert_eq!(test_args(&[]), strings(TESTS));
    }
}
