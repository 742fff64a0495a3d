//! HTTP/2 streams at the protocol's edges with nginx as its service runs it (daemon mode,
//! h2c): a reload with streams in flight (its graceful GOAWAY) and the rapid-reset pattern,
//! each counted as nginx itself counts it.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http2::{preface, push_get, push_reset};
use crate::nginx_service::NginxService;
use crate::support::{Daemon, free_port, max, patience, run_client, slow_backend, slowdown, sum};

const INTERVAL: &str = "0.5";
const GOAWAY: u8 = 7;
const HEADERS: u8 = 1;

/// One frame as read: (type, stream id).
fn read_frame(stream: &mut TcpStream) -> Option<(u8, u32)> {
    let mut header = [0u8; 9];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(error) if error.kind() == ErrorKind::UnexpectedEof => return None,
        Err(error) => panic!("reading a frame from nginx: {error}"),
    }
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; length];
    stream
        .read_exact(&mut payload)
        .expect("reading a frame's payload");
    Some((header[3], stream_id))
}

/// Reports for `listener` until its one connection has closed.
fn reports_until_closed(daemon: &mut Daemon, listener: &str) -> Vec<Value> {
    let closed = std::cell::Cell::new(0);
    daemon.reports_until(listener, |report| {
        closed.set(closed.get() + report["closed"].as_u64().unwrap());
        closed.get() >= 1 && report["curr"] == 0
    })
}

fn errors(reports: &[Value], kind: &str) -> u64 {
    reports
        .iter()
        .map(|report| report["errors"][kind].as_u64().unwrap())
        .sum()
}

/// nginx's own count of requests, from `stub_status` on `status_port` (the read counts itself).
fn nginx_requests(status_port: u16) -> u64 {
    let status = run_client(
        "curl",
        &["-sS", &format!("http://127.0.0.1:{status_port}/")],
    );
    let counts = status
        .lines()
        .nth(2)
        .unwrap_or_else(|| panic!("stub_status: {status}"));
    counts
        .split_whitespace()
        .nth(2)
        .and_then(|requests| requests.parse().ok())
        .unwrap_or_else(|| panic!("stub_status: {status}"))
}

/// A reload (`HUP`) while one h2c connection has 20 streams waiting on a slow backend: the old
/// worker sends a graceful GOAWAY and still answers them before it closes the connection. The
/// streams stay counted open from the GOAWAY until their answers (`peak_sessions` 20 in a
/// report wholly after the GOAWAY), each is one session, and none is lost.
#[test]
fn an_nginx_reload_keeps_the_streams_in_flight_counted_until_they_are_answered() {
    const STREAMS: u32 = 20;
    let delay = Duration::from_secs(3) * slowdown();
    let backend = slow_backend(delay);
    let port = free_port("127.0.0.1");
    let nginx = NginxService::start(
        &format!(
            "server {{ listen 127.0.0.1:{port} http2;
                location / {{ proxy_pass http://127.0.0.1:{}; }} }}",
            backend.port
        ),
        2,
        &[port],
    );
    let listener = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(&["--interval", INTERVAL, "--port", &port.to_string()]);

    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut out = preface();
    for n in 0..STREAMS {
        push_get(&mut out, 2 * n + 1);
    }
    client.write_all(&out).unwrap();
    let sent_at = Instant::now();
    let mut reports = daemon.reports_until(&listener, |report| {
        report["peak_sessions"] == u64::from(STREAMS)
    });

    std::thread::scope(|scope| {
        // Returns once the old workers have exited, after answering.
        let reload = scope.spawn(|| nginx.reload());
        loop {
            let (kind, _) = read_frame(&mut client).expect("a GOAWAY before nginx closes");
            assert_ne!(kind, HEADERS, "an answer came before the GOAWAY");
            if kind == GOAWAY {
                break;
            }
        }
        // The report after next covers only time after the GOAWAY.
        reports.push(daemon.next_report(&listener));
        let after_goaway = daemon.next_report(&listener);
        assert!(
            sent_at.elapsed() < delay,
            "the report came after the backend answered; raise the delay"
        );
        assert_eq!(
            after_goaway["peak_sessions"],
            u64::from(STREAMS),
            "the streams nginx still answers are open: {after_goaway}"
        );
        assert_eq!(after_goaway["curr"], 1, "{after_goaway}");
        reports.push(after_goaway);

        let mut answers = 0;
        while let Some((kind, _)) = read_frame(&mut client) {
            answers += u32::from(kind == HEADERS);
        }
        assert_eq!(answers, STREAMS, "nginx answered every stream, then closed");
        reload.join().expect("reloading nginx");
    });

    reports.extend(reports_until_closed(&mut daemon, &listener));
    assert_eq!(
        sum(&reports, "sessions"),
        f64::from(STREAMS),
        "{reports:#?}"
    );
    assert_eq!(
        max(&reports, "peak_sessions"),
        u64::from(STREAMS),
        "{reports:#?}"
    );
    assert_eq!(sum(&reports, "sessions_unknown"), 0.0, "{reports:#?}");
    assert_eq!(errors(&reports, "conns_lost"), 0, "{reports:#?}");
    assert_eq!(sum(&reports, "errs"), 0.0, "{reports:#?}");
    daemon.assert_no_ring_loss(&reports);
}

/// The rapid-reset pattern (CVE-2023-44487) against nginx: 3 writes of 1,000 streams each
/// opened and reset at once, each write read by nginx in one call (2,000 frames). nginx refuses
/// more than twice its stream concurrency of new streams in one read (its own mitigation), so
/// its concurrency is raised to let every stream through. nginx processes every one (its
/// `stub_status` counts them), and each is one session, the connection never unknown.
#[test]
fn rapid_reset_streams_are_counted_as_nginx_counts_them() {
    const WRITES: u32 = 3;
    const PER_WRITE: u32 = 1_000;
    let port = free_port("127.0.0.1");
    let status_port = free_port("127.0.0.1");
    let _nginx = NginxService::start(
        &format!(
            "server {{ listen 127.0.0.1:{port} http2; http2_max_concurrent_streams 1024;
                location / {{ return 200 \"ok\\n\"; }} }}
             server {{ listen 127.0.0.1:{status_port}; location / {{ stub_status; }} }}"
        ),
        1,
        &[port, status_port],
    );
    let listener = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(&["--interval", INTERVAL, "--port", &port.to_string()]);

    let before = nginx_requests(status_port);
    let mut status_reads = 0;
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(&preface()).unwrap();
    for write in 0..WRITES {
        let mut out = Vec::new();
        for n in 0..PER_WRITE {
            let stream_id = 2 * (write * PER_WRITE + n) + 1;
            push_get(&mut out, stream_id);
            push_reset(&mut out, stream_id);
        }
        client.write_all(&out).unwrap();
        // One write at a time, as a client paced by the server's reads would.
        let target = before + u64::from((write + 1) * PER_WRITE);
        let deadline = Instant::now() + patience();
        loop {
            status_reads += 1;
            if nginx_requests(status_port) >= target + status_reads {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not process write {write}"
            );
        }
    }
    drop(client);
    let processed = nginx_requests(status_port) - before - status_reads - 1;
    assert_eq!(
        processed,
        u64::from(WRITES * PER_WRITE),
        "nginx's own count"
    );

    let reports = reports_until_closed(&mut daemon, &listener);
    assert_eq!(sum(&reports, "sessions"), processed as f64, "{reports:#?}");
    assert_eq!(sum(&reports, "sessions_unknown"), 0.0, "{reports:#?}");
    assert_eq!(sum(&reports, "sessions_untracked"), 0.0, "{reports:#?}");
    daemon.assert_no_ring_loss(&reports);
}
