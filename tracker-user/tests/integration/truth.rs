//! Truth under real conditions: a daemon started after the server, events lost under a
//! connection storm, and a server that stops accepting.

use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{Daemon, connect_many, max, sum};

/// What the daemon logs when the kernel stops looking closes up by endpoints for adopted
/// connections, which every untracked socket's close pays while it does.
const NO_ADOPTED_LEFT: &str = "no adopted connection left open";

#[test]
fn connections_open_before_start_are_counted_from_the_first_report() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut conns = connect_many(&listener, addr, 5);
    let mut daemon = Daemon::start_with_log_level(
        "json",
        "info,tracker=debug",
        &["--interval", "0.5", "--port", &addr.port().to_string()],
    );

    let first = daemon.next_report(&addr.to_string());
    assert_eq!(first["curr"], 5, "{first}");
    assert_eq!(first["peak"], 5, "{first}");
    assert_eq!(first["pid"], std::process::id(), "{first}");
    // Their first bytes were missed: sessions are unknown, not guessed.
    assert_eq!(first["sessions_unknown"], 5, "{first}");

    for conn in conns.drain(..2) {
        conn.close();
    }
    let mut reports = daemon.reports_until(&addr.to_string(), |report| report["curr"] == 3);
    assert!(
        !daemon.log_until_now().contains(NO_ADOPTED_LEFT),
        "three adopted connections are still open"
    );
    for conn in conns.drain(..) {
        conn.close();
    }
    reports.extend(daemon.reports_until(&addr.to_string(), |report| report["curr"] == 0));
    // Their closes are all in: the kernel stops looking closes up by endpoints.
    daemon.wait_for_log(NO_ADOPTED_LEFT);
    assert_eq!(sum(&reports, "closed"), 5.0, "{reports:#?}");
    for report in &reports {
        assert_eq!(
            report["errs"], 0,
            "closes of adopted connections are not errors: {report}"
        );
        assert_eq!(
            report["corrections"], 0,
            "the kernel reported every close: {report}"
        );
    }
}

#[test]
fn counts_return_to_the_truth_within_an_interval_after_forced_loss() {
    const STORM: usize = 6_000;
    const HELD: usize = 20;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // No accept-queue overflow: every connect must make the server-side connection the
    // acceptor below waits for.
    crate::support::set_backlog(&listener, 4096);
    let addr = listener.local_addr().unwrap();
    // A 4 KiB ring holds about 40 events: a storm of short connections overflows it, all the
    // more with the daemon stopped meanwhile, and then the held connections' opens are
    // certainly lost too: only the comparison with the kernel's table can find them.
    let mut daemon = Daemon::start(&[
        "--interval",
        "0.5",
        "--port",
        &addr.port().to_string(),
        "--ring-bytes",
        "4096",
    ]);

    daemon.pause();
    let held = thread::scope(|scope| {
        // The storm's connections are all queued before the held ones are made, and the
        // accept queue is first in, first out: the last HELD accepted are the held ones, and
        // their server side stays open.
        let acceptor = scope.spawn(|| {
            let mut held = Vec::new();
            for accepted in 0..STORM + HELD {
                let (stream, _) = listener.accept().expect("accepting");
                if accepted >= STORM {
                    held.push(stream);
                }
            }
            held
        });
        let clients: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    for _ in 0..STORM / 2 {
                        drop(TcpStream::connect(addr).expect("connecting"));
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        let clients: Vec<_> = (0..HELD)
            .map(|_| TcpStream::connect(addr).expect("connecting"))
            .collect();
        (clients, acceptor.join().unwrap())
    });
    daemon.resume();
    let storm_over = Instant::now();

    let truth = || crate::support::established_server_side(addr);
    // The first report made entirely after the storm must match the kernel.
    let mut reports = Vec::new();
    let settled = loop {
        let report = daemon.next_report(&addr.to_string());
        reports.push(report.clone());
        let interval = Duration::from_secs_f64(report["interval_s"].as_f64().unwrap());
        if storm_over.elapsed() > interval + Duration::from_millis(100) {
            break report;
        }
    };
    let kernel = crate::support::server_side_sockets(addr);
    assert_eq!(
        settled["curr"],
        kernel.len() as u64,
        "not reconciled: {settled}\nkernel: {kernel:#?}\nreports: {reports:#?}\nlog:\n{}",
        daemon.log_until_now()
    );
    assert_eq!(truth(), HELD, "the test's own premise");
    assert!(
        sum(&reports, "lost_events") > 0.0,
        "no loss forced: {reports:#?}"
    );
    assert!(
        sum(&reports, "corrections") > 0.0,
        "loss not corrected: {reports:#?}"
    );
    drop(held);
}

#[test]
fn a_server_that_stops_accepting_fills_its_queue_and_overflows() {
    const BACKLOG: i32 = 4;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // A small backlog (std listens with 128).
    crate::support::set_backlog(&listener, BACKLOG);
    let addr = listener.local_addr().unwrap();
    let mut daemon = Daemon::start(&["--interval", "0.5", "--port", &addr.port().to_string()]);

    // Nobody accepts: the queue fills (about backlog + 1 entries), later handshakes are refused and
    // those clients keep retrying until their timeout.
    let clients: Vec<_> = (0..12)
        .map(|_| {
            thread::spawn(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok())
        })
        .collect();
    let reports = daemon.reports_until(&addr.to_string(), |report| {
        report["accept_queue"].as_i64() >= Some(i64::from(BACKLOG))
            && report["listen_overflows"] != 0
    });
    let last = reports.last().unwrap();
    assert_eq!(last["accept_backlog"], BACKLOG, "{last}");
    // The kernel queues one more than the backlog; handshakes completing at the same moment
    // on other CPUs each pass its full-queue check before any of them is queued.
    let cpus = thread::available_parallelism().map_or(1, usize::from) as u64;
    assert!(
        max(&reports, "accept_queue_peak") <= BACKLOG as u64 + cpus,
        "{reports:#?}"
    );
    drop(clients);
    drop(listener);
}

#[test]
fn outbound_connections_to_a_connect_target_are_tracked() {
    // A server this host connects to; its own listener is not watched (another port is).
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = server.local_addr().unwrap();
    let unrelated = crate::support::free_port("127.0.0.1");
    let mut daemon = Daemon::start(&[
        "--interval",
        "0.5",
        "--port",
        &unrelated.to_string(),
        "--connect",
        &target.to_string(),
    ]);
    let name = format!("connect:{target}");
    let mut conns = connect_many(&server, target, 3);
    let reports = daemon.reports_until(&name, |report| report["curr"] == 3);
    assert_eq!(reports.last().unwrap()["role"], "connect");
    assert_eq!(sum(&reports, "opened"), 3.0, "{reports:#?}");
    for conn in conns.drain(..) {
        conn.close();
    }
    let reports = daemon.reports_until(&name, |report| report["curr"] == 0);
    assert_eq!(sum(&reports, "closed"), 3.0, "{reports:#?}");
    for report in &reports {
        assert_eq!(report["errs"], 0, "{report}");
    }
}

/// A process listening on `port` with SO_REUSEPORT until the returned child is killed.
fn reuseport_listener(port: u16) -> std::process::Child {
    let script = format!(
        "import socket, time\n\
         s = socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n\
         s.bind(('127.0.0.1', {port}))\n\
         s.listen(16)\n\
         print('ready', flush=True)\n\
         time.sleep(120)\n"
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

#[test]
fn a_reuseport_group_is_one_listener_with_every_owner() {
    let port = crate::support::free_port("127.0.0.1");
    let mut first = reuseport_listener(port);
    let mut second = reuseport_listener(port);
    let mut daemon = Daemon::start(&["--interval", "0.5", "--port", &port.to_string()]);
    let report = daemon.next_report(&format!("127.0.0.1:{port}"));
    let owners: Vec<u64> = report["owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|owner| owner["pid"].as_u64().unwrap())
        .collect();
    for child in [&first, &second] {
        assert!(owners.contains(&u64::from(child.id())), "{report}");
    }
    assert!(
        report["owners"][0]["cmdline"]
            .as_str()
            .unwrap()
            .contains("SO_REUSEPORT"),
        "{report}"
    );
    assert_eq!(
        report["accept_backlog"], 32,
        "two sockets of backlog 16: {report}"
    );
    let _ = first.kill();
    let _ = second.kill();
    let _ = first.wait();
    let _ = second.wait();
    let gone = daemon.reports_until(&format!("127.0.0.1:{port}"), |report| {
        report["gone"] == true
    });
    assert_eq!(gone.last().unwrap()["errs"], 0);
}

/// When the kernel's table of tracked connections cannot take a connection (full, or its
/// on-demand allocator running dry in a burst), the connection is still counted open and
/// closed by the kernel's events, not recovered later by reconciliation: no correction.
#[test]
fn connections_beyond_the_kernel_table_are_still_opened_and_closed_exactly() {
    const TABLE: usize = 4;
    const CONNECTIONS: usize = 12;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (port, table) = (addr.port().to_string(), TABLE.to_string());
    let args = [
        "--interval",
        "0.5",
        "--port",
        &port,
        "--tracked-entries",
        &table,
    ];
    let mut daemon = Daemon::start(&args);
    let conns = connect_many(&listener, addr, CONNECTIONS);
    let mut reports = daemon.reports_until(&addr.to_string(), |report| {
        report["curr"] == CONNECTIONS as u64
    });
    for conn in conns {
        conn.close();
    }
    reports.extend(daemon.reports_until(&addr.to_string(), |report| report["curr"] == 0));
    assert_eq!(sum(&reports, "opened"), CONNECTIONS as f64, "{reports:#?}");
    assert_eq!(sum(&reports, "closed"), CONNECTIONS as f64, "{reports:#?}");
    assert_eq!(
        sum(&reports, "untracked_connections"),
        (CONNECTIONS - TABLE) as f64,
        "{reports:#?}"
    );
    for report in &reports {
        assert_eq!(report["corrections"], 0, "{report}");
        assert_eq!(report["errs"], 0, "{report}");
        assert_eq!(report["lost_events"], 0, "{report}");
    }
}
