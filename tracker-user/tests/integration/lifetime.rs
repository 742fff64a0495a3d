//! Connection lives as the server sees them, from its accept to its close: compared with
//! nginx's own `stub_status` and with a server that records its own accept and close times.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::assert_conn_for_matches;
use crate::overload::nginx_with_status;
use crate::prometheus::http_get;
use crate::support::{Daemon, free_port, max, note_for_this_kernel, run_client, slowdown, sum};

/// nginx's `stub_status` page, its own request included (it is accepted, reading done, and
/// being written).
#[derive(Debug, Clone, Copy)]
struct NginxStatus {
    active: u64,
    accepts: u64,
    handled: u64,
    requests: u64,
    reading: u64,
    writing: u64,
}

impl NginxStatus {
    fn read(status_port: u16) -> Self {
        let (code, body) = http_get(status_port, "/status").expect("asking nginx for its status");
        assert_eq!(code, 200, "{body}");
        // "Active connections: 1 \nserver accepts handled requests\n 5 5 5 \n
        //  Reading: 0 Writing: 1 Waiting: 0 \n"
        let numbers: Vec<u64> = body
            .split_whitespace()
            .filter_map(|word| word.parse().ok())
            .collect();
        let [
            active,
            accepts,
            handled,
            requests,
            reading,
            writing,
            _waiting,
        ] = numbers[..]
        else {
            panic!("not a stub_status page: {body:?}");
        };
        Self {
            active,
            accepts,
            handled,
            requests,
            reading,
            writing,
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs_f64()
}

/// Whether `report` was made after `instant` (seconds since the Unix epoch).
fn made_after(report: &Value, instant: f64) -> bool {
    report["time"].as_f64().is_some_and(|made| made > instant)
}

/// Whether the daemon's lives start at the accept on this kernel, from its report, checked
/// against the accept hook it names.
fn lives_from_accept(report: &Value) -> bool {
    let from_accept = report["life_from"] == "accept";
    let exact_hook = report["hooks"]["accept"]
        .as_str()
        .is_some_and(|hook| hook.ends_with("security_sock_graft"));
    assert_eq!(from_accept, exact_hook, "{report}");
    assert!(
        from_accept || report["life_from"] == "handshake",
        "{report}"
    );
    from_accept
}

/// Under churn and under keep-alive, tracker's opened and closed are nginx's accepts and
/// handled and its sessions nginx's requests, and whenever traffic pauses its curr is nginx's
/// Active and its busy count nginx's Reading + Writing (the status requests left out of
/// nginx's figures).
#[test]
fn nginx_counts_agree_with_stub_status_under_churn_and_keep_alive() {
    const HELD: u64 = 3;
    let port = free_port("127.0.0.1");
    let status_port = free_port("127.0.0.1");
    let _nginx = nginx_with_status(port, status_port);
    let name = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(&["--interval", "0.5", "--port", &port.to_string()]);
    daemon.reports_until(&name, |report| report["curr"] == 0);
    let before = NginxStatus::read(status_port);
    let agree_at_pause = |daemon: &mut Daemon, reports: &mut Vec<Value>| {
        // Reports still in the pipe were made while the client ran. Traffic has paused once a
        // whole interval made since opened and closed nothing with the accept queue empty
        // (under emulation nginx still works through its queue after wrk exits).
        let client_done = unix_now();
        let settled = daemon.reports_until(&name, |report| {
            made_after(report, client_done)
                && report["curr"] == HELD
                && report["accept_queue"] == 0
                && report["opened"] == 0
                && report["closed"] == 0
        });
        reports.extend(settled);
        let status = NginxStatus::read(status_port);
        let status_read = unix_now();
        let since = daemon.reports_until(&name, |report| made_after(report, status_read));
        let report = since.last().unwrap().clone();
        assert_eq!(report["curr"], status.active - 1, "{status:?} {report}");
        assert_eq!(
            report["busy"],
            status.reading + status.writing - 1,
            "{status:?} {report}"
        );
        reports.extend(since);
        status
    };

    let mut reports = Vec::new();
    let held: Vec<TcpStream> = (0..HELD)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connecting to nginx"))
        .collect();
    agree_at_pause(&mut daemon, &mut reports);
    let url = format!("http://127.0.0.1:{port}/");
    let seconds = format!("{}s", slowdown());
    run_client(
        "wrk",
        &[
            "-t",
            "2",
            "-c",
            "8",
            "-d",
            &seconds,
            "-H",
            "Connection: close",
            &url,
        ],
    );
    let after_churn = agree_at_pause(&mut daemon, &mut reports);
    run_client("wrk", &["-t", "2", "-c", "8", "-d", &seconds, &url]);
    let after_keep_alive = agree_at_pause(&mut daemon, &mut reports);
    drop(held);
    reports.extend(daemon.reports_until(&name, |report| report["curr"] == 0));
    let after = NginxStatus::read(status_port);

    // Each status request counts itself and the ones before it on the status port.
    let status_requests = 4;
    let accepted = after.accepts - before.accepts - status_requests;
    let handled = after.handled - before.handled - status_requests;
    let requests = after.requests - before.requests - status_requests;
    assert!(
        accepted > HELD + 16 && after_keep_alive.accepts > after_churn.accepts,
        "the test's own premise: wrk made connections ({accepted})"
    );
    assert_eq!(sum(&reports, "opened"), accepted as f64, "{reports:#?}");
    assert_eq!(sum(&reports, "closed"), handled as f64, "{reports:#?}");
    assert_eq!(sum(&reports, "sessions"), requests as f64, "{reports:#?}");
    for report in &reports {
        assert_eq!(report["errs"], 0, "{report}");
        assert_eq!(report["corrections"], 0, "{report}");
    }
}

/// What a server recorded of its own connections: when it accepted and when it closed each.
#[derive(Default)]
struct ServerLog {
    lives: Vec<(Instant, Instant)>,
}

impl ServerLog {
    /// Most connections held at once: the accepts and closes in time order (a close first
    /// where they tie: one thread closes before it accepts again).
    fn peak(&self) -> u64 {
        let mut edges: Vec<(Instant, i64)> = self
            .lives
            .iter()
            .flat_map(|&(accepted, closed)| [(accepted, 1), (closed, -1)])
            .collect();
        edges.sort();
        let mut held = 0i64;
        let mut peak = 0i64;
        for (_, change) in edges {
            held += change;
            peak = peak.max(held);
        }
        peak as u64
    }

    fn connection_time(&self) -> Duration {
        self.lives
            .iter()
            .map(|&(accepted, closed)| closed - accepted)
            .sum()
    }
}

/// `workers` threads that each accept a connection, read its request, take `work` over it,
/// answer, and close it, logging when they accepted and closed; until `connections` are served.
fn serve(listener: &TcpListener, workers: usize, connections: usize, work: Duration) -> ServerLog {
    let log = Mutex::new(ServerLog::default());
    // Each accept is claimed first, so that no worker waits for a connection that never comes.
    let claimed = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while claimed.fetch_add(1, Ordering::Relaxed) < connections {
                    let (mut stream, _) = listener.accept().expect("accepting");
                    let accepted = Instant::now();
                    let mut request = [0u8; 64];
                    let _ = stream.read(&mut request).expect("reading the request");
                    thread::sleep(work);
                    stream.write_all(b"done").expect("answering");
                    let closed = Instant::now();
                    drop(stream);
                    log.lock().unwrap().lives.push((accepted, closed));
                }
            });
        }
    });
    log.into_inner().unwrap()
}

/// Clients in bursts make connections faster than two workers take them, so most wait in the
/// accept queue. Where lives start at the accept, tracker's peak is the server's own (two) and
/// its connection-seconds the server's; where they start at the handshake, the queue's time
/// is in them too.
#[test]
fn lives_match_a_server_that_records_its_own_accepts_and_closes() {
    const WORKERS: usize = 2;
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 10;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let name = addr.to_string();
    let mut daemon = Daemon::start(&["--interval", "0.5", "--port", &addr.port().to_string()]);
    let first = daemon.next_report(&name);
    let from_accept = lives_from_accept(&first);

    let work = Duration::from_millis(20);
    let log = thread::scope(|scope| {
        for _ in 0..CLIENTS {
            scope.spawn(move || {
                for _ in 0..PER_CLIENT {
                    request(addr);
                }
            });
        }
        serve(&listener, WORKERS, CLIENTS * PER_CLIENT, work)
    });
    let mut reports = vec![first];
    let connections = (CLIENTS * PER_CLIENT) as f64;
    // Reports made while the clients ran are still to be read, and `curr` can touch 0 between
    // two accepts: wait for every close.
    let closed = std::cell::Cell::new(0.0);
    reports.extend(daemon.reports_until(&name, |report| {
        closed.set(closed.get() + report["closed"].as_f64().unwrap());
        closed.get() >= connections && report["curr"] == 0
    }));
    assert_eq!(sum(&reports, "opened"), connections, "{reports:#?}");
    assert_eq!(sum(&reports, "closed"), connections, "{reports:#?}");
    assert_eq!(log.peak(), WORKERS as u64, "the test's own premise");
    let tracker_peak = max(&reports, "peak");
    if from_accept {
        assert_eq!(tracker_peak, log.peak(), "{reports:#?}");
        assert_conn_for_matches(&reports, log.connection_time());
    } else {
        note_for_this_kernel(
            "no accept hook that sees every accept: lives start at the handshake, so the \
             accept queue's time and length are in them",
        );
        assert!(
            tracker_peak > log.peak(),
            "the queue is counted: {reports:#?}"
        );
        assert!(
            sum(&reports, "conn_for_s") > log.connection_time().as_secs_f64(),
            "{reports:#?}"
        );
    }
    for report in &reports {
        assert_eq!(report["errs"], 0, "{report}");
    }
}

/// One request on a connection of its own, read to its end.
fn request(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).expect("connecting");
    stream.write_all(b"work").expect("sending the request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("reading the answer");
    assert_eq!(answer, b"done");
}
