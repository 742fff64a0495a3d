//! What following TLS plaintext costs: nginx terminating TLS for keep-alive wrk, without and
//! with tracker watching its port (interleaved, like the clear-text overhead), and what each
//! program costs per request as the kernel accounts it (`BPF_ENABLE_STATS`).
//!
//! The library hooks fire in every process that maps the hooked `libssl` file, and wrk is an
//! OpenSSL client. So wrk runs in a mount namespace of its own where a copy of the library
//! (another file) is bind-mounted over it, as a remote client's library would be: that
//! measures the server's cost. One more scenario lets wrk share the hooked file, as a client on
//! the same host does, and pays the traps of its own calls too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;

use super::harness::{
    Load, Nginx, ObserverGuard, Shape, WrkResult, start_tracker, stats, wrk_through,
};
use super::kernel_cost::{ProgramCosts, ProgramRuns, difference};
use crate::host::self_signed_certificate;

/// The HTTPS figures of one bench run.
#[derive(Debug)]
pub struct TlsFigures {
    /// Requests per second of each rep, without tracker.
    baseline: Vec<f64>,
    /// The same with tracker following the plaintext, wrk on its own copy of the library.
    tracker: Vec<f64>,
    /// The same with wrk sharing the hooked library file.
    tracker_shared: Vec<f64>,
    /// Requests of the run whose program costs the kernel accounted, and those costs.
    requests: u64,
    programs: Vec<ProgramRuns>,
}

/// nginx answering every HTTPS request itself (TLS 1.3, keep-alive), with a fresh self-signed
/// certificate.
fn start_tls_nginx(out_dir: &Path) -> anyhow::Result<Nginx> {
    let dir = out_dir.join("nginx-tls");
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = self_signed_certificate(&dir, 2)?;
    Nginx::start_serving(
        &dir,
        "ssl",
        &format!(
            "ssl_certificate {}; ssl_certificate_key {};",
            cert.display(),
            key.display()
        ),
    )
}

/// Runs wrk over HTTPS with tracker watching `port` (with `extra_args`), and checks from its
/// reports that it followed the plaintext: a figure taken without the hooks would claim a
/// cost it did not measure. Returns the run and tracker's stopped guard.
fn run_followed(
    tracker: &Path,
    (wrapper, url): (&[&str], &str),
    port: u16,
    args: &Shape,
    reports: &Path,
    extra_args: &[&str],
) -> anyhow::Result<(WrkResult, ObserverGuard)> {
    let guard = start_tracker(tracker, port, reports.to_owned(), extra_args)?;
    let run = wrk_through(
        wrapper,
        url,
        Load::KeepAlive,
        args.connections,
        args.seconds,
    )?;
    let lines = std::fs::read_to_string(reports)?;
    let followed = lines
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .any(|report| report["tls_library"].is_string() && report["sessions"].as_u64() > Some(0));
    if !followed {
        anyhow::bail!("tracker counted no sessions inside TLS:\n{lines}");
    }
    Ok((run, guard))
}

/// The `libssl` file process `pid` maps.
fn mapped_libssl(pid: u32) -> anyhow::Result<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.contains("/libssl.so"))
        .map(str::to_owned)
        .context("nginx maps no libssl")
}

/// Runs the HTTPS keep-alive scenarios.
pub fn measure(tracker: &Path, args: &Shape, out_dir: &Path) -> anyhow::Result<TlsFigures> {
    let nginx = start_tls_nginx(out_dir)?;
    let url = format!("https://127.0.0.1:{}/", nginx.port);
    eprintln!("bench: nginx with TLS on {url}");
    let library = mapped_libssl(nginx.pid())?;
    let copy = out_dir.join("nginx-tls/client-libssl.so");
    std::fs::copy(&library, &copy).context("copying libssl for the client")?;
    let mount = format!("mount --bind {} {library} && exec \"$@\"", copy.display());
    let own_library: &[&str] = &[
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &mount,
        "sh",
    ];
    let reports = out_dir.join("tracker-tls.jsonl");
    let (mut baseline, mut with_tracker, mut shared) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..args.reps {
        let rate = wrk_through(
            own_library,
            &url,
            Load::KeepAlive,
            args.connections,
            args.seconds,
        )?
        .requests_per_s;
        eprintln!(
            "bench: rep {} https keep-alive baseline: {rate:.0} req/s",
            rep + 1
        );
        baseline.push(rate);
        for (wrapper, rates, name) in [
            (own_library, &mut with_tracker, "tracker"),
            (&[][..], &mut shared, "tracker, client sharing libssl"),
        ] {
            let (run, guard) =
                run_followed(tracker, (wrapper, &url), nginx.port, args, &reports, &[])?;
            drop(guard);
            let rate = run.requests_per_s;
            eprintln!(
                "bench: rep {} https keep-alive {name}: {rate:.0} req/s",
                rep + 1
            );
            rates.push(rate);
        }
    }
    let started = Instant::now();
    let accounting = ProgramCosts::start()?;
    let (run, guard) = run_followed(
        tracker,
        (own_library, &url),
        nginx.port,
        args,
        &reports,
        &[],
    )?;
    eprintln!(
        "bench: https kernel cost run: {} requests in {:.1} s",
        run.requests,
        started.elapsed().as_secs_f64()
    );
    // From the daemon's start on: it loads its programs while nginx is already serving, so
    // nothing but this run's requests reaches them.
    let programs = difference(&BTreeMap::new(), &accounting.read()?);
    drop(guard);
    Ok(TlsFigures {
        baseline,
        tracker: with_tracker,
        tracker_shared: shared,
        requests: run.requests,
        programs,
    })
}

/// The BENCHMARKS.md section.
pub fn render(figures: &TlsFigures) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## HTTPS keep-alive: following TLS plaintext\n");
    let _ = writeln!(
        out,
        "nginx terminating TLS 1.3 (`return 200`, one worker), wrk keep-alive over HTTPS, \
         without and with tracker hooking nginx's `libssl.so.3` (interleaved). wrk runs on a \
         copy of the library, as a remote client would, except in the last row, where it shares \
         the hooked file and pays the traps of its own calls too. Each hooked call costs two \
         traps, whose price depends on the machine (docs/sessions.md, \"Sessions inside TLS\"); a \
         `return 200` answered in microseconds shows it in full.\n"
    );
    let (_, base, _) = stats(&figures.baseline);
    let _ = writeln!(
        out,
        "| observer | req/s (median) | min | max | overhead (median) |\n|---|---|---|---|---|"
    );
    for (name, rates) in [
        ("baseline", &figures.baseline),
        ("tracker", &figures.tracker),
        (
            "tracker, client sharing the hooked libssl",
            &figures.tracker_shared,
        ),
    ] {
        let (min, median, max) = stats(rates);
        let _ = writeln!(
            out,
            "| {name} | {median:.0} | {min:.0} | {max:.0} | {:.1}% |",
            (base - median) / base * 100.0
        );
    }
    let _ = writeln!(
        out,
        "\nWhat each program cost, as the kernel accounts it (`BPF_ENABLE_STATS`), in a run of {} requests (client on its own \
         copy; the traps themselves are not in these figures, only in the throughput above):\n",
        figures.requests
    );
    let _ = writeln!(
        out,
        "| program | runs per request | ns per run | ns per request |\n|---|---|---|---|"
    );
    let requests = figures.requests.max(1) as f64;
    let mut total = 0.0;
    for program in &figures.programs {
        let per_request = program.nanos as f64 / requests;
        total += per_request;
        let _ = writeln!(
            out,
            "| `{}` | {:.2} | {} | {per_request:.0} |",
            program.name,
            program.runs as f64 / requests,
            program.nanos / program.runs.max(1)
        );
    }
    let _ = writeln!(out, "| all | | | {total:.0} |");
    out
}
