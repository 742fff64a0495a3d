//! `cargo xtask bench`: what the observer costs and how exact it stays, measured side by side
//! with what operators would use instead (a bpftrace script on the same tracepoints, `ss`
//! polling), on this machine, written to `BENCHMARKS.md` and `benchmarks.png`.
//!
//! Every load runs against a real nginx (one worker, loopback) driven by wrk. Scenarios with
//! and without observers are interleaved (none, tracker, tracker idle, bpftrace; none, ...)
//! so that machine noise hits all of them alike; results are min/median/max over the
//! repetitions. Ground truth for connection counts is the kernel's own `TcpPassiveOpens`
//! counter (/proc/net/snmp), read before and after each run.

mod against;
mod churn;
mod cpu;
mod harness;
mod held_connections;
mod kernel_cost;
mod memory;
mod micro;
mod observers;
mod overhead;
mod tls;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::host::{run_step, workspace_root};
use harness::{Nginx, Shape};

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
    /// Only the eBPF programs' time per request of this build against another tracker
    /// binary's (a build of another commit), both attached at once, printed rather than
    /// written to BENCHMARKS.md.
    #[arg(long, value_name = "TRACKER", conflicts_with_all = ["https_only", "overhead_only", "kernel_cost_only"])]
    against: Option<std::path::PathBuf>,
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

impl BenchArgs {
    fn shape(&self) -> Shape {
        Shape {
            reps: self.reps,
            seconds: self.seconds,
            connections: self.connections,
        }
    }
}

/// What one full run measured, section by section.
struct Figures {
    overhead: Vec<overhead::Runs>,
    churn: Vec<churn::ChurnLevel>,
    kernel_costs: Vec<kernel_cost::KernelCost>,
    memory: Vec<memory::MemoryPoint>,
    micro: Vec<micro::MicroFigure>,
    tls: tls::TlsFigures,
}

pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(other) = &args.against {
        anyhow::ensure!(
            other.is_file(),
            "--against {}: no such tracker binary",
            other.display()
        );
    }
    let tracker = crate::build::build()?;
    ensure_packages()?;
    ensure_tracefs()?;
    let out_dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let started = Instant::now();
    let shape = args.shape();
    if args.https_only {
        let tls = tls::measure(&tracker, &shape, &out_dir)?;
        println!("{}", tls::render(&tls));
        return Ok(());
    }

    let nginx = Nginx::start(&out_dir)?;
    let url = format!("http://127.0.0.1:{}/", nginx.port);
    eprintln!("bench: nginx on {url}");
    if let Some(other) = &args.against {
        let figures = against::measure(&tracker, other, nginx.port, &url, &shape, &out_dir)?;
        let mut table = String::new();
        against::render(&mut table, &shape, &figures);
        println!("{table}");
        return Ok(());
    }
    if args.kernel_cost_only {
        let costs = kernel_cost::measure(&tracker, nginx.port, &url, &shape, &out_dir)?;
        let mut table = String::new();
        kernel_cost::render(&mut table, &costs);
        println!("{table}");
        return Ok(());
    }
    // 1. Overhead, interleaved.
    let overhead = overhead::measure(&tracker, nginx.port, &url, &shape, &out_dir)?;
    if args.overhead_only {
        let mut table = String::new();
        overhead::render(&mut table, &shape, &overhead);
        println!("{table}");
        return Ok(());
    }
    let figures = Figures {
        // 2. Highest loss-free churn, with cost per event and `ss` polling alongside.
        churn: churn::measure(&tracker, &url, nginx.port, args.seconds, &out_dir)?,
        // 3. What each observer's eBPF programs cost, as the kernel accounts it.
        kernel_costs: kernel_cost::measure(&tracker, nginx.port, &url, &shape, &out_dir)?,
        // 4. Memory per tracked connection.
        memory: memory::measure(&tracker, args.max_held, &out_dir)?,
        // 5. The model's hot path on one core (criterion).
        micro: micro::measure()?,
        // 6. HTTPS keep-alive, with TLS plaintext followed.
        tls: tls::measure(&tracker, &shape, &out_dir)?,
        overhead,
    };
    drop(nginx);
    write_report(args, &figures, started.elapsed())?;
    overhead::plot(&figures.overhead, &out_dir)?;
    eprintln!("bench: wrote BENCHMARKS.md and benchmarks.png");
    Ok(())
}

/// Rewrites BENCHMARKS.md with `figures`, keeping the sections measured by other means (inside
/// VMs, say), which follow a marker.
fn write_report(args: &BenchArgs, figures: &Figures, took: Duration) -> anyhow::Result<()> {
    let path = workspace_root().join("BENCHMARKS.md");
    let kept = std::fs::read_to_string(&path)
        .ok()
        .and_then(|old| {
            old.find(KEPT_SECTIONS_MARKER)
                .map(|start| old[start..].to_owned())
        })
        .unwrap_or_default();
    let report = render_report(args, figures, took);
    std::fs::write(&path, format!("{report}\n{kept}"))?;
    Ok(())
}

fn ensure_packages() -> anyhow::Result<()> {
    crate::host::ensure_packages(BENCH_PACKAGES, "the benchmark")
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

fn render_report(args: &BenchArgs, figures: &Figures, took: Duration) -> String {
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
    overhead::render(&mut out, &args.shape(), &figures.overhead);
    let _ = writeln!(
        out,
        "\n![throughput per scenario and observer](benchmarks.png)\n"
    );

    churn::render(&mut out, &figures.churn);
    kernel_cost::render(&mut out, &figures.kernel_costs);
    memory::render(&mut out, &figures.memory);
    micro::render(&mut out, &figures.micro);
    let _ = writeln!(out, "\n{}", tls::render(&figures.tls));
    out
}
