//! Busy time and sessions against unmodified servers: Debian's nginx-light driven by h2load
//! (HTTP/2 cleartext, prior knowledge), wrk and curl (HTTP/1.1).

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use crate::support::{Daemon, Nginx, free_port, max, run_client, slow_backend, slowdown, sum};

const INTERVAL: &str = "0.5";

fn assert_clean(daemon: &mut Daemon, reports: &[serde_json::Value]) {
    for report in reports {
        assert_eq!(report["errs"], 0, "unexpected errors: {report}");
        assert_eq!(report["sessions_unknown"], 0, "sessions unknown: {report}");
    }
    daemon.assert_no_ring_loss(reports);
}

/// Reports for `listener` until `connections` have closed and nothing is open.
fn reports_until_closed(
    daemon: &mut Daemon,
    listener: &str,
    connections: u64,
) -> Vec<serde_json::Value> {
    let closed = std::cell::Cell::new(0);
    daemon.reports_until(listener, |report| {
        closed.set(closed.get() + report["closed"].as_u64().unwrap());
        closed.get() >= connections && report["curr"] == 0
    })
}

/// Starts the daemon with `args`, with `--hooks <kind>` if `forced`; None where this kernel
/// lacks that kind of hook (the daemon's refusal was checked, see `Daemon::start_forced`).
fn start_daemon(forced: Option<&str>, args: &[&str]) -> Option<Daemon> {
    match forced {
        None => Some(Daemon::start(args)),
        Some(kind) => Daemon::start_forced(kind, args).ok(),
    }
}

#[test]
fn h2load_streams_through_nginx_h2c_give_peak_sessions_per_connection() {
    h2load_streams_through_nginx_h2c(None);
}

#[test]
fn h2load_streams_through_nginx_h2c_through_the_tracepoint_path() {
    h2load_streams_through_nginx_h2c(Some("tracepoint"));
}

#[test]
fn h2load_streams_through_nginx_h2c_through_the_kprobe_path() {
    h2load_streams_through_nginx_h2c(Some("kprobe"));
}

#[test]
fn h2load_streams_through_nginx_h2c_through_the_fentry_path() {
    h2load_streams_through_nginx_h2c(Some("fentry"));
}

fn h2load_streams_through_nginx_h2c(forced: Option<&str>) {
    const CONNECTIONS: u64 = 2;
    const STREAMS: u64 = 10;
    // Each response is held 300 ms by the backend, so the streams of a connection overlap;
    // longer on a slower machine, so that the proxying around it stays small against it.
    let hold = Duration::from_millis(300) * slowdown();
    let backend = slow_backend(hold);
    let backend_port = backend.port;
    let port = free_port("127.0.0.1");
    let _nginx = Nginx::start(
        &format!(
            "server {{ listen 127.0.0.1:{port} http2;
                location / {{ proxy_pass http://127.0.0.1:{backend_port}; }} }}"
        ),
        &[port],
    );
    let Some(mut daemon) = start_daemon(
        forced,
        &["--interval", INTERVAL, "--port", &port.to_string()],
    ) else {
        return;
    };

    let requests = (CONNECTIONS * STREAMS * 2).to_string();
    let output = run_client(
        "h2load",
        &[
            "-n",
            &requests,
            "-c",
            &CONNECTIONS.to_string(),
            "-m",
            &STREAMS.to_string(),
            &format!("http://127.0.0.1:{port}/slow"),
        ],
    );
    assert!(
        output.contains(&format!("{requests} succeeded")),
        "{output}"
    );

    let reports = reports_until_closed(&mut daemon, &format!("127.0.0.1:{port}"), CONNECTIONS);
    assert_eq!(sum(&reports, "opened"), CONNECTIONS as f64, "{reports:#?}");
    assert_eq!(max(&reports, "peak"), CONNECTIONS, "{reports:#?}");
    assert_eq!(max(&reports, "peak_sessions"), STREAMS, "{reports:#?}");
    assert_eq!(max(&reports, "busy_peak"), CONNECTIONS, "{reports:#?}");
    // Each connection is busy for at least two rounds of the hold (20 requests, 10 at a
    // time, each next one sent as one completes) and at most for the whole run as h2load
    // timed it. On a fast host the two are within milliseconds; under emulation nginx's
    // proxying adds whole fractions of a second that belong to the busy time too.
    let service = CONNECTIONS as f64 * 2.0 * hold.as_secs_f64();
    let run = CONNECTIONS as f64 * h2load_elapsed(&output);
    let busy = sum(&reports, "active_for_s");
    // Each report rounds its busy time to 0.1 s.
    let rounding = 0.05 * reports.iter().filter(|r| r["active_for_s"] != 0.0).count() as f64;
    assert!(
        busy >= service * 0.95 - rounding && busy <= run * 1.05 + rounding,
        "activeFor {busy}, expected between {service} (service) and {run} (h2load's run) \
         ± {rounding} (rounding): {reports:#?}"
    );
    assert_clean(&mut daemon, &reports);
}

/// The run's duration from h2load's summary line (`finished in 612.31ms, ...`), in seconds.
fn h2load_elapsed(output: &str) -> f64 {
    let elapsed = output
        .lines()
        .find_map(|line| line.strip_prefix("finished in "))
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no duration in h2load's output: {output}"));
    let (number, scale) = if let Some(ms) = elapsed.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(us) = elapsed.strip_suffix("us") {
        (us, 1e-6)
    } else {
        (elapsed.strip_suffix('s').unwrap_or(elapsed), 1.0)
    };
    number.parse::<f64>().expect("h2load's duration") * scale
}

#[test]
fn many_fast_http2_streams_are_balanced() {
    many_fast_http2_streams(None, &[]);
}

#[test]
fn many_fast_http2_streams_are_balanced_through_the_classic_tracepoints() {
    many_fast_http2_streams(Some("tracepoint"), &["--classic-tracepoints"]);
}

#[test]
fn many_fast_http2_streams_are_balanced_through_the_kprobe_path() {
    many_fast_http2_streams(Some("kprobe"), &[]);
}

#[test]
fn many_fast_http2_streams_are_balanced_through_the_fentry_path() {
    many_fast_http2_streams(Some("fentry"), &[]);
}

fn many_fast_http2_streams(forced: Option<&str>, extra_args: &[&str]) {
    let port = free_port("127.0.0.1");
    let _nginx = Nginx::start(
        &format!(
            "server {{ listen 127.0.0.1:{port} http2; location / {{ return 200 \"hi\\n\"; }} }}"
        ),
        &[port],
    );
    let port_text = port.to_string();
    let mut args = vec!["--interval", INTERVAL, "--port", &port_text];
    args.extend_from_slice(extra_args);
    let Some(mut daemon) = start_daemon(forced, &args) else {
        return;
    };
    let output = run_client(
        "h2load",
        &[
            "-n",
            "4000",
            "-c",
            "4",
            "-m",
            "20",
            &format!("http://127.0.0.1:{port}/"),
        ],
    );
    assert!(output.contains("4000 succeeded"), "{output}");
    let reports = reports_until_closed(&mut daemon, &format!("127.0.0.1:{port}"), 4);
    assert_eq!(sum(&reports, "opened"), 4.0, "{reports:#?}");
    let peak_sessions = max(&reports, "peak_sessions");
    assert!((1..=20).contains(&peak_sessions), "{reports:#?}");
    // Every stream that opened also ended: no conns_lost or negative_concurrency errors.
    assert_clean(&mut daemon, &reports);
}

#[test]
fn http1_requests_from_wrk_and_curl_are_one_session_at_a_time() {
    let port = free_port("127.0.0.1");
    let _nginx = Nginx::start(
        &format!("server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hi\\n\"; }} }}"),
        &[port],
    );
    let listener = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(&["--interval", INTERVAL, "--port", &port.to_string()]);

    // curl: three requests over one keep-alive connection.
    let url = format!("http://127.0.0.1:{port}/");
    let body = run_client("curl", &["-s", &url, &url, &url]);
    assert_eq!(body, "hi\nhi\nhi\n");
    let reports = reports_until_closed(&mut daemon, &listener, 1);
    assert_eq!(sum(&reports, "opened"), 1.0, "{reports:#?}");
    assert_eq!(max(&reports, "peak_sessions"), 1, "{reports:#?}");
    assert_clean(&mut daemon, &reports);

    // wrk: four keep-alive connections for a second (wrk also opens one short connection of
    // its own first, to check the target).
    let output = run_client("wrk", &["-t", "2", "-c", "4", "-d", "1s", &url]);
    assert!(output.contains("requests in"), "{output}");
    let reports = reports_until_closed(&mut daemon, &listener, 4);
    let opened = sum(&reports, "opened");
    assert!(opened == 4.0 || opened == 5.0, "{reports:#?}");
    assert_eq!(sum(&reports, "closed"), opened, "{reports:#?}");
    assert!(max(&reports, "peak") >= 4, "{reports:#?}");
    assert_eq!(max(&reports, "peak_sessions"), 1, "{reports:#?}");
    assert!(sum(&reports, "active_for_s") > 0.0, "{reports:#?}");
    assert_clean(&mut daemon, &reports);
}

#[test]
fn tls_and_unknown_protocols_report_unknown_sessions() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut daemon = Daemon::start(&["--interval", INTERVAL, "--port", &addr.port().to_string()]);

    // A TLS ClientHello record header, and a protocol that is not HTTP.
    let mut clients = Vec::new();
    for first_bytes in [
        &b"\x16\x03\x01\x00\x05hello"[..],
        b"SSH-2.0-OpenSSH_9.2\r\n",
    ] {
        let mut client = TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(first_bytes).unwrap();
        let mut received = vec![0u8; first_bytes.len()];
        std::io::Read::read_exact(&mut server, &mut received).unwrap();
        clients.push((client, server));
    }
    let reports = daemon.reports_until(&addr.to_string(), |report| report["sessions_unknown"] == 2);
    assert_eq!(max(&reports, "peak_sessions"), 0);
    assert_eq!(reports.last().unwrap()["errs"], 0);
    drop(clients);
}
