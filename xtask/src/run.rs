//! `cargo xtask run`: the release daemon, run as root.

use std::process::Command;

use anyhow::Context as _;

use crate::build::build;
use crate::host::is_root;

/// Builds, then runs tracker with `args` as root (through sudo when not root), and exits
/// with its status.
pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
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
