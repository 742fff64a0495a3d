//! `cargo xtask deb`: a Debian package of the release build, laid out by hand and packed with
//! `dpkg-deb --build` (what cargo-deb does, without the dependency): the daemon, its systemd
//! unit (dist/tracker.service, the one source of the unit), the README with the documents it
//! links to, the man pages and the shell completions, and maintainer scripts (dist/deb/) that
//! enable and start the unit on install where systemd runs.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::build::{build, write_man_and_completions};
use crate::host::{cargo, output_of, run_step, workspace_root};

/// The package's name, as `dpkg -i`, `dpkg -L` and `dpkg --purge` know it.
pub const PACKAGE: &str = "tracker";

const MAINTAINER: &str = "tracker maintainers <maintainers@users.noreply.r-seed-62170fb5.example>";

/// The maintainer scripts, from dist/deb/.
const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

#[derive(clap::Args)]
pub struct DebArgs {
    /// Directory for the package and the tree it is packed from (default: target/deb).
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

pub fn deb(args: &DebArgs) -> anyhow::Result<()> {
    let out_dir = args.out_dir.clone().unwrap_or_else(default_out_dir);
    let package = build_package(&out_dir)?;
    // The path alone on stdout, for scripts; how to install it on stderr, for people.
    println!("{}", package.display());
    eprintln!(
        "xtask: install it as root with `dpkg -i {}`",
        package.display()
    );
    Ok(())
}

pub fn default_out_dir() -> PathBuf {
    workspace_root().join("target/deb")
}

/// Builds the release binary, its man pages and completions, then the package in `out_dir`,
/// and returns the package's path.
pub fn build_package(out_dir: &Path) -> anyhow::Result<PathBuf> {
    let binary = build()?;
    write_man_and_completions(&binary)?;
    let release = binary.parent().context("the binary has a directory")?;
    let version = crate_version("tracker-user")?;
    let arch = output_of(
        "asking dpkg for the architecture",
        Command::new("dpkg").arg("--print-architecture"),
    )?
    .trim()
    .to_owned();
    let name = format!("{PACKAGE}_{version}_{arch}");
    let root = out_dir.join(&name);
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("removing the old staging tree {}", root.display()))?;
    }

    let dist = workspace_root().join("dist");
    install(&binary, &root.join("usr/bin/tracker"), 0o755)?;
    install(
        &dist.join("tracker.service"),
        &root.join("lib/systemd/system/tracker.service"),
        0o644,
    )?;
    install_documentation(&root.join("usr/share/doc").join(PACKAGE))?;
    install_man_pages(&release.join("man"), &root.join("usr/share/man/man1"))?;
    let completions = release.join("completions");
    for (file, target) in [
        (
            "tracker.bash",
            "usr/share/bash-completion/completions/tracker",
        ),
        ("_tracker", "usr/share/zsh/vendor-completions/_tracker"),
        (
            "tracker.fish",
            "usr/share/fish/vendor_completions.d/tracker.fish",
        ),
    ] {
        install(&completions.join(file), &root.join(target), 0o644)?;
    }

    let control_dir = root.join("DEBIAN");
    for script in SCRIPTS {
        install(
            &dist.join("deb").join(script),
            &control_dir.join(script),
            0o755,
        )?;
    }
    write_md5sums(&root)?;
    set_directory_modes(&root)?;
    let installed_kib = tree_size(&root, &control_dir)?.div_ceil(1024);
    write(
        &control_dir.join("control"),
        control(&version, &arch, installed_kib),
        0o644,
    )?;

    let package = out_dir.join(format!("{name}.deb"));
    run_step(
        "packing the Debian package",
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&root)
            .arg(&package),
    )?;
    Ok(package)
}

/// The `DEBIAN/control` file.
/// The README and what it links to by relative path, into `doc`.
fn install_documentation(doc: &Path) -> anyhow::Result<()> {
    for file in ["README.md", "BENCHMARKS.md", "benchmarks.png"] {
        install(&workspace_root().join(file), &doc.join(file), 0o644)?;
    }
    let docs = workspace_root().join("docs");
    for entry in std::fs::read_dir(&docs).with_context(|| format!("reading {}", docs.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|extension| extension == "md") {
            let name = path.file_name().expect("a file in docs/");
            install(&path, &doc.join("docs").join(name), 0o644)?;
        }
    }
    Ok(())
}

fn control(version: &str, arch: &str, installed_kib: u64) -> String {
    format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n\
         Depends: libc6\n\
         Section: net\n\
         Priority: optional\n\
         Description: per-listener TCP occupancy of this host, from eBPF\n \
         tracker watches unmodified TCP servers from the kernel and reports, per\n \
         listening socket, connections now and at peak, sessions (HTTP/2 streams,\n \
         HTTP/1 requests), how long connections live and how long they are busy.\n \
         .\n \
         The tracker service reports to the journal every 10 seconds and serves\n \
         Prometheus metrics on 127.0.0.1:9464.\n"
    )
}

/// The version of the workspace crate `name`, from `cargo metadata`.
fn crate_version(name: &str) -> anyhow::Result<String> {
    let metadata = output_of(
        "reading the crate versions",
        cargo().args(["metadata", "--no-deps", "--format-version", "1"]),
    )?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).context("parsing cargo metadata")?;
    metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|package| package["name"] == name))
        .and_then(|package| package["version"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("cargo metadata names no crate {name}"))
}

/// Each man page, compressed as Debian ships them.
fn install_man_pages(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(from)
        .with_context(|| format!("listing {}", from.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    pages.retain(|page| page.extension().is_some_and(|ext| ext == "1"));
    if pages.is_empty() {
        bail!("no man pages in {}", from.display());
    }
    for page in pages {
        let file = page.file_name().context("a man page has a name")?;
        let target = to.join(file);
        install(&page, &target, 0o644)?;
        // -n: no name or time stamp inside, so the same page packs to the same bytes.
        run_step(
            "compressing a man page",
            Command::new("gzip").args(["-9nf"]).arg(&target),
        )?;
    }
    Ok(())
}

/// Copies `from` to `to` with `mode`, making its directories 0755.
fn install(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &bytes, mode)
}

fn write(to: &Path, bytes: impl AsRef<[u8]>, mode: u32) -> anyhow::Result<()> {
    let dir = to.parent().context("a packaged file has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", to.display()))?;
    Ok(())
}

/// Every directory of the tree 0755, whatever the umask: dpkg-deb refuses a control directory
/// with other modes, and the package's directories become the system's.
fn set_directory_modes(dir: &Path) -> anyhow::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", dir.display()))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            set_directory_modes(&entry.path())?;
        }
    }
    Ok(())
}

/// `DEBIAN/md5sums`: what `dpkg --verify` checks the installed files against.
fn write_md5sums(root: &Path) -> anyhow::Result<()> {
    let sums = output_of(
        "summing the packaged files",
        Command::new("sh")
            .arg("-c")
            .arg("find usr lib -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum")
            .current_dir(root),
    )?;
    write(&root.join("DEBIAN/md5sums"), sums, 0o644)
}

/// The bytes of the files under `root`, outside `skip`.
fn tree_size(root: &Path, skip: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let entry = entry?;
        let path = entry.path();
        if path == skip {
            continue;
        }
        let metadata = entry.metadata()?;
        total += if metadata.is_dir() {
            tree_size(&path, skip)?
        } else {
            metadata.len()
        };
    }
    Ok(total)
}
