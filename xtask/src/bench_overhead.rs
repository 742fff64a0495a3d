//! The first section of `cargo xtask bench`: what each observer costs nginx, interleaved
//! repetitions of one wrk load per observer, measured two ways.
//!
//! Throughput is what an operator sees, but on a virtual machine it also moves with the time
//! the hypervisor gives other guests (`steal` in `/proc/stat`): a third of this machine's CPU
//! time at busy hours, varying from one run to the next far more than the 1% a good observer
//! costs. So each run also records the CPU time the machine spent (user, system, interrupts;
//! not idle, not stolen) per request served. On a machine the load saturates, throughput is
//! the CPUs divided by that time, so both give the same overhead where nothing is stolen;
//! CPU time per request keeps its meaning when something is.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, anyhow};

use crate::bench::{
    BenchArgs, Load, ObserverGuard, forward_lines, start_tracker, stats, wait_for_line, wrk,
};
use crate::{run_step, workspace_root};

/// bpftrace on the tracepoints tracker uses for connections and turns, doing the minimum a
/// one-liner would: count events per kind in maps.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:sock:inet_sock_set_state /args->protocol == 6/ { @states[args->oldstate, args->newstate] = count(); }
tracepoint:sock:sock_recv_length { @recv = count(); }
tracepoint:sock:sock_send_length { @send = count(); }
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Observer {
    None,
    Tracker,
    /// tracker watching a port nothing listens on: its programs stay attached to the same
    /// hooks and run on every firing, but drop every socket at their first check. What is
    /// left is the cost of being attached, before any per-connection work.
    TrackerIdle,
    /// tracker with `--connections-only`: lifecycle, accept and close hooks, none on reads
    /// and writes.
    TrackerConnectionsOnly,
    Bpftrace,
}

impl Observer {
    pub(crate) const ALL: [Observer; 5] = [
        Observer::None,
        Observer::Tracker,
        Observer::TrackerIdle,
        Observer::TrackerConnectionsOnly,
        Observer::Bpftrace,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Observer::None => "baseline",
            Observer::Tracker => "tracker",
            Observer::TrackerIdle => "tracker, idle",
            Observer::TrackerConnectionsOnly => "tracker --connections-only",
            Observer::Bpftrace => "bpftrace",
        }
    }
}

/// Starts `observer` and waits until it has attached.
pub(crate) fn start_observer(
    observer: Observer,
    tracker: &Path,
    port: u16,
    idle_port: u16,
    out_dir: &Path,
) -> anyhow::Result<ObserverGuard> {
    match observer {
        Observer::None => Ok(ObserverGuard {
            child: None,
            log: None,
        }),
        Observer::Tracker => start_tracker(tracker, port, out_dir.join("tracker.jsonl"), &[]),
        Observer::TrackerIdle => {
            start_tracker(tracker, idle_port, out_dir.join("tracker-idle.jsonl"), &[])
        }
        Observer::TrackerConnectionsOnly => start_tracker(
            tracker,
            port,
            out_dir.join("tracker-connections-only.jsonl"),
            &["--connections-only"],
        ),
        Observer::Bpftrace => {
            let mut child = Command::new("bpftrace")
                .args(["-e", BPFTRACE_SCRIPT])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting bpftrace")?;
            let log = forward_lines(child.stdout.take().expect("piped"));
            let guard = ObserverGuard {
                child: Some(child),
                log: Some(log),
            };
            wait_for_line(guard.log.as_ref().expect("set"), "Attaching", "bpftrace")?;
            Ok(guard)
        }
    }
}

/// The repetitions of one load under one observer.
#[derive(Debug)]
pub(crate) struct Runs {
    pub(crate) load: Load,
    pub(crate) observer: Observer,
    pub(crate) requests_per_s: Vec<f64>,
    /// CPU nanoseconds the machine spent per request served.
    pub(crate) cpu_ns_per_request: Vec<f64>,
    /// Share of the CPU time stolen by the hypervisor during the run.
    pub(crate) steal_share: Vec<f64>,
}

/// Runs every load under every observer, `args.reps` times, interleaved.
pub(crate) fn measure(
    tracker: &Path,
    nginx_port: u16,
    url: &str,
    args: &BenchArgs,
    out_dir: &Path,
) -> anyhow::Result<Vec<Runs>> {
    // Nothing listens there: the kernel picked it for us and it was released at once.
    let idle_port = crate::bench::free_port()?;
    let mut all: Vec<Runs> = Vec::new();
    for load in [Load::Churn, Load::KeepAlive] {
        for observer in Observer::ALL {
            all.push(Runs {
                load,
                observer,
                requests_per_s: Vec::new(),
                cpu_ns_per_request: Vec::new(),
                steal_share: Vec::new(),
            });
        }
    }
    for rep in 0..args.reps {
        for runs in &mut all {
            let guard = start_observer(runs.observer, tracker, nginx_port, idle_port, out_dir)?;
            let run = wrk(url, runs.load, args.connections, args.seconds)?;
            drop(guard);
            let cpu_ns = run.cpu.busy_ns() / run.requests.max(1) as f64;
            eprintln!(
                "bench: rep {} {} {}: {:.0} req/s, {:.1} µs CPU per request, {:.0}% stolen",
                rep + 1,
                runs.load.name(),
                runs.observer.name(),
                run.requests_per_s,
                cpu_ns / 1e3,
                run.cpu.steal_share() * 100.0
            );
            runs.requests_per_s.push(run.requests_per_s);
            runs.cpu_ns_per_request.push(cpu_ns);
            runs.steal_share.push(run.cpu.steal_share());
        }
    }
    Ok(all)
}

/// The section of BENCHMARKS.md for `all`.
pub(crate) fn render(out: &mut String, args: &BenchArgs, all: &[Runs]) {
    let _ = writeln!(out, "## Overhead on nginx\n");
    let _ = writeln!(
        out,
        "nginx-light, 1 worker, `return 200` on loopback; wrk `-t 2 -c {} -d {}s`; {} \
         interleaved repetitions (baseline, tracker, tracker idle, bpftrace, …). tracker runs \
         as deployed (`--format json --interval 1 --port <nginx>`, sessions on, raw \
         tracepoints). *tracker, idle* is the same daemon watching a port nothing listens on: \
         its programs stay attached to the same hooks and run on every firing but drop every \
         socket at their first check, so its overhead is the cost of being attached, the part \
         no per-connection design on these hooks avoids. *tracker --connections-only* attaches \
         only the lifecycle, accept and close hooks (no busy time, no sessions). bpftrace runs a script counting \
         events on the same tracepoints (`inet_sock_set_state`, `sock_recv_length`, \
         `sock_send_length`; classic tracepoints, the only kind Debian's bpftrace attaches).\n\n\
         Two measures of the same cost. Throughput: median requests/s with the observer over \
         the baseline's. CPU: the machine's CPU time (user, system, interrupts; not idle, not \
         stolen by the hypervisor) per request served, median, over the baseline's; it \
         includes wrk, nginx, the kernel's networking, the programs and the daemon. Where the \
         load saturates both CPUs and nothing is stolen the two agree; on a virtual machine \
         whose neighbours take CPU time (the last column), throughput moves with them and CPU \
         time per request does not.\n",
        args.connections, args.seconds, args.reps
    );
    let _ = writeln!(
        out,
        "| scenario | observer | req/s min | req/s median | req/s max | throughput overhead | CPU µs per request (median) | CPU overhead | stolen (median) |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for load in [Load::Churn, Load::KeepAlive] {
        let Some(baseline) = all
            .iter()
            .find(|runs| runs.load == load && runs.observer == Observer::None)
        else {
            continue;
        };
        let baseline_rate = stats(&baseline.requests_per_s).1;
        let baseline_cpu = stats(&baseline.cpu_ns_per_request).1;
        for runs in all.iter().filter(|runs| runs.load == load) {
            let (min, median, max) = stats(&runs.requests_per_s);
            let cpu = stats(&runs.cpu_ns_per_request).1;
            let _ = writeln!(
                out,
                "| {} | {} | {min:.0} | {median:.0} | {max:.0} | {:.1}% | {:.2} | {:.1}% | {:.0}% |",
                load.name(),
                runs.observer.name(),
                (1.0 - median / baseline_rate) * 100.0,
                cpu / 1e3,
                (cpu / baseline_cpu - 1.0) * 100.0,
                stats(&runs.steal_share).1 * 100.0
            );
        }
    }
}

/// benchmarks.png: a bar chart of median throughput with min–max error bars, per scenario and
/// observer.
pub(crate) fn plot(all: &[Runs], out_dir: &Path) -> anyhow::Result<()> {
    let data = out_dir.join("overhead.dat");
    let mut text = String::new();
    for (index, runs) in all.iter().enumerate() {
        let (min, median, max) = stats(&runs.requests_per_s);
        let _ = writeln!(
            text,
            "{index} \"{}\\n{}\" {median} {min} {max}",
            runs.load.name().split(' ').next().unwrap_or(""),
            runs.observer.name()
        );
    }
    std::fs::write(&data, text)?;
    let png = workspace_root().join("benchmarks.png");
    let script = format!(
        "set terminal png size 900,500
set output '{png}'
set title 'nginx throughput with and without observers (median, min-max)'
set ylabel 'requests/s'
set style fill solid 0.6
set boxwidth 0.6
set yrange [0:*]
set bmargin 4
set xtics rotate by 0
unset key
plot '{data}' using 1:3:xtic(2) with boxes, '' using 1:3:4:5 with yerrorbars lc rgb 'black'
",
        png = png.display(),
        data = data.display()
    );
    let script_path = out_dir.join("overhead.gp");
    std::fs::write(&script_path, script)?;
    run_step(
        "plotting benchmarks.png",
        Command::new("gnuplot").arg(&script_path),
    )
}

/// The machine's CPU time so far, from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuTicks {
    /// user, nice, system, irq, softirq: work done.
    busy: u64,
    /// Time the hypervisor ran something else while this machine wanted its CPUs.
    steal: u64,
}

/// What the CPUs did over some period (see [`CpuTicks::since`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuUse {
    busy_ticks: u64,
    steal_ticks: u64,
}

impl CpuTicks {
    pub(crate) fn read() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat
            .lines()
            .next()
            .filter(|line| line.starts_with("cpu "))
            .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
        Self::parse(line)
    }

    /// `cpu  user nice system idle iowait irq softirq steal ...`
    fn parse(line: &str) -> anyhow::Result<Self> {
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading /proc/stat's cpu line {line:?}"))?;
        let field = |index: usize| fields.get(index).copied().unwrap_or(0);
        Ok(Self {
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            steal: field(7),
        })
    }

    pub(crate) fn since(&self, before: &Self) -> CpuUse {
        CpuUse {
            busy_ticks: self.busy.saturating_sub(before.busy),
            steal_ticks: self.steal.saturating_sub(before.steal),
        }
    }
}

impl CpuUse {
    /// Nanoseconds of work done.
    pub(crate) fn busy_ns(&self) -> f64 {
        // SAFETY: sysconf only reads a configuration value.
        let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.busy_ticks as f64 * 1e9 / ticks_per_s
    }

    /// Share of the time the CPUs were wanted that the hypervisor gave to others.
    pub(crate) fn steal_share(&self) -> f64 {
        let wanted = self.busy_ticks + self.steal_ticks;
        if wanted == 0 {
            0.0
        } else {
            self.steal_ticks as f64 / wanted as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_is_work_done_and_steal_is_apart() {
        let before = CpuTicks::parse("cpu  100 5 50 1000 7 3 2 40 0 0").unwrap();
        let after = CpuTicks::parse("cpu  160 5 70 1100 9 4 6 100 0 0").unwrap();
        let used = after.since(&before);
        // user 60 + system 20 + irq 1 + softirq 4; idle and iowait are not work.
        assert_eq!(used.busy_ticks, 85);
        assert_eq!(used.steal_ticks, 60);
        assert!((used.steal_share() - 60.0 / 145.0).abs() < 1e-9);
    }
}
