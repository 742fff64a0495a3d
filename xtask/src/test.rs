//! `cargo xtask test`: the host's unit and integration tests, then the integration tests
//! again inside a VM per kernel of the matrix (Debian's kernel packages under QEMU), so that
//! every feature is proven on the kernels production hosts run, not only on this one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::deb;
use crate::host::{cargo, ensure_packages, is_root, run_step, workspace_root};
use crate::toolchain;
use crate::vm::{self, VmOutcome};
use crate::vm_arm64;
use crate::vm_initramfs::{GuestCommand, GuestRoot};
use crate::vm_kernel::{self, ARM64_SERIES, Arch, SERIES, Series};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Run the VM matrix on this kernel series only.
    #[arg(
        long,
        value_parser = SERIES.iter().map(|series| series.name).collect::<Vec<_>>(),
        conflicts_with = "no_vm"
    )]
    kernel: Option<String>,
    /// Skip the VM kernel matrix: the host's tests only, for quick local loops (CI runs all).
    #[arg(long, conflicts_with = "vm_only")]
    no_vm: bool,
    /// Only the VM matrix, without the host's unit and integration tests.
    #[arg(long)]
    vm_only: bool,
    /// Run the VM matrix of this architecture only: the integration tests on x86_64 (amd64)
    /// or those that exercise the kernel programs on arm64 (arm64).
    #[arg(long, value_parser = ["amd64", "arm64"], conflicts_with = "no_vm")]
    arch: Option<String>,
    /// Extra arguments for the test binaries (e.g. a test name filter), after `--`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Debian packages the integration tests drive: (command, or the path of a Python module,
/// they provide; package). The Python modules are Debian's, for Debian's `/usr/bin/python3`.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx-light"),
    ("h2load", "nghttp2-client"),
    ("nghttp", "nghttp2-client"),
    ("/usr/lib/python3/dist-packages/h2", "python3-h2"),
    (
        "/usr/lib/python3/dist-packages/websockets",
        "python3-websockets",
    ),
    ("wrk", "wrk"),
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("prometheus", "prometheus"),
    ("tmux", "tmux"),
    ("man", "man-db"),
    // A container from a root filesystem in a directory: podman, the runtime that works on
    // a cgroup v1/v2 hybrid host, and a static busybox to serve from inside it.
    ("podman", "podman"),
    ("runc", "runc"),
    ("/bin/busybox", "busybox-static"),
    // The package test checks the packaged unit with `systemd-analyze verify`.
    ("systemd-analyze", "systemd"),
];

/// What the VM matrix needs on the host: the emulator, the initramfs's shell, the module
/// tools (depmod here, modprobe for the guest's on-demand loading from the shared root) and
/// the decompressors of Debian's kernel images and modules.
const VM_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-system-aarch64", "qemu-system-arm"),
    ("busybox", "busybox-static"),
    ("depmod", "kmod"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
];

/// How many times longer the tests' waits may take inside a VM: TCG emulates every
/// instruction, several times slower than the host.
const VM_SLOWDOWN: u32 = 5;

/// The variable through which the integration tests find the Debian package to install.
const DEB_VARIABLE: &str = "TRACKER_TEST_DEB";

/// A VM that has not finished by then is killed and its kernel fails: half as much again as
/// the slowest kernel's run takes on a loaded 2-core machine (6.1, about 19 minutes under
/// emulation), and short enough that the whole command stays within CI's 90 minutes even when
/// every VM hangs.
const VM_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub fn test(args: &TestArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the integration tests load eBPF programs and must run as root: \
             run `cargo xtask test` as root"
        );
    }
    toolchain::ensure_ebpf_toolchain()?;
    ensure_packages(TEST_PACKAGES, "the tests")?;
    // The package test installs what `cargo xtask deb` makes, on the host and in each VM.
    let package = deb::build_package(&deb::default_out_dir())?;
    if !args.vm_only {
        // Unit tests of every crate, then the integration tests, which attach real programs
        // and drive real traffic: one thread, so that the daemons they start never watch
        // each other's ports at the same moment and timing tolerances hold on 2 cores.
        run_step(
            "tests",
            cargo()
                .args(["test", "--workspace", "--exclude", "tracker-ebpf"])
                .env(DEB_VARIABLE, &package)
                .arg("--")
                .arg("--test-threads=1")
                .args(&args.args),
        )?;
    }
    if args.no_vm {
        return Ok(());
    }
    ensure_packages(VM_PACKAGES, "the VM kernel matrix")?;
    kernel_matrix(args, &package)
}

fn kernel_matrix(args: &TestArgs, package: &Path) -> anyhow::Result<()> {
    let wanted = |arch: Arch| {
        args.arch
            .as_deref()
            .is_none_or(|wanted| wanted == arch.debian_name())
    };
    let mut summary = Vec::new();
    if wanted(Arch::Amd64) {
        let command = guest_command(build_integration_tests()?, &args.args, package);
        for series in selected(SERIES, args) {
            summary.push(run_kernel(series, &GuestRoot::Host, &command)?);
        }
    }
    if wanted(Arch::Arm64) {
        let binary = vm_arm64::build_integration_tests()?;
        let command = guest_command(binary, &vm_arm64::test_args(&args.args), package);
        let root = vm_arm64::guest_root()?;
        for series in selected(ARM64_SERIES, args) {
            summary.push(run_kernel(series, &root, &command)?);
        }
    }
    eprintln!("xtask: kernel matrix:");
    for (release, outcome) in &summary {
        eprintln!("xtask:   {release}: {}", verdict(outcome));
    }
    let failed: Vec<&str> = summary
        .iter()
        .filter(|(_, outcome)| !kernel_passed(outcome))
        .map(|(release, _)| release.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("integration tests failed on {}", failed.join(", "));
    }
    Ok(())
}

/// The series of `all` that `--kernel` selects.
fn selected<'a>(all: &'a [Series], args: &TestArgs) -> impl Iterator<Item = &'a Series> {
    let name = args.kernel.clone();
    all.iter()
        .filter(move |series| name.as_deref().is_none_or(|name| name == series.name))
}

/// The integration test binary `program` with `test_args`, as the guest runs it.
fn guest_command(program: PathBuf, test_args: &[String], package: &Path) -> GuestCommand {
    GuestCommand {
        program,
        args: test_args
            .iter()
            .cloned()
            // The console is a terminal: colour codes would hide libtest's result lines.
            .chain(["--test-threads=1".to_owned(), "--color=never".to_owned()])
            .collect(),
        dir: workspace_root().join("tracker-user"),
        env: vec![
            ("TRACKER_TEST_SLOWDOWN".to_owned(), VM_SLOWDOWN.to_string()),
            // The workspace is at its host path in every guest. (The package is amd64: the
            // arm64 guests do not run its test.)
            (
                DEB_VARIABLE.to_owned(),
                package.to_string_lossy().into_owned(),
            ),
        ],
    }
}

/// Boots the newest kernel of `series` into `root`, runs `command`, reports; its release and
/// outcome.
fn run_kernel(
    series: &Series,
    root: &GuestRoot,
    command: &GuestCommand,
) -> anyhow::Result<(String, VmOutcome)> {
    let kernel = vm_kernel::prepare(series)?;
    eprintln!(
        "xtask: integration tests on {} ({}) under QEMU",
        kernel.release, kernel.package
    );
    let outcome = vm::run(&kernel, root, command, VM_TIMEOUT)?;
    report(&kernel.release, &outcome);
    Ok((kernel.release, outcome))
}

/// Builds the integration test binary (and the daemon it runs) and returns its path.
/// Optimised: under emulation an unoptimised daemon's own work would stretch the report
/// intervals and the servers' turns the tests measure.
fn build_integration_tests() -> anyhow::Result<PathBuf> {
    let output = cargo()
        .args(["test", "--release", "--no-run", "--message-format=json"])
        .args(["--package", "tracker-user", "--test", "integration"])
        .stderr(Stdio::inherit())
        .output()
        .context("building the integration tests")?;
    if !output.status.success() {
        bail!("building the integration tests failed ({})", output.status);
    }
    let binary = vm::integration_test_binary(&String::from_utf8_lossy(&output.stdout))
        .context("cargo named no integration test binary")?;
    Ok(binary)
}

fn kernel_passed(outcome: &VmOutcome) -> bool {
    !outcome.timed_out && outcome.exit_status == Some(0)
}

fn verdict(outcome: &VmOutcome) -> String {
    let result = if kernel_passed(outcome) {
        "ok".to_owned()
    } else if outcome.timed_out {
        "FAILED (timed out)".to_owned()
    } else {
        match outcome.exit_status {
            Some(status) => format!("FAILED (tests exited {status})"),
            None => "FAILED (the VM reported no result)".to_owned(),
        }
    };
    let boot = outcome.boot_time.map_or("no boot".to_owned(), |boot| {
        format!("boot {:.1} s", boot.as_secs_f64())
    });
    format!(
        "{result}: {} passed, {} not run on this kernel, {} failed; {boot}, {:.0} s in all",
        outcome.passed.len(),
        outcome.not_run.len(),
        outcome.failed.len(),
        outcome.total_time.as_secs_f64()
    )
}

fn report(release: &str, outcome: &VmOutcome) {
    eprintln!("xtask: {release}: {}", verdict(outcome));
    for name in &outcome.not_run {
        eprintln!("xtask:   not run on {release} (its output says why): {name}");
    }
    for name in &outcome.failed {
        eprintln!("xtask:   failed on {release}: {name}");
    }
}
