//! A daemon under pressure from outside: a reader that stops reading its reports.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::prometheus::http_get;
use crate::support::{Daemon, Nginx, free_port, slowdown, sum};

/// nginx's own count of the connections it accepted (stub_status's "accepts"), itself
/// included: the status request is accepted before it is answered.
fn nginx_accepts(status_port: u16) -> u64 {
    let (code, body) = http_get(status_port, "/status").expect("asking nginx for its status");
    assert_eq!(code, 200, "{body}");
    // "Active connections: 1 \nserver accepts handled requests\n 5 5 5 \nReading: ..."
    body.lines()
        .nth(2)
        .and_then(|line| line.split_whitespace().next())
        .and_then(|accepts| accepts.parse().ok())
        .unwrap_or_else(|| panic!("not a stub_status page: {body:?}"))
}

/// One HTTP/1.0 request on a connection of its own (the server closes it).
fn one_request(port: u16) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to nginx");
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .expect("sending the request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("reading the response");
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn a_stalled_report_reader_costs_no_events_and_no_scrapes() {
    const STALL: Duration = Duration::from_secs(10);
    let port = free_port("127.0.0.1");
    let status_port = free_port("127.0.0.1");
    let _nginx = Nginx::start(
        &format!(
            "server {{ listen 127.0.0.1:{port}; location / {{ return 200 ok; }} }}
             server {{ listen 127.0.0.1:{status_port}; location /status {{ stub_status; }} }}"
        ),
        &[port, status_port],
    );
    let metrics_port = free_port("127.0.0.1");
    let listener = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(&[
        "--interval",
        "0.05",
        "--port",
        &port.to_string(),
        "--prometheus",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    // Counting starts at a report with nothing open: nginx's start-up probes are over.
    let mut reports = vec![
        daemon
            .reports_until(&listener, |r| r["curr"] == 0)
            .pop()
            .unwrap(),
    ];
    let accepts_before = nginx_accepts(status_port);

    daemon.stop_reading_reports();
    let churning = AtomicBool::new(true);
    let requests = AtomicU64::new(0);
    let slowest_scrape = thread::scope(|scope| {
        // Stops the clients however this closure ends: a failed scrape must not leave the
        // scope waiting for them for ever.
        let _stop = StopOnDrop(&churning);
        for _ in 0..2 {
            scope.spawn(|| {
                while churning.load(Ordering::Relaxed) {
                    one_request(port);
                    requests.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // Scrapes all along the stall: each must be answered while the output is stuck.
        let stall_over = Instant::now() + STALL;
        let mut slowest = Duration::ZERO;
        while Instant::now() < stall_over {
            let started = Instant::now();
            let (code, body) = http_get(metrics_port, "/metrics").expect("scraping /metrics");
            assert_eq!(code, 200, "{body}");
            slowest = slowest.max(started.elapsed());
            thread::sleep(Duration::from_millis(100));
        }
        slowest
    });
    let churn_over = unix_now();
    let requests = requests.into_inner();
    let accepted = nginx_accepts(status_port) - accepts_before - 1;
    assert_eq!(
        accepted, requests,
        "the test's own premise: nginx took every request"
    );
    assert!(
        daemon.has_logged("the report output is not being read")
            || daemon
                .log_until_now()
                .contains("the report output is not being read"),
        "stdout never filled up: the stall tested nothing"
    );
    assert!(
        slowest_scrape < Duration::from_secs(1) * slowdown(),
        "a scrape took {slowest_scrape:?} while stdout was not read"
    );

    daemon.read_reports_again();
    reports.extend(daemon.reports_until(&listener, |r| {
        r["time"].as_f64().unwrap() > churn_over && r["curr"] == 0
    }));
    let reports = &reports[1..];
    let merged = reports
        .iter()
        .filter(|r| r["interval_s"].as_f64().unwrap() > 0.5)
        .count();
    let context = || {
        let brief: Vec<String> = reports
            .iter()
            .map(|r: &Value| {
                format!(
                    "t={} interval={} opened={} closed={} lost={}",
                    r["time"], r["interval_s"], r["opened"], r["closed"], r["lost_events"]
                )
            })
            .collect();
        brief.join("\n")
    };
    assert!(merged > 0, "no report covers the stall:\n{}", context());
    assert_eq!(sum(reports, "lost_events"), 0.0, "{}", context());
    assert_eq!(sum(reports, "opened"), accepted as f64, "{}", context());
    assert_eq!(sum(reports, "closed"), accepted as f64, "{}", context());
}
