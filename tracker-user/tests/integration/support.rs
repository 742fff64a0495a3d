//! Helpers for the integration tests: the real `tracker` daemon as an RAII guard, and
//! loopback servers and clients on ports the kernel picks.
//!
//! These tests need root (they load eBPF programs). They never skip: without root or BPF the
//! daemon fails to start and the test fails with the daemon's own error line.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any single wait may take on the host before the test fails. Generous: CI
/// machines are busy.
const PATIENCE_ON_HOST: Duration = Duration::from_secs(30);

/// How many times slower than the host this machine runs the tests, from
/// `TRACKER_TEST_SLOWDOWN` (set by `cargo xtask test` in its VMs, which emulate every
/// instruction), else 1. It stretches how long the tests wait, never what they assert.
pub fn slowdown() -> u32 {
    match std::env::var("TRACKER_TEST_SLOWDOWN") {
        Ok(value) => value
            .parse()
            .ok()
            .filter(|&factor| factor >= 1)
            .unwrap_or_else(|| {
                panic!("TRACKER_TEST_SLOWDOWN={value:?} is not a whole number >= 1")
            }),
        Err(_) => 1,
    }
}

/// How long any single wait may take before the test fails.
pub fn patience() -> Duration {
    PATIENCE_ON_HOST * slowdown()
}

/// The daemon under test, stopped with SIGTERM when dropped.
/// Says in the test run's output what a test could not do on this kernel, and why. Written to
/// stderr directly: the test harness hides `eprintln!` output of a passing test.
pub fn note_for_this_kernel(note: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "{}: on this kernel: {note}",
        thread::current().name().unwrap_or("test")
    );
}

pub struct Daemon {
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

impl Daemon {
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracker"))
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

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(&self.child, libc::SIGTERM);
            wait_with_deadline(&mut self.child);
        }
    }
}

fn signal(child: &Child, signal: i32) {
    let pid = i32::try_from(child.id()).expect("pid fits in pid_t");
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, signal) };
}

fn wait_with_deadline(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + patience();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for tracker") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("waiting for killed tracker");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Lets a reader thread through while open; a closed gate holds it before its next read.
#[derive(Default)]
struct ReadGate {
    closed: Mutex<bool>,
    changed: Condvar,
}

impl ReadGate {
    fn set(&self, open: bool) {
        *self.closed.lock().unwrap() = !open;
        self.changed.notify_all();
    }

    fn wait_until_open(&self) {
        let closed = self.closed.lock().unwrap();
        drop(self.changed.wait_while(closed, |closed| *closed).unwrap());
    }
}

fn forward_lines(
    stream: impl std::io::Read + Send + 'static,
    gate: Option<Arc<ReadGate>>,
) -> Receiver<String> {
    let (sender, receiver) = channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(stream).lines();
        loop {
            if let Some(gate) = &gate {
                gate.wait_until_open();
            }
            let Some(line) = lines.next() else { break };
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// A port free on `ip` right now (the kernel picks it).
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|listener| listener.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// A connection pair: the client socket and the server's accepted socket.
pub struct Conn {
    pub client: TcpStream,
    pub server: TcpStream,
    pub opened: Instant,
}

impl Conn {
    /// Closes both ends (client first) and returns how long the connection lived.
    pub fn close(self) -> Duration {
        drop(self.client);
        // Wait for the server side to see the client's FIN, so the kernel's close follows.
        let mut server = self.server;
        let _ = server.read(&mut [0u8; 16]);
        drop(server);
        self.opened.elapsed()
    }
}

/// Opens `count` connections to `listener` and accepts them.
pub fn connect_many(listener: &TcpListener, target: SocketAddr, count: usize) -> Vec<Conn> {
    (0..count)
        .map(|_| {
            let opened = Instant::now();
            let client = TcpStream::connect(target).expect("connecting");
            let (server, _) = listener.accept().expect("accepting");
            Conn {
                client,
                server,
                opened,
            }
        })
        .collect()
}

/// Sum of a numeric field over reports.
pub fn sum(reports: &[Value], field: &str) -> f64 {
    reports
        .iter()
        .map(|report| {
            report[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{field} missing: {report}"))
        })
        .sum()
}

/// Maximum of an integer field over reports.
pub fn max(reports: &[Value], field: &str) -> u64 {
    reports
        .iter()
        .map(|report| {
            report[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field} missing: {report}"))
        })
        .max()
        .unwrap_or(0)
}

/// An nginx configuration with its files in `dir`, `workers` worker processes, the main
/// context's `directives` (such as `daemon off;`) and the `server { ... }` blocks in `servers`.
pub fn nginx_config(
    dir: &std::path::Path,
    workers: u32,
    directives: &str,
    servers: &str,
) -> String {
    format!(
        "user root;
worker_processes {workers};
{directives}
error_log {dir}/error.log;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 100000;
  http2_max_concurrent_streams 256;
  {servers}
}}
",
        dir = dir.display()
    )
}

/// A real nginx (Debian's nginx-light, installed by `cargo xtask test`) on loopback, with one
/// master and one worker, stopped when dropped.
pub struct Nginx {
    child: Child,
    dir: std::path::PathBuf,
}

impl Nginx {
    /// Starts nginx with the `server { ... }` blocks in `servers` and waits until every port in
    /// `ports` accepts connections.
    pub fn start(servers: &str, ports: &[u16]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tracker-nginx-{}-{}",
            std::process::id(),
            ports.first().copied().unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("creating the nginx directory");
        let config = nginx_config(&dir, 1, "daemon off;", servers);
        let config_path = dir.join("nginx.conf");
        std::fs::write(&config_path, config).expect("writing nginx.conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&config_path)
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nginx (is nginx-light installed? `cargo xtask test` installs it)");
        let mut nginx = Self { child, dir };
        for &port in ports {
            nginx.wait_for_port(port);
        }
        nginx
    }

    fn wait_for_port(&mut self, port: u16) {
        let deadline = Instant::now() + patience();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
                panic!("nginx exited ({status}) before listening on {port}:\n{log}");
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {port}");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        signal(&self.child, libc::SIGTERM);
        wait_with_deadline(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a load generator or client to completion and returns its stdout; fails the test with
/// its output if it fails.
pub fn run_client(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("running {program} (installed by `cargo xtask test`?): {error}")
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// An HTTP/1.1 backend that holds every response for `delay` (one thread per connection,
/// one request per connection), so that requests proxied through it overlap. Runs until the
/// returned handle is dropped.
pub fn slow_backend(delay: Duration) -> SlowBackend {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the backend");
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    thread::spawn(move || {
        for stream in listener.incoming() {
            if stopped.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                thread::sleep(delay);
                let _ = std::io::Write::write_all(
                    &mut stream,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                );
            });
        }
    });
    SlowBackend { port, stop }
}

/// A running [`slow_backend`]; its accepting thread ends when this is dropped.
pub struct SlowBackend {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Drop for SlowBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Server-side connections of the listener at `addr` that the kernel still has (its own
/// table, through `ss`), the truth the reports are compared with.
pub fn established_server_side(addr: SocketAddr) -> usize {
    server_side_sockets(addr).len()
}

/// `ss`'s lines for the server-side connections of the listener at `addr`, in the states in
/// which the model counts a connection: ESTABLISHED until the socket closes. TIME_WAIT
/// mini-sockets have already closed, also those ss lists under their substate (fin-wait-2,
/// when the server closed first), which it marks with their timer.
pub fn server_side_sockets(addr: SocketAddr) -> Vec<String> {
    let mut command = Command::new("ss");
    command.arg("-Htno");
    for state in [
        "established",
        "fin-wait-1",
        "fin-wait-2",
        "close-wait",
        "last-ack",
        "closing",
    ] {
        command.args(["state", state]);
    }
    let output = command
        .arg(format!("( sport = :{} )", addr.port()))
        .output()
        .expect("running ss");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.contains("timer:(timewait"))
        .map(str::to_owned)
        .collect()
}

/// Sets the listen backlog of `listener` (std listens with 128).
pub fn set_backlog(listener: &TcpListener, backlog: i32) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: listen() again on a listening socket only updates its backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), backlog) }, 0);
}

/// Debian's Python, whose packages `cargo xtask test` installs (not whatever `python3` the
/// PATH finds first), linked against the system's OpenSSL.
pub const PYTHON: &str = "/usr/bin/python3";

/// A Python program started with `args`, killed when dropped.
pub struct Python {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Python {
    pub fn start(script: &str, args: &[&str]) -> Self {
        let mut child = Command::new(PYTHON)
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting Debian's python3 (`cargo xtask test` installs its packages)");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Self { child, stdout }
    }

    /// The next line it prints; fails the test if it exits first.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("reading the script's output");
        assert!(
            !line.is_empty(),
            "the script exited: {:?}",
            self.child.try_wait()
        );
        line.trim().to_owned()
    }

    /// A server's first line: the port it listens on.
    pub fn port(&mut self) -> u16 {
        let line = self.line();
        line.parse()
            .unwrap_or_else(|_| panic!("not a port: {line:?}"))
    }

    /// Closes its stdin.
    pub fn end_input(&mut self) {
        drop(self.child.stdin.take());
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
