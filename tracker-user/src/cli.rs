//! The command line: flags, subcommands and their help, from which `tracker --help`, the man
//! page and the shell completions are all made (see [`write_man_and_completions`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, CommandFactory as _, Parser, Subcommand};
use clap_complete::Shell;
use tracker_common::CONNECT_TARGETS_MAX_ENTRIES;

use crate::host::tcp_table::TableSource;
use crate::sink::lines::Format;

/// Per-listener TCP occupancy of unmodified servers, observed from the kernel with eBPF.
///
/// Prints, every interval, one line per listening socket: current and peak connections, peak
/// sessions per connection, error counters, and connection/busy time in the interval. Run as
/// root. Logs go to stderr; RUST_LOG sets their level (default info), including messages the
/// eBPF programs log.
#[derive(Debug, Parser)]
#[command(name = "tracker", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub flags: Flags,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Live terminal view of the listeners, busiest first, refreshed every interval; q quits.
    ///
    /// Example: tracker top --interval 1
    Top,
}

/// The flags, global to every subcommand.
#[derive(Debug, Args)]
pub struct Flags {
    /// Seconds between reports, 0.001 to 86400 (fractions allowed). Example: --interval 0.5
    #[arg(
        long,
        global = true,
        default_value = "10",
        value_parser = parse_interval,
        value_name = "SECS",
        allow_negative_numbers = true
    )]
    pub interval: Duration,

    /// Only report listeners on this local port; repeat for several (any number). Example:
    /// --port 80 --port 443
    #[arg(
        long = "port",
        global = true,
        value_name = "PORT",
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub ports: Vec<u16>,

    /// Report format on stdout. Example: --format json
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Stop after this many seconds, with a final report. Example: --duration 60
    #[arg(
        long,
        global = true,
        value_parser = parse_duration,
        value_name = "SECS",
        allow_negative_numbers = true
    )]
    pub duration: Option<Duration>,

    /// Keep peaks and totals across reports instead of resetting them at each one.
    /// Example: --no-reset
    #[arg(long, global = true)]
    pub no_reset: bool,

    /// Do not read payload: no protocol detection or session counts (every connection counts
    /// in JSON sessions_unknown). Example: --no-sessions
    #[arg(long, global = true)]
    pub no_sessions: bool,

    /// Count connections only, at the lowest cost: attach the hooks on listens, accepts and
    /// closes, none on reads and writes. Busy time and sessions are null, as on a kernel
    /// without a turns hook. Example: --connections-only
    #[arg(long, global = true)]
    pub connections_only: bool,

    /// Also track the connections this host opens to ADDR:PORT, in a tracker named
    /// connect:ADDR:PORT; repeat for several (at most 1024). Example: --connect 10.0.0.5:5432
    #[arg(long = "connect", global = true, value_name = "ADDR:PORT")]
    pub connect: Vec<SocketAddr>,

    /// Also serve Prometheus metrics at http://ADDR:PORT/metrics. Example: --prometheus
    /// 127.0.0.1:9464
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    pub prometheus: Option<SocketAddr>,

    /// Ring buffer size in bytes: a power of two, at least the page size. Small values force
    /// event loss (for tests).
    #[arg(long, global = true, hide = true, value_parser = parse_ring_bytes)]
    pub ring_bytes: Option<u32>,
    /// Capacity of the kernel's table of tracked connections. Small values make it overflow
    /// (for tests).
    #[arg(long, global = true, hide = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub tracked_entries: Option<u32>,
    /// Attach the classic tracepoints even where raw ones work (the fallback path, for
    /// tests and comparison).
    #[arg(long, global = true, hide = true)]
    pub classic_tracepoints: bool,
    /// Serve every capability that has such a hook with this kind only, failing if the
    /// kernel refuses it (the fallback paths, for tests and cost comparison).
    #[arg(long, global = true, hide = true, value_name = "KIND")]
    pub hooks: Option<crate::kernel::hooks::HookKind>,

    /// Have the kernel account the eBPF programs' run time and log each program's runs and
    /// nanoseconds at exit (for benchmarks; the accounting itself costs a little).
    #[arg(long, global = true, hide = true)]
    pub bpf_stats: bool,

    /// Where to read the kernel's table of TCP sockets: sock_diag, falling back to
    /// /proc/net/tcp (auto), or only one of them (for tests of the fallback).
    #[arg(long, global = true, hide = true, value_enum, default_value_t = TableSource::Auto)]
    pub tcp_table: TableSource,
}

impl Flags {
    /// `--connect` fills a kernel map of fixed size: more distinct values than fit is a flag
    /// error, not a map error after the programs are loaded. (`--port` has a place for every
    /// port number.)
    pub fn check_counts(&self) -> Result<(), String> {
        let connect: BTreeSet<SocketAddr> = self.connect.iter().copied().collect();
        let limit = CONNECT_TARGETS_MAX_ENTRIES;
        if connect.len() > limit as usize {
            return Err(format!(
                "at most {limit} different --connect values, {} given",
                connect.len()
            ));
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

/// The man pages' and completion scripts' paths, once written.
pub struct Written {
    pub man_pages: Vec<PathBuf>,
    pub completions: Vec<PathBuf>,
}

/// Writes the man pages (`dir/man/tracker.1`, and one per subcommand such as
/// `tracker-top.1`) and bash, zsh and fish completions in `dir/completions`.
pub fn write_man_and_completions(dir: &Path) -> std::io::Result<Written> {
    let man_dir = dir.join("man");
    std::fs::create_dir_all(&man_dir)?;
    let mut man_pages = Vec::new();
    for (name, roff) in man_pages_roff()? {
        let path = man_dir.join(format!("{name}.1"));
        std::fs::write(&path, roff)?;
        man_pages.push(path);
    }
    let completions_dir = dir.join("completions");
    std::fs::create_dir_all(&completions_dir)?;
    let mut command = Cli::command();
    let completions = [Shell::Bash, Shell::Zsh, Shell::Fish]
        .into_iter()
        .map(|shell| clap_complete::generate_to(shell, &mut command, "tracker", &completions_dir))
        .collect::<std::io::Result<_>>()?;
    Ok(Written {
        man_pages,
        completions,
    })
}

/// Each man page's name (`tracker`, `tracker-top`) and roff text.
pub fn man_pages_roff() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    // `tracker help` is --help by another name: no page of its own.
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    let mut pages = vec![(command.get_name().to_owned(), man_page(&command)?)];
    for subcommand in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let name = subcommand
            .get_display_name()
            .unwrap_or_else(|| subcommand.get_name())
            .to_owned();
        pages.push((name, man_page(subcommand)?));
    }
    Ok(pages)
}

/// The sections of `command`'s page, with the examples set line by line: filled as prose,
/// as clap_mangen renders text after the options, their columns would be lost.
fn man_page(command: &clap::Command) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(command.clone());
    let mut roff = Vec::new();
    man.render_title(&mut roff)?;
    man.render_name_section(&mut roff)?;
    man.render_synopsis_section(&mut roff)?;
    man.render_description_section(&mut roff)?;
    if command.get_arguments().any(|arg| !arg.is_hide_set()) {
        man.render_options_section(&mut roff)?;
    }
    if command.has_subcommands() {
        man.render_subcommands_section(&mut roff)?;
    }
    if let Some(examples) = command.get_after_help() {
        // The page has its own heading for the examples, --help a line of its own.
        let mut lines = examples.to_string();
        if let Some(rest) = lines.strip_prefix("Examples:\n") {
            lines = rest.to_owned();
        }
        roff.extend_from_slice(b".SH EXAMPLES\n.nf\n");
        for line in lines.lines() {
            let line = line.strip_prefix("  ").unwrap_or(line);
            roff.extend_from_slice(roff_escape(line).as_bytes());
            roff.push(b'\n');
        }
        roff.extend_from_slice(b".fi\n");
    }
    if command.get_version().is_some() {
        man.render_version_section(&mut roff)?;
    }
    Ok(roff)
}

/// `line` as roff text: backslashes and hyphens escaped (a bare `-` may print as a hyphen,
/// which a reader cannot paste as a flag); a leading `.` or `'` would be a request.
fn roff_escape(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}
