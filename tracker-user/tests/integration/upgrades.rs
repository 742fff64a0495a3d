//! Connections that leave HTTP/1 with a `101 Switching Protocols` (the original library's
//! `Hijacked`): a WebSocket stays open and counted but has no requests and no busy time; an
//! `Upgrade: h2c` goes on as HTTP/2, its streams counted. Real clients (curl, nghttp, Python's
//! websockets) against small Python servers built on Debian's python3-h2 and
//! python3-websockets.

use std::cell::Cell;

use crate::support::{Daemon, Python, max, run_client, sum};

/// An h2c server: answers an HTTP/1.1 request carrying `Upgrade: h2c` with a `101`, then
/// speaks HTTP/2, answering each stream after the delay given as its first argument. With
/// `joined` as its second, the `101` and its first HTTP/2 frames go in one send; otherwise the
/// `101` is written alone.
const H2C_SERVER: &str = r#"import asyncio, sys
import h2.config, h2.connection, h2.events

DELAY = float(sys.argv[1])
JOINED = sys.argv[2:] == ["joined"]

async def answer(conn, writer, stream_id):
    await asyncio.sleep(DELAY)
    conn.send_headers(stream_id, [(":status", "200"), ("content-length", "2")])
    conn.send_data(stream_id, b"ok", end_stream=True)
    writer.write(conn.data_to_send())
    await writer.drain()

async def serve(reader, writer):
    head = await reader.readuntil(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            name, value = line.split(b":", 1)
            headers[name.strip().lower()] = value.strip()
    if headers.get(b"upgrade", b"").lower() != b"h2c":
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()
        return
    switching = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    if not JOINED:
        writer.write(switching)
        await writer.drain()
        switching = b""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_upgrade_connection(headers[b"http2-settings"])
    writer.write(switching + conn.data_to_send())
    await writer.drain()
    tasks = [asyncio.create_task(answer(conn, writer, 1))]
    while True:
        data = await reader.read(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                tasks.append(asyncio.create_task(answer(conn, writer, event.stream_id)))
            elif isinstance(event, h2.events.ConnectionTerminated):
                break
        pending = conn.data_to_send()
        if pending:
            writer.write(pending)
            await writer.drain()
    for task in tasks:
        task.cancel()
    writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"#;

/// A WebSocket server echoing each message after the delay given as its argument.
const WEBSOCKET_SERVER: &str = r#"import asyncio, sys
import websockets

DELAY = float(sys.argv[1])

async def echo(websocket, *_path):
    async for message in websocket:
        await asyncio.sleep(DELAY)
        await websocket.send(message)

async def main():
    async with websockets.serve(echo, "127.0.0.1", 0) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()

asyncio.run(main())
"#;

/// A WebSocket server pushing a message every 0.3 s to each client, which need not send
/// anything. No pings: the client would answer them.
const PUSHING_WEBSOCKET_SERVER: &str = r#"import asyncio
import websockets

async def push(websocket, *_path):
    n = 0
    try:
        while True:
            await websocket.send(f"push {n}")
            n += 1
            await asyncio.sleep(0.3)
    except websockets.ConnectionClosed:
        pass

async def main():
    async with websockets.serve(push, "127.0.0.1", 0, ping_interval=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()

asyncio.run(main())
"#;

/// A WebSocket client that never sends a message: connects to the port given, says so once
/// its first message came, and holds the connection until its stdin closes.
const LISTENING_WEBSOCKET_CLIENT: &str = r#"import asyncio, sys
import websockets

async def main(port):
    async with websockets.connect(f"ws://127.0.0.1:{port}/", ping_interval=None) as websocket:
        await websocket.recv()
        print("open", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main(int(sys.argv[1])))
"#;

/// A WebSocket client: connects to the port given, exchanges the number of messages given,
/// says so, and holds the connection until its stdin closes.
const WEBSOCKET_CLIENT: &str = r#"import asyncio, sys
import websockets

async def main(port, messages):
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as websocket:
        print("open", flush=True)
        for n in range(messages):
            await websocket.send(f"message {n}")
            assert await websocket.recv() == f"message {n}"
        print("exchanged", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"#;

/// A WebSocket's messages are not requests: after its upgrade request (one HTTP/1 session) the
/// connection stays open and counted, never busy, and its sessions are not "unknown".
#[test]
fn a_websocket_stays_open_but_its_messages_are_not_requests() {
    const MESSAGES: &str = "10";
    // Each echo takes 0.1 s: ten of them would be a second of busy time if they were turns.
    let mut server = Python::start(WEBSOCKET_SERVER, &["0.1"]);
    let port = server.port();
    let name = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(&["--interval", "0.5", "--port", &port.to_string()]);
    let mut reports = vec![daemon.next_report(&name)];

    let mut client = Python::start(WEBSOCKET_CLIENT, &[&port.to_string(), MESSAGES]);
    assert_eq!(client.line(), "open");
    assert_eq!(client.line(), "exchanged");
    reports.extend(daemon.reports_until(&name, |report| report["upgraded"] == 1));
    let held = daemon.next_report(&name);
    assert_eq!(
        (held["curr"].as_u64(), held["busy"].as_u64()),
        (Some(1), Some(0)),
        "{held}"
    );
    reports.push(held);
    client.end_input();
    reports.extend(daemon.reports_until(&name, |report| report["curr"] == 0));

    assert_eq!(sum(&reports, "upgraded"), 1.0, "{reports:#?}");
    assert_eq!(sum(&reports, "opened"), 1.0, "{reports:#?}");
    assert_eq!(sum(&reports, "closed"), 1.0, "{reports:#?}");
    assert_eq!(
        max(&reports, "peak_sessions"),
        1,
        "the upgrade request: {reports:#?}"
    );
    assert!(
        sum(&reports, "active_for_s") < 0.3,
        "messages counted as busy time: {reports:#?}"
    );
    for report in &reports {
        assert_eq!(report["sessions_unknown"], 0, "{report}");
        assert_eq!(report["errs"], 0, "{report}");
    }
}

/// A WebSocket whose server pushes and whose client never sends is upgraded at the `101` and
/// never busy after it: its pushes are not answers to anything. Its busy time never exceeds its
/// connection time in any interval.
#[test]
fn a_websocket_only_the_server_sends_on_is_upgraded_at_its_101_and_never_busy() {
    // Reports after the handshake that show the connection held, pushed to and idle.
    const HELD_REPORTS: usize = 4;
    let mut server = Python::start(PUSHING_WEBSOCKET_SERVER, &[]);
    let port = server.port();
    let name = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(&["--interval", "0.5", "--port", &port.to_string()]);
    let mut reports = vec![daemon.next_report(&name)];

    let mut client = Python::start(LISTENING_WEBSOCKET_CLIENT, &[&port.to_string()]);
    assert_eq!(client.line(), "open");
    // The interval of the handshake, or the next one, counts the upgrade.
    reports.extend(daemon.reports_until(&name, |report| report["opened"] == 1));
    if reports.last().unwrap()["upgraded"] != 1 {
        reports.push(daemon.next_report(&name));
    }
    assert_eq!(
        sum(&reports, "upgraded"),
        1.0,
        "upgraded by the handshake: {reports:#?}"
    );
    for _ in 0..HELD_REPORTS {
        let held = daemon.next_report(&name);
        assert_eq!(
            (held["curr"].as_u64(), held["busy"].as_u64()),
            (Some(1), Some(0)),
            "{held}"
        );
        assert_eq!(held["active_for_s"], 0.0, "pushes counted busy: {held}");
        reports.push(held);
    }
    client.end_input();
    reports.extend(daemon.reports_until(&name, |report| report["curr"] == 0));

    assert_eq!(sum(&reports, "upgraded"), 1.0, "{reports:#?}");
    assert_eq!(
        sum(&reports, "sessions"),
        1.0,
        "the upgrade request: {reports:#?}"
    );
    assert!(
        sum(&reports, "active_for_s") < 0.3,
        "pushes counted as busy time: {reports:#?}"
    );
    for report in &reports {
        assert!(
            report["active_for_s"].as_f64() <= report["conn_for_s"].as_f64(),
            "busier than connected: {report}"
        );
        assert_eq!(report["sessions_unknown"], 0, "{report}");
        assert_eq!(report["errs"], 0, "{report}");
    }
    server.end_input();
}

/// An `Upgrade: h2c` goes on as HTTP/2: curl's upgrade, then nghttp's upgrade with two
/// concurrent streams after it (each answered after 0.3 s) give two sessions at once (the
/// upgrade request is one HTTP/1 session, answered by the `101`).
#[test]
fn an_h2c_upgrade_goes_on_as_http2_with_its_streams_counted() {
    h2c_upgrades(&[]);
}

/// The same when the server writes its `101` and its first HTTP/2 frames in one send.
#[test]
fn an_h2c_upgrade_whose_101_comes_with_its_first_frames_is_counted_the_same() {
    h2c_upgrades(&["joined"]);
}

fn h2c_upgrades(server_args: &[&str]) {
    let args: Vec<&str> = ["0.3"].iter().chain(server_args).copied().collect();
    let mut server = Python::start(H2C_SERVER, &args);
    let port = server.port();
    let name = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(&["--interval", "0.5", "--port", &port.to_string()]);
    let mut reports = vec![daemon.next_report(&name)];

    let url = |path: &str| format!("http://127.0.0.1:{port}/{path}");
    assert_eq!(run_client("curl", &["-s", "--http2", &url("")]), "ok");
    // The first request goes in the upgrade, the other two as concurrent streams after it.
    let upgraded = run_client("nghttp", &["-u", "-v", &url("a"), &url("b"), &url("c")]);
    assert!(upgraded.contains("101 Switching Protocols"), "{upgraded}");
    let closed = Cell::new(sum(&reports, "closed"));
    reports.extend(daemon.reports_until(&name, |report| {
        closed.set(closed.get() + report["closed"].as_f64().unwrap_or(0.0));
        closed.get() >= 2.0
    }));

    assert_eq!(sum(&reports, "opened"), 2.0, "{reports:#?}");
    assert_eq!(sum(&reports, "upgraded"), 2.0, "{reports:#?}");
    // curl's upgrade request; nghttp's, and its two streams.
    assert_eq!(sum(&reports, "sessions"), 4.0, "{reports:#?}");
    assert_eq!(max(&reports, "peak_sessions"), 2, "{reports:#?}");
    for report in &reports {
        assert_eq!(report["sessions_unknown"], 0, "{report}");
        assert_eq!(report["errs"], 0, "{report}");
    }
    server.end_input();
}
