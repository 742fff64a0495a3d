//! The arm64 part of the VM matrix: the daemon cross-built for aarch64 and booted with
//! Debian's arm64 kernels under `qemu-system-aarch64`, watching busybox's `httpd` while the
//! guest sends it five HTTP/1 requests and holds two connections open.
//!
//! Why not the integration tests, as on x86_64: those VMs run the host's own servers and
//! clients (nginx, curl, h2load, python3-h2, …) from its root over 9p, and an arm64 guest
//! needs an arm64 build of each, which is not put together yet. Until it is, this check
//! proves on both arm64 kernels what the architecture changes: that the programs load and
//! attach, and that the system call registers arm64 saved lead to the payload (sessions
//! counted, none unknown), with lives and busy time counted around them. The guest is a
//! single initramfs: Debian's arm64 `busybox-static` and the C libraries the daemon links,
//! all from `apt-get download` and `dpkg-deb -x`, cached under `target/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow};

use crate::build::cross_build;
use crate::cpio::Cpio;
use crate::host::{output_of, run_step, workspace_root};
use crate::vm::run_console;
use crate::vm_kernel::{self, ARM64_SERIES, Arch, Kernel};

const TRIPLE: &str = "aarch64-unknown-linux-gnu";

/// The guest's packages, arm64 builds: its shell and tools, and what the daemon links.
const USERLAND_PACKAGES: &[&str] = &["busybox-static", "libc6", "libgcc-s1"];

/// Files of those packages the guest needs: where the package has them, where they go.
const USERLAND_FILES: &[(&str, &str)] = &[
    ("bin/busybox", "/bin/busybox"),
    (
        "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
        "/lib/ld-linux-aarch64.so.1",
    ),
    (
        "lib/aarch64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
    ),
    (
        "lib/aarch64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
    ),
    (
        "lib/aarch64-linux-gnu/libgcc_s.so.1",
        "/lib/aarch64-linux-gnu/libgcc_s.so.1",
    ),
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
        eprintln!(
            "xtask: the arm64 check on {} ({}) under QEMU",
            kernel.release, kernel.package
        );
        let verdict = run(&kernel, &daemon, &userland)?;
        results.push((kernel.release, verdict));
    }
    Ok(results)
}

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
    let root = workspace_root().join("target/vm-arm64/userland");
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
    run_step(
        "downloading the arm64 guest's packages",
        Command::new("apt-get")
            .args(["download", "-qq"])
            .args(
                USERLAND_PACKAGES
                    .iter()
                    .map(|package| format!("{package}:arm64")),
            )
            // The cache is root's; apt's unprivileged download user could not write there.
            .args(["-o", "APT::Sandbox::User=root"])
            .current_dir(&downloads),
    )?;
    let _ = std::fs::remove_dir_all(&root);
    for entry in std::fs::read_dir(&downloads)? {
        let deb = entry?.path();
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

/// Boots `kernel` with the check and reads its verdict.
fn run(kernel: &Kernel, daemon: &Path, userland: &Path) -> anyhow::Result<Result<String, String>> {
    let port = free_port()?;
    let initramfs = kernel.root.join("arm64-check.cpio");
    std::fs::write(&initramfs, initramfs_image(daemon, userland, port)?)
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
    Ok(check_reports(&reports, port)
        .map(|counts| format!("{counts}; {seconds:.0} s in all ({hooks})"))
        .map_err(|error| format!("{error}; {seconds:.0} s in all")))
}

/// What the daemon must have reported of the guest's traffic on `port`, summed over its
/// reports: every request a session (none unknown), the held connections at once, and a busy
/// turn.
fn check_reports(reports: &[String], port: u16) -> Result<String, String> {
    let listener = format!("127.0.0.1:{port}");
    let (mut sessions, mut unknown, mut peak, mut busy_peak) = (0, 0, 0, 0);
    let mut seen = 0;
    for line in reports {
        let report: serde_json::Value =
            serde_json::from_str(line).map_err(|error| format!("a report is not JSON: {error}"))?;
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
    if seen == 0 {
        return Err(format!("no report for {listener}"));
    }
    let counts = format!(
        "{sessions} sessions, {unknown} unknown, peak {peak}, busy peak {busy_peak} in {seen} reports"
    );
    if sessions != REQUESTS || unknown != 0 || peak != HELD || busy_peak == 0 {
        return Err(format!(
            "expected {REQUESTS} sessions, 0 unknown, peak {HELD} and a busy turn; got {counts}"
        ));
    }
    Ok(counts)
}

/// A port nothing on this machine listens on, for the guest's server (whose loopback is its
/// own; the port is chosen here only so that no test hard-codes one).
fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding a port to pick one")?;
    Ok(listener.local_addr()?.port())
}

/// The guest: busybox, the libraries, the daemon and the script below as `/init`.
fn initramfs_image(daemon: &Path, userland: &Path, port: u16) -> anyhow::Result<Vec<u8>> {
    let mut archive = Cpio::default();
    for dir in [
        "/bin",
        "/dev",
        "/lib",
        "/lib/aarch64-linux-gnu",
        "/proc",
        "/sys",
        "/tmp",
    ] {
        archive.directory(dir);
    }
    for (from, to) in USERLAND_FILES {
        let path = userland.join(from);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        archive.file(to, 0o755, &bytes);
    }
    let daemon_bytes =
        std::fs::read(daemon).with_context(|| format!("reading {}", daemon.display()))?;
    archive.file("/bin/tracker", 0o755, &daemon_bytes);
    archive.file("/init", 0o755, init_script(port).as_bytes());
    Ok(archive.finish())
}

/// The guest's script: start httpd and the daemon, send the requests once the daemon is
/// attached, hold two connections past its end, then print its reports, log and status.
fn init_script(port: u16) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set lo up
mkdir -p /www && echo hello > /www/index.html
httpd -p 127.0.0.1:{port} -h /www
tracker --port {port} --interval 2 --duration 12 --format json > /tmp/reports 2> /tmp/log &
daemon=$!
until grep -q "attached to" /tmp/log; do
    kill -0 $daemon 2> /dev/null || break
    sleep 1
done
for request in $(seq {REQUESTS}); do wget -q -O /dev/null http://127.0.0.1:{port}/; done
for held in $(seq {HELD}); do (sleep 60 | nc 127.0.0.1 {port} > /dev/null) & done
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
    fn the_reports_of_the_guests_port_are_summed() {
        let reports = [
            report("127.0.0.1:4000", 3, 1),
            report("127.0.0.1:4000", 2, 2),
            report("0.0.0.0:22", 9, 9),
        ];
        assert_eq!(
            check_reports(&reports, 4000),
            Ok("5 sessions, 0 unknown, peak 2, busy peak 1 in 2 reports".to_owned())
        );
    }

    #[test]
    fn a_missing_session_or_listener_fails() {
        let short = [report("127.0.0.1:4000", 4, 2)];
        assert!(
            check_reports(&short, 4000)
                .unwrap_err()
                .starts_with("expected 5 sessions")
        );
        assert_eq!(
            check_reports(&short, 4001),
            Err("no report for 127.0.0.1:4001".to_owned())
        );
    }

    #[test]
    fn the_guest_script_holds_connections_past_the_daemons_end() {
        let script = init_script(4000);
        assert!(script.contains("tracker --port 4000 --interval 2 --duration 12"));
        assert!(script.contains("(sleep 60 | nc 127.0.0.1 4000"));
        assert!(script.contains("echo TRACKER_ARM64_EXIT=$status"));
    }
}
