//! `tracker`: the daemon binary. Parses flags ([`tracker::cli`]), checks privileges, picks where reports go
//! (lines on stdout, a Prometheus endpoint, or the live view) and hands over to
//! [`tracker::daemon::run`] with SIGINT/SIGTERM (and `q` in the live view) as its shutdown
//! signal; SIGHUP is logged and ignored.

use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use tokio::signal::unix::{SignalKind, signal};
use tracker::cli::{Cli, Command};
use tracker::daemon::{self, Options};
use tracker::host::privileges;
use tracker::kernel::bpf::ProbeOptions;
use tracker::log_pipe;
use tracker::sink::lines::{Format, LineWriter};
use tracker::sink::prometheus::PrometheusSink;
use tracker::sink::top::{self, TopView};
use tracker::sink::{ReportSink, RunningTotals, Tee};

fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let live_view = matches!(cli.command, Some(Command::Top));
    let log_drain = match start_logging(live_view) {
        Ok(drain) => drain,
        Err(code) => return code,
    };
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
    let (options, outputs) = settings(&cli, live_view);
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

/// The command line, or the exit code after printing why it is refused (or the help).
fn parse_command_line() -> Result<Cli, ExitCode> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version.
            let _ = error.print();
            return Err(ExitCode::SUCCESS);
        }
        Err(error) => {
            let message = error.to_string();
            let first_line = message.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "tracker: {} (see tracker --help)",
                first_line.trim_start_matches("error: ")
            );
            return Err(ExitCode::from(2));
        }
    };
    if let Err(message) = cli.flags.check_counts() {
        eprintln!("tracker: {message} (see tracker --help)");
        return Err(ExitCode::from(2));
    }
    Ok(cli)
}

/// Starts the logger, off in the live view unless RUST_LOG asks; returns what lets `main` wait
/// for the last lines to be written.
fn start_logging(live_view: bool) -> Result<log_pipe::LogDrain, ExitCode> {
    // The live view owns the terminal: logs would scribble over it, so they are off there
    // unless RUST_LOG asks for them.
    let default_level = if live_view { "off" } else { "info" };
    // The log goes to stderr through a thread of its own: a stderr nobody reads costs log
    // lines, never kernel events.
    let (log_pipe, log_drain) = match log_pipe::spawn(std::io::stderr()) {
        Ok(pipe) => pipe,
        Err(error) => {
            eprintln!("tracker: starting the log thread: {error}");
            return Err(ExitCode::FAILURE);
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
    Ok(log_drain)
}

/// The daemon's options and the outputs, from the command line.
fn settings(cli: &Cli, live_view: bool) -> (Options, Outputs) {
    let flags = &cli.flags;
    let options = Options {
        interval: flags.interval,
        duration: flags.duration,
        tcp_table: flags.tcp_table,
        probes: ProbeOptions {
            ports: (!flags.ports.is_empty())
                .then(|| flags.ports.iter().copied().collect::<BTreeSet<_>>()),
            ring_bytes: flags.ring_bytes,
            tracked_entries: flags.tracked_entries,
            sessions: !flags.no_sessions && !flags.connections_only,
            connect: flags.connect.clone(),
            classic_tracepoints: flags.classic_tracepoints,
            connections_only: flags.connections_only,
            forced_hooks: flags.hooks,
            run_time_stats: flags.bpf_stats,
        },
    };
    let outputs = Outputs {
        format: flags.format,
        running_totals: flags.no_reset,
        prometheus: flags.prometheus,
        live_view,
    };
    (options, outputs)
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
