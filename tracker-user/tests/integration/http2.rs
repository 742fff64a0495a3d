//! HTTP/2 streams at the protocol's edges: a server's graceful GOAWAY, a client that leaves
//! with streams open, and thousands of frames in one system call (the rapid-reset pattern).
//! The clients write raw frames, so each test controls exactly what one call holds.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;

use serde_json::Value;

use crate::support::{Daemon, Python, max, sum};

const INTERVAL: &str = "0.5";

/// The HTTP/2 client preface and an empty SETTINGS frame.
pub(crate) fn preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    push_frame(&mut out, 4, 0, 0, &[]);
    out
}

pub(crate) fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A `GET /` on `stream_id` with END_STREAM and END_HEADERS: HPACK's static `:method GET`,
/// `:scheme http`, `:path /`, and `:authority localhost` not indexed, so every block is the
/// same whatever came before.
pub(crate) fn push_get(out: &mut Vec<u8>, stream_id: u32) {
    let block = b"\x82\x86\x84\x01\x09localhost";
    push_frame(out, 1, 0x5, stream_id, block);
}

/// RST_STREAM(CANCEL) on `stream_id`.
pub(crate) fn push_reset(out: &mut Vec<u8>, stream_id: u32) {
    push_frame(out, 3, 0, stream_id, &8u32.to_be_bytes());
}

/// Starts the Python server `script` with `args`, and a daemon watching its port: (server,
/// port, listener name, daemon).
fn watched_server(script: &str, args: &[&str]) -> (Python, u16, String, Daemon) {
    let mut server = Python::start(script, args);
    let port = server.port();
    let daemon = Daemon::start(&["--interval", INTERVAL, "--port", &port.to_string()]);
    (server, port, format!("127.0.0.1:{port}"), daemon)
}

/// Reports for `listener` until its connections have all closed (`closed` adds up to
/// `connections` and `curr` is 0).
fn reports_until_closed(daemon: &mut Daemon, listener: &str, connections: u64) -> Vec<Value> {
    let closed = std::cell::Cell::new(0);
    daemon.reports_until(listener, |report| {
        closed.set(closed.get() + report["closed"].as_u64().unwrap());
        closed.get() >= connections && report["curr"] == 0
    })
}

fn errors(reports: &[Value], kind: &str) -> u64 {
    reports
        .iter()
        .map(|report| report["errors"][kind].as_u64().unwrap())
        .sum()
}

/// An HTTP/2 server on Debian's python3-h2. It prints its port, reads requests until
/// `argv[1]` streams have come, then sends GOAWAY with last stream id `argv[2]` (none if
/// negative) and prints `goaway`. Once its stdin closes it answers the requests on streams at
/// or below that id (`argv[3]` = 1; 0: it answers none), prints `answered`, and waits for the
/// client to leave.
const H2_SERVER: &str = r#"
import socket, struct, sys
import h2.config, h2.connection, h2.events

streams, last, answer = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
sock, _ = server.accept()
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
conn.initiate_connection()
sock.sendall(conn.data_to_send())
received = []
while len(received) < streams:
    data = sock.recv(65536)
    if not data:
        sys.exit("the client left early")
    for event in conn.receive_data(data):
        if isinstance(event, h2.events.RequestReceived):
            received.append(event.stream_id)
    sock.sendall(conn.data_to_send())
if last >= 0:
    # h2 would refuse to answer after its own GOAWAY, so this one is written raw: a server
    # going away gracefully still answers the streams it names processed.
    sock.sendall(struct.pack(">I", 8)[1:] + bytes([7, 0]) + struct.pack(">III", 0, last, 0))
print("goaway", flush=True)
sys.stdin.read()
if answer:
    for stream_id in received:
        if last < 0 or stream_id <= last:
            conn.send_headers(stream_id, [(":status", "200")], end_stream=True)
    sock.sendall(conn.data_to_send())
print("answered", flush=True)
while sock.recv(65536):
    pass
"#;

/// A client that opened `streams` streams (1, 3, ...) in one write to `port`.
fn client_with_streams(port: u16, streams: u32) -> TcpStream {
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut out = preface();
    for n in 0..streams {
        push_get(&mut out, 2 * n + 1);
    }
    client.write_all(&out).unwrap();
    client
}

/// A server's graceful GOAWAY (last stream id 99) with 52 streams open: the two above 99 end
/// at once, unprocessed; the 50 others stay open, counted in `peak_sessions` of every report
/// until the server answers them, and none is lost.
#[test]
fn a_graceful_goaway_keeps_the_streams_the_server_still_answers() {
    let (mut server, port, listener, mut daemon) = watched_server(H2_SERVER, &["52", "99", "1"]);
    let mut client = client_with_streams(port, 52);
    assert_eq!(server.line(), "goaway");
    // The first report may end before the GOAWAY came; the next two are wholly after it.
    let mut after = Vec::new();
    for _ in 0..3 {
        after.push(daemon.next_report(&listener));
    }
    for report in &after[1..] {
        assert_eq!(report["peak_sessions"], 50, "{after:#?}");
        assert_eq!(report["curr"], 1, "{after:#?}");
    }
    server.end_input();
    assert_eq!(server.line(), "answered");
    // The answers: the server's SETTINGS, its ACK of ours, its GOAWAY and 50 HEADERS.
    let mut answers = Vec::new();
    let mut buffer = [0u8; 4096];
    while !contains_end_of_stream(&answers, 99) {
        let n = client.read(&mut buffer).unwrap();
        assert_ne!(n, 0, "the server closed before answering");
        answers.extend_from_slice(&buffer[..n]);
    }
    drop(client);
    let mut reports = after;
    reports.extend(reports_until_closed(&mut daemon, &listener, 1));
    assert_eq!(sum(&reports, "sessions"), 52.0, "{reports:#?}");
    assert_eq!(errors(&reports, "conns_lost"), 0, "{reports:#?}");
    for report in &reports {
        assert_eq!(report["errs"], 0, "{report}");
        assert_eq!(report["sessions_unknown"], 0, "{report}");
    }
    daemon.assert_no_ring_loss(&reports);
}

/// Whether `bytes`, the frames a server sent, hold a HEADERS with END_STREAM on `stream_id`.
fn contains_end_of_stream(bytes: &[u8], stream_id: u32) -> bool {
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 9) {
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let id = u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff;
        if header[3] == 1 && header[4] & 1 != 0 && id == stream_id {
            return true;
        }
        at += 9 + length;
    }
    false
}

/// A client that leaves with 50 streams unanswered: its connection counts in `conns_lost`,
/// once, and its streams still count as sessions.
#[test]
fn a_client_leaving_with_streams_open_counts_in_conns_lost() {
    let (mut server, port, listener, mut daemon) = watched_server(H2_SERVER, &["50", "-1", "0"]);
    let client = client_with_streams(port, 50);
    assert_eq!(server.line(), "goaway");
    drop(client);
    let reports = reports_until_closed(&mut daemon, &listener, 1);
    assert_eq!(sum(&reports, "sessions"), 50.0, "{reports:#?}");
    assert_eq!(max(&reports, "peak_sessions"), 50, "{reports:#?}");
    assert_eq!(errors(&reports, "conns_lost"), 1, "{reports:#?}");
    assert_eq!(sum(&reports, "errs"), 1.0, "{reports:#?}");
    daemon.assert_no_ring_loss(&reports);
}

/// A plain-socket HTTP/2 peer that prints its port, waits until `argv[1]` bytes are queued
/// and takes them in one read, prints `read`, then, if `argv[2]` is non-zero, resets streams
/// 1, 3, ... up to that many in one write, and waits for the client to leave. It waits on the
/// queue itself (`FIONREAD`) rather than reading with `MSG_WAITALL` or `SO_RCVLOWAT`: a read
/// that waits for more after its first bytes is seen with those only where kprobes serve
/// turns, a limit of its own, and the kernel wakes a low-water-mark wait early once the
/// receive window is spent.
const ONE_READ_SERVER: &str = r#"
import array, fcntl, socket, struct, sys, termios, time

total, resets = int(sys.argv[1]), int(sys.argv[2])
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
sock, _ = server.accept()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

def queued():
    count = array.array("i", [0])
    fcntl.ioctl(sock, termios.FIONREAD, count)
    return count[0]

while queued() < total:
    time.sleep(0.001)
data = sock.recv(total, socket.MSG_WAITALL)
assert len(data) == total, len(data)
print("read", flush=True)
# RST_STREAM(REFUSED_STREAM) on each stream.
out = b"".join(struct.pack(">I", 4)[1:] + bytes([3, 0]) + struct.pack(">II", 2 * n + 1, 7)
               for n in range(resets))
sock.sendall(out)
while sock.recv(65536):
    pass
"#;

/// One read of 5,000 frames: 2,500 streams opened and reset by the client (the rapid-reset
/// pattern, CVE-2023-44487) are walked whole and each counted once.
#[test]
fn one_read_of_five_thousand_frames_is_walked_whole() {
    let mut out = preface();
    for n in 0..2_500 {
        push_get(&mut out, 2 * n + 1);
        push_reset(&mut out, 2 * n + 1);
    }
    let total = out.len().to_string();
    let (mut server, port, listener, mut daemon) = watched_server(ONE_READ_SERVER, &[&total, "0"]);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(&out).unwrap();
    assert_eq!(server.line(), "read");
    drop(client);
    let reports = reports_until_closed(&mut daemon, &listener, 1);
    assert_eq!(sum(&reports, "sessions"), 2_500.0, "{reports:#?}");
    assert_eq!(max(&reports, "peak_sessions"), 1, "{reports:#?}");
    assert_eq!(sum(&reports, "sessions_unknown"), 0.0, "{reports:#?}");
    assert_eq!(sum(&reports, "errs"), 0.0, "{reports:#?}");
    daemon.assert_no_ring_loss(&reports);
}

/// 5,000 streams opened in one read, all refused in one write: the first 1,024 are tracked
/// open at once, the rest counted untracked, and every reset is walked.
#[test]
fn five_thousand_streams_opened_in_one_read_are_all_accounted() {
    let mut out = preface();
    for n in 0..5_000 {
        push_get(&mut out, 2 * n + 1);
    }
    let total = out.len().to_string();
    let (mut server, port, listener, mut daemon) =
        watched_server(ONE_READ_SERVER, &[&total, "5000"]);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(&out).unwrap();
    assert_eq!(server.line(), "read");
    // Every reset arrived: the server's write of 65,000 bytes.
    let mut resets = vec![0u8; 5_000 * 13];
    client.read_exact(&mut resets).unwrap();
    drop(client);
    let reports = reports_until_closed(&mut daemon, &listener, 1);
    assert_eq!(sum(&reports, "sessions"), 1_024.0, "{reports:#?}");
    assert_eq!(sum(&reports, "sessions_untracked"), 3_976.0, "{reports:#?}");
    assert_eq!(sum(&reports, "sessions_unknown"), 0.0, "{reports:#?}");
    assert_eq!(sum(&reports, "errs"), 0.0, "{reports:#?}");
    daemon.assert_no_ring_loss(&reports);
}
