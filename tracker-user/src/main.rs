//! `tracker`: the daemon binary. Parses flags, checks privileges, picks where reports go
//! (lines on stdout, a Prometheus endpoint, or the live view) and hands over to
//! [`tracker::daemon::run`] with SIGINT/SIGTERM (and `q` in the live view) as its shutdown
//! signal; SIGHUP is logged and ignored.

use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tracker::daemon::{self, Options};
use tracker::sink::lines::{Format, LineWriter};
use tracker::sink::prometheus::PrometheusSink;
use tracker::sink::top::{self, TopView};
use tracker::sink::{ReportSink, RunningTotals, Tee};
use tracker::tcp_table::TableSource;
use tracker::{log_pipe, privileges};
use tracker_common::{CONNECT_TARGETS_MAX_ENTRIES, PORTS_MAX_ENTRIES};

/// Per-listener TCP occupancy of unmodified servers, observed from the kernel with eBPF.
///
/// Prints, every interval, one line per listening socket: current and peak connections, peak
/// sessions per connection, error counters, and connection/busy time in the interval. Run as
/// root. Logs go to stderr; RUST_LOG sets their level (default info), including messages the
/// eBPF programs log.
#[derive(Debug, Parser)]
#[command(name = "tracker", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    flags: Flags,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Live terminal view of the listeners, busiest first, refreshed every interval; q quits.
    ///
    /// Example: tracker top --interval 1
    Top,
}

#[derive(Debug, Args)]
struct Flags {
    /// Seconds between reports, 0.001 to 86400 (fractions allowed). Example: --interval 0.5
    #[arg(
        long,
        global = true,
        default_value = "10",
        value_parser = parse_interval,
        value_name = "SECS",
        allow_negative_numbers = true
    )]
    interval: Duration,

    /// Only report listeners on this local port; repeat for several (at most 1024). Example:
    /// --port 80 --port 443
    #[arg(
        long = "port",
        global = true,
        value_name = "PORT",
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    ports: Vec<u16>,

    /// Report format on stdout. Example: --format json
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// Stop after this many seconds, with a final report. Example: --duration 60
    #[arg(
        long,
        global = true,
        value_parser = parse_duration,
        value_name = "SECS",
        allow_negative_numbers = true
    )]
    duration: Option<Duration>,

    /// Keep peaks and totals across reports instead of resetting them at each one.
    /// Example: --no-reset
    #[arg(long, global = true)]
    no_reset: bool,

    /// Do not read payload: no protocol detection or session counts (every connection counts
    /// in JSON sessions_unknown). Example: --no-sessions
    #[arg(long, global = true)]
    no_sessions: bool,

    /// Also track the connections this host opens to ADDR:PORT, in a tracker named
    /// connect:ADDR:PORT; repeat for several (at most 1024). Example: --connect 10.0.0.5:5432
    #[arg(long = "connect", global = true, value_name = "ADDR:PORT")]
    connect: Vec<SocketAddr>,

    /// Also serve Prometheus metrics at http://ADDR:PORT/metrics. Example: --prometheus
    /// 127.0.0.1:9464
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    prometheus: Option<SocketAddr>,

    /// Ring buffer size in bytes: a power of two, at least the page size. Small values force
    /// event loss (for tests).
    #[arg(long, global = true, hide = true, value_parser = parse_ring_bytes)]
    ring_bytes: Option<u32>,
    /// Capacity of the kernel's table of tracked connections. Small values make it overflow
    /// (for tests).
    #[arg(long, global = true, hide = true, value_parser = clap::value_parser!(u32).range(1..))]
    tracked_entries: Option<u32>,
    /// Attach the classic tracepoints even where raw ones work (the fallback path, for
    /// tests and comparison).
    #[arg(long, global = true, hide = true)]
    classic_tracepoints: bool,
    /// Serve every capability that has such a hook with this kind only, failing if the
    /// kernel refuses it (the fallback paths, for tests and cost comparison).
    #[arg(long, global = true, hide = true, value_name = "KIND")]
    hooks: Option<tracker::hooks::HookKind>,

    /// Have the kernel account the eBPF programs' run time and log each program's runs and
    /// nanoseconds at exit (for benchmarks; the accounting itself costs a little).
    #[arg(long, global = true, hide = true)]
    bpf_stats: bool,

    /// Where to read the kernel's table of TCP sockets: sock_diag, falling back to
    /// /proc/net/tcp (auto), or only one of them (for tests of the fallback).
    #[arg(long, global = true, hide = true, value_enum, default_value_t = TableSource::Auto)]
    tcp_table: TableSource,
}

impl Flags {
    /// Repeated flags fill kernel maps of fixed size: more distinct values than fit is a flag
    /// error, not a map error after the programs are loaded.
    fn check_counts(&self) -> Result<(), String> {
        let ports: BTreeSet<u16> = self.ports.iter().copied().collect();
        let connect: BTreeSet<SocketAddr> = self.connect.iter().copied().collect();
        for (flag, given, limit) in [
            ("--port", ports.len(), PORTS_MAX_ENTRIES),
            ("--connect", connect.len(), CONNECT_TARGETS_MAX_ENTRIES),
        ] {
            if given > limit as usize {
                return Err(format!(
                    "at most {limit} different {flag} values, {given} given"
                ));
            }
        }
        Ok(())
    }
}

const EXAMPLES: &str = "Examples:
  tracker                                    every listener, a report every 10 s
  tracker --interval 1 --port 8080           one listener, every second
  tracker --format json --duration 60        JSON lines for one minute, then exit
  tracker --prometheus 127.0.0.1:9464        reports on stdout and metrics for Prometheus
  tracker top --port 80 --port 443           live view of two listeners
  RUST_LOG=debug tracker --interval 1        with debug logs (also from the eBPF programs)";

/// The report intervals the daemon can keep: below a millisecond the report itself takes
/// longer than the interval; above a day a report would never come in practice.
const INTERVAL_RANGE: (f64, f64) = (0.001, 86_400.0);
/// `--duration`: from a millisecond to about 30 years (beyond that, not a duration).
const DURATION_RANGE: (f64, f64) = (0.001, 1e9);

fn parse_interval(text: &str) -> Result<Duration, String> {
    seconds_within(text, INTERVAL_RANGE)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    seconds_within(text, DURATION_RANGE)
}

/// Seconds in `[min, max]`: anything else (zero, negative, too small to be a timer, too big)
/// names the allowed range.
fn seconds_within(text: &str, (min, max): (f64, f64)) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(min..=max).contains(&seconds) {
        return Err(format!("'{text}' is outside {min} to {max} seconds"));
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
    if let Err(message) = cli.flags.check_counts() {
        eprintln!("tracker: {message} (see tracker --help)");
        return ExitCode::from(2);
    }
    let live_view = matches!(cli.command, Some(Command::Top));
    // The live view owns the terminal: logs would scribble over it, so they are off there
    // unless RUST_LOG asks for them.
    let default_level = if live_view { "off" } else { "info" };
    // The log goes to stderr through a thread of its own: a stderr nobody reads costs log
    // lines, never kernel events.
    let (log_pipe, log_drain) = match log_pipe::spawn(std::io::stderr()) {
        Ok(pipe) => pipe,
        Err(error) => {
            eprintln!("tracker: starting the log thread: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level));
    logger
        .format_target(false)
        .target(env_logger::Target::Pipe(Box::new(log_pipe)));
    // A pipe target is never coloured by default; the pipe ends on stderr, so colour follows
    // stderr, unless RUST_LOG_STYLE says otherwise.
    if std::env::var_os("RUST_LOG_STYLE").is_none() && std::io::stderr().is_terminal() {
        logger.write_style(env_logger::WriteStyle::Always);
    }
    logger.init();

    match privileges::effective().map(privileges::missing) {
        Ok(missing) if missing.is_empty() => {}
        Ok(missing) => {
            eprintln!("tracker: {}", privileges::refusal(&missing));
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("tracker: cannot read this process's capabilities: {error:#}");
            return ExitCode::FAILURE;
        }
    }

    let flags = cli.flags;
    let options = Options {
        interval: flags.interval,
        ports: (!flags.ports.is_empty())
            .then(|| flags.ports.iter().copied().collect::<BTreeSet<_>>()),
        duration: flags.duration,
        ring_bytes: flags.ring_bytes,
        tracked_entries: flags.tracked_entries,
        sessions: !flags.no_sessions,
        classic_tracepoints: flags.classic_tracepoints,
        forced_hooks: flags.hooks,
        bpf_stats: flags.bpf_stats,
        connect: flags.connect.clone(),
        tcp_table: flags.tcp_table,
    };
    let outputs = Outputs {
        format: flags.format,
        running_totals: flags.no_reset,
        prometheus: flags.prometheus,
        live_view,
    };
    let result = run(options, outputs);
    // The log's last lines before the outcome; a stderr that stays stuck does not hold the
    // exit for long.
    log_drain.wait_written(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tracker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where reports go, and how.
struct Outputs {
    format: Format,
    /// Print totals since start rather than the interval's figures (`--no-reset`).
    running_totals: bool,
    prometheus: Option<SocketAddr>,
    live_view: bool,
}

impl Outputs {
    /// The sink that prints (lines or the live view), with running totals when asked.
    fn printer(&self) -> anyhow::Result<Box<dyn ReportSink>> {
        fn totals_if<S: ReportSink + 'static>(running: bool, sink: S) -> Box<dyn ReportSink> {
            if running {
                Box::new(RunningTotals::new(sink))
            } else {
                Box::new(sink)
            }
        }
        Ok(if self.live_view {
            totals_if(self.running_totals, TopView::enter()?)
        } else {
            totals_if(
                self.running_totals,
                LineWriter::new(std::io::stdout(), self.format)
                    .context("starting the report output thread")?,
            )
        })
    }
}

fn run(options: Options, outputs: Outputs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        // Service managers and operators send SIGHUP to reload; its default action would end
        // the daemon without its final report.
        let mut hangup = signal(SignalKind::hangup())?;
        let signals = async move {
            loop {
                tokio::select! {
                    _ = interrupt.recv() => break,
                    _ = terminate.recv() => break,
                    _ = hangup.recv() => log::info!(
                        "SIGHUP received: nothing to reload (the daemon's settings are its \
                         command line); carrying on"
                    ),
                }
            }
        };
        let mut sinks: Vec<Box<dyn ReportSink>> = Vec::new();
        if let Some(addr) = outputs.prometheus {
            let sink = PrometheusSink::start(addr).await?;
            log::info!(
                "serving Prometheus metrics at http://{}/metrics",
                sink.local_addr()
            );
            sinks.push(Box::new(sink));
        }
        sinks.push(outputs.printer()?);
        if outputs.live_view {
            let shutdown = async move {
                tokio::select! {
                    () = signals => {}
                    () = top::quit_requested() => {}
                }
            };
            daemon::run(options, shutdown, &mut Tee(sinks)).await
        } else {
            daemon::run(options, signals, &mut Tee(sinks)).await
        }
    })
}
