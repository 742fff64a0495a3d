//! `cargo xtask bench --against OTHER`: this build's eBPF programs against another tracker
//! binary's, both attached at once to the same nginx under the same wrk load.
//!
//! Why at once: one run's BPF time per request differs from the next by up to a third on this
//! machine (other load, frequency, cache state), more than most single changes to the programs
//! save. Attached together, both builds' programs run on every firing of the same connections,
//! and only their own work differs. The build attached second runs on caches the first warmed,
//! so each repetition runs twice, each build first once, and the figures are means over both.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use super::harness::{Load, Shape, start_tracker, wrk};
use super::kernel_cost::{ProgramCosts, ProgramRuns, runs_between};

/// Which of the two builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Build {
    This,
    Other,
}

/// One program's runs and nanoseconds per build, summed over every run of one load, with the
/// requests those runs served.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Paired {
    pub(crate) requests: u64,
    /// By (program name, build).
    pub(crate) programs: BTreeMap<(String, Build), ProgramRuns>,
}

impl Paired {
    /// Adds one run's programs of `build`.
    fn add(&mut self, build: Build, programs: Vec<ProgramRuns>) {
        for program in programs {
            let total = self
                .programs
                .entry((program.name.clone(), build))
                .or_insert_with(|| ProgramRuns {
                    name: program.name.clone(),
                    ..ProgramRuns::default()
                });
            total.runs += program.runs;
            total.nanos += program.nanos;
        }
    }

    /// Nanoseconds per request of `build`'s program `name` (all of them for None).
    fn per_request(&self, build: Build, name: Option<&str>) -> f64 {
        let nanos: u64 = self
            .programs
            .iter()
            .filter(|((program, of), _)| *of == build && name.is_none_or(|name| name == program))
            .map(|(_, runs)| runs.nanos)
            .sum();
        nanos as f64 / self.requests.max(1) as f64
    }
}

/// Splits the programs that ran (by id) into the first build's (loaded before `second_from`,
/// the lowest id the second build's programs can have) and the second's.
fn split(
    ran: BTreeMap<u32, ProgramRuns>,
    second_from: u32,
) -> (Vec<ProgramRuns>, Vec<ProgramRuns>) {
    let (first, second): (Vec<_>, Vec<_>) = ran.into_iter().partition(|(id, _)| *id < second_from);
    let strip = |runs: Vec<(u32, ProgramRuns)>| runs.into_iter().map(|(_, runs)| runs).collect();
    (strip(first), strip(second))
}

/// Every load, `shape.reps` times with each build attached first once.
pub(crate) fn measure(
    this: &Path,
    other: &Path,
    nginx_port: u16,
    url: &str,
    shape: &Shape,
    out_dir: &Path,
) -> anyhow::Result<Vec<(Load, Paired)>> {
    let mut figures = Vec::new();
    for load in [Load::Churn, Load::KeepAlive] {
        let mut paired = Paired::default();
        for round in 0..shape.reps * 2 {
            let order = if round % 2 == 0 {
                [(Build::This, this), (Build::Other, other)]
            } else {
                [(Build::Other, other), (Build::This, this)]
            };
            let accounting = ProgramCosts::start()?;
            let first = start_tracker(order[0].1, nginx_port, out_dir.join("first.jsonl"), &[])?;
            let second_from = accounting
                .read()?
                .keys()
                .max()
                .map_or(0, |&last| last.saturating_add(1));
            let second = start_tracker(order[1].1, nginx_port, out_dir.join("second.jsonl"), &[])?;
            let start = accounting.read()?;
            let run = wrk(url, load, shape.connections, shape.seconds)?;
            let end = accounting.read()?;
            drop((first, second));
            let (first_runs, second_runs) = split(runs_between(&start, &end), second_from);
            anyhow::ensure!(
                !first_runs.is_empty() && !second_runs.is_empty(),
                "a build ran no eBPF program during {}",
                load.name()
            );
            paired.requests += run.requests;
            paired.add(order[0].0, first_runs);
            paired.add(order[1].0, second_runs);
        }
        eprintln!(
            "bench: {}: this build {:.0} ns per request, the other {:.0}",
            load.name(),
            paired.per_request(Build::This, None),
            paired.per_request(Build::Other, None)
        );
        figures.push((load, paired));
    }
    Ok(figures)
}

/// The comparison, per load: every program, then the sum.
pub(crate) fn render(out: &mut String, shape: &Shape, figures: &[(Load, Paired)]) {
    let _ = writeln!(
        out,
        "## This build against the other, attached at once\n\n{} runs of {} s per load, each \
         build attached first in half of them; BPF run time per request as the kernel accounts \
         it.\n",
        shape.reps * 2,
        shape.seconds
    );
    let _ = writeln!(out, "| load | program | this build | the other | change |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
    for (load, paired) in figures {
        let names: BTreeSet<&str> = paired
            .programs
            .keys()
            .map(|(name, _)| name.as_str())
            .collect();
        let rows = names.into_iter().map(Some).chain([None]);
        for name in rows {
            let this = paired.per_request(Build::This, name);
            let other = paired.per_request(Build::Other, name);
            let change = if other > 0.0 {
                format!("{:+.1}%", (this / other - 1.0) * 100.0)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "| {} | {} | {this:.0} ns | {other:.0} ns | {change} |",
                load.name(),
                name.map_or_else(|| "all".to_owned(), |name| format!("`{name}`")),
            );
        }
    }
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
    fn programs_are_told_apart_by_load_order_and_summed_per_build() {
        let start = BTreeMap::from([(10, runs("raw_inet", 5, 50)), (20, runs("raw_inet", 0, 0))]);
        let end = BTreeMap::from([
            (10, runs("raw_inet", 15, 1_050)),
            (11, runs("raw_recv", 4, 400)),
            (20, runs("raw_inet", 10, 800)),
            (21, runs("raw_recv", 0, 0)),
        ]);
        let (first, second) = split(runs_between(&start, &end), 20);
        assert_eq!(
            first,
            vec![runs("raw_inet", 10, 1_000), runs("raw_recv", 4, 400)]
        );
        assert_eq!(second, vec![runs("raw_inet", 10, 800)]);

        let mut paired = Paired {
            requests: 10,
            ..Paired::default()
        };
        paired.add(Build::This, first);
        paired.add(Build::Other, second);
        // The other order, as the next round runs it.
        paired.add(Build::Other, vec![runs("raw_inet", 10, 1_200)]);
        paired.add(Build::This, vec![runs("raw_inet", 10, 600)]);
        assert_eq!(paired.per_request(Build::This, Some("raw_inet")), 160.0);
        assert_eq!(paired.per_request(Build::Other, Some("raw_inet")), 200.0);
        assert_eq!(paired.per_request(Build::This, None), 200.0);
        let mut table = String::new();
        render(
            &mut table,
            &Shape {
                reps: 1,
                seconds: 4,
                connections: 50,
            },
            &[(Load::Churn, paired)],
        );
        assert!(
            table.contains("| churn (Connection: close) | `raw_inet` | 160 ns | 200 ns | -20.0% |"),
            "{table}"
        );
        assert!(
            table.contains("| all | 200 ns | 200 ns | +0.0% |"),
            "{table}"
        );
    }
}
