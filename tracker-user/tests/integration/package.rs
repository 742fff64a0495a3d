//! The Debian package `cargo xtask deb` builds, installed with `dpkg -i` into this machine's
//! own root as an operator would (inside the VMs, a root whose /usr, /etc and /var are
//! overlays over the host's), then purged: the daemon runs from /usr/bin, the unit systemd
//! would load is valid, dpkg knows every file, and nothing stays behind.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Output};

/// Set by `cargo xtask test`, which builds the package first.
const DEB_VARIABLE: &str = "TRACKER_TEST_DEB";
const PACKAGE: &str = "tracker";
const UNIT: &str = "/lib/systemd/system/tracker.service";
/// What the package must install, each listed by `dpkg -L`.
const FILES: &[&str] = &[
    "/usr/bin/tracker",
    UNIT,
    "/usr/share/doc/tracker/README.md",
    "/usr/share/doc/tracker/BENCHMARKS.md",
    "/usr/share/doc/tracker/benchmarks.png",
    "/usr/share/doc/tracker/docs/design.md",
    "/usr/share/doc/tracker/docs/sessions.md",
    "/usr/share/doc/tracker/docs/testing.md",
    "/usr/share/man/man1/tracker.1.gz",
    "/usr/share/man/man1/tracker-top.1.gz",
    "/usr/share/bash-completion/completions/tracker",
    "/usr/share/zsh/vendor-completions/_tracker",
    "/usr/share/fish/vendor_completions.d/tracker.fish",
];
/// The link `systemctl enable` makes; it must not outlive the package.
const ENABLED_LINK: &str = "/etc/systemd/system/multi-user.target.wants/tracker.service";

/// The package installed on this machine, purged when dropped, so that a failing test leaves
/// no daemon binary, unit or enabled service behind.
struct Installed {
    purged: bool,
}

impl Installed {
    fn install(deb: &Path) -> Self {
        let installed = Self { purged: false };
        let output = Command::new("dpkg")
            .arg("-i")
            .arg(deb)
            .output()
            .expect("running dpkg -i");
        assert_succeeded("dpkg -i", &output);
        installed
    }

    /// Purges the package, failing the test if dpkg fails.
    fn purge(mut self) {
        self.purged = true;
        assert_succeeded("dpkg --purge", &purge());
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.purged {
            let _ = purge();
        }
    }
}

fn purge() -> Output {
    Command::new("dpkg")
        .args(["--purge", PACKAGE])
        .output()
        .expect("running dpkg --purge")
}

fn assert_succeeded(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running {program}: {error}"))
}

/// The package's path from `TRACKER_TEST_DEB`, which must name an existing file.
fn package_path() -> OsString {
    let deb = std::env::var_os(DEB_VARIABLE).unwrap_or_else(|| {
        panic!(
            "{DEB_VARIABLE} is not set: run the integration tests through `cargo xtask test`, \
             which builds the package (`cargo xtask deb`) and names it there"
        )
    });
    assert!(
        Path::new(&deb).is_file(),
        "{DEB_VARIABLE}={} names no file: `cargo xtask deb` writes target/deb/tracker_*.deb",
        deb.to_string_lossy()
    );
    deb
}

/// The files a Markdown text links to by relative path (`[text](docs/x.md#part)` gives
/// `docs/x.md`).
fn relative_links(markdown: &str) -> Vec<String> {
    markdown
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|target| target.split('#').next().unwrap_or_default())
        .filter(|path| !path.is_empty() && !path.contains("://") && !path.starts_with('/'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_debian_package_installs_the_daemon_and_its_unit_then_purges_cleanly() {
    let deb = package_path();
    let installed = Installed::install(Path::new(&deb));

    let status = run("dpkg-query", &["-W", "-f", "${Status} ${Version}", PACKAGE]);
    assert_succeeded("dpkg-query", &status);
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        format!("install ok installed {}", env!("CARGO_PKG_VERSION"))
    );

    let version = run("/usr/bin/tracker", &["--version"]);
    assert_succeeded("/usr/bin/tracker --version", &version);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("tracker {}", env!("CARGO_PKG_VERSION"))
    );

    // The unit as systemd would load it: its syntax, its ExecStart binary, its dependencies.
    let verify = run("systemd-analyze", &["verify", UNIT]);
    assert_succeeded("systemd-analyze verify", &verify);
    let unit = std::fs::read_to_string(UNIT).expect("reading the installed unit");
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/tracker.service"
    ))
    .expect("reading dist/tracker.service");
    assert_eq!(unit, source, "the packaged unit is dist/tracker.service");
    assert!(
        unit.lines()
            .any(|line| line == "Documentation=file:///usr/share/doc/tracker/README.md"),
        "{unit}"
    );

    let listed = run("dpkg", &["-L", PACKAGE]);
    assert_succeeded("dpkg -L", &listed);
    let listed = String::from_utf8_lossy(&listed.stdout);
    for file in FILES {
        assert!(
            listed.lines().any(|line| line == *file),
            "dpkg -L {PACKAGE} does not list {file}:\n{listed}"
        );
        assert!(Path::new(file).is_file(), "{file} is not installed");
    }
    // The installed README's links to the rest of the documentation lead somewhere.
    let readme = Path::new("/usr/share/doc/tracker/README.md");
    let links = relative_links(&std::fs::read_to_string(readme).expect("reading the README"));
    assert!(!links.is_empty(), "the README links to no documentation");
    for link in links {
        let target = readme.with_file_name(&link);
        assert!(target.exists(), "the README links to {link}, not installed");
    }
    // Every installed file matches the package's checksums.
    assert_succeeded("dpkg --verify", &run("dpkg", &["--verify", PACKAGE]));

    installed.purge();
    for file in FILES {
        assert!(!Path::new(file).exists(), "{file} outlived the purge");
    }
    assert!(
        Path::new(ENABLED_LINK).symlink_metadata().is_err(),
        "{ENABLED_LINK} outlived the purge"
    );
    let gone = run("dpkg-query", &["-W", "-f", "${Status}", PACKAGE]);
    assert!(
        !gone.status.success() || String::from_utf8_lossy(&gone.stdout).ends_with("not-installed"),
        "dpkg still knows the package: {gone:?}"
    );
    if Path::new("/run/systemd/system").is_dir() {
        // Where systemd runs, the install started the service: the purge must have stopped it.
        let active = run("systemctl", &["is-active", "tracker.service"]);
        assert!(
            !active.status.success(),
            "tracker.service still runs: {}",
            String::from_utf8_lossy(&active.stdout)
        );
    }
}
