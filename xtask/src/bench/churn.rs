//! The second section of `cargo xtask bench`: the highest connection churn tracker counts
//! exactly and without loss, against the kernel's own count, with what `ss` polling sees of
//! the same churn.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use super::harness::{Load, start_tracker, wrk};

/// wrk concurrencies tried, lowest first.
const LEVELS: [u32; 4] = [16, 64, 128, 256];

/// One churn run per level of [`LEVELS`].
pub(crate) fn measure(
    tracker: &Path,
    url: &str,
    port: u16,
    seconds: u64,
    out_dir: &Path,
) -> anyhow::Result<Vec<ChurnLevel>> {
    let mut levels = Vec::new();
    for connections in LEVELS {
        let level = churn_level(tracker, url, port, connections, seconds, out_dir)?;
        eprintln!("bench: churn -c {connections}: {level:?}");
        levels.push(level);
    }
    Ok(levels)
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
pub(crate) struct ChurnLevel {
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

/// The BENCHMARKS.md section.
pub(crate) fn render(out: &mut String, churn: &[ChurnLevel]) {
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
}
