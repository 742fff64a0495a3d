//! The daemon under test: the real `tracker` binary, its reports and its log read on threads
//! of their own.

use std::marker::PhantomData;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lines::{ReadGate, forward_lines};
use crate::patience::{note_for_this_kernel, patience};
use crate::process::{signal, wait_with_deadline};

/// Where the `tracker` binary under test is. Cargo tells an integration test the path of its
/// package's binaries at build time only (`env!("CARGO_BIN_EXE_tracker")`), so the test crate
/// names it through this.
pub trait DaemonBinary {
    const PATH: &'static str;
}

/// The daemon under test, stopped with SIGTERM when dropped.
pub struct Daemon<B: DaemonBinary> {
    binary: PhantomData<B>,
    child: Child,
    lines: Receiver<String>,
    /// Whether the daemon's stdout is being read (see [`Daemon::stop_reading_reports`]).
    reading: Arc<ReadGate>,
    /// Whether its stderr is being read (see [`Daemon::stop_reading_log`]).
    reading_log: Arc<ReadGate>,
    /// Our end of its stderr pipe (owned by the thread reading it).
    log_pipe_fd: i32,
    stderr: Receiver<String>,
    stderr_seen: Vec<String>,
}

impl<B: DaemonBinary> Daemon<B> {
    /// Starts `tracker --format json` with `args` and waits until it reports being attached.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_format("json", args)
    }

    pub fn start_with_format(format: &str, args: &[&str]) -> Self {
        Self::start_with_log_level(format, "info", args)
    }

    /// Starts `tracker --format json --hooks <kind>` with `args`: the daemon attached, or,
    /// where this kernel lacks that kind of hook, the daemon's one-line refusal, checked here
    /// (non-zero exit, one error line naming the forced kind and the capability it cannot
    /// serve) and printed so the test's output says why it could not run its scenario.
    pub fn start_forced(kind: &str, args: &[&str]) -> Result<Self, String> {
        let mut all_args = vec!["--hooks", kind];
        all_args.extend_from_slice(args);
        let mut daemon = Self::spawn("json", "info", &all_args);
        match daemon.wait_for_log_or_exit("attached to") {
            Ok(()) => Ok(daemon),
            Err(status) => {
                assert!(!status.success(), "a refusal exits non-zero: {status:?}");
                let errors: Vec<&String> = daemon
                    .stderr_seen
                    .iter()
                    .filter(|line| line.starts_with("tracker: "))
                    .collect();
                assert_eq!(errors.len(), 1, "one error line: {:?}", daemon.stderr_seen);
                let refusal = errors[0].clone();
                assert!(
                    refusal.starts_with(&format!(
                        "tracker: --hooks {kind}: this kernel cannot serve "
                    )),
                    "{refusal}"
                );
                note_for_this_kernel(&format!("not run: {refusal}"));
                Err(refusal)
            }
        }
    }

    /// Like [`Daemon::start_with_format`], with `RUST_LOG` set to `level`.
    pub fn start_with_log_level(format: &str, level: &str, args: &[&str]) -> Self {
        let mut daemon = Self::spawn(format, level, args);
        daemon.wait_for_log("attached to");
        daemon
    }

    fn spawn(format: &str, level: &str, args: &[&str]) -> Self {
        let mut child = Command::new(B::PATH)
            .args(["--format", format])
            .args(args)
            .env("RUST_LOG", level)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the tracker binary");
        let reading = Arc::new(ReadGate::default());
        let lines = forward_lines(
            child.stdout.take().expect("stdout is piped"),
            Some(Arc::clone(&reading)),
        );
        let child_stderr = child.stderr.take().expect("stderr is piped");
        let log_pipe_fd = std::os::fd::AsRawFd::as_raw_fd(&child_stderr);
        let reading_log = Arc::new(ReadGate::default());
        let stderr = forward_lines(child_stderr, Some(Arc::clone(&reading_log)));
        Self {
            binary: PhantomData,
            child,
            lines,
            reading,
            reading_log,
            log_pipe_fd,
            stderr,
            stderr_seen: Vec::new(),
        }
    }

    /// The start-up line naming where each hook was attached.
    pub fn attach_line(&self) -> &str {
        self.stderr_seen
            .iter()
            .find(|line| line.contains("attached to"))
            .expect("the daemon started")
    }

    /// Whether a log line read so far contains `needle`.
    pub fn has_logged(&self, needle: &str) -> bool {
        self.stderr_seen.iter().any(|line| line.contains(needle))
    }

    /// The log lines read so far.
    pub fn log(&self) -> &[String] {
        &self.stderr_seen
    }

    /// Every log line the daemon has written up to now, for a failure's message.
    pub fn log_until_now(&mut self) -> String {
        while let Ok(line) = self.stderr.try_recv() {
            self.stderr_seen.push(line);
        }
        self.stderr_seen.join("\n")
    }

    /// Fails if `reports` lost events to the ring buffer. Events are lost otherwise only where
    /// the kernel skipped a program run (a softirq firing the state change program on a CPU
    /// where it already runs in a task: rare on hardware, seen under emulation), which the
    /// daemon logs; counts stay exact then, and a skipped close is reported at CLOSE instead.
    /// Returns whether it logged skipped runs.
    pub fn assert_no_ring_loss(&mut self, reports: &[Value]) -> bool {
        let log = self.log_until_now();
        let skipped_runs_logged = log.contains("program runs skipped by the kernel");
        for report in reports {
            assert!(
                report["lost_events"] == 0 || skipped_runs_logged,
                "events lost: {report}\nthe daemon's log:\n{log}"
            );
        }
        assert!(
            !log.contains("ring buffer full"),
            "the ring overflowed:\n{log}"
        );
        skipped_runs_logged
    }

    /// Waits for a log line containing `needle`; fails with the daemon's stderr if it exits.
    pub fn wait_for_log(&mut self, needle: &str) {
        if let Err(status) = self.wait_for_log_or_exit(needle) {
            panic!(
                "tracker exited ({status:?}) before logging {needle:?}; stderr:\n{}",
                self.stderr_seen.join("\n")
            );
        }
    }

    /// Waits for a log line containing `needle`; the exit status if the daemon exits first.
    fn wait_for_log_or_exit(&mut self, needle: &str) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + patience();
        loop {
            match self.stderr.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.child.wait().expect("waiting for tracker"));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            assert!(
                Instant::now() < deadline,
                "tracker did not log {needle:?} within {:?}; stderr:\n{}",
                patience(),
                self.stderr_seen.join("\n")
            );
        }
    }

    /// The next report line for `listener`, parsed.
    pub fn next_report(&mut self, listener: &str) -> Value {
        let deadline = Instant::now() + patience();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(remaining) {
                Ok(line) => line,
                Err(error) => panic!(
                    "no report for {listener} within {:?} ({error}); stderr:\n{}",
                    patience(),
                    self.drain_stderr()
                ),
            };
            let report: Value = serde_json::from_str(&line)
                .unwrap_or_else(|error| panic!("report line is not JSON ({error}): {line}"));
            if report["listener"] == listener {
                return report;
            }
        }
    }

    /// Reports for `listener` until one satisfies `done`; returns all of them, that one last.
    pub fn reports_until(&mut self, listener: &str, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + patience();
        let mut reports = Vec::new();
        loop {
            let report = self.next_report(listener);
            let finished = done(&report);
            reports.push(report);
            if finished {
                return reports;
            }
            assert!(
                Instant::now() < deadline,
                "condition not reached for {listener} within {:?}; reports:\n{reports:#?}",
                patience()
            );
        }
    }

    /// The next raw output line (for text mode).
    pub fn next_line(&mut self) -> String {
        self.lines
            .recv_timeout(patience())
            .unwrap_or_else(|error| panic!("no output line within {:?} ({error})", patience()))
    }

    /// Stops the daemon (SIGSTOP) until [`Daemon::resume`]: the kernel's events pile up in
    /// the ring meanwhile.
    pub fn pause(&self) {
        signal(&self.child, libc::SIGSTOP);
    }

    pub fn resume(&self) {
        signal(&self.child, libc::SIGCONT);
    }

    /// Stops reading the daemon's stdout until [`Daemon::read_reports_again`]: once the pipe
    /// is full, the daemon's writes to it block.
    pub fn stop_reading_reports(&self) {
        self.reading.set(false);
    }

    pub fn read_reports_again(&self) {
        self.reading.set(true);
    }

    /// Stops reading the daemon's stderr until [`Daemon::read_log_again`], with its pipe
    /// shrunk to one page, so that a few log lines fill it.
    pub fn stop_reading_log(&self) {
        // SAFETY: a pipe fd the reader thread keeps open for the daemon's life.
        let size = unsafe { libc::fcntl(self.log_pipe_fd, libc::F_SETPIPE_SZ, 4096) };
        assert!(
            size >= 0,
            "shrinking the log pipe: {}",
            std::io::Error::last_os_error()
        );
        self.reading_log.set(false);
    }

    pub fn read_log_again(&self) {
        self.reading_log.set(true);
    }

    /// Sends SIGHUP, as service managers do to ask for a reload.
    pub fn hang_up(&self) {
        signal(&self.child, libc::SIGHUP);
    }

    /// Kills the daemon (SIGKILL): it gets no chance to clean up.
    pub fn kill(mut self) {
        signal(&self.child, libc::SIGKILL);
        self.child.wait().expect("waiting for the killed tracker");
    }

    /// Sends SIGTERM and collects the remaining output lines and the exit status.
    pub fn terminate(mut self) -> (Vec<String>, ExitStatus) {
        signal(&self.child, libc::SIGTERM);
        let status = wait_with_deadline(&mut self.child);
        let lines = self.lines.try_iter().collect();
        (lines, status)
    }

    fn drain_stderr(&mut self) -> String {
        self.stderr_seen.extend(self.stderr.try_iter());
        self.stderr_seen.join("\n")
    }
}

impl<B: DaemonBinary> Drop for Daemon<B> {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(&self.child, libc::SIGTERM);
            wait_with_deadline(&mut self.child);
        }
    }
}
