//! `cargo xtask bench`: what the observer costs and how exact it stays, measured side by side
//! with what operators would use instead (a bpftrace script on the same tracepoints, `ss`
//! polling), on this machine, written to `BENCHMARKS.md` and `benchmarks.png`.
//!
//! Every load runs against a real nginx (one worker, loopback) driven by wrk. Scenarios with
//! and without observers are interleaved (none, tracker, tracker idle, bpftrace; none, ...)
//! so that machine noise hits all of them alike; results are min/median/max over the
//! repetitions. Ground truth for connection counts is the kernel's own `TcpPassiveOpens`
//! counter (/proc/net/snmp), read before and after each run.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use crate::bench_memory::{HeldConnections, rss_bytes};
use crate::{run_step, workspace_root};

/// Everything in BENCHMARKS.md from this line on was measured outside `cargo xtask bench`
/// and survives its rewrite of the file.
const KEPT_SECTIONS_MARKER: &str = "<!-- sections below are not written by cargo xtask bench -->";

/// Settings of one `cargo xtask bench` run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Repetitions of each overhead scenario (interleaved).
    #[arg(long, default_value_t = 5)]
    pub(crate) reps: usize,
    /// Seconds of load per wrk run.
    #[arg(long, default_value_t = 5)]
    pub(crate) seconds: u64,
    /// wrk connections in the overhead scenarios.
    #[arg(long, default_value_t = 50)]
    pub(crate) connections: u32,
    /// Largest number of concurrent connections for the memory figure.
    #[arg(long, default_value_t = 100_000)]
    max_held: usize,
    /// Only the HTTPS keep-alive figures, printed rather than written to BENCHMARKS.md.
    #[arg(long, conflicts_with = "overhead_only")]
    https_only: bool,
    /// Only the overhead on nginx, printed rather than written to BENCHMARKS.md.
    #[arg(long, conflicts_with = "kernel_cost_only")]
    overhead_only: bool,
    /// Only the eBPF programs' time per request (tracker's and bpftrace's), printed rather
    /// than written to BENCHMARKS.md.
    #[arg(long, conflicts_with = "https_only")]
    kernel_cost_only: bool,
}

/// Debian packages the benchmark drives: (command, package).
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
    ("bpftrace", "bpftrace"),
    ("h2load", "nghttp2-client"),
    ("gnuplot", "gnuplot-nox"),
    ("ss", "iproute2"),
    ("openssl", "openssl"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// A new connection per request (`Connection: close`).
    Churn,
    /// Keep-alive connections.
    KeepAlive,
}

impl Load {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Load::Churn => "churn (Connection: close)",
            Load::KeepAlive => "keep-alive",
        }
    }
}

pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let tracker = crate::build()?;
    ensure_packages()?;
    ensure_tracefs()?;
    let out_dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let started = Instant::now();
    if args.https_only {
        let tls = crate::bench_tls::measure(&tracker, args, &out_dir)?;
        println!("{}", crate::bench_tls::render(&tls));
        return Ok(());
    }

    let nginx = Nginx::start(&out_dir)?;
    let url = format!("http://127.0.0.1:{}/", nginx.port);
    eprintln!("bench: nginx on {url}");

    if args.kernel_cost_only {
        let costs = crate::bench_kernel_cost::measure(&tracker, nginx.port, &url, args, &out_dir)?;
        let mut table = String::new();
        crate::bench_kernel_cost::render(&mut table, &costs);
        println!("{table}");
        return Ok(());
    }

    // 1. Overhead, interleaved.
    let overhead = crate::bench_overhead::measure(&tracker, nginx.port, &url, args, &out_dir)?;
    if args.overhead_only {
        let mut table = String::new();
        crate::bench_overhead::render(&mut table, args, &overhead);
        println!("{table}");
        return Ok(());
    }

    // 2. Highest loss-free churn, with cost per event and `ss` polling alongside.
    let mut churn_levels = Vec::new();
    for connections in [16, 64, 128, 256] {
        let level = churn_level(
            &tracker,
            &url,
            nginx.port,
            connections,
            args.seconds,
            &out_dir,
        )?;
        eprintln!("bench: churn -c {connections}: {level:?}");
        churn_levels.push(level);
    }

    // 3. What each observer's eBPF programs cost, as the kernel accounts it.
    let kernel_costs =
        crate::bench_kernel_cost::measure(&tracker, nginx.port, &url, args, &out_dir)?;

    // 4. Memory per tracked connection.
    let memory = memory_per_connection(&tracker, args.max_held, &out_dir)?;

    // 5. The model's hot path on one core (criterion).
    let micro = criterion_figures()?;

    // 6. HTTPS keep-alive, with TLS plaintext followed.
    let tls = crate::bench_tls::measure(&tracker, args, &out_dir)?;

    drop(nginx);
    let report = render_report(
        args,
        &overhead,
        &churn_levels,
        &kernel_costs,
        &memory,
        &micro,
        started.elapsed(),
    );
    let report = format!("{report}\n{}", crate::bench_tls::render(&tls));
    let path = workspace_root().join("BENCHMARKS.md");
    // Sections measured by other means (inside VMs, say) follow a marker and are kept.
    let kept = std::fs::read_to_string(&path)
        .ok()
        .and_then(|old| {
            old.find(KEPT_SECTIONS_MARKER)
                .map(|start| old[start..].to_owned())
        })
        .unwrap_or_default();
    std::fs::write(&path, format!("{report}\n{kept}"))?;
    crate::bench_overhead::plot(&overhead, &out_dir)?;
    eprintln!("bench: wrote BENCHMARKS.md and benchmarks.png");
    Ok(())
}

fn ensure_packages() -> anyhow::Result<()> {
    crate::ensure_packages(BENCH_PACKAGES, "the benchmark")
}

/// bpftrace needs tracefs mounted (tracker mounts it itself, and unmounts what it mounted).
fn ensure_tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return Ok(());
    }
    run_step(
        "mounting tracefs for bpftrace",
        Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]),
    )
}

/// nginx with one worker answering every request itself, on a port the kernel picked.
pub(crate) struct Nginx {
    child: Child,
    pub(crate) port: u16,
}

impl Nginx {
    /// Clear-text HTTP, in `out_dir/nginx`.
    fn start(out_dir: &Path) -> anyhow::Result<Self> {
        Self::start_serving(&out_dir.join("nginx"), "", "")
    }

    /// nginx with its files in `dir`, listening with the extra `listen` parameters
    /// `parameters` (such as `ssl`), with `directives` in the server block.
    pub(crate) fn start_serving(
        dir: &Path,
        parameters: &str,
        directives: &str,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        std::fs::create_dir_all(dir)?;
        let config = format!(
            "user root;
worker_processes 1;
daemon off;
error_log {dir}/error.log;
pid {dir}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} {parameters} backlog=4096;
    {directives}
    location / {{ return 200 \"ok\\n\"; }}
  }}
}}
",
            dir = dir.display()
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let nginx = Self { child, port };
        wait_until("nginx listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })?;
        Ok(nginx)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub(crate) fn stop(child: &mut Child) {
    let pid = child.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A running observer, stopped when dropped.
pub(crate) struct ObserverGuard {
    pub(crate) child: Option<Child>,
    /// Lines the process wrote to its log stream (stderr for tracker, stdout for bpftrace).
    pub(crate) log: Option<mpsc::Receiver<String>>,
}

impl ObserverGuard {
    /// Stops it and returns the rest of its log.
    pub(crate) fn finish(mut self) -> Vec<String> {
        if let Some(child) = &mut self.child {
            stop(child);
        }
        self.child = None;
        self.log
            .take()
            .map(|log| log.iter().collect())
            .unwrap_or_default()
    }
}

impl Drop for ObserverGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            stop(child);
        }
    }
}

pub(crate) fn forward_lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Waits for a line containing `needle`; fails if the stream ends first.
pub(crate) fn wait_for_line(
    log: &mpsc::Receiver<String>,
    needle: &str,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Ok(()),
            Ok(line) => seen.push(line),
            Err(_) => bail!("{what} did not start:\n{}", seen.join("\n")),
        }
    }
}

/// The daemon as an operator would run it on this port: JSON reports every second to a file.
pub(crate) fn start_tracker(
    tracker: &Path,
    port: u16,
    reports: PathBuf,
    extra_args: &[&str],
) -> anyhow::Result<ObserverGuard> {
    let mut child = Command::new(tracker)
        .args([
            "--format",
            "json",
            "--interval",
            "1",
            "--port",
            &port.to_string(),
        ])
        .args(extra_args)
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&reports)?)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tracker")?;
    let log = forward_lines(child.stderr.take().expect("piped"));
    wait_for_line(&log, "attached to", "tracker")?;
    Ok(ObserverGuard {
        child: Some(child),
        log: Some(log),
    })
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct WrkResult {
    pub(crate) requests: u64,
    pub(crate) requests_per_s: f64,
    /// What the machine's CPUs did while wrk ran (see [`crate::bench_overhead::CpuUse`]).
    pub(crate) cpu: crate::bench_overhead::CpuUse,
}

pub(crate) fn wrk(
    url: &str,
    load: Load,
    connections: u32,
    seconds: u64,
) -> anyhow::Result<WrkResult> {
    wrk_through(&[], url, load, connections, seconds)
}

/// [`wrk`], started through the command line `wrapper` (empty: directly).
pub(crate) fn wrk_through(
    wrapper: &[&str],
    url: &str,
    load: Load,
    connections: u32,
    seconds: u64,
) -> anyhow::Result<WrkResult> {
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg("wrk");
            command
        }
        None => Command::new("wrk"),
    };
    command.args([
        "-t",
        "2",
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{seconds}s"),
    ]);
    if load == Load::Churn {
        command.args(["-H", "Connection: close"]);
    }
    let before = crate::bench_overhead::CpuTicks::read()?;
    let output = command.arg(url).output().context("running wrk")?;
    let cpu = crate::bench_overhead::CpuTicks::read()?.since(&before);
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed: {text}");
    }
    let requests_per_s = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| anyhow!("no Requests/sec in wrk's output:\n{text}"))?;
    let requests = text
        .lines()
        .find(|line| line.contains("requests in"))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| anyhow!("no request count in wrk's output:\n{text}"))?;
    Ok(WrkResult {
        requests,
        requests_per_s,
        cpu,
    })
}

/// The kernel's count of passive opens (connections accepted by any listener of this network
/// namespace): the ground truth for what the load generator made.
fn passive_opens() -> anyhow::Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp")?;
    let mut tcp = snmp.lines().filter(|line| line.starts_with("Tcp:"));
    let (names, values) = (tcp.next(), tcp.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Tcp lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "PassiveOpens")
        .and_then(|(_, value)| value.parse().ok())
        .ok_or_else(|| anyhow!("no PassiveOpens in /proc/net/snmp"))
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(index)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 of the full line: 11 and 12 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

#[derive(Debug, Clone)]
struct ChurnLevel {
    wrk_connections: u32,
    truth: u64,
    seconds: f64,
    opened: u64,
    closed: u64,
    lost: u64,
    errors: u64,
    tracker_cpu_s: f64,
    tracker_events: u64,
    ss_distinct: usize,
    ss_max_concurrent: usize,
    tracker_peak: u64,
}

impl ChurnLevel {
    fn exact(&self) -> bool {
        self.lost == 0 && self.errors == 0 && self.opened == self.truth && self.closed == self.truth
    }

    fn connections_per_s(&self) -> f64 {
        self.truth as f64 / self.seconds
    }
}

/// One churn run watched by tracker (and by `ss` every 100 ms), compared with the kernel's
/// own count.
fn churn_level(
    tracker: &Path,
    url: &str,
    port: u16,
    connections: u32,
    seconds: u64,
    out_dir: &Path,
) -> anyhow::Result<ChurnLevel> {
    let reports = out_dir.join(format!("churn-{connections}.jsonl"));
    let guard = start_tracker(tracker, port, reports.clone(), &[])?;
    let pid = guard.child.as_ref().map(Child::id).expect("tracker runs");
    let before = passive_opens()?;
    // The daemon's start-up (reading the kernel's BTF, loading) is not per-event work.
    let cpu_before = cpu_seconds(pid)?;

    let polling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poller = {
        let polling = polling.clone();
        thread::spawn(move || poll_ss(port, &polling))
    };
    let started = Instant::now();
    let run = wrk(url, Load::Churn, connections, seconds)?;
    let elapsed = started.elapsed().as_secs_f64();
    polling.store(false, std::sync::atomic::Ordering::Relaxed);
    let (ss_distinct, ss_max_concurrent) =
        poller.join().map_err(|_| anyhow!("ss poller panicked"))?;
    // Let every close reach the daemon and one quiet interval pass.
    thread::sleep(Duration::from_secs(2));
    let truth = passive_opens()? - before;
    let cpu = cpu_seconds(pid)? - cpu_before;
    let log = guard.finish();
    let events = log
        .iter()
        .find_map(|line| line.split("processed ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);

    let mut level = ChurnLevel {
        wrk_connections: connections,
        truth,
        seconds: elapsed,
        opened: 0,
        closed: 0,
        lost: 0,
        errors: 0,
        tracker_cpu_s: cpu,
        tracker_events: events,
        ss_distinct,
        ss_max_concurrent,
        tracker_peak: 0,
    };
    let _ = run.requests;
    for line in std::fs::read_to_string(&reports)?.lines() {
        let value: serde_json::Value = serde_json::from_str(line)?;
        let get = |field: &str| value[field].as_u64().unwrap_or(0);
        level.opened += get("opened");
        level.closed += get("closed");
        level.lost += get("lost_events");
        level.errors += get("errs");
        level.tracker_peak = level.tracker_peak.max(get("peak"));
    }
    Ok(level)
}

/// Polls `ss` every 100 ms while `polling` holds: (distinct connections seen, most at once).
fn poll_ss(port: u16, polling: &std::sync::atomic::AtomicBool) -> (usize, usize) {
    let mut seen = BTreeSet::new();
    let mut most = 0;
    let filter = format!("( sport = :{port} )");
    while polling.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok(output) = Command::new("ss")
            .args(["-Htn", "state", "established", &filter])
            .output()
        {
            let text = String::from_utf8_lossy(&output.stdout);
            let lines: Vec<String> = text
                .lines()
                .map(|line| {
                    line.split_whitespace()
                        .skip(2)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            most = most.max(lines.len());
            seen.extend(lines);
        }
        thread::sleep(Duration::from_millis(100));
    }
    (seen.len(), most)
}

#[derive(Debug, Clone)]
struct MemoryPoint {
    connections: usize,
    rss_bytes: u64,
    per_connection: f64,
}

fn memory_per_connection(
    tracker: &Path,
    max_held: usize,
    out_dir: &Path,
) -> anyhow::Result<Vec<MemoryPoint>> {
    let mut held = HeldConnections::listen()?;
    let reports = out_dir.join("memory.jsonl");
    let guard = start_tracker(tracker, held.port(), reports.clone(), &[])?;
    let pid = guard.child.as_ref().map(Child::id).expect("tracker runs");
    // Wait for a first report so start-up allocations are in the baseline.
    wait_until("a first report", || {
        std::fs::read_to_string(&reports).is_ok_and(|text| !text.is_empty())
    })?;
    let baseline = rss_bytes(pid)?;
    let mut points = Vec::new();
    for target in [1_000, 10_000, 100_000] {
        if target > max_held {
            break;
        }
        held.grow_to(target)?;
        let listener = format!("\"curr\":{target},");
        wait_until(&format!("tracker to report {target} connections"), || {
            std::fs::read_to_string(&reports).is_ok_and(|text| {
                text.lines()
                    .last()
                    .is_some_and(|line| line.contains(&listener))
            })
        })?;
        let rss = rss_bytes(pid)?;
        let point = MemoryPoint {
            connections: target,
            rss_bytes: rss,
            per_connection: rss.saturating_sub(baseline) as f64 / target as f64,
        };
        eprintln!("bench: memory {point:?}");
        points.push(point);
    }
    drop(guard);
    Ok(points)
}

#[derive(Debug, Clone)]
struct MicroFigure {
    name: String,
    ns_per_iteration: f64,
    events_per_iteration: f64,
}

/// Runs the criterion benchmark of the model and reads its figures.
fn criterion_figures() -> anyhow::Result<Vec<MicroFigure>> {
    let output = crate::cargo()
        .args([
            "bench",
            "--package",
            "tracker-user",
            "--bench",
            "model",
            "--",
            "--output-format",
            "bencher",
        ])
        .output()
        .context("running cargo bench")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "cargo bench failed: {text}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // `test model/connection_lifecycle ... bench:      123,456 ns/iter (+/- 789)`
    let figures = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("test ")?;
            let (name, rest) = rest.split_once(" ... bench:")?;
            let ns: f64 = rest
                .split_whitespace()
                .next()?
                .replace(',', "")
                .parse()
                .ok()?;
            let events = match name.trim() {
                "model/connection_lifecycle" => 4_000.0,
                "observer/open_close" => 3_000.0,
                "model/snapshot_100k_open" => 100_000.0,
                _ => 1.0,
            };
            Some(MicroFigure {
                name: name.trim().to_owned(),
                ns_per_iteration: ns,
                events_per_iteration: events,
            })
        })
        .collect();
    Ok(figures)
}

pub(crate) fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    (
        sorted.first().copied().unwrap_or(f64::NAN),
        median,
        sorted.last().copied().unwrap_or(f64::NAN),
    )
}

fn render_report(
    args: &BenchArgs,
    overhead: &[crate::bench_overhead::Runs],
    churn: &[ChurnLevel],
    kernel_costs: &[crate::bench_kernel_cost::KernelCost],
    memory: &[MemoryPoint],
    micro: &[MicroFigure],
    took: Duration,
) -> String {
    let mut out = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Produced by `cargo xtask bench --reps {} --seconds {} --connections {} --max-held {}` \
         (took {:.0} s) on this project's 2-core machine, kernel {}. Re-run it to refresh \
         this file.\n",
        args.reps,
        args.seconds,
        args.connections,
        args.max_held,
        took.as_secs_f64(),
        kernel.trim()
    );
    crate::bench_overhead::render(&mut out, args, overhead);
    let _ = writeln!(
        out,
        "\n![throughput per scenario and observer](benchmarks.png)\n"
    );

    let _ = writeln!(
        out,
        "## Exact counts under churn, and what `ss` polling sees\n"
    );
    let _ = writeln!(
        out,
        "wrk with `Connection: close` at rising concurrency against the same nginx, tracker \
         watching; truth is the kernel's `TcpPassiveOpens` delta over the run. `ss` ran every \
         100 ms alongside (`ss -Htn state established ( sport = :port )`). CPU is the daemon's \
         user+system time from the start of the load until every close was reported (its \
         start-up left out); events are the kernel events it handled.\n"
    );
    let _ = writeln!(
        out,
        "| wrk -c | connections/s | truth | tracker opened | closed | lost events | errors | exact | daemon CPU s | events | CPU s per million events | tracker peak | ss max at once | ss distinct seen |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for level in churn {
        let per_million = if level.tracker_events > 0 {
            level.tracker_cpu_s / (level.tracker_events as f64 / 1e6)
        } else {
            f64::NAN
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {:.2} | {} | {} | {} |",
            level.wrk_connections,
            level.connections_per_s(),
            level.truth,
            level.opened,
            level.closed,
            level.lost,
            level.errors,
            if level.exact() { "yes" } else { "no" },
            level.tracker_cpu_s,
            level.tracker_events,
            per_million,
            level.tracker_peak,
            level.ss_max_concurrent,
            level.ss_distinct
        );
    }
    let best = churn
        .iter()
        .filter(|level| level.exact())
        .map(ChurnLevel::connections_per_s)
        .fold(f64::NAN, f64::max);
    let _ = writeln!(
        out,
        "\nHighest loss-free, exact churn measured: **{best:.0} connections/s**.\n"
    );

    crate::bench_kernel_cost::render(&mut out, kernel_costs);

    let _ = writeln!(out, "## Daemon memory per tracked connection\n");
    let _ = writeln!(
        out,
        "Connections held open on loopback from several 127.0.0.x source addresses, tracker \
         watching their listener; resident set size of the daemon after it reported them all, \
         minus its size with none. Kernel-side map memory is not included.\n"
    );
    let _ = writeln!(out, "| connections | daemon RSS | bytes per connection |");
    let _ = writeln!(out, "| --- | --- | --- |");
    for point in memory {
        let _ = writeln!(
            out,
            "| {} | {:.1} MiB | {:.0} |",
            point.connections,
            point.rss_bytes as f64 / (1024.0 * 1024.0),
            point.per_connection
        );
    }

    let _ = writeln!(out, "\n## The model's hot path on one core (criterion)\n");
    let _ = writeln!(out, "`cargo bench -p tracker-user --bench model`:\n");
    let _ = writeln!(
        out,
        "| benchmark | time per iteration | events per iteration | events/s |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- |");
    for figure in micro {
        let _ = writeln!(
            out,
            "| {} | {:.1} µs | {:.0} | {:.2e} |",
            figure.name,
            figure.ns_per_iteration / 1000.0,
            figure.events_per_iteration,
            figure.events_per_iteration / (figure.ns_per_iteration * 1e-9)
        );
    }
    out
}
