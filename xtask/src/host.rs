//! Commands on this machine that every task runs: cargo in the workspace, steps that fail
//! with a message naming them, root, and Debian packages.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

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

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Installs, from Debian's packages, each `(what, package)` whose `what` is missing: a
/// command on the PATH, or, given as an absolute path, a file or directory (a Python module).
pub(crate) fn ensure_packages(packages: &[(&str, &str)], purpose: &str) -> anyhow::Result<()> {
    let present = |what: &str| {
        if what.starts_with('/') {
            Path::new(what).exists()
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

/// Makes a self-signed certificate for 127.0.0.1 valid for `days` in `dir` with the host's
/// `openssl`: the paths of the certificate and its key.
pub(crate) fn self_signed_certificate(dir: &Path, days: u32) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run_step(
        "making a self-signed certificate",
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args([
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                &days.to_string(),
            ])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null()),
    )?;
    Ok((cert, key))
}
