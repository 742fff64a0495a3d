//! The fourth section of `cargo xtask bench`: the daemon's memory per tracked connection.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Child;

use super::harness::{start_tracker, wait_until};
use super::held_connections::{HeldConnections, rss_bytes};

#[derive(Debug, Clone)]
pub(crate) struct MemoryPoint {
    connections: usize,
    rss_bytes: u64,
    per_connection: f64,
}

/// The daemon's resident set size with up to `max_held` connections held.
pub(crate) fn measure(
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

/// The BENCHMARKS.md section.
pub(crate) fn render(out: &mut String, memory: &[MemoryPoint]) {
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
}
