//! `tracker`: the daemon binary. Parses flags, checks privileges and hands over to
//! [`tracker::daemon::run`] with SIGINT/SIGTERM as its shutdown signal.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracker::daemon::{self, Options};
use tracker::output::{Format, LineWriter};

/// Per-listener TCP occupancy of unmodified servers, observed from the kernel with eBPF.
///
/// Prints, every interval, one line per listening socket: current and peak connections, peak
/// sessions per connection, error counters, and connection/busy time in the interval.
#[derive(Debug, Parser)]
#[command(name = "tracker", version, after_help = EXAMPLES)]
struct Cli {
    /// Seconds between reports (fractions allowed).
    #[arg(long, default_value = "10", value_parser = parse_seconds, value_name = "SECS")]
    interval: Duration,

    /// Only report listeners on this local port (repeat for several).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    ports: Vec<u16>,

    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// Stop after this many seconds (with a final report).
    #[arg(long, value_parser = parse_seconds, value_name = "SECS")]
    duration: Option<Duration>,

    /// Keep peaks and totals across reports instead of resetting them at each one.
    #[arg(long)]
    no_reset: bool,

    /// Do not read payload: no protocol detection or session counts (sess=0, JSON
    /// sessions_unknown counts every connection), and no per-syscall hooks.
    #[arg(long)]
    no_sessions: bool,

    /// Ring buffer size in bytes: a power of two, at least the page size. Small values force
    /// event loss (for tests).
    #[arg(long, hide = true, value_parser = parse_ring_bytes)]
    ring_bytes: Option<u32>,
}

const EXAMPLES: &str = "Examples:
  tracker                              every listener, a report every 10 s
  tracker --interval 1 --port 8080     one listener, every second
  tracker --format json --duration 60  JSON lines for one minute, then exit";

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(seconds.is_finite() && seconds > 0.0 && seconds < 1e9) {
        return Err(format!("'{text}' must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_ring_bytes(text: &str) -> Result<u32, String> {
    let bytes: u32 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a byte count"))?;
    if !bytes.is_power_of_two() || bytes < 4096 {
        return Err(format!("'{text}' must be a power of two of at least 4096"));
    }
    Ok(bytes)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let message = error.to_string();
            let first_line = message.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "tracker: {} (see tracker --help)",
                first_line.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("tracker: must run as root: it loads eBPF programs into the kernel (try sudo)");
        return ExitCode::FAILURE;
    }

    let options = Options {
        interval: cli.interval,
        ports: (!cli.ports.is_empty()).then(|| cli.ports.iter().copied().collect::<BTreeSet<_>>()),
        format: cli.format,
        duration: cli.duration,
        reset: !cli.no_reset,
        ring_bytes: cli.ring_bytes,
        sessions: !cli.no_sessions,
    };
    match run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tracker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: Options) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        };
        let mut sink = LineWriter::new(std::io::stdout().lock(), options.format);
        daemon::run(options, shutdown, &mut sink).await
    })
}
