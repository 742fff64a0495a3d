//! `cargo xtask build`: the release daemon, its man pages and shell completions.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use crate::host::{cargo, run_step, workspace_root};
use crate::toolchain;

/// Installs the eBPF toolchain pieces if missing, then builds target/release/tracker and
/// tracker-docs; the daemon's path.
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
