//! The kernel's own table of a listener's connections, through `ss`: the truth reports are
//! compared with.

use std::net::SocketAddr;
use std::process::Command;

/// Server-side connections of the listener at `addr` that the kernel still has (its own
/// table, through `ss`), the truth the reports are compared with.
pub fn established_server_side(addr: SocketAddr) -> usize {
    server_side_sockets(addr).len()
}

/// `ss`'s lines for the server-side connections of the listener at `addr`, in the states in
/// which the model counts a connection: ESTABLISHED until the socket closes. TIME_WAIT
/// mini-sockets have already closed, also those ss lists under their substate (fin-wait-2,
/// when the server closed first), which it marks with their timer.
pub fn server_side_sockets(addr: SocketAddr) -> Vec<String> {
    let mut command = Command::new("ss");
    command.arg("-Htno");
    for state in [
        "established",
        "fin-wait-1",
        "fin-wait-2",
        "close-wait",
        "last-ack",
        "closing",
    ] {
        command.args(["state", state]);
    }
    let output = command
        .arg(format!("( sport = :{} )", addr.port()))
        .output()
        .expect("running ss");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.contains("timer:(timewait"))
        .map(str::to_owned)
        .collect()
}
