//! `cargo xtask`: builds, runs and tests tracker on a fresh machine.
//!
//! Every command first makes sure the pieces the eBPF build needs are installed: the nightly
//! toolchain's `rust-src` (for `-Z build-std=core`) and `bpf-linker`. bpf-linker has no prebuilt
//! download here, so it is built against the nightly toolchain's own LLVM and cached in cargo's
//! bin directory; the second run finds it and skips the build.

mod bench;
mod deb;
mod test;
mod toolchain;
mod vm;
mod vm_initramfs;
mod vm_kernel;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test tracker")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain pieces if missing, then build target/release/tracker, its
    /// man pages (target/release/man) and shell completions (target/release/completions).
    Build,
    /// Build, then pack target/deb/tracker_VERSION_ARCH.deb (the daemon, its systemd unit,
    /// README, man pages and completions) and print its path.
    Deb(deb::DebArgs),
    /// Build, then run tracker as root (through sudo when not root) with ARGS.
    Run {
        /// Arguments for tracker, after `--` (e.g. `cargo xtask run -- --interval 1`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure overhead, loss-free rate, memory and cost per event (as root); writes
    /// BENCHMARKS.md and benchmarks.png.
    Bench(bench::BenchArgs),
    /// Install what the tests need, then run the unit and integration tests (as root), and
    /// the integration tests again in a VM per Debian kernel of the matrix.
    Test(test::TestArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Build => build().and_then(|binary| write_man_and_completions(&binary)),
        Task::Deb(args) => deb::deb(&args),
        Task::Run { args } => run(&args),
        Task::Test(args) => test::test(&args),
        Task::Bench(args) => {
            if is_root() {
                bench::bench(&args)
            } else {
                Err(anyhow::anyhow!(
                    "the benchmark loads eBPF programs and must run as root"
                ))
            }
        }
    };
    if let Err(error) = result {
        eprintln!("xtask: {error:#}");
        std::process::exit(1);
    }
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

pub(crate) fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// Runs `command`, failing with `step` in the message when it does not succeed.
pub(crate) fn run_step(step: &str, command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("{step}: could not start {command:?}"))?;
    if !status.success() {
        bail!("{step} failed ({status}): {command:?}");
    }
    Ok(())
}

/// Runs `command` and returns its standard output, failing with `step` and its standard error
/// when it does not succeed.
pub(crate) fn output_of(step: &str, command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("{step}: could not start {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{step} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub(crate) fn build() -> anyhow::Result<PathBuf> {
    toolchain::ensure_ebpf_toolchain()?;
    run_step(
        "building tracker (release)",
        cargo().args([
            "build",
            "--release",
            "--package",
            "tracker-user",
            "--bin",
            "tracker",
            "--bin",
            "tracker-docs",
        ]),
    )?;
    Ok(workspace_root().join("target/release/tracker"))
}

/// Writes the man pages and shell completions beside `binary`, through `tracker-docs` (built
/// with it, from the same flag definitions), and says where in one line.
pub(crate) fn write_man_and_completions(binary: &Path) -> anyhow::Result<()> {
    let dir = binary.parent().context("the binary has a directory")?;
    run_step(
        "writing the man pages and shell completions",
        Command::new(dir.join("tracker-docs")).arg(dir),
    )?;
    let shown = dir.strip_prefix(workspace_root()).unwrap_or(dir).display();
    eprintln!(
        "xtask: man pages in {shown}/man (man -l {shown}/man/tracker.1), shell completions in \
         {shown}/completions"
    );
    Ok(())
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let binary = build()?;
    let mut command = if is_root() {
        Command::new(&binary)
    } else {
        let sudo = which::which("sudo").context(
            "tracker must run as root (it loads eBPF programs) and sudo is not installed: \
             run `cargo xtask run` as root",
        )?;
        let mut command = Command::new(sudo);
        command.arg("--preserve-env=RUST_LOG").arg(&binary);
        command
    };
    command.args(args);
    let status = command
        .status()
        .with_context(|| format!("starting {}", binary.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Installs, from Debian's packages, each `(what, package)` whose `what` is missing: a
/// command on the PATH, or, given as an absolute path, a file or directory (a Python module).
pub(crate) fn ensure_packages(packages: &[(&str, &str)], purpose: &str) -> anyhow::Result<()> {
    let present = |what: &str| {
        if what.starts_with('/') {
            std::path::Path::new(what).exists()
        } else {
            which::which(what).is_ok()
        }
    };
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(what, _)| !present(what))
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {} for {purpose}", missing.join(" "));
    run_step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    run_step(
        "installing the test packages",
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
