//! Installs what the eBPF build needs: nightly's `rust-src` and `bpf-linker`; and the Rust
//! standard library of a target the daemon is cross-built for.
//!
//! bpf-linker is built from crates.io against the nightly toolchain's own LLVM (the one rustc
//! emits bitcode for), through a small prefix folder whose `lib/` links `libLLVM.so` and the
//! library's soname to that toolchain's `libLLVM.so.<ver>-rust-<...>`. The built linker keeps a
//! runpath to that folder, so the folder lives in a cache directory, not under `target/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};

use crate::host::{output_of, run_step, workspace_root};

const NIGHTLY: &str = "nightly";

pub fn ensure_ebpf_toolchain() -> anyhow::Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()
}

/// Installs the standard library of `triple` for the workspace's toolchain (the one cargo
/// builds the daemon with), if missing.
pub fn ensure_rust_target(triple: &str) -> anyhow::Result<()> {
    let installed = output_of(
        "listing the installed Rust targets",
        Command::new(rustup()?)
            .args(["target", "list", "--installed"])
            .current_dir(workspace_root()),
    )?;
    if installed.lines().any(|line| line.trim() == triple) {
        return Ok(());
    }
    eprintln!("xtask: installing the Rust standard library for {triple}");
    run_step(
        &format!("installing the Rust target {triple}"),
        Command::new(rustup()?)
            .args(["target", "add", triple])
            .current_dir(workspace_root()),
    )
}

fn rustup() -> anyhow::Result<PathBuf> {
    which::which("rustup")
        .context("rustup is not on PATH: the eBPF build needs a nightly toolchain through rustup")
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let installed = output_of(
        "listing nightly components",
        Command::new(rustup()?).args(["component", "list", "--installed", "--toolchain", NIGHTLY]),
    )
    .context("the eBPF build needs the nightly toolchain (rustup toolchain install nightly)")?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for the nightly toolchain (needed by -Z build-std)");
    run_step(
        "installing the nightly rust-src component",
        Command::new(rustup()?).args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
    )
}

fn bpf_linker_works() -> bool {
    which::which("bpf-linker").is_ok_and(|linker| {
        Command::new(linker)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
    })
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    let version = output_of(
        "reading the nightly rustc version",
        Command::new(rustup()?).args(["run", NIGHTLY, "rustc", "-vV"]),
    )?;
    let llvm_major = llvm_major(&version).ok_or_else(|| {
        anyhow!("no 'LLVM version: N.x' line in `rustc +nightly -vV`:\n{version}")
    })?;
    let sysroot = output_of(
        "reading the nightly sysroot",
        Command::new(rustup()?).args(["run", NIGHTLY, "rustc", "--print", "sysroot"]),
    )?;
    let library = find_llvm_library(&Path::new(sysroot.trim()).join("lib"))?;
    let prefix = llvm_prefix_dir(llvm_major)?;
    link_llvm_prefix(&prefix, &library)?;

    eprintln!(
        "xtask: building bpf-linker against {} (about a minute, once)",
        library.display()
    );
    run_step(
        "installing bpf-linker",
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--force",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{llvm_major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` fails: is cargo's bin directory on PATH?"
        );
    }
    Ok(())
}

/// `LLVM version: 22.1.4` → 22.
fn llvm_major(rustc_version: &str) -> Option<u32> {
    rustc_version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next())
        .and_then(|major| major.trim().parse().ok())
}

/// The toolchain's `libLLVM.so.<ver>-rust-<...>` (a real file, not a link).
fn find_llvm_library(lib_dir: &Path) -> anyhow::Result<PathBuf> {
    let entries =
        std::fs::read_dir(lib_dir).with_context(|| format!("reading {}", lib_dir.display()))?;
    entries
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so.") && name.contains("-rust-"))
        })
        .ok_or_else(|| anyhow!("no libLLVM.so.*-rust-* in {}", lib_dir.display()))
}

/// A stable cache folder for the LLVM prefix (the linker's runpath points into it).
fn llvm_prefix_dir(llvm_major: u32) -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .ok_or_else(|| anyhow!("neither XDG_CACHE_HOME nor HOME is set"))?;
    Ok(cache
        .join("tracker-xtask")
        .join(format!("llvm-{llvm_major}")))
}

/// Makes `<prefix>/lib/libLLVM.so` and `<prefix>/lib/<soname>` point at `library`.
fn link_llvm_prefix(prefix: &Path, library: &Path) -> anyhow::Result<()> {
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    // The toolchain names the file after its soname, which is what the linker will ask for.
    let soname = library
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", library.display()))?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(library, &link)
            .with_context(|| format!("linking {} to {}", link.display(), library.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_llvm_major() {
        let text =
            "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(text), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }
}
