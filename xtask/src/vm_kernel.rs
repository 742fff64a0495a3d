//! Debian kernel packages for the VM matrix: the newest package of a series, fetched with
//! `apt-get download`, unpacked with `dpkg-deb -x` into a cache under `target/` (never
//! installed on the host), its modules indexed with `depmod -b`, and the uncompressed
//! `vmlinux` cut out of `vmlinuz` so that QEMU can enter it directly (Debian builds
//! `CONFIG_PVH`), which boots faster under emulation than the self-decompressing image.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, anyhow, bail};

use crate::host::{output_of, run_step, workspace_root};

/// A kernel series of the matrix: package names `<prefix><digits><suffix>`, of Debian
/// architecture `arch`.
pub struct Series {
    /// What `--kernel` matches and the summary prints (e.g. "6.1").
    pub name: &'static str,
    prefix: &'static str,
    suffix: &'static str,
    arch: Arch,
}

/// The architecture a kernel series is built for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// This machine's: `vmlinux` cut out for QEMU (see the module).
    Amd64,
    /// Fetched as a foreign architecture; its `vmlinuz` is a plain arm64 `Image` that QEMU
    /// boots as it is. Its modules are indexed as well: `depmod` reads any architecture's.
    Arm64,
}

impl Arch {
    /// Debian's name, as apt and dpkg spell it.
    pub fn debian_name(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }
}

/// The kernels the integration tests run on: Debian 12's own and its newer backport. The
/// generic flavour, because the cloud one has no 9p.
pub const SERIES: &[Series] = &[
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64",
        arch: Arch::Amd64,
    },
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64",
        arch: Arch::Amd64,
    },
];

/// The same two series for arm64, booted under `qemu-system-aarch64`.
pub const ARM64_SERIES: &[Series] = &[
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-arm64",
        arch: Arch::Arm64,
    },
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-arm64",
        arch: Arch::Arm64,
    },
];

impl Series {
    fn matches(&self, package: &str) -> bool {
        package
            .strip_prefix(self.prefix)
            .and_then(|rest| rest.strip_suffix(self.suffix))
            .is_some_and(|middle| {
                !middle.is_empty() && middle.bytes().all(|byte| byte.is_ascii_digit())
            })
    }
}

/// A kernel package unpacked in the cache, ready to boot.
pub struct Kernel {
    pub series: &'static str,
    pub arch: Arch,
    pub package: String,
    /// `uname -r` inside the VM, the directory name under `lib/modules`.
    pub release: String,
    /// The unpacked package (its `lib/modules/<release>` has a `modules.dep`).
    pub root: PathBuf,
    pub vmlinux: PathBuf,
}

impl Kernel {
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

fn cache_dir() -> PathBuf {
    workspace_root().join("target/vm-kernels")
}

/// The newest package of `series` with its version, fetched and unpacked if not cached.
pub fn prepare(series: &Series) -> anyhow::Result<Kernel> {
    let (package, version) = match newest_package(series)? {
        Some(found) => found,
        None => {
            // A fresh machine may never have read the package lists.
            run_step(
                "apt-get update",
                Command::new("apt-get").args(["update", "-qq"]),
            )?;
            newest_package(series)?.ok_or_else(|| {
                anyhow!(
                    "no package {}N{} in apt's lists",
                    series.prefix,
                    series.suffix
                )
            })?
        }
    };
    let root = cache_dir().join(format!("{package}_{version}"));
    let complete = root.join(".complete");
    if !complete.exists() {
        eprintln!("xtask: fetching {package} {version} for the VM matrix");
        unpack(&package, &version, series.arch, &root)?;
        std::fs::write(&complete, b"")
            .with_context(|| format!("writing {}", complete.display()))?;
    }
    let release = release_of(&root)?;
    index_modules(&root, &release)?;
    let vmlinux = match series.arch {
        Arch::Amd64 => root.join("vmlinux"),
        Arch::Arm64 => root.join("boot").join(format!("vmlinuz-{release}")),
    };
    Ok(Kernel {
        series: series.name,
        arch: series.arch,
        vmlinux,
        package,
        release,
        root,
    })
}

/// Among the packages of `series` that apt can install, the one with the highest candidate
/// version in apt's own ordering (`dpkg --compare-versions`).
fn newest_package(series: &Series) -> anyhow::Result<Option<(String, String)>> {
    let names = output_of(
        "listing kernel packages",
        Command::new("apt-cache").args(["pkgnames", series.prefix]),
    )?;
    let names: Vec<&str> = names.lines().filter(|name| series.matches(name)).collect();
    if names.is_empty() {
        return Ok(None);
    }
    let policy = output_of(
        "reading kernel package versions",
        Command::new("apt-cache").arg("policy").args(&names),
    )?;
    let mut newest: Option<(String, String)> = None;
    for (package, version) in candidates(&policy) {
        let newer = match &newest {
            None => true,
            Some((_, best)) => Command::new("dpkg")
                .args(["--compare-versions", &version, "gt", best])
                .status()
                .context("running dpkg --compare-versions")?
                .success(),
        };
        if newer {
            newest = Some((package, version));
        }
    }
    Ok(newest)
}

/// `(package, candidate version)` pairs from `apt-cache policy` output, without packages
/// that have no candidate.
fn candidates(policy: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut package = None;
    for line in policy.lines() {
        if !line.starts_with(' ') {
            // A foreign architecture's package is headed `name:arch:`.
            package = line
                .strip_suffix(':')
                .and_then(|name| name.split(':').next())
                .map(str::to_owned);
        } else if let Some(version) = line.trim().strip_prefix("Candidate: ")
            && version != "(none)"
            && let Some(package) = package.take()
        {
            found.push((package, version.to_owned()));
        }
    }
    found
}

/// Downloads and unpacks into `root`; for this machine's architecture, indexes the modules
/// and extracts `vmlinux` too.
fn unpack(package: &str, version: &str, arch: Arch, root: &Path) -> anyhow::Result<()> {
    let downloads = cache_dir().join("downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("creating {}", downloads.display()))?;
    run_step(
        "downloading the kernel package",
        Command::new("apt-get")
            .args([
                "download",
                "-qq",
                &format!("{package}:{}={version}", arch.debian_name()),
            ])
            // The cache is root's; apt's unprivileged download user could not write there.
            .args(["-o", "APT::Sandbox::User=root"])
            .current_dir(&downloads),
    )?;
    let deb = std::fs::read_dir(&downloads)?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&format!("{package}_")))
        })
        .ok_or_else(|| anyhow!("apt-get download left no {package}_*.deb"))?;
    let _ = std::fs::remove_dir_all(root);
    run_step(
        "unpacking the kernel package",
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root),
    )?;
    std::fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
    if arch == Arch::Arm64 {
        return Ok(());
    }
    let release = release_of(root)?;
    let vmlinuz = std::fs::read(root.join("boot").join(format!("vmlinuz-{release}")))
        .with_context(|| format!("reading vmlinuz-{release}"))?;
    let vmlinux = extract_vmlinux(&vmlinuz)?;
    std::fs::write(root.join("vmlinux"), vmlinux).context("writing vmlinux")
}

/// Debian ships the modules without their index; the initramfs's module list and modprobe
/// (the kernel's on-demand loading, `tcp_diag` for the daemon) need `modules.dep`.
fn index_modules(root: &Path, release: &str) -> anyhow::Result<()> {
    if root
        .join("lib/modules")
        .join(release)
        .join("modules.dep")
        .exists()
    {
        return Ok(());
    }
    run_step(
        "indexing the kernel's modules",
        Command::new("depmod").arg("-b").arg(root).arg(release),
    )
}

/// The one directory name under `<root>/lib/modules`.
fn release_of(root: &Path) -> anyhow::Result<String> {
    let modules = root.join("lib/modules");
    let mut releases: Vec<String> = std::fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        _ => bail!(
            "expected one kernel release in {}, found {releases:?}",
            modules.display()
        ),
    }
}

/// Compressed payload formats a bzImage may carry: magic bytes and the decompressor.
const PAYLOADS: &[(&[u8], &[&str])] = &[
    (b"\xfd7zXZ\x00", &["xz", "-dc", "--single-stream"]),
    (b"\x28\xb5\x2f\xfd", &["zstd", "-dcq"]),
    (b"\x1f\x8b\x08", &["gzip", "-dc"]),
    (b"\x02\x21\x4c\x18", &["lz4", "-dc"]),
    (b"BZh", &["bzip2", "-dc"]),
];

/// Finds the compressed kernel inside `vmlinuz` by its magic and decompresses it with the
/// system tool; the first candidate that yields a whole ELF image wins.
pub fn extract_vmlinux(vmlinuz: &[u8]) -> anyhow::Result<Vec<u8>> {
    for (magic, tool) in PAYLOADS {
        for offset in occurrences(vmlinuz, magic) {
            // Decompressors complain about the bytes after the payload; the output up to
            // there is what counts, so their status is not.
            let Ok(output) = decompress(tool, &vmlinuz[offset..]) else {
                continue;
            };
            if is_whole_elf(&output) {
                return Ok(output);
            }
        }
    }
    bail!("no compressed ELF kernel found in vmlinuz")
}

fn occurrences<'a>(haystack: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(move |(_, window)| *window == needle)
        .map(|(offset, _)| offset)
}

fn decompress(tool: &[&str], input: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", tool[0]))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let output = std::thread::scope(|scope| {
        // Fed from another thread: the tool stops reading at the end of its stream while
        // its output fills the pipe.
        scope.spawn(move || {
            let _ = stdin.write_all(input);
        });
        child.wait_with_output()
    })?;
    Ok(output.stdout)
}

/// An ELF64 file whose section header table, which the linker puts at the end, is present.
fn is_whole_elf(image: &[u8]) -> bool {
    if image.len() < 64 || !image.starts_with(b"\x7fELF\x02") {
        return false;
    }
    let u64_at = |at: usize| u64::from_le_bytes(image[at..at + 8].try_into().unwrap());
    let u16_at = |at: usize| u64::from(u16::from_le_bytes(image[at..at + 2].try_into().unwrap()));
    let section_headers_end = u64_at(0x28) + u16_at(0x3a) * u16_at(0x3c);
    section_headers_end <= image.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_match_only_their_generic_flavour() {
        let [old, new] = SERIES else {
            panic!("two series")
        };
        assert!(old.matches("linux-image-6.1.0-57-amd64"));
        assert!(!old.matches("linux-image-6.1.0-57-cloud-amd64"));
        assert!(!old.matches("linux-image-6.1.0--amd64"));
        assert!(new.matches("linux-image-6.12.117+deb12-amd64"));
        assert!(!new.matches("linux-image-6.12.117+deb12-rt-amd64"));
        assert!(!new.matches("linux-image-6.12.117+deb12-amd64-unsigned"));
    }

    #[test]
    fn reads_candidates_from_apt_policy() {
        let policy = "linux-image-6.1.0-56-amd64:\n  Installed: (none)\n  Candidate: 6.1.170-1\n  \
             Version table:\n     6.1.170-1 500\nlinux-image-6.1.0-9-amd64:\n  Installed: (none)\n  \
             Candidate: (none)\nlinux-image-6.1.0-57-arm64:arm64:\n  Installed: (none)\n  \
             Candidate: 6.1.192-3\n";
        assert_eq!(
            candidates(policy),
            vec![
                ("linux-image-6.1.0-56-amd64".into(), "6.1.170-1".into()),
                ("linux-image-6.1.0-57-arm64".into(), "6.1.192-3".into())
            ]
        );
    }

    #[test]
    fn finds_a_gzip_payload_behind_other_bytes() {
        let mut elf = vec![0u8; 128];
        elf[..5].copy_from_slice(b"\x7fELF\x02");
        // Section headers: one entry of 64 bytes at offset 64, ending at the image's end.
        elf[0x28..0x30].copy_from_slice(&64u64.to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&1u16.to_le_bytes());
        let compressed = compress_with_gzip(&elf);
        let mut vmlinuz = b"setup code \x1f\x8b\x08 not a stream".to_vec();
        vmlinuz.extend_from_slice(&compressed);
        vmlinuz.extend_from_slice(b"trailing bytes");
        assert_eq!(extract_vmlinux(&vmlinuz).unwrap(), elf);
        assert!(extract_vmlinux(b"no payload here").is_err());
    }

    fn compress_with_gzip(data: &[u8]) -> Vec<u8> {
        let mut child = Command::new("gzip")
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(data).unwrap();
        child.wait_with_output().unwrap().stdout
    }
}
