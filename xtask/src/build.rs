//! `cargo xtask build`: the release daemon, its man pages and shell completions; or, with
//! `--target`, the daemon cross-built for another architecture.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::host::{cargo, ensure_packages, run_step, workspace_root};
use crate::toolchain;

#[derive(clap::Args)]
pub(crate) struct BuildArgs {
    /// Build the daemon for this target instead, into target/TRIPLE/release/tracker
    /// (aarch64-unknown-linux-gnu or x86_64-unknown-linux-gnu); the Rust target and Debian's
    /// cross linker are installed if missing. The man pages come from a native build.
    #[arg(long, value_name = "TRIPLE")]
    target: Option<String>,
}

/// cargo's arguments for the release daemon.
const RELEASE_DAEMON: [&str; 6] = [
    "build",
    "--release",
    "--package",
    "tracker-user",
    "--bin",
    "tracker",
];

/// A target the daemon cross-builds for, and the Debian cross linker that links it.
struct CrossTarget {
    triple: &'static str,
    arch: &'static str,
    linker: &'static str,
    linker_package: &'static str,
}

const CROSS_TARGETS: &[CrossTarget] = &[
    CrossTarget {
        triple: "aarch64-unknown-linux-gnu",
        arch: "aarch64",
        linker: "aarch64-linux-gnu-gcc",
        linker_package: "gcc-aarch64-linux-gnu",
    },
    CrossTarget {
        triple: "x86_64-unknown-linux-gnu",
        arch: "x86_64",
        linker: "x86_64-linux-gnu-gcc",
        linker_package: "gcc-x86-64-linux-gnu",
    },
];

/// `cargo xtask build [--target TRIPLE]`.
pub(crate) fn build_task(args: &BuildArgs) -> anyhow::Result<()> {
    match &args.target {
        None => build().and_then(|binary| write_man_and_completions(&binary)),
        Some(triple) => {
            let binary = cross_build(triple)?;
            eprintln!("xtask: {}", binary.display());
            Ok(())
        }
    }
}

/// The environment variable that names cargo's linker for `triple`.
fn linker_variable(triple: &str) -> String {
    format!(
        "CARGO_TARGET_{}_LINKER",
        triple.to_uppercase().replace('-', "_")
    )
}

/// Builds the daemon for `triple` (see [`BuildArgs::target`]); its path.
pub(crate) fn cross_build(triple: &str) -> anyhow::Result<PathBuf> {
    run_step(
        &format!("building tracker for {triple} (release)"),
        cross_cargo(triple)?
            .args(RELEASE_DAEMON)
            .args(["--target", triple]),
    )?;
    Ok(workspace_root()
        .join("target")
        .join(triple)
        .join("release/tracker"))
}

/// cargo, ready to build for `triple` once given `--target`: the eBPF toolchain, the Rust
/// target and, for another architecture, Debian's cross linker installed and named.
pub(crate) fn cross_cargo(triple: &str) -> anyhow::Result<Command> {
    let Some(target) = CROSS_TARGETS.iter().find(|target| target.triple == triple) else {
        let known: Vec<&str> = CROSS_TARGETS.iter().map(|target| target.triple).collect();
        bail!(
            "--target {triple}: not a target tracker builds for (one of {})",
            known.join(", ")
        );
    };
    toolchain::ensure_ebpf_toolchain()?;
    toolchain::ensure_rust_target(target.triple)?;
    let mut command = cargo();
    if target.arch != std::env::consts::ARCH {
        ensure_packages(
            &[(target.linker, target.linker_package)],
            &format!("linking for {}", target.triple),
        )?;
        command.env(linker_variable(target.triple), target.linker);
    }
    Ok(command)
}

/// Installs the eBPF toolchain pieces if missing, then builds target/release/tracker and
/// tracker-docs; the daemon's path.
pub(crate) fn build() -> anyhow::Result<PathBuf> {
    toolchain::ensure_ebpf_toolchain()?;
    run_step(
        "building tracker (release)",
        cargo().args(RELEASE_DAEMON).args(["--bin", "tracker-docs"]),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_target_is_refused_before_anything_is_built() {
        let error = cross_build("mips-unknown-linux-gnu")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("--target mips-unknown-linux-gnu: not a target"),
            "{error}"
        );
        assert!(error.contains("aarch64-unknown-linux-gnu"), "{error}");
    }

    #[test]
    fn the_linker_is_named_in_cargos_variable_for_the_target() {
        assert_eq!(
            linker_variable("aarch64-unknown-linux-gnu"),
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER"
        );
    }
}
