use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::diagnostic::DiagnosticLevel;
use cargo_metadata::{Artifact, Message};

/// The toolchain the eBPF crate builds with (`-Z build-std` is nightly-only); `cargo xtask`
/// installs its `rust-src` and `bpf-linker` before it builds anything.
const TOOLCHAIN: &str = "nightly";

/// Compiles `tracker-ebpf` for the BPF target (nightly, `-Z build-std=core`, bpf-linker) and
/// leaves the object in `OUT_DIR/tracker-probes`, which `src/kernel/bpf.rs` embeds.
///
/// Cargo replays a build script's `cargo:warning` lines on every later build, even one with
/// nothing to do: only the eBPF compiler's diagnostics (and the inner cargo's own warnings)
/// become warnings here, never its progress lines, which are shown only if the build fails.
fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("reading the workspace metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == "tracker-ebpf")
        .ok_or_else(|| anyhow!("package tracker-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", ebpf.manifest_path))?;
    // The build dependency on tracker-ebpf covers its library; its binary needs this.
    println!("cargo:rerun-if-changed={root_dir}");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    for (name, object) in build_ebpf(ebpf.name.as_str(), &out_dir)? {
        let destination = out_dir.join(&name);
        std::fs::copy(&object, &destination).with_context(|| {
            format!("copying {} to {}", object.display(), destination.display())
        })?;
    }
    Ok(())
}

/// Builds `package`'s binaries for the BPF target of this build's endianness; returns each
/// binary's name and path.
fn build_ebpf(package: &str, out_dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let endian = std::env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN")?;
    let target = match endian.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("no BPF target for endianness {other}"),
    };
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    let mut rustflags = OsString::new();
    // The programs read the host architecture's registers; cargo's encoding separates flags
    // with 0x1f.
    for flag in [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ] {
        if !rustflags.is_empty() {
            rustflags.push("\x1f");
        }
        rustflags.push(flag);
    }
    let mut command = Command::new("rustup");
    command
        .args(["run", TOOLCHAIN, "cargo", "build", "--package", package])
        .args([
            "--bins",
            "--release",
            "--message-format=json",
            "--target",
            target,
        ])
        .args(["-Z", "build-std=core"])
        // Apart from this build's own directory: cargo would wait on the lock it holds on
        // the outer one.
        .arg("--target-dir")
        .arg(out_dir.join("ebpf-target"))
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // The outer build's compiler is the stable one: the nightly toolchain's own is wanted.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {command:?} (is rustup on PATH?)"))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr = std::thread::spawn(move || -> Vec<String> {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect()
    });
    let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut binaries = Vec::new();
    for message in Message::parse_stream(stdout) {
        match message.context("reading the eBPF build's messages")? {
            Message::CompilerArtifact(Artifact {
                executable: Some(executable),
                target,
                ..
            }) => binaries.push((target.name, executable.into_std_path_buf())),
            Message::CompilerMessage(message) => {
                let diagnostic = message.message;
                if matches!(
                    diagnostic.level,
                    DiagnosticLevel::Warning | DiagnosticLevel::Error | DiagnosticLevel::Ice
                ) {
                    for line in diagnostic
                        .rendered
                        .unwrap_or(diagnostic.message)
                        .trim_end()
                        .lines()
                    {
                        println!("cargo:warning={line}");
                    }
                }
            }
            _ => {}
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {command:?}"))?;
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        // Cargo shows a failed build script's stderr: the whole inner build, progress too.
        for line in &stderr {
            eprintln!("{line}");
        }
        bail!("building the eBPF programs failed ({status}): {command:?}");
    }
    for line in stderr.iter().filter(|line| is_cargo_warning(line)) {
        println!("cargo:warning={line}");
    }
    Ok(binaries)
}

/// Whether a line of the inner cargo's stderr is a warning of its own (a manifest or build
/// script problem), as opposed to progress or the count of the compiler's warnings, which
/// were passed on already.
fn is_cargo_warning(line: &str) -> bool {
    line.starts_with("warning:") && !line.contains(") generated ")
}
