//! `cargo xtask`: builds, runs and tests tracker on a fresh machine.
//!
//! Every command first makes sure the pieces the eBPF build needs are installed: the nightly
//! toolchain's `rust-src` (for `-Z build-std=core`) and `bpf-linker`. bpf-linker has no prebuilt
//! download here, so it is built against the nightly toolchain's own LLVM and cached in cargo's
//! bin directory; the second run finds it and skips the build.

mod bench;
mod build;
mod cpio;
mod deb;
mod host;
mod run;
mod test;
mod toolchain;
mod vm;
mod vm_arm64;
mod vm_initramfs;
mod vm_kernel;
mod vm_userland;

use clap::{Parser, Subcommand};

use crate::host::is_root;

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
    Build(build::BuildArgs),
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
        Task::Build(args) => build::build_task(&args),
        Task::Deb(args) => deb::deb(&args),
        Task::Run { args } => run::run(&args),
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
