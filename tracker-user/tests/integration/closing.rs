//! The closing phase: connections the server has closed that the kernel is still finishing,
//! reported beside the rest of their life.

use std::io::{ErrorKind, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::assert_seconds_match;
use crate::support::{Daemon, connect_many, sum};

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
    let output = Command::new("ss")
        .args(["-Htn", "state", "fin-wait-1"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("running ss");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .count()
}

/// A server that closes a connection with data its client has not read yet leaves the kernel
/// to deliver it: the socket waits in FIN_WAIT1 as long as the client does not read. For the
/// server those connections are over: they leave `curr` and count in `closed` at its close,
/// and `closing` counts them beside, with `closing_for_s` the time they spent so.
#[test]
fn connections_the_server_closed_with_unsent_data_are_closing_until_the_kernel_is_done() {
    const CONNECTIONS: usize = 3;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let name = addr.to_string();
    let mut daemon = Daemon::start(&["--interval", "0.5", "--port", &addr.port().to_string()]);
    let conns = connect_many(&listener, addr, CONNECTIONS);
    let mut reports = daemon.reports_until(&name, |report| report["curr"] == CONNECTIONS);
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
    drop(clients);
    let clients_gone = Instant::now();
    reports.extend(daemon.reports_until(&name, |report| {
        report["curr"] == 0 && report["closing"] == 0
    }));
    let closing_time: Duration = server_closed_at
        .iter()
        .map(|&closed| clients_gone - closed)
        .sum();
    assert_seconds_match(&reports, "closing_for_s", closing_time);
    assert_eq!(sum(&reports, "closed"), CONNECTIONS as f64);
    for report in &reports {
        assert_eq!(report["errs"], 0, "{report}");
        assert_eq!(
            report["corrections"], 0,
            "the kernel's table agrees: {report}"
        );
    }
}
