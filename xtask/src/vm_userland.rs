//! A root filesystem of another architecture for the VM matrix, made from Debian's packages
//! of that architecture without installing them: apt resolves the packages' closure as on an
//! empty system of that architecture and only downloads it, `dpkg-deb -x` unpacks each
//! package into one folder, and the folder is laid out as a Debian 12 system is (`/bin`,
//! `/sbin` and `/lib` merged into `/usr`) with the few files package scripts would have
//! written. The guest boots into it over 9p; it is cached under `target/`.
//!
//! Why not `debootstrap --foreign`: its second stage runs every package's scripts inside the
//! guest, minutes under emulation, and nothing the tests run needs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::host::{output_of, run_step, workspace_root};
use crate::vm_kernel::Arch;

/// The folders a merged-`/usr` system has as links into `/usr`.
const MERGED_INTO_USR: &[&str] = &["bin", "sbin", "lib"];

/// Where the guest mounts, moves or overlays something: they must exist in the root.
const MOUNT_POINTS: &[&str] = &["dev", "proc", "sys", "tmp", "run", "root", "var", "etc"];

/// What package scripts and the installer would have written, for the servers and clients
/// the tests run: the accounts nginx and Python look up, and the loopback names.
const ETC_FILES: &[(&str, &str)] = &[
    (
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\n\
         www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    ),
    ("etc/group", "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n"),
    (
        "etc/hosts",
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    ),
];

/// The root holding `packages` of `arch` and all they depend on; fetched and unpacked
/// unless cached.
pub fn prepare(arch: Arch, packages: &[&str]) -> anyhow::Result<PathBuf> {
    // Named after its packages: a changed list is fetched afresh.
    let root = workspace_root()
        .join("target/vm-userland")
        .join(arch.debian_name())
        .join(packages.join("+"));
    let complete = root.join(".complete");
    if complete.exists() {
        return Ok(root);
    }
    ensure_foreign_architecture(arch)?;
    let downloads = root.with_extension("downloads");
    let _ = std::fs::remove_dir_all(&downloads);
    std::fs::create_dir_all(downloads.join("partial"))
        .with_context(|| format!("creating {}", downloads.display()))?;
    eprintln!(
        "xtask: fetching {} ({}) for the {} VMs",
        packages.join(" "),
        arch.debian_name(),
        arch.debian_name()
    );
    download(arch, packages, &downloads)?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    for entry in std::fs::read_dir(&downloads)? {
        let deb = entry?.path();
        if deb.extension().is_none_or(|extension| extension != "deb") {
            continue;
        }
        run_step(
            "unpacking a guest package",
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        )?;
    }
    std::fs::remove_dir_all(&downloads)
        .with_context(|| format!("removing {}", downloads.display()))?;
    lay_out(&root)?;
    std::fs::write(&complete, b"").with_context(|| format!("writing {}", complete.display()))?;
    Ok(root)
}

/// apt fetches a foreign architecture's packages only once it is one of dpkg's.
fn ensure_foreign_architecture(arch: Arch) -> anyhow::Result<()> {
    let name = arch.debian_name();
    let native = output_of(
        "reading dpkg's architecture",
        Command::new("dpkg").arg("--print-architecture"),
    )?;
    let foreign = output_of(
        "listing dpkg's foreign architectures",
        Command::new("dpkg").arg("--print-foreign-architectures"),
    )?;
    if native.trim() == name || foreign.lines().any(|line| line.trim() == name) {
        return Ok(());
    }
    eprintln!("xtask: adding {name} to dpkg's architectures, for the {name} VMs' packages");
    run_step(
        "dpkg --add-architecture",
        Command::new("dpkg").args(["--add-architecture", name]),
    )?;
    run_step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )
}

/// Downloads `packages` with their whole closure into `downloads`: apt resolves them as on
/// an empty system of `arch` (its own empty status file, `arch` its only architecture).
fn download(arch: Arch, packages: &[&str], downloads: &Path) -> anyhow::Result<()> {
    let status = downloads.join("status");
    std::fs::write(&status, b"").with_context(|| format!("writing {}", status.display()))?;
    let option = |name: &str, value: &Path| format!("{name}={}", value.display());
    run_step(
        "downloading the guest's packages",
        Command::new("apt-get")
            .args([
                "install",
                "--download-only",
                "--no-install-recommends",
                "-y",
                "-qq",
            ])
            .args(["-o", &format!("APT::Architecture={}", arch.debian_name())])
            .args([
                "-o",
                &format!("APT::Architectures::={}", arch.debian_name()),
            ])
            .args(["-o", &option("Dir::State::status", &status)])
            .args(["-o", &option("Dir::Cache::archives", downloads)])
            // Nothing is installed: the host's dpkg lock is not needed.
            .args(["-o", "Debug::NoLocking=1"])
            // The cache is root's; apt's unprivileged download user could not write there.
            .args(["-o", "APT::Sandbox::User=root"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Merges `/bin`, `/sbin` and `/lib` into `/usr` (Debian 12's packages still ship files in
/// both; its systems have the links), gives busybox's shell as `/bin/sh` if no package did,
/// makes the mount points and writes [`ETC_FILES`].
fn lay_out(root: &Path) -> anyhow::Result<()> {
    for name in MERGED_INTO_USR {
        let top = root.join(name);
        let usr = root.join("usr").join(name);
        if top.is_dir() && !top.is_symlink() {
            merge_into(&top, &usr)?;
            std::fs::remove_dir(&top).with_context(|| format!("removing {}", top.display()))?;
        }
        std::fs::create_dir_all(&usr).with_context(|| format!("creating {}", usr.display()))?;
        if !top.is_symlink() {
            std::os::unix::fs::symlink(format!("usr/{name}"), &top)
                .with_context(|| format!("linking {}", top.display()))?;
        }
    }
    let shell = root.join("usr/bin/sh");
    if !shell.exists() && !shell.is_symlink() {
        std::os::unix::fs::symlink("busybox", &shell)
            .with_context(|| format!("linking {}", shell.display()))?;
    }
    for dir in MOUNT_POINTS {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for (path, text) in ETC_FILES {
        let path = root.join(path);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Moves everything in `from` into `to`, folder by folder; a file in both is an error.
fn merge_into(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let is_dir = entry.file_type()?.is_dir();
        if is_dir && target.is_dir() && !target.is_symlink() {
            merge_into(&source, &target)?;
            std::fs::remove_dir(&source)
                .with_context(|| format!("removing {}", source.display()))?;
        } else if target.exists() || target.is_symlink() {
            bail!(
                "{} and {} are both in the guest's packages",
                source.display(),
                target.display()
            );
        } else {
            std::fs::rename(&source, &target)
                .with_context(|| format!("moving {}", source.display()))?;
        }
    }
    Ok(())
}

/// The directory inside `root` where the host path `path` appears.
pub fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_merges_usr_and_refuses_a_file_shipped_twice() {
        let root = std::env::temp_dir().join(format!("xtask-userland-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in [
            "bin",
            "lib/aarch64-linux-gnu",
            "usr/lib/aarch64-linux-gnu",
            "usr/bin",
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("bin/busybox"), b"").unwrap();
        std::fs::write(root.join("lib/aarch64-linux-gnu/libc.so.6"), b"").unwrap();
        std::fs::write(root.join("usr/lib/aarch64-linux-gnu/libssl.so.3"), b"").unwrap();
        lay_out(&root).unwrap();
        for path in [
            "bin/busybox",
            "usr/bin/busybox",
            "lib/aarch64-linux-gnu/libc.so.6",
            "usr/lib/aarch64-linux-gnu/libssl.so.3",
            "sbin",
            "root",
            "etc/passwd",
        ] {
            assert!(root.join(path).exists(), "{path}");
        }
        assert_eq!(
            std::fs::read_link(root.join("lib")).unwrap(),
            Path::new("usr/lib")
        );
        assert_eq!(
            std::fs::read_link(root.join("usr/bin/sh")).unwrap(),
            Path::new("busybox")
        );
        std::fs::remove_dir_all(&root).unwrap();

        for dir in ["bin", "usr/bin"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("sh"), b"").unwrap();
        }
        let error = lay_out(&root).unwrap_err().to_string();
        assert!(
            error.contains("are both in the guest's packages"),
            "{error}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_host_path_is_found_inside_the_root() {
        assert_eq!(
            inside(Path::new("/r"), Path::new("/work/main")),
            Path::new("/r/work/main")
        );
    }
}
