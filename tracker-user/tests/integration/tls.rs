//! Sessions inside TLS, read as plaintext from the servers' shared OpenSSL (`libssl.so.3`):
//! Debian's nginx-light terminating TLS for h2load (HTTP/2 by ALPN) and curl (HTTP/1.1
//! keep-alive), and Debian's Python with its `ssl` module, which links the same library. A
//! server whose TLS the daemon cannot hook is counted unknown, and the daemon says why.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Daemon, Nginx, Python, max, run_client, slow_backend, slowdown, sum};

const INTERVAL: &str = "0.5";

/// A self-signed certificate and key for 127.0.0.1 in a directory of their own, removed when
/// dropped.
pub(crate) struct Certificate {
    dir: PathBuf,
}

impl Certificate {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tracker-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the certificate directory");
        let certificate = Self { dir };
        run_client(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &certificate.key(),
                "-out",
                &certificate.cert(),
            ],
        );
        certificate
    }

    pub(crate) fn cert(&self) -> String {
        self.dir.join("cert.pem").display().to_string()
    }

    pub(crate) fn key(&self) -> String {
        self.dir.join("key.pem").display().to_string()
    }

    /// nginx terminating TLS with this certificate on `port` (`listen` parameters such as
    /// `ssl http2`), proxying to the backend on `backend`.
    fn nginx_proxy(&self, port: u16, listen: &str, backend: u16) -> Nginx {
        Nginx::start(
            &format!(
                "server {{ listen 127.0.0.1:{port} {listen};
                    ssl_certificate {}; ssl_certificate_key {};
                    location / {{ proxy_pass http://127.0.0.1:{backend}; }} }}",
                self.cert(),
                self.key(),
            ),
            &[port],
        )
    }
}

impl Drop for Certificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the daemon on `port` and waits until it follows the TLS library of the listener's
/// owner (see [`wait_for_tls`]).
fn daemon_following_tls(port: u16) -> Daemon {
    let mut daemon = Daemon::start(&["--interval", INTERVAL, "--port", &port.to_string()]);
    let _ = wait_for_tls(&mut daemon, port);
    daemon
}

/// Waits for a report of the listener on `port` naming the TLS library followed; returns the
/// reports until then.
pub(crate) fn wait_for_tls(daemon: &mut Daemon, port: u16) -> Vec<Value> {
    daemon.reports_until(&format!("127.0.0.1:{port}"), |report| {
        report["tls_library"]
            .as_str()
            .is_some_and(|library| library.contains("libssl.so"))
    })
}

/// Reports until `connections` have closed and nothing is open.
fn reports_until_closed(daemon: &mut Daemon, port: u16, connections: u64) -> Vec<Value> {
    let closed = std::cell::Cell::new(0);
    daemon.reports_until(&format!("127.0.0.1:{port}"), |report| {
        closed.set(closed.get() + report["closed"].as_u64().unwrap());
        closed.get() >= connections && report["curr"] == 0
    })
}

/// `requests` HTTP/1.1 requests, one after another, on one keep-alive connection (curl reuses
/// it for every URL it is given).
fn curl_keep_alive(port: u16, requests: usize) {
    let urls: Vec<String> = (0..requests)
        .map(|n| format!("https://127.0.0.1:{port}/r{n}"))
        .collect();
    let mut args = vec!["-sk", "--http1.1"];
    args.extend(urls.iter().map(String::as_str));
    let output = run_client("curl", &args);
    assert_eq!(output.matches("ok").count(), requests, "{output}");
}

pub(crate) fn assert_followed(daemon: &mut Daemon, reports: &[Value]) {
    for report in reports {
        assert_eq!(report["errs"], 0, "unexpected errors: {report}");
        assert_eq!(report["sessions_unknown"], 0, "sessions unknown: {report}");
    }
    daemon.assert_no_ring_loss(reports);
}

/// The issue's first case: `h2load -c 2 -m 5` over TLS (HTTP/2 by ALPN) through nginx to a
/// backend that holds each answer 0.3 s, so each connection's five streams overlap.
#[test]
fn h2load_over_tls_through_nginx_counts_every_stream() {
    const CONNECTIONS: u64 = 2;
    const STREAMS: u64 = 5;
    const REQUESTS: u64 = 20;
    let backend = slow_backend(Duration::from_millis(300) * slowdown());
    let certificate = Certificate::new("h2");
    let port = crate::support::free_port("127.0.0.1");
    let _nginx = certificate.nginx_proxy(port, "ssl http2", backend.port);
    let mut daemon = daemon_following_tls(port);

    let output = run_client(
        "h2load",
        &[
            "-n",
            &REQUESTS.to_string(),
            "-c",
            &CONNECTIONS.to_string(),
            "-m",
            &STREAMS.to_string(),
            &format!("https://127.0.0.1:{port}/slow"),
        ],
    );
    assert!(output.contains("Application protocol: h2"), "{output}");
    assert!(
        output.contains(&format!("{REQUESTS} succeeded")),
        "{output}"
    );

    let reports = reports_until_closed(&mut daemon, port, CONNECTIONS);
    assert_followed(&mut daemon, &reports);
    assert_eq!(sum(&reports, "opened"), CONNECTIONS as f64, "{reports:#?}");
    assert_eq!(max(&reports, "peak_sessions"), STREAMS, "{reports:#?}");
    assert_eq!(sum(&reports, "sessions"), REQUESTS as f64, "{reports:#?}");
}

/// The issue's second case: six HTTP/1.1 requests one after another on one keep-alive TLS
/// connection (curl), each held 0.1 s by the backend. nginx starts after the daemon: its
/// listener is learned from the `listen()` of its master, and its worker, which serves the
/// connections, runs the same hooked library file.
#[test]
fn http1_keep_alive_over_tls_counts_each_request() {
    const REQUESTS: usize = 6;
    let hold = Duration::from_millis(100) * slowdown();
    let backend = slow_backend(hold);
    let certificate = Certificate::new("h1");
    let port = crate::support::free_port("127.0.0.1");
    let mut daemon = Daemon::start(&["--interval", INTERVAL, "--port", &port.to_string()]);
    let _nginx = certificate.nginx_proxy(port, "ssl", backend.port);
    // The readiness probe of `Nginx::start` is a connection too, seen here.
    let mut reports = wait_for_tls(&mut daemon, port);

    curl_keep_alive(port, REQUESTS);

    let probe_closed = sum(&reports, "closed") as u64;
    reports.extend(reports_until_closed(&mut daemon, port, 2 - probe_closed));
    assert_followed(&mut daemon, &reports);
    assert_eq!(
        sum(&reports, "opened"),
        2.0,
        "the probe and curl's connection: {reports:#?}"
    );
    assert_eq!(max(&reports, "peak_sessions"), 1, "{reports:#?}");
    assert_eq!(sum(&reports, "sessions"), REQUESTS as f64, "{reports:#?}");
    // Each request keeps the connection busy for at least its hold.
    let busy = sum(&reports, "active_for_s");
    let rounding = 0.05 * reports.len() as f64;
    let held = REQUESTS as f64 * hold.as_secs_f64();
    assert!(
        busy >= held * 0.95 - rounding,
        "busy {busy} s, held {held} s: {reports:#?}"
    );
}

/// An HTTP/1.1 server on Python's `ssl` module (certificate and key as arguments), which
/// reads and writes through `SSL_read_ex` and `SSL_write_ex`, each connection in a thread
/// started after the daemon hooked the process, and sends no TLS 1.3 session tickets; each
/// answer is held 0.1 s.
const PYTHON_TLS_SERVER: &str = r#"import http.server, ssl, sys, time

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        time.sleep(0.1)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
# No session tickets: nothing is sent after the client's last handshake record, so the first
# request's plaintext arrives while the handshake's turn is still open.
context.num_tickets = 0
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

#[test]
fn a_python_ssl_server_is_followed_through_the_same_library() {
    const REQUESTS: usize = 3;
    let certificate = Certificate::new("python");
    let mut server = Python::start(
        PYTHON_TLS_SERVER,
        &[&certificate.cert(), &certificate.key()],
    );
    let port = server.port();
    let mut daemon = daemon_following_tls(port);

    curl_keep_alive(port, REQUESTS);

    let reports = reports_until_closed(&mut daemon, port, 1);
    assert_followed(&mut daemon, &reports);
    assert_eq!(max(&reports, "peak_sessions"), 1, "{reports:#?}");
    assert_eq!(sum(&reports, "sessions"), REQUESTS as f64, "{reports:#?}");
}

/// A plain TCP server that reads whatever comes until the client closes: it maps no TLS
/// library, so TLS sent to it is TLS the daemon cannot see into.
const PLAIN_SERVER: &str = r#"import socket
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
print(listener.getsockname()[1], flush=True)
while True:
    connection, _ = listener.accept()
    while connection.recv(4096):
        pass
    connection.close()
"#;

/// A server whose TLS library is not hooked (here: none at all) has its TLS connections
/// counted as unknown, never guessed, and the daemon says which process and why.
#[test]
fn tls_the_daemon_cannot_hook_is_unknown_and_logged() {
    let mut server = Python::start(PLAIN_SERVER, &[]);
    let port = server.port();
    let name = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(&["--interval", INTERVAL, "--port", &port.to_string()]);
    let mut reports = vec![daemon.next_report(&name)];

    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    // The start of a ClientHello record: handshake (22), TLS 1.0 record version, length.
    client
        .write_all(&[22, 3, 1, 0, 64, 1, 0, 0, 60, 3, 3])
        .expect("sending a TLS record");
    reports.extend(daemon.reports_until(&name, |report| report["sessions_unknown"] == 1));
    drop(client);
    reports.extend(daemon.reports_until(&name, |report| report["curr"] == 0));

    assert!(
        reports.iter().all(|report| report["tls_library"].is_null()),
        "{reports:#?}"
    );
    daemon.wait_for_log(&format!(
        "serves TLS on {name} through a TLS library tracker does not hook"
    ));
    // Once per process, however many reports show it.
    let log = daemon.log_until_now();
    assert_eq!(
        log.matches("through a TLS library tracker does not hook")
            .count(),
        1,
        "{log}"
    );
}
