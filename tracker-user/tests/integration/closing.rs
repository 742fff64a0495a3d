//! The closing phase: connections the server has closed that the kernel is still finishing,
//! reported beside the rest of their life.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::assert_seconds_match;
use serde_json::Value;

use crate::support::{Conn, Daemon, connect_many, sum};

/// Fills the server's send buffer and the client's receive buffer: the client never reads.
fn fill_until_blocked(server: &mut TcpStream) {
    server.set_nonblocking(true).unwrap();
    let chunk = [0u8; 64 * 1024];
    loop {
        match server.write(&chunk) {
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::WouldBlock => return,
            Err(error) => panic!("writing to the client: {error}"),
        }
    }
}

/// Server-side sockets of `port` in FIN_WAIT1, by `ss`.
fn fin_wait_1(port: u16) -> usize {
    server_sockets_in(port, "fin-wait-1")
}

/// Server-side sockets of `port` in `state` (an `ss` state name), by `ss`: full sockets and
/// time-wait sockets alike.
fn server_sockets_in(port: u16, state: &str) -> usize {
    let output = Command::new("ss")
        .args(["-Htn", "state", state])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("running ss");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .count()
}

/// A new listener on 127.0.0.1 that holds `count` connections, a daemon watching it, and the
/// daemon's reports until it counts them.
fn daemon_with_connections(count: usize) -> (TcpListener, Daemon, Vec<Conn>, Vec<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut daemon = Daemon::start(&["--interval", "0.5", "--port", &addr.port().to_string()]);
    let conns = connect_many(&listener, addr, count);
    let reports = daemon.reports_until(&addr.to_string(), |report| report["curr"] == count);
    (listener, daemon, conns, reports)
}

/// The clients of connections the server closed at `server_closed_at` go away: once the
/// kernel is done with them, `closing_for_s` adds up to the time from each server close to
/// now, each counted closed once, and nothing was corrected.
fn clients_leave(
    daemon: &mut Daemon,
    name: &str,
    mut reports: Vec<Value>,
    clients: Vec<TcpStream>,
    server_closed_at: &[Instant],
) {
    let count = clients.len();
    drop(clients);
    let clients_gone = Instant::now();
    reports
        .extend(daemon.reports_until(name, |report| report["curr"] == 0 && report["closing"] == 0));
    let closing_time: Duration = server_closed_at
        .iter()
        .map(|&closed| clients_gone - closed)
        .sum();
    assert_seconds_match(&reports, "closing_for_s", closing_time);
    assert_eq!(sum(&reports, "closed"), count as f64);
    for report in &reports {
        assert_eq!(report["errs"], 0, "{report}");
        assert_eq!(
            report["corrections"], 0,
            "the kernel's table agrees: {report}"
        );
    }
}

/// A server that closes a connection with data its client has not read yet leaves the kernel
/// to deliver it: the socket waits in FIN_WAIT1 as long as the client does not read. For the
/// server those connections are over: they leave `curr` and count in `closed` at its close,
/// and `closing` counts them beside, with `closing_for_s` the time they spent so.
#[test]
fn connections_the_server_closed_with_unsent_data_are_closing_until_the_kernel_is_done() {
    const CONNECTIONS: usize = 3;
    let (listener, mut daemon, conns, mut reports) = daemon_with_connections(CONNECTIONS);
    let addr = listener.local_addr().unwrap();
    let name = addr.to_string();
    assert_eq!(sum(&reports, "closing"), 0.0, "nothing closed yet");

    let mut clients = Vec::new();
    let mut server_closed_at = Vec::new();
    for conn in conns {
        let mut server = conn.server;
        fill_until_blocked(&mut server);
        drop(server);
        server_closed_at.push(Instant::now());
        clients.push(conn.client);
    }
    let closing = daemon.reports_until(&name, |report| report["closing"] == CONNECTIONS);
    let last = closing.last().unwrap().clone();
    reports.extend(closing);
    assert_eq!(last["curr"], 0, "the server holds none of them: {last}");
    assert_eq!(
        sum(&reports, "closed"),
        CONNECTIONS as f64,
        "closed at the server's close: {reports:#?}"
    );
    assert_eq!(fin_wait_1(addr.port()), CONNECTIONS, "ss disagrees: {last}");
    // One more interval of nothing but closing.
    let held = daemon.next_report(&name);
    assert_eq!(held["closing"], CONNECTIONS, "{held}");
    reports.push(held);

    // The clients go away without reading: their reset ends the server's sockets at once.
    clients_leave(&mut daemon, &name, reports, clients, &server_closed_at);
}

/// A server that `close()`s connections whose clients keep their end open: the kernel hands
/// each socket, once the client acknowledged the server's FIN, to a time-wait socket in
/// FIN_WAIT2, where it waits for the client's FIN. `closing` counts them as `ss` shows them
/// until the clients close, and `closing_for_s` the time they waited.
#[test]
fn connections_the_server_closed_are_closing_while_their_clients_keep_their_end_open() {
    const CONNECTIONS: usize = 3;
    let hold = Duration::from_secs(3);
    let (listener, mut daemon, conns, mut reports) = daemon_with_connections(CONNECTIONS);
    let addr = listener.local_addr().unwrap();
    let name = addr.to_string();

    let mut clients = Vec::new();
    let mut server_closed_at = Vec::new();
    for conn in conns {
        drop(conn.server);
        server_closed_at.push(Instant::now());
        clients.push(conn.client);
    }
    let held_from = Instant::now();
    let closing = daemon.reports_until(&name, |report| report["closing"] == CONNECTIONS);
    let last = closing.last().unwrap().clone();
    reports.extend(closing);
    assert_eq!(last["curr"], 0, "the server holds none of them: {last}");
    assert_eq!(
        server_sockets_in(addr.port(), "fin-wait-2"),
        CONNECTIONS,
        "ss disagrees: {last}"
    );
    // The clients keep their end open a while: still closing at every report.
    while held_from.elapsed() < hold {
        let held = daemon.next_report(&name);
        assert_eq!(held["closing"], CONNECTIONS, "{held}");
        reports.push(held);
    }
    assert_eq!(
        server_sockets_in(addr.port(), "fin-wait-2"),
        CONNECTIONS,
        "still waiting for the clients' FIN"
    );

    clients_leave(&mut daemon, &name, reports, clients, &server_closed_at);
    assert_eq!(server_sockets_in(addr.port(), "fin-wait-2"), 0);
    // Nothing is left running: the next interval has no closing time.
    let after = daemon.next_report(&name);
    assert_eq!(
        (after["closing"].as_u64(), after["closing_for_s"].as_f64()),
        (Some(0), Some(0.0)),
        "{after}"
    );
}

/// A server that shuts its sending side down (`shutdown(SHUT_WR)`) and `close()`s the
/// connection later, its client still open. Where the close hook serves, the connection is the
/// server's until that `close()`: in `curr`, not closing, and `server_closed` counts it then.
/// Elsewhere nothing tells a `shutdown()` from a `close()`, and its life ends at the
/// `shutdown()`, as the README says.
#[test]
fn a_connection_shut_down_then_closed_ends_at_its_close_where_the_close_hook_serves() {
    const CONNECTIONS: usize = 2;
    let hold = Duration::from_millis(2500);
    let (listener, mut daemon, conns, mut reports) = daemon_with_connections(CONNECTIONS);
    let addr = listener.local_addr().unwrap();
    let name = addr.to_string();
    let close_hook = !reports[0]["hooks"]["close"].is_null();

    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for conn in conns {
        conn.server.shutdown(Shutdown::Write).unwrap();
        servers.push(conn.server);
        clients.push(conn.client);
    }
    for client in &mut clients {
        assert_eq!(client.read(&mut [0; 1]).unwrap(), 0, "the server's FIN");
    }
    let shut_down_at = Instant::now();
    let (held, closing) = if close_hook {
        (CONNECTIONS, 0)
    } else {
        (0, CONNECTIONS)
    };
    let first = daemon.reports_until(&name, |report| report["closing"] == closing);
    reports.extend(first);
    while shut_down_at.elapsed() < hold {
        let report = daemon.next_report(&name);
        assert_eq!(
            (report["curr"].as_u64(), report["closing"].as_u64()),
            (Some(held as u64), Some(closing as u64)),
            "(curr, closing) while shut down (close hook: {close_hook}): {report}"
        );
        reports.push(report);
    }
    assert_eq!(
        server_sockets_in(addr.port(), "fin-wait-2"),
        CONNECTIONS,
        "ss: shut down, the clients' end still open"
    );

    drop(servers);
    let closed_at = Instant::now();
    reports.extend(daemon.reports_until(&name, |report| {
        report["curr"] == 0 && report["closing"] == CONNECTIONS
    }));
    assert_eq!(sum(&reports, "closed"), CONNECTIONS as f64, "{reports:#?}");
    let lives = sum(&reports, "conn_for_s");
    if close_hook {
        let server_closed: f64 = sum(&reports, "server_closed");
        assert_eq!(server_closed, CONNECTIONS as f64, "{reports:#?}");
        assert!(
            lives >= (CONNECTIONS as f64) * hold.as_secs_f64(),
            "each life spans the time shut down: {lives} s; {reports:#?}"
        );
    } else {
        assert!(
            reports
                .iter()
                .all(|report| report["server_closed"].is_null()),
            "{reports:#?}"
        );
        assert!(
            lives < (CONNECTIONS as f64) * hold.as_secs_f64(),
            "each life ended at the shutdown: {lives} s; {reports:#?}"
        );
    }
    let server_closed_at = if close_hook {
        vec![closed_at; CONNECTIONS]
    } else {
        vec![shut_down_at; CONNECTIONS]
    };
    clients_leave(&mut daemon, &name, reports, clients, &server_closed_at);
}
