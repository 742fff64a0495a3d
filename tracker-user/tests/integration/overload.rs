//! A daemon under pressure from outside: a reader that stops reading its reports, a daemon
//! stopped while connections churn or open.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::prometheus::http_get;
use crate::support::{Conn, Daemon, Nginx, connect_many, free_port, max, patience, slowdown, sum};
use crate::{assert_conn_for_matches, assert_seconds_match, request_serially};

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

/// nginx answering every request on `port` with a few bytes, and its status page on
/// `status_port`.
pub(crate) fn nginx_with_status(port: u16, status_port: u16) -> Nginx {
    Nginx::start(
        &format!(
            "server {{ listen 127.0.0.1:{port}; location / {{ return 200 ok; }} }}
             server {{ listen 127.0.0.1:{status_port}; location /status {{ stub_status; }} }}"
        ),
        &[port, status_port],
    )
}

/// One line per report, for a failure's message.
fn brief(reports: &[Value]) -> String {
    reports
        .iter()
        .map(|r| {
            format!(
                "t={} interval={} curr={} opened={} closed={} lost={} corrections={}",
                r["time"],
                r["interval_s"],
                r["curr"],
                r["opened"],
                r["closed"],
                r["lost_events"],
                r["corrections"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Requests on connections of their own from two threads while `during` runs.
fn churn_while<T>(port: u16, during: impl FnOnce() -> T) -> (T, u64) {
    let churning = AtomicBool::new(true);
    let requests = AtomicU64::new(0);
    let result = thread::scope(|scope| {
        // Stops the clients however `during` ends: a failure must not leave the scope
        // waiting for them for ever.
        let _stop = StopOnDrop(&churning);
        for _ in 0..2 {
            scope.spawn(|| {
                while churning.load(Ordering::Relaxed) {
                    one_request(port);
                    requests.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        during()
    });
    (result, requests.into_inner())
}

/// nginx with its status page, a daemon watching nginx's port, and where counting starts.
struct Scene {
    _nginx: Nginx,
    port: u16,
    status_port: u16,
    listener: String,
    daemon: Daemon,
    /// Reports so far: the first is the one counting starts after.
    reports: Vec<Value>,
    /// nginx's accepts when counting started.
    accepts_before: u64,
}

impl Scene {
    /// Starts nginx, then the daemon with `--port <nginx's> args`, and waits for a report with
    /// nothing open (nginx's start-up probes are over): counting starts after it.
    fn start(args: &[&str]) -> Self {
        Self::start_logging("info", args)
    }

    /// Like [`Scene::start`], the daemon logging at `level`.
    fn start_logging(level: &str, args: &[&str]) -> Self {
        let port = free_port("127.0.0.1");
        let status_port = free_port("127.0.0.1");
        let nginx = nginx_with_status(port, status_port);
        let listener = format!("127.0.0.1:{port}");
        let port_arg = port.to_string();
        let mut all_args = vec!["--port", port_arg.as_str()];
        all_args.extend_from_slice(args);
        let mut daemon = Daemon::start_with_log_level("json", level, &all_args);
        let start = daemon
            .reports_until(&listener, |r| r["curr"] == 0)
            .pop()
            .unwrap();
        Self {
            _nginx: nginx,
            port,
            status_port,
            listener,
            daemon,
            reports: vec![start],
            accepts_before: nginx_accepts(status_port),
        }
    }

    /// Connections nginx accepted on its port since counting started, checked against the
    /// clients' own count.
    fn accepted_since_start(&self, requests: u64) -> u64 {
        // Less the status request itself.
        let accepted = nginx_accepts(self.status_port) - self.accepts_before - 1;
        assert_eq!(
            accepted, requests,
            "the test's own premise: nginx took every request"
        );
        accepted
    }

    /// The reports since counting started.
    fn counted(&self) -> &[Value] {
        &self.reports[1..]
    }
}

/// Scrapes `/metrics` every 100 ms for `period`, each answer checked: the longest a scrape
/// took.
fn slowest_scrape_for(period: Duration, metrics_port: u16) -> Duration {
    let over = Instant::now() + period;
    let mut slowest = Duration::ZERO;
    while Instant::now() < over {
        let started = Instant::now();
        let (code, body) = http_get(metrics_port, "/metrics").expect("scraping /metrics");
        assert_eq!(code, 200, "{body}");
        slowest = slowest.max(started.elapsed());
        thread::sleep(Duration::from_millis(100));
    }
    slowest
}

#[test]
fn a_stopped_daemon_still_counts_every_connection_opened_and_closed() {
    // A 4 KiB ring holds about 40 events: stopped for 3 s under churn, the daemon certainly
    // loses most of the opens and closes.
    let mut scene = Scene::start(&["--interval", "0.5", "--ring-bytes", "4096"]);
    let ((), requests) = churn_while(scene.port, || {
        scene.daemon.pause();
        // The stop itself is the scenario: the kernel goes on for 3 s without the daemon.
        thread::sleep(Duration::from_secs(3));
        scene.daemon.resume();
    });
    let accepted = scene.accepted_since_start(requests) as f64;

    // Every connection has closed on the client's side; the kernel finishes the server's side
    // within moments, and the counts must then reach nginx's exactly, with the model
    // reconciled to nothing open.
    let deadline = Instant::now() + patience();
    loop {
        let report = scene.daemon.next_report(&scene.listener);
        scene.reports.push(report);
        let counted = scene.counted();
        if sum(counted, "opened") == accepted
            && sum(counted, "closed") == accepted
            && counted.last().unwrap()["curr"] == 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nginx accepted {accepted}; the reports:\n{}",
            brief(counted)
        );
    }
    assert!(
        sum(scene.counted(), "lost_events") > 0.0,
        "no event lost: the stop tested nothing\n{}",
        brief(scene.counted())
    );
}

#[test]
fn a_stalled_report_reader_costs_no_events_and_no_scrapes() {
    const STALL: Duration = Duration::from_secs(10);
    let metrics_port = free_port("127.0.0.1");
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut scene = Scene::start(&["--interval", "0.05", "--prometheus", &metrics_addr]);

    scene.daemon.stop_reading_reports();
    let (slowest_scrape, requests) =
        churn_while(scene.port, || slowest_scrape_for(STALL, metrics_port));
    let churn_over = unix_now();
    let accepted = scene.accepted_since_start(requests) as f64;
    assert!(
        scene
            .daemon
            .log_until_now()
            .contains("the report output is not being read"),
        "stdout never filled up: the stall tested nothing"
    );
    assert!(
        slowest_scrape < Duration::from_secs(1) * slowdown(),
        "a scrape took {slowest_scrape:?} while stdout was not read"
    );

    scene.daemon.read_reports_again();
    let listener = scene.listener.clone();
    let after = scene.daemon.reports_until(&listener, |r| {
        r["time"].as_f64().unwrap() > churn_over && r["curr"] == 0
    });
    scene.reports.extend(after);
    let reports = scene.counted();
    let merged = reports
        .iter()
        .filter(|r| r["interval_s"].as_f64().unwrap() > 0.5)
        .count();
    assert!(
        merged > 0,
        "no report covers the stall:\n{}",
        brief(reports)
    );
    assert_eq!(sum(reports, "lost_events"), 0.0, "{}", brief(reports));
    assert_eq!(sum(reports, "opened"), accepted, "{}", brief(reports));
    assert_eq!(sum(reports, "closed"), accepted, "{}", brief(reports));
}

#[test]
fn a_stalled_log_reader_costs_log_lines_not_scrapes_or_counts() {
    const STALL: Duration = Duration::from_secs(10);
    let metrics_port = free_port("127.0.0.1");
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    // At debug level every report logs a line: 20 a second, plenty to fill a stderr nobody
    // reads. A 4 KiB ring loses events under churn too, which logs more.
    let mut scene = Scene::start_logging(
        "debug",
        &[
            "--interval",
            "0.05",
            "--ring-bytes",
            "4096",
            "--prometheus",
            &metrics_addr,
        ],
    );

    let log_before = scene.daemon.log_until_now().len();
    scene.daemon.stop_reading_log();
    let (slowest_scrape, requests) =
        churn_while(scene.port, || slowest_scrape_for(STALL, metrics_port));
    let accepted = scene.accepted_since_start(requests) as f64;
    assert!(
        slowest_scrape < Duration::from_secs(1) * slowdown(),
        "a scrape took {slowest_scrape:?} while stderr was not read"
    );
    scene.daemon.read_log_again();

    let deadline = Instant::now() + patience();
    loop {
        let report = scene.daemon.next_report(&scene.listener);
        scene.reports.push(report);
        let counted = scene.counted();
        if sum(counted, "opened") == accepted && counted.last().unwrap()["curr"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nginx accepted {accepted}; the reports:\n{}",
            brief(counted)
        );
    }
    // What the daemon logged meanwhile could not all fit in the pipe: a daemon that wrote its
    // log itself would have waited for the reader.
    let logged = scene.daemon.log_until_now().len() - log_before;
    assert!(
        logged > 4096,
        "only {logged} bytes logged: the stall tested nothing"
    );
}

/// Connections opened while the daemon is stopped and its ring overflows are never seen open
/// by it; their connection time still runs from their open, as the kernel stamped it.
#[test]
fn connection_time_runs_from_the_open_for_connections_whose_events_were_lost() {
    const CONNECTIONS: usize = 200;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let port = addr.port().to_string();
    // A 4 KiB ring holds about 40 events: most of the opens are lost.
    let mut daemon = Daemon::start(&["--interval", "0.5", "--ring-bytes", "4096", "--port", &port]);
    daemon.pause();
    let conns = connect_many(&listener, addr, CONNECTIONS);
    // The connections must live a while unseen for the test to tell their time from the time
    // since the daemon found them.
    thread::sleep(Duration::from_secs(2));
    daemon.resume();
    let name = addr.to_string();
    let mut reports = daemon.reports_until(&name, |report| report["curr"] == CONNECTIONS);
    let lifetimes: Duration = conns.into_iter().map(Conn::close).sum();
    reports.extend(daemon.reports_until(&name, |report| report["curr"] == 0));
    assert!(
        sum(&reports, "lost_events") > 0.0,
        "no event lost: the stop tested nothing"
    );
    assert_eq!(sum(&reports, "opened"), CONNECTIONS as f64);
    assert_eq!(sum(&reports, "closed"), CONNECTIONS as f64);
    assert_conn_for_matches(&reports, lifetimes);
}

#[test]
fn the_peak_is_the_kernels_when_the_events_of_its_connections_were_lost() {
    // A 4 KiB ring holds about 40 events: of these connections' opens and closes, made while
    // the daemon is stopped, most are lost. The model's peak, built from events, then falls
    // short; the kernel's gauge saw every one.
    const HELD: usize = 200;
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a listener");
    let target = listener.local_addr().unwrap();
    let (reports, brief) = through_a_stop(target, &["peak", "curr", "opened", "closed"], || {
        let conns = connect_many(&listener, target, HELD);
        for conn in conns {
            conn.close();
        }
    });
    assert_eq!(sum(&reports, "opened"), HELD as f64, "{brief}");
    assert_eq!(max(&reports, "peak"), HELD as u64, "{brief}");
}

#[test]
fn busy_time_is_the_kernels_when_the_events_of_its_turns_were_lost() {
    // Every request takes SERVICE, all while the daemon is stopped: most opens, turns and
    // closes are lost. The server's own clock says how long it was busy.
    const CONNECTIONS: usize = 40;
    const REQUESTS: usize = 3;
    const SERVICE: Duration = Duration::from_millis(50);
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a listener");
    let target = listener.local_addr().unwrap();
    let mut served = Duration::ZERO;
    let fields = ["active_for_s", "busy", "busy_peak", "closed"];
    let (reports, brief) = through_a_stop(target, &fields, || {
        served = thread::scope(|scope| {
            let server = scope.spawn(|| serve_lines_timed(&listener, CONNECTIONS, SERVICE));
            for _ in 0..CONNECTIONS {
                scope.spawn(move || {
                    let stream = TcpStream::connect(target).expect("connecting");
                    request_serially(stream, REQUESTS);
                });
            }
            server.join().expect("the server")
        });
    });
    assert_eq!(sum(&reports, "closed"), CONNECTIONS as f64, "{brief}");
    assert!(served >= SERVICE * (CONNECTIONS * REQUESTS) as u32);
    assert_seconds_match(&reports, "active_for_s", served);
    assert_eq!(reports.last().unwrap()["busy"], 0, "{brief}");
}

/// The reports of the listener at `target` around `load`, which runs while the daemon (behind
/// a 4 KiB ring, which holds about 40 events) is stopped, until its connections have closed;
/// with `fields` of each, one report a line, for messages. Events must have been lost.
fn through_a_stop(
    target: SocketAddr,
    fields: &[&str],
    load: impl FnOnce(),
) -> (Vec<Value>, String) {
    let name = target.to_string();
    let port = target.port().to_string();
    let mut daemon = Daemon::start(&["--port", &port, "--interval", "0.5", "--ring-bytes", "4096"]);
    let mut reports = daemon.reports_until(&name, |r| r["curr"] == 0);
    daemon.pause();
    load();
    daemon.resume();
    reports.extend(daemon.reports_until(&name, |r| {
        r["closed"].as_u64().unwrap() > 0 && r["curr"] == 0
    }));
    let brief = reports
        .iter()
        .map(|r| {
            fields
                .iter()
                .chain(&["lost_events"])
                .map(|field| format!("{field}={}", r[*field]))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        sum(&reports, "lost_events") > 0.0,
        "no event lost: the stop tested nothing\n{brief}"
    );
    (reports, brief)
}

/// A blocking server of `connections` connections that spends `service` per request (reads
/// one line, sleeps, answers), timing each request from its read to its answer's write: the
/// busy time it had, by its own clock.
fn serve_lines_timed(listener: &TcpListener, connections: usize, service: Duration) -> Duration {
    thread::scope(|scope| {
        let servers: Vec<_> = (0..connections)
            .map(|_| {
                let (stream, _) = listener.accept().expect("accepting");
                scope.spawn(move || {
                    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    let mut line = String::new();
                    let mut busy = Duration::ZERO;
                    while std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) > 0 {
                        let read = Instant::now();
                        thread::sleep(service);
                        writer.write_all(b"done\n").unwrap();
                        busy += read.elapsed();
                        line.clear();
                    }
                    busy
                })
            })
            .collect();
        servers
            .into_iter()
            .map(|server| server.join().expect("a connection's server"))
            .sum()
    })
}
