//! The arm64 part of the VM matrix: the daemon cross-built for aarch64 and booted with
//! Debian's arm64 kernels under `qemu-system-aarch64`, watching nginx (in its default daemon
//! mode) on three ports while, inside the guest, curl sends five requests over HTTP/1 (one
//! connection each) and five over one TLS connection, h2load five streams over one h2c
//! connection (curl 7.88 sends only the first of several over prior-knowledge h2c), and two
//! connections are held open.
//!
//! Why not the integration tests, as on x86_64: those VMs run the host's own servers and
//! clients (nginx, curl, h2load, python3-h2, …) from its root over 9p, and an arm64 guest
//! needs an arm64 build of each, which is only partly put together here. Until it is, this
//! check proves on both arm64 kernels what the architecture changes: that the programs load and
//! attach, that the system call registers arm64 saved lead to the payload (HTTP/1 and h2c
//! sessions counted, none unknown) and that the TLS library's uprobes read arm64's argument
//! registers (TLS sessions counted), with lives and busy time counted around them. The guest
//! is a single initramfs: Debian's arm64 `busybox-static`, `nginx-light`, `curl` and
//! `nghttp2-client` with every library they need, resolved by apt as on an empty arm64 system, fetched with `apt-get
//! install --download-only`, unpacked with `dpkg-deb -x` and cached under `target/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow};

use crate::build::cross_build;
use crate::cpio::Cpio;
use crate::host::{ensure_packages, output_of, run_step, self_signed_certificate, workspace_root};
use crate::vm::run_console;
use crate::vm_kernel::{self, ARM64_SERIES, Arch, Kernel};

const TRIPLE: &str = "aarch64-unknown-linux-gnu";

/// The guest's packages, arm64 builds, with everything they depend on: its shell and tools,
/// the server and the client.
const USERLAND_PACKAGES: &[&str] = &["busybox-static", "nginx-light", "curl", "nghttp2-client"];

/// What the guest does not need of them: documentation, translations.
const USERLAND_SKIPPED: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
];

/// Requests the guest sends, one connection each, and connections it holds open.
const REQUESTS: u64 = 5;
const HELD: u64 = 2;

/// The guest boots in seconds, but the daemon's start-up (reading the kernel's BTF) takes
/// about half a minute under emulation of another architecture; three minutes is ample.
const TIMEOUT: Duration = Duration::from_secs(180);

/// Lines the guest prints for the host: the daemon's reports and log, and its exit status.
const REPORT_MARKER: &str = "TRACKER_REPORT ";
const EXIT_MARKER: &str = "TRACKER_ARM64_EXIT=";

/// Runs the check on each arm64 kernel `wanted` selects (all when None); the releases and
/// their verdicts, failed or not.
pub fn matrix(wanted: Option<&str>) -> anyhow::Result<Vec<(String, Result<String, String>)>> {
    ensure_foreign_architecture()?;
    let daemon = cross_build(TRIPLE)?;
    let userland = userland()?;
    let mut results = Vec::new();
    for series in ARM64_SERIES
        .iter()
        .filter(|series| wanted.is_none_or(|name| name == series.name))
    {
        let kernel = vm_kernel::prepare(series)?;
        for &(_, hooks) in RUNS.iter().filter(|(name, _)| *name == series.name) {
            let label = match hooks {
                Some(kind) => format!("{} (--hooks {kind})", kernel.release),
                None => kernel.release.clone(),
            };
            eprintln!(
                "xtask: the arm64 check on {label} ({}) under QEMU",
                kernel.package
            );
            let verdict = run(&kernel, &daemon, &userland, hooks)?;
            results.push((label, verdict));
        }
    }
    Ok(results)
}

/// The runs on each series, with the kind of hook the daemon is held to (`--hooks`): each
/// kernel's own choice, and on 6.12, whose turns go through fexit, the `sock:sock_*_length`
/// tracepoints (6.6+) too, so that every way arm64 reaches the payload is run.
const RUNS: &[(&str, Option<&str>)] =
    &[("6.1", None), ("6.12", None), ("6.12", Some("tracepoint"))];

/// apt fetches arm64 packages only once arm64 is one of dpkg's foreign architectures.
fn ensure_foreign_architecture() -> anyhow::Result<()> {
    let arch = Arch::Arm64.debian_name();
    let foreign = output_of(
        "listing dpkg's foreign architectures",
        Command::new("dpkg").arg("--print-foreign-architectures"),
    )?;
    if foreign.lines().any(|line| line.trim() == arch) {
        return Ok(());
    }
    eprintln!("xtask: adding {arch} to dpkg's architectures, for the arm64 VMs' packages");
    run_step(
        "dpkg --add-architecture",
        Command::new("dpkg").args(["--add-architecture", arch]),
    )?;
    run_step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )
}

/// The arm64 packages of [`USERLAND_PACKAGES`], unpacked into one cached folder.
fn userland() -> anyhow::Result<PathBuf> {
    // Named after its packages: a changed list is fetched afresh.
    let root = workspace_root()
        .join("target/vm-arm64/userland")
        .join(USERLAND_PACKAGES.join("+"));
    let complete = root.join(".complete");
    if complete.exists() {
        return Ok(root);
    }
    let downloads = workspace_root().join("target/vm-arm64/downloads");
    let _ = std::fs::remove_dir_all(&downloads);
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("creating {}", downloads.display()))?;
    eprintln!(
        "xtask: fetching {} (arm64) for the arm64 VMs",
        USERLAND_PACKAGES.join(" ")
    );
    // apt resolves the packages' dependencies as on an empty arm64 system: its own status
    // file, no installed packages, arm64 as the only architecture; it only downloads.
    let status = downloads.join("status");
    std::fs::write(&status, b"").with_context(|| format!("writing {}", status.display()))?;
    std::fs::create_dir_all(downloads.join("partial"))?;
    let option = |name: &str, value: &Path| format!("{name}={}", value.display());
    run_step(
        "downloading the arm64 guest's packages",
        Command::new("apt-get")
            .args([
                "install",
                "--download-only",
                "--no-install-recommends",
                "-y",
                "-qq",
            ])
            .args([
                "-o",
                "APT::Architecture=arm64",
                "-o",
                "APT::Architectures::=arm64",
            ])
            .args(["-o", &option("Dir::State::status", &status)])
            .args(["-o", &option("Dir::Cache::archives", &downloads)])
            // Nothing is installed: the host's dpkg lock is not needed.
            .args(["-o", "Debug::NoLocking=1"])
            // The cache is root's; apt's unprivileged download user could not write there.
            .args(["-o", "APT::Sandbox::User=root"])
            .args(USERLAND_PACKAGES)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    for entry in std::fs::read_dir(&downloads)? {
        let deb = entry?.path();
        if deb.extension().is_none_or(|extension| extension != "deb") {
            continue;
        }
        run_step(
            "unpacking an arm64 guest package",
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        )?;
    }
    std::fs::remove_dir_all(&downloads)
        .with_context(|| format!("removing {}", downloads.display()))?;
    std::fs::write(&complete, b"").with_context(|| format!("writing {}", complete.display()))?;
    Ok(root)
}

/// The guest's three listeners: HTTP/1, h2c and TLS (HTTP/1 inside).
#[derive(Clone, Copy)]
struct Ports {
    http1: u16,
    h2c: u16,
    tls: u16,
}

/// Boots `kernel` with the check and reads its verdict.
fn run(
    kernel: &Kernel,
    daemon: &Path,
    userland: &Path,
    hooks: Option<&str>,
) -> anyhow::Result<Result<String, String>> {
    let ports = free_ports()?;
    let initramfs = kernel.root.join("arm64-check.cpio");
    let script = init_script(ports, hooks);
    std::fs::write(
        &initramfs,
        initramfs_image(daemon, userland, ports, &script)?,
    )
    .with_context(|| format!("writing {}", initramfs.display()))?;
    let mut reports = Vec::new();
    let mut exit_status = None;
    let mut hooks = "hooks not logged".to_owned();
    let console = run_console(
        qemu(kernel, &initramfs),
        &format!("{} arm64", kernel.series),
        TIMEOUT,
        |line| {
            if let Some(report) = line.strip_prefix(REPORT_MARKER) {
                reports.push(report.to_owned());
            } else if let Some(status) = line.strip_prefix(EXIT_MARKER) {
                exit_status = status.trim().parse::<i32>().ok();
            } else if let Some((_, attached)) = line.split_once("attached to ") {
                hooks = attached.to_owned();
            }
        },
    )?;
    let seconds = console.total_time.as_secs_f64();
    if console.timed_out {
        return Ok(Err(format!("timed out after {seconds:.0} s")));
    }
    match exit_status {
        Some(0) => {}
        Some(status) => return Ok(Err(format!("the daemon exited {status}"))),
        None => return Ok(Err("the VM reported no result".to_owned())),
    }
    let checked = [
        (Expected::http1(), ports.http1),
        (Expected::sessions_on_one_connection("h2c"), ports.h2c),
        (Expected::sessions_on_one_connection("TLS"), ports.tls),
    ]
    .iter()
    .map(|(expected, port)| expected.check(&reports, *port))
    .collect::<Result<Vec<_>, _>>();
    Ok(checked
        .map(|counts| format!("{}; {seconds:.0} s in all ({hooks})", counts.join("; ")))
        .map_err(|error| format!("{error}; {seconds:.0} s in all")))
}

/// What the daemon must have reported of one listener's traffic, summed over its reports.
struct Expected {
    what: &'static str,
    /// Sessions, all known.
    sessions: u64,
    /// The most connections at once.
    peak: u64,
}

impl Expected {
    /// One request per connection, then [`HELD`] connections open at once.
    fn http1() -> Self {
        Self {
            what: "HTTP/1",
            sessions: REQUESTS,
            peak: HELD,
        }
    }

    /// [`REQUESTS`] sessions on one connection.
    fn sessions_on_one_connection(what: &'static str) -> Self {
        Self {
            what,
            sessions: REQUESTS,
            peak: 1,
        }
    }

    /// Every session counted and none unknown, the peak, and a busy turn.
    fn check(&self, reports: &[String], port: u16) -> Result<String, String> {
        let listener = format!("127.0.0.1:{port}");
        let (mut sessions, mut unknown, mut peak, mut busy_peak) = (0, 0, 0, 0);
        let mut seen = 0;
        for line in reports {
            let report: serde_json::Value = serde_json::from_str(line)
                .map_err(|error| format!("a report is not JSON: {error}"))?;
            if report["listener"] != listener.as_str() {
                continue;
            }
            seen += 1;
            let field = |name: &str| {
                report[name]
                    .as_u64()
                    .ok_or_else(|| format!("`{name}` is not a count in {line}"))
            };
            sessions += field("sessions")?;
            unknown += field("sessions_unknown")?;
            peak = peak.max(field("peak")?);
            busy_peak = busy_peak.max(field("busy_peak")?);
        }
        let what = self.what;
        if seen == 0 {
            return Err(format!("{what}: no report for {listener}"));
        }
        let counts = format!(
            "{what}: {sessions} sessions, {unknown} unknown, peak {peak}, busy peak {busy_peak}"
        );
        if sessions != self.sessions || unknown != 0 || peak != self.peak || busy_peak == 0 {
            return Err(format!(
                "{what}: expected {} sessions, 0 unknown, peak {} and a busy turn; got {counts}",
                self.sessions, self.peak
            ));
        }
        Ok(counts)
    }
}

/// Ports nothing on this machine listens on, for the guest's servers (whose loopback is its
/// own: they are chosen here only so that no check hard-codes one), all held until each is
/// picked so that no two are the same.
fn free_ports() -> anyhow::Result<Ports> {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").context("binding a port to pick one");
    let held = [bind()?, bind()?, bind()?];
    let [http1, h2c, tls] = held
        .each_ref()
        .map(|listener| listener.local_addr().map(|address| address.port()));
    Ok(Ports {
        http1: http1?,
        h2c: h2c?,
        tls: tls?,
    })
}

/// A self-signed certificate for the guest's TLS listener, made once with the host's
/// `openssl` (the guest has none): the paths of the certificate and the key.
fn certificate() -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = workspace_root().join("target/vm-arm64/tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    ensure_packages(&[("openssl", "openssl")], "the arm64 check's certificate")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    self_signed_certificate(&dir, 3650)
}

/// The guest: the unpacked packages, the accounts nginx needs, its configuration and
/// certificate, the daemon and the script below as `/init`.
fn initramfs_image(
    daemon: &Path,
    userland: &Path,
    ports: Ports,
    script: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut archive = Cpio::default();
    add_tree(&mut archive, userland, Path::new(""))?;
    for dir in ["/dev", "/proc", "/sys", "/tmp", "/run", "/root", "/check"] {
        archive.directory(dir);
    }
    archive.file(
        "/etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    archive.file("/etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    let (cert, key) = certificate()?;
    for (from, to) in [(&cert, "/check/cert.pem"), (&key, "/check/key.pem")] {
        let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        archive.file(to, 0o600, &bytes);
    }
    archive.file("/check/nginx.conf", 0o644, nginx_config(ports).as_bytes());
    let daemon_bytes =
        std::fs::read(daemon).with_context(|| format!("reading {}", daemon.display()))?;
    archive.file("/bin/tracker", 0o755, &daemon_bytes);
    archive.file("/init", 0o755, script.as_bytes());
    Ok(archive.finish())
}

/// Adds the tree under `root`'s `relative` folder, parents before what they hold, without
/// [`USERLAND_SKIPPED`].
fn add_tree(archive: &mut Cpio, root: &Path, relative: &Path) -> anyhow::Result<()> {
    let dir = root.join(relative);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = relative.join(entry.file_name());
        let name = path.to_string_lossy();
        if name == ".complete" || USERLAND_SKIPPED.iter().any(|skipped| name == *skipped) {
            continue;
        }
        let guest = format!("/{name}");
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            archive.symlink(&guest, &target.to_string_lossy());
        } else if kind.is_dir() {
            archive.directory(&guest);
            add_tree(archive, root, &path)?;
        } else {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = entry.metadata()?.permissions().mode() & 0o7777;
            let bytes = std::fs::read(entry.path())
                .with_context(|| format!("reading {}", entry.path().display()))?;
            archive.file(&guest, mode, &bytes);
        }
    }
    Ok(())
}

/// nginx as operators run it (its default daemon mode, a master and a worker), with its
/// files under /tmp: a short answer on each port.
fn nginx_config(ports: Ports) -> String {
    let Ports { http1, h2c, tls } = ports;
    format!(
        "pid /tmp/nginx.pid;
error_log /tmp/nginx-error.log;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path /tmp/nginx-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    server {{
        listen 127.0.0.1:{http1};
        listen 127.0.0.1:{h2c} http2;
        listen 127.0.0.1:{tls} ssl;
        ssl_certificate /check/cert.pem;
        ssl_certificate_key /check/key.pem;
        location / {{ return 200 \"hello\\n\"; }}
    }}
}}
"
    )
}

/// The guest's script: start nginx, then the daemon; once it is attached, send the requests
/// and hold two connections open past its end; then print its log, its reports and its
/// status.
fn init_script(ports: Ports, hooks: Option<&str>) -> String {
    let Ports { http1, h2c, tls } = ports;
    let hooks = hooks.map_or(String::new(), |kind| format!(" --hooks {kind}"));
    format!(
        r#"#!/bin/busybox sh
/bin/busybox mkdir -p /usr/local/bin
/bin/busybox --install -s /usr/local/bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set lo up
nginx -c /check/nginx.conf || echo "nginx did not start: $(cat /tmp/nginx-error.log)"
tracker --port {http1} --port {h2c} --port {tls}{hooks} --interval 2 --duration 15 --format json \
    > /tmp/reports 2> /tmp/log &
daemon=$!
until grep -q "attached to" /tmp/log; do
    kill -0 $daemon 2> /dev/null || break
    sleep 1
done
for request in $(seq {REQUESTS}); do curl -s -o /dev/null http://127.0.0.1:{http1}/; done
urls() {{ for request in $(seq {REQUESTS}); do echo "$1"; done; }}
h2load -n {REQUESTS} -c 1 http://127.0.0.1:{h2c}/ > /dev/null
curl -s -k $(urls https://127.0.0.1:{tls}/) > /dev/null
for held in $(seq {HELD}); do (sleep 60 | nc 127.0.0.1 {http1} > /dev/null) & done
wait $daemon
status=$?
grep -v "^ " /tmp/log
sed 's/^/{REPORT_MARKER}/' /tmp/reports
echo {EXIT_MARKER}$status
poweroff -f
"#
    )
}

fn qemu(kernel: &Kernel, initramfs: &Path) -> Command {
    let mut command = Command::new("qemu-system-aarch64");
    command
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-M", "virt", "-cpu", "max", "-smp", "2", "-m", "2G"])
        .args(["-accel", "tcg,thread=multi", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.vmlinux)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            "console=ttyAMA0 loglevel=1 panic=-1 rdinit=/init",
        ])
        .args(["-chardev", "stdio,id=console,signal=off"])
        .args(["-serial", "chardev:console"])
        .stdin(Stdio::null());
    command
}

/// The first error of a list of verdicts, for the summary.
pub fn failed(results: &[(String, Result<String, String>)]) -> Option<anyhow::Error> {
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, verdict)| verdict.is_err())
        .map(|(release, _)| release.as_str())
        .collect();
    (!failed.is_empty()).then(|| anyhow!("the arm64 check failed on {}", failed.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(listener: &str, sessions: u64, peak: u64) -> String {
        format!(
            r#"{{"listener":"{listener}","sessions":{sessions},"sessions_unknown":0,"peak":{peak},"busy_peak":1}}"#
        )
    }

    #[test]
    fn the_reports_of_each_listener_are_summed() {
        let reports = [
            report("127.0.0.1:4000", 3, 1),
            report("127.0.0.1:4000", 2, 2),
            report("127.0.0.1:4001", 5, 1),
        ];
        assert_eq!(
            Expected::http1().check(&reports, 4000),
            Ok("HTTP/1: 5 sessions, 0 unknown, peak 2, busy peak 1".to_owned())
        );
        assert!(
            Expected::sessions_on_one_connection("h2c")
                .check(&reports, 4001)
                .is_ok()
        );
    }

    #[test]
    fn a_missing_session_a_wrong_peak_or_a_missing_listener_fails() {
        let short = [report("127.0.0.1:4000", 4, 2)];
        assert!(
            Expected::http1()
                .check(&short, 4000)
                .unwrap_err()
                .starts_with("HTTP/1: expected 5 sessions")
        );
        let two_connections = [report("127.0.0.1:4000", 5, 2)];
        assert!(
            Expected::sessions_on_one_connection("TLS")
                .check(&two_connections, 4000)
                .is_err()
        );
        assert_eq!(
            Expected::http1().check(&short, 4001),
            Err("HTTP/1: no report for 127.0.0.1:4001".to_owned())
        );
    }

    #[test]
    fn the_guest_watches_the_three_ports_and_holds_connections_past_the_daemons_end() {
        let ports = Ports {
            http1: 4000,
            h2c: 4001,
            tls: 4002,
        };
        let script = init_script(ports, None);
        assert!(script.contains("tracker --port 4000 --port 4001 --port 4002 --interval"));
        assert!(init_script(ports, Some("tracepoint")).contains("--port 4002 --hooks tracepoint"));
        assert!(script.contains("(sleep 60 | nc 127.0.0.1 4000"));
        assert!(script.contains("echo TRACKER_ARM64_EXIT=$status"));
        let config = nginx_config(ports);
        assert!(config.contains("listen 127.0.0.1:4001 http2;"));
        assert!(config.contains("listen 127.0.0.1:4002 ssl;"));
    }
}
