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
use std::process::Command;

use super::harness::{Load, Shape, free_port, stats, wrk};
use super::observers::{Observer, start_observer};
use crate::host::{run_step, workspace_root};

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
    args: &Shape,
    out_dir: &Path,
) -> anyhow::Result<Vec<Runs>> {
    // Nothing listens there: the kernel picked it for us and it was released at once.
    let idle_port = free_port("127.0.0.1");
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
pub(crate) fn render(out: &mut String, args: &Shape, all: &[Runs]) {
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
