//! Boots one Debian kernel under QEMU (TCG: this machine's KVM cannot boot stock kernels, and
//! arm64 is another architecture) with its root shared read-only over virtio-9p (the host's
//! `/`, or an arm64 userland and the workspace), runs the integration tests inside, and reads
//! their results from the serial console.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::vm_initramfs::{
    self, BOOT_MARKER, EXIT_MARKER, GuestCommand, GuestRoot, ROOT_TAG, WORKSPACE_TAG,
};
use crate::vm_kernel::{Arch, Kernel};
use crate::vm_userland;

/// Guest memory: the daemon, nginx, prometheus and the load generators at once.
const MEMORY: &str = "3G";

/// What one VM run gave.
#[derive(Default)]
pub struct VmOutcome {
    /// The tests' exit status, or `None` when the VM never reported one (crash, timeout).
    pub exit_status: Option<i32>,
    pub passed: Vec<String>,
    /// Passed, but said the kernel lacks what their scenario needs (a forced hook, a module).
    pub not_run: Vec<String>,
    pub failed: Vec<String>,
    /// A test whose result line was split by what it wrote to stderr: its name, and whether it
    /// said it could not run here.
    pending: Option<(String, bool)>,
    /// From QEMU's start to the first line stage two prints (the kernel and stage one).
    pub boot_time: Option<Duration>,
    pub total_time: Duration,
    pub timed_out: bool,
}

/// Boots `kernel` into `root`, runs `command` inside, kills QEMU after `timeout`.
pub fn run(
    kernel: &Kernel,
    root: &GuestRoot,
    command: &GuestCommand,
    timeout: Duration,
) -> anyhow::Result<VmOutcome> {
    if let GuestRoot::Foreign { dir, workspace } = root {
        let mount_point = vm_userland::inside(dir, workspace);
        std::fs::create_dir_all(&mount_point)
            .with_context(|| format!("creating {}", mount_point.display()))?;
    }
    let initramfs = kernel.root.join("initramfs.cpio");
    vm_initramfs::build(kernel, root, command, &initramfs)?;
    let started = Instant::now();
    let mut outcome = VmOutcome::default();
    let label = format!("{} {}", kernel.series, kernel.arch.debian_name());
    let console = run_console(qemu(kernel, root, &initramfs), &label, timeout, |line| {
        read_console_line(line, started, &mut outcome);
    })?;
    outcome.timed_out = console.timed_out;
    outcome.total_time = console.total_time;
    Ok(outcome)
}

/// How a QEMU run ended.
pub struct ConsoleEnd {
    pub timed_out: bool,
    pub total_time: Duration,
}

/// Starts `qemu` (its serial console on stdout), echoes each console line with `label` and
/// the seconds since the start (what each test took, read off a CI log), and hands it to
/// `on_line` until QEMU exits; kills it after `timeout`.
pub fn run_console(
    mut qemu: Command,
    label: &str,
    timeout: Duration,
    mut on_line: impl FnMut(&str),
) -> anyhow::Result<ConsoleEnd> {
    let started = Instant::now();
    let mut child = qemu
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", qemu.get_program()))?;
    let console = child.stdout.take().expect("stdout is piped");
    let (sender, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(console).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).trim_end().to_owned();
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = started + timeout;
    let mut timed_out = false;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(remaining) {
            Ok(line) => {
                println!("[{label} {:>5.0}s] {line}", started.elapsed().as_secs_f64());
                on_line(&line);
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                eprintln!("xtask: the {label} VM did not finish within {timeout:?}; killing it");
                let _ = child.kill();
                break;
            }
        }
    }
    reap(&mut child, label);
    Ok(ConsoleEnd {
        timed_out,
        total_time: started.elapsed(),
    })
}

fn reap(child: &mut Child, label: &str) {
    match child.wait() {
        Ok(status) if !status.success() => {
            eprintln!("xtask: qemu for {label} exited with {status}");
        }
        Ok(_) => {}
        Err(error) => eprintln!("xtask: waiting for qemu: {error}"),
    }
}

/// Updates `outcome` from one console line: libtest's per-test lines, the exit marker, and
/// the first line after boot. A test that writes to stderr splits its line: `test NAME ... `,
/// then what it wrote, then `ok` or `FAILED` on a line of their own.
fn read_console_line(line: &str, started: Instant, outcome: &mut VmOutcome) {
    if let Some(status) = line.strip_prefix(EXIT_MARKER) {
        outcome.exit_status = status.trim().parse().ok();
        return;
    }
    if line.starts_with(BOOT_MARKER) {
        outcome.boot_time = Some(started.elapsed());
    }
    if let Some(test) = line.strip_prefix("test ")
        && let Some((name, rest)) = test.split_once(" ... ")
    {
        match rest {
            "ok" => outcome.passed.push(name.to_owned()),
            "FAILED" => outcome.failed.push(name.to_owned()),
            "ignored" => {}
            said => {
                outcome.pending = Some((name.to_owned(), said.contains(NOT_RUN)));
            }
        }
        return;
    }
    if let Some((name, not_run)) = outcome.pending.take() {
        match line {
            "ok" if not_run => outcome.not_run.push(name),
            "ok" => outcome.passed.push(name),
            "FAILED" => outcome.failed.push(name),
            _ => outcome.pending = Some((name, not_run || line.contains(NOT_RUN))),
        }
    }
}

/// What the integration tests write when a kernel lacks what their scenario needs.
const NOT_RUN: &str = ": on this kernel: not run:";

fn qemu(kernel: &Kernel, root: &GuestRoot, initramfs: &std::path::Path) -> Command {
    let (program, machine, cpu, console) = match kernel.arch {
        Arch::Amd64 => ("qemu-system-x86_64", None, "max", "ttyS0"),
        // Pointer authentication, which Debian's arm64 kernels sign every function's return
        // with, costs TCG a QARMA computation per signature; QEMU's own algorithm in its
        // place halved the arm64 runs' times.
        Arch::Arm64 => (
            "qemu-system-aarch64",
            Some("virt"),
            "max,pauth-impdef=on",
            "ttyAMA0",
        ),
    };
    let mut command = Command::new(program);
    command.args(["-nodefaults", "-no-user-config", "-display", "none"]);
    if let Some(machine) = machine {
        command.args(["-M", machine]);
    }
    command
        .args(["-accel", "tcg,thread=multi", "-cpu", cpu, "-smp", "2"])
        .args(["-m", MEMORY, "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.vmlinux)
        .arg("-initrd")
        .arg(initramfs)
        // Quiet kernel: its messages would interleave with the test lines on the console.
        .arg("-append")
        .arg(format!(
            "console={console} loglevel=1 panic=-1 rdinit=/init"
        ))
        .args(["-chardev", "stdio,id=console,signal=off"])
        .args(["-serial", "chardev:console"])
        .stdin(Stdio::null());
    share(&mut command, ROOT_TAG, root.shared_dir());
    if let GuestRoot::Foreign { workspace, .. } = root {
        share(&mut command, WORKSPACE_TAG, workspace);
    }
    command
}

/// Shares the host folder `dir`, read-only, as the 9p mount tag `tag`.
fn share(command: &mut Command, tag: &str, dir: &std::path::Path) {
    // QEMU's option syntax doubles a comma inside a value.
    let path = dir.to_string_lossy().replace(',', ",,");
    command
        .arg("-fsdev")
        .arg(format!(
            "local,id={tag},path={path},security_model=none,readonly=on,multidevs=remap"
        ))
        .arg("-device")
        .arg(format!("virtio-9p-pci,fsdev={tag},mount_tag={tag}"));
}

/// The integration test binary cargo built, from `cargo test --no-run --message-format=json`.
pub fn integration_test_binary(build_output: &str) -> Option<PathBuf> {
    build_output
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["profile"]["test"] == true)
        .filter(|message| message["target"]["name"] == "integration")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_results_and_the_exit_marker() {
        let started = Instant::now();
        let mut outcome = VmOutcome::default();
        for line in [
            "TRACKER_VM_BOOTED 6.1.0-57-amd64",
            "running 3 tests",
            "test netns::counts ... ok",
            "test sessions::h2 ... FAILED",
            "test busy ... ignored",
            "test fentry ... fentry: on this kernel: not run: tracker: --hooks fentry: no",
            "ok",
            "test table ... table: on this kernel: tcp_diag is built in",
            "ok",
            "test noisy ... noisy: on this kernel: not run: no",
            "thread 'noisy' panicked",
            "FAILED",
            "TRACKER_VM_EXIT=101",
        ] {
            read_console_line(line, started, &mut outcome);
        }
        assert_eq!(outcome.passed, ["netns::counts", "table"]);
        assert_eq!(outcome.not_run, ["fentry"]);
        assert_eq!(outcome.failed, ["sessions::h2", "noisy"]);
        assert_eq!(outcome.exit_status, Some(101));
        assert!(outcome.boot_time.is_some());
    }

    #[test]
    fn finds_the_integration_binary() {
        let output = r#"{"reason":"compiler-artifact","profile":{"test":false},"target":{"name":"tracker"},"executable":"/t/tracker"}
{"reason":"compiler-artifact","profile":{"test":true},"target":{"name":"integration"},"executable":"/t/deps/integration-0f"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            integration_test_binary(output),
            Some(PathBuf::from("/t/deps/integration-0f"))
        );
    }
}
