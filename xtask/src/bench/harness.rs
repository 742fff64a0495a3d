//! What every section of the bench drives: the loads, nginx, wrk, and the observers' processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use anyhow::{Context as _, anyhow, bail};
pub(crate) use tracker_testkit::{forward_lines, free_port, stop, wait_until};

use super::cpu::{CpuTicks, CpuUse};

/// How long and how hard each load runs, and how often it is repeated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Repetitions of each interleaved scenario.
    pub(crate) reps: usize,
    /// Seconds of load per wrk run.
    pub(crate) seconds: u64,
    /// wrk connections.
    pub(crate) connections: u32,
}

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

/// nginx with one worker answering every request itself, on a port the kernel picked.
pub(crate) struct Nginx {
    server: tracker_testkit::Nginx,
    pub(crate) port: u16,
}

impl Nginx {
    /// Clear-text HTTP, in `out_dir/nginx`.
    pub(crate) fn start(out_dir: &Path) -> anyhow::Result<Self> {
        Self::start_serving(&out_dir.join("nginx"), "", "")
    }

    /// nginx with its files in `dir`, listening with the extra `listen` parameters
    /// `parameters` (such as `ssl`), with `directives` in the server block.
    pub(crate) fn start_serving(
        dir: &Path,
        parameters: &str,
        directives: &str,
    ) -> anyhow::Result<Self> {
        let port = free_port("127.0.0.1");
        let server = format!(
            "server {{
    listen 127.0.0.1:{port} {parameters} backlog=4096;
    {directives}
    location / {{ return 200 \"ok\\n\"; }}
  }}"
        );
        let server = tracker_testkit::Nginx::start_in(dir, &server, &[port])?;
        Ok(Self { server, port })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.server.pid()
    }
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

/// Waits for a line containing `needle` in `log`; fails if the stream ends first.
pub(crate) fn wait_for_line(
    log: &mpsc::Receiver<String>,
    needle: &str,
    what: &str,
) -> anyhow::Result<()> {
    tracker_testkit::wait_for_line(log, needle)
        .map_err(|seen| anyhow!("{what} did not start:\n{}", seen.join("\n")))
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
    let log = forward_lines(child.stderr.take().expect("piped"), None);
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
    /// What the machine's CPUs did while wrk ran (see [`CpuUse`]).
    pub(crate) cpu: CpuUse,
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
    let before = CpuTicks::read()?;
    let output = command.arg(url).output().context("running wrk")?;
    let cpu = CpuTicks::read()?.since(&before);
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

/// Minimum, median and maximum of `values`.
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
