//! The third section of `cargo xtask bench`: what the observers' eBPF programs cost per
//! request, as the kernel accounts it, for tracker and for the bpftrace counting script alike.
//!
//! The figures come from the kernel itself (`BPF_ENABLE_STATS` on, then each program's
//! `run_cnt` and `run_time_ns` from `BPF_OBJ_GET_INFO_BY_FD`), not from anything an observer
//! prints, so every observer is measured the same way. The programs an observer loaded are
//! the ones that were not there before it started; their counts are read when its load
//! starts and when it ends.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::thread;
use std::time::Instant;

use anyhow::Context as _;
use aya::programs::loaded_programs;
use aya::sys::{Stats, enable_stats};

use super::harness::{Load, Shape, wrk};
use super::observers::{Observer, start_observer};

/// One program's runs and run time so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProgramRuns {
    pub(crate) name: String,
    pub(crate) runs: u64,
    pub(crate) nanos: u64,
}

/// Every program loaded in the kernel, by id.
fn loaded() -> anyhow::Result<BTreeMap<u32, ProgramRuns>> {
    let mut programs = BTreeMap::new();
    for info in loaded_programs() {
        let info = match info {
            Ok(info) => info,
            // Unloaded between the listing and the look-up (an observer that just stopped).
            Err(error) if is_gone(&error) => continue,
            Err(error) => return Err(error).context("reading a loaded program's info"),
        };
        programs.insert(
            info.id(),
            ProgramRuns {
                name: info.name_as_str().unwrap_or("?").to_owned(),
                runs: info.run_count(),
                nanos: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
            },
        );
    }
    Ok(programs)
}

/// Whether `error` says the program is no longer loaded.
fn is_gone(error: &aya::programs::ProgramError) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::NotFound
        {
            return true;
        }
        source = current.source();
    }
    false
}

/// The kernel's run-time accounting of the programs loaded after [`ProgramCosts::start`]:
/// hold it for as long as the figures are wanted.
pub(crate) struct ProgramCosts {
    /// Keeps the kernel's accounting on while held.
    _stats: std::os::fd::OwnedFd,
    before: BTreeSet<u32>,
}

impl ProgramCosts {
    /// Turns the accounting on and notes which programs are already loaded.
    pub(crate) fn start() -> anyhow::Result<Self> {
        let stats = enable_stats(Stats::RunTime).context("turning on BPF run-time accounting")?;
        Ok(Self {
            _stats: stats,
            before: loaded()?.into_keys().collect(),
        })
    }

    /// The runs so far of every program loaded since [`ProgramCosts::start`], by id.
    pub(crate) fn read(&self) -> anyhow::Result<BTreeMap<u32, ProgramRuns>> {
        let mut programs = loaded()?;
        programs.retain(|id, _| !self.before.contains(id));
        Ok(programs)
    }
}

/// The runs between two readings of the same programs, by id, of those that ran.
pub(crate) fn runs_between(
    start: &BTreeMap<u32, ProgramRuns>,
    end: &BTreeMap<u32, ProgramRuns>,
) -> BTreeMap<u32, ProgramRuns> {
    end.iter()
        .map(|(&id, last)| {
            let first = start.get(&id).cloned().unwrap_or_default();
            let runs = ProgramRuns {
                name: last.name.clone(),
                runs: last.runs.saturating_sub(first.runs),
                nanos: last.nanos.saturating_sub(first.nanos),
            };
            (id, runs)
        })
        .filter(|(_, runs)| runs.runs > 0)
        .collect()
}

/// The runs between two readings of the same programs, each named once: programs with the same
/// (truncated) name, as bpftrace's are, get a number.
pub(crate) fn difference(
    start: &BTreeMap<u32, ProgramRuns>,
    end: &BTreeMap<u32, ProgramRuns>,
) -> Vec<ProgramRuns> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    runs_between(start, end)
        .into_values()
        .map(|mut runs| {
            let count = seen.entry(runs.name.clone()).or_default();
            *count += 1;
            if *count > 1 {
                runs.name = format!("{} #{count}", runs.name);
            }
            runs
        })
        .collect()
}

/// The programs of one observer during one wrk run.
#[derive(Debug)]
pub(crate) struct KernelCost {
    pub(crate) load: Load,
    pub(crate) observer: Observer,
    pub(crate) requests: u64,
    pub(crate) seconds: f64,
    pub(crate) programs: Vec<ProgramRuns>,
}

impl KernelCost {
    fn nanos(&self) -> u64 {
        self.programs.iter().map(|program| program.nanos).sum()
    }
}

/// Observers whose programs are measured, in the order the table shows them.
const OBSERVERS: [Observer; 3] = [
    Observer::Tracker,
    Observer::TrackerConnectionsOnly,
    Observer::Bpftrace,
];

/// One wrk run of each load under each observer, its programs accounted by the kernel.
pub(crate) fn measure(
    tracker: &Path,
    nginx_port: u16,
    url: &str,
    args: &Shape,
    out_dir: &Path,
) -> anyhow::Result<Vec<KernelCost>> {
    let mut costs = Vec::new();
    for load in [Load::Churn, Load::KeepAlive] {
        for observer in OBSERVERS {
            let accounting = ProgramCosts::start()?;
            let guard = start_observer(observer, tracker, nginx_port, nginx_port, out_dir)?;
            let start = accounting.read()?;
            let started = Instant::now();
            let run = wrk(url, load, args.connections, args.seconds)?;
            let seconds = started.elapsed().as_secs_f64();
            let end = accounting.read()?;
            drop(guard);
            let cost = KernelCost {
                load,
                observer,
                requests: run.requests,
                seconds,
                programs: difference(&start, &end),
            };
            anyhow::ensure!(
                !cost.programs.is_empty(),
                "{} ran no eBPF program during {}",
                observer.name(),
                load.name()
            );
            eprintln!(
                "bench: kernel cost {} {}: {:.0} ns per request",
                load.name(),
                observer.name(),
                cost.nanos() as f64 / run.requests.max(1) as f64
            );
            costs.push(cost);
        }
    }
    Ok(costs)
}

/// `nanos` of CPU time as a percentage of what the machine has in `seconds`.
fn share(nanos: u64, seconds: f64) -> f64 {
    let cpus = thread::available_parallelism().map_or(1, usize::from);
    nanos as f64 / (seconds * 1e9 * cpus as f64) * 100.0
}

/// The BENCHMARKS.md section: observers side by side per load, then each program.
pub(crate) fn render(out: &mut String, costs: &[KernelCost]) {
    let _ = writeln!(out, "## Kernel-side cost per request\n");
    let _ = writeln!(
        out,
        "One more wrk run per load and observer, with the kernel's accounting of BPF program \
         run time on (`BPF_ENABLE_STATS`); each program's runs and nanoseconds are read from \
         the kernel when the load starts and when it ends, for tracker's programs and \
         bpftrace's alike. The accounting adds two clock reads to every run (about 30-40 ns \
         here), to every observer. Share of the machine: the nanoseconds over the run's wall \
         time times the CPUs.\n"
    );
    let _ = writeln!(
        out,
        "| load | observer | runs per request | ns per request | against bpftrace | share of the machine |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
    for cost in costs {
        let requests = cost.requests.max(1) as f64;
        let runs: u64 = cost.programs.iter().map(|program| program.runs).sum();
        let per_request = cost.nanos() as f64 / requests;
        let bpftrace = costs
            .iter()
            .find(|other| other.load == cost.load && other.observer == Observer::Bpftrace)
            .map(|other| other.nanos() as f64 / other.requests.max(1) as f64);
        let ratio = bpftrace.map_or_else(String::new, |base| format!("{:.2}×", per_request / base));
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {per_request:.0} | {ratio} | {:.2}% |",
            cost.load.name(),
            cost.observer.name(),
            runs as f64 / requests,
            share(cost.nanos(), cost.seconds),
        );
    }
    let _ = writeln!(out, "\nEach program:\n");
    let _ = writeln!(
        out,
        "| load | observer | program | runs per request | ns per run | ns per request |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
    for cost in costs {
        let requests = cost.requests.max(1) as f64;
        for program in &cost.programs {
            let _ = writeln!(
                out,
                "| {} | {} | `{}` | {:.1} | {:.0} | {:.0} |",
                cost.load.name(),
                cost.observer.name(),
                program.name,
                program.runs as f64 / requests,
                program.nanos as f64 / program.runs.max(1) as f64,
                program.nanos as f64 / requests,
            );
        }
    }
    let _ = writeln!(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(name: &str, runs: u64, nanos: u64) -> ProgramRuns {
        ProgramRuns {
            name: name.to_owned(),
            runs,
            nanos,
        }
    }

    #[test]
    fn the_difference_counts_each_program_once_numbering_shared_names() {
        let start = BTreeMap::from([
            (7, runs("tracepoint_sock", 10, 1_000)),
            (8, runs("tracepoint_sock", 0, 0)),
        ]);
        let end = BTreeMap::from([
            (7, runs("tracepoint_sock", 30, 5_000)),
            (8, runs("tracepoint_sock", 4, 400)),
            (9, runs("idle", 0, 0)),
        ]);
        assert_eq!(
            difference(&start, &end),
            vec![
                runs("tracepoint_sock", 20, 4_000),
                runs("tracepoint_sock #2", 4, 400),
            ]
        );
    }
}
