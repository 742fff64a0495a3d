//! Interim `1xx` answers (`100 Continue`, `102 Processing`, `103 Early Hints`) do not end an
//! HTTP/1 request: curl asking `Expect: 100-continue` before each body, against a server built
//! on Python's `http.server`, is one session per request, whether the server sends its `100`
//! alone and then its answer in two sends, or the `100` and the answer in one.

use std::cell::Cell;

use serde_json::Value;

use crate::support::{Daemon, Python, max, run_client, sum};

/// An HTTP/1.1 server answering each POST with the length of its body. On `/late` it does not
/// send `100 Continue` when the request asks for it (the client sends its body after its own
/// timeout), and writes the `100` and the whole answer in one send once it has read the body;
/// elsewhere `http.server` answers the `100` at once (one send), and the answer's head and body
/// come in two more sends.
const EXPECT_SERVER: &str = r#"import http.server

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_expect_100(self):
        if self.path == "/late":
            return True
        return super().handle_expect_100()

    def do_POST(self):
        length = str(len(self.rfile.read(int(self.headers["Content-Length"])))).encode()
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(length)
        if self.path == "/late":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n" + head + length)
        else:
            self.wfile.write(head)
            self.wfile.write(length)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// Bytes of each request's body: more than curl sends with its headers, so that it waits for
/// the `100`.
const BODY_BYTES: usize = 5 * 1024;

/// Three POSTs asking `Expect: 100-continue` on one connection to `path` of the server on
/// `port`, and the daemon's reports until that connection has closed.
fn three_posts_expecting_continue(
    daemon: &mut Daemon,
    port: u16,
    path: &str,
    body: &str,
) -> Vec<Value> {
    let name = format!("127.0.0.1:{port}");
    let url = format!("http://127.0.0.1:{port}{path}");
    let answers = run_client(
        "curl",
        &[
            "-s",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "0.3",
            "--data-binary",
            &format!("@{body}"),
            &url,
            &url,
            &url,
        ],
    );
    assert_eq!(answers, BODY_BYTES.to_string().repeat(3));
    let closed = Cell::new(0.0);
    daemon.reports_until(&name, |report| {
        closed.set(closed.get() + report["closed"].as_f64().unwrap_or(0.0));
        closed.get() >= 1.0 && report["curr"] == 0
    })
}

#[test]
fn a_100_continue_does_not_end_its_request() {
    let mut server = Python::start(EXPECT_SERVER, &[]);
    let port = server.port();
    let name = format!("127.0.0.1:{port}");
    let body = std::env::temp_dir().join(format!("tracker-expect-{port}.bin"));
    std::fs::write(&body, vec![b'x'; BODY_BYTES]).unwrap();
    let body = body.to_str().unwrap().to_owned();
    let mut daemon = Daemon::start(&["--interval", "0.5", "--port", &port.to_string()]);
    let mut first = vec![daemon.next_report(&name)];

    for path in ["/", "/late"] {
        let mut reports = three_posts_expecting_continue(&mut daemon, port, path, &body);
        reports.append(&mut first);
        assert_eq!(sum(&reports, "opened"), 1.0, "{path}: {reports:#?}");
        assert_eq!(
            sum(&reports, "sessions"),
            3.0,
            "{path}: one session per request: {reports:#?}"
        );
        assert_eq!(max(&reports, "peak_sessions"), 1, "{path}: {reports:#?}");
        for report in &reports {
            assert_eq!(report["sessions_unknown"], 0, "{path}: {report}");
            assert_eq!(report["errs"], 0, "{path}: {report}");
        }
    }
    let _ = std::fs::remove_file(&body);
}
