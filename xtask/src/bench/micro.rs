//! The fifth section of `cargo xtask bench`: the model's hot path on one core (criterion).

use std::fmt::Write as _;

use anyhow::{Context as _, bail};

#[derive(Debug, Clone)]
pub(crate) struct MicroFigure {
    name: String,
    ns_per_iteration: f64,
    events_per_iteration: f64,
}

/// Runs the criterion benchmark of the model and reads its figures.
pub(crate) fn measure() -> anyhow::Result<Vec<MicroFigure>> {
    let output = crate::host::cargo()
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

/// The BENCHMARKS.md section.
pub(crate) fn render(out: &mut String, micro: &[MicroFigure]) {
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
}
