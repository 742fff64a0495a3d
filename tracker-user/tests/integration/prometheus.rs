//! The `--prometheus` endpoint as a real Prometheus server sees it: Debian's `prometheus`
//! (installed by `cargo xtask test`) scrapes the daemon, and the test reads the figures back
//! through Prometheus's query API, so the exposition format is checked by the real parser;
//! `promtool check metrics` lints what a classic scraper gets.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Daemon, connect_many, free_port, patience};

/// How often the test asks Prometheus again; it scrapes every second.
const POLL: Duration = Duration::from_millis(200);

/// A Prometheus server in its own temporary directory, killed (and the directory removed)
/// when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second and waits until it is ready.
    fn start(target: &str) -> Self {
        let port = free_port("127.0.0.1");
        let dir =
            std::env::temp_dir().join(format!("tracker-prometheus-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the Prometheus directory");
        let config = format!(
            "global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: tracker
    static_configs:
      - targets: ['{target}']
"
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("writing prometheus.yml");
        let log =
            std::fs::File::create(dir.join("prometheus.log")).expect("creating the Prometheus log");
        let child = Command::new("prometheus")
            .arg("--config.file")
            .arg(&config_path)
            .arg("--storage.tsdb.path")
            .arg(dir.join("data"))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().expect("sharing the log file"))
            .stderr(log)
            .spawn()
            .expect("starting prometheus (is it installed? `cargo xtask test` installs it)");
        let mut prometheus = Self { child, dir, port };
        prometheus.wait_until_ready();
        prometheus
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + patience();
        loop {
            if let Ok((200, _)) = http_get(self.port, "/-/ready") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}) before ready:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within {:?}:\n{}",
                patience(),
                self.log()
            );
            thread::sleep(POLL);
        }
    }

    /// Evaluates `expr` now; the number of its first result (None when nothing matches yet),
    /// and the raw answer for failure messages.
    fn query(&self, expr: &str) -> (Option<f64>, String) {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let body = match http_get(self.port, &path) {
            Ok((200, body)) => body,
            Ok((status, body)) => return (None, format!("HTTP {status}: {body}")),
            Err(error) => return (None, format!("querying prometheus: {error}")),
        };
        let value = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|answer| {
                answer["data"]["result"][0]["value"][1]
                    .as_str()?
                    .parse()
                    .ok()
            });
        (value, body)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log"))
            .unwrap_or_else(|error| format!("(no prometheus log: {error})"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), enough for a query
/// parameter holding a PromQL expression.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `GET path` on 127.0.0.1:`port` over a plain socket: the status code and the body.
/// Prometheus's answers are small, so HTTP/1.0 (no chunked encoding) keeps this simple.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(patience()))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let invalid = || std::io::Error::other(format!("not an HTTP response: {response:?}"));
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(invalid)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(invalid)?;
    Ok((status, body.to_owned()))
}

#[test]
fn prometheus_scrapes_connection_counts() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let port = addr.port().to_string();
    let metrics_port = free_port("127.0.0.1");
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let _daemon = Daemon::start(&[
        "--interval",
        "0.5",
        "--port",
        &port,
        "--prometheus",
        &metrics_addr,
    ]);
    let prometheus = Prometheus::start(&metrics_addr);

    // Five connections, two of them closed again: three stay open until the test ends.
    let mut conns = connect_many(&server, addr, 5);
    for conn in conns.drain(..2) {
        conn.close();
    }

    // Summed over the series of the port: the process label could change while the daemon
    // learns the listener's owner, and the sum does not care.
    let of_port = |metric: &str| format!(r#"sum({metric}{{port="{port}"}})"#);
    let expected = [
        ("tracker_connections_opened_total", 5.0),
        ("tracker_connections_closed_total", 2.0),
        ("tracker_connections", 3.0),
    ];
    let deadline = Instant::now() + patience();
    let mut last_answer = String::new();
    loop {
        let mut all_there = true;
        for (metric, want) in expected {
            let (value, answer) = prometheus.query(&of_port(metric));
            if value != Some(want) {
                all_there = false;
                last_answer = format!("{metric}: {answer}");
                break;
            }
        }
        if all_there {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not see {expected:?} within {:?}; last answer:\n\
             {last_answer}\nprometheus log:\n{}",
            patience(),
            prometheus.log()
        );
        thread::sleep(POLL);
    }

    for (metric, want) in [
        ("tracker_errors_total", 0.0),
        ("tracker_connection_lifetime_seconds_count", 2.0),
    ] {
        let (value, answer) = prometheus.query(&of_port(metric));
        assert_eq!(
            value,
            Some(want),
            "{metric}; answer:\n{answer}\nprometheus log:\n{}",
            prometheus.log()
        );
    }
    drop(conns);
}

/// The value of the series of `metric` whose `listener` label is `listener`, in a scrape in
/// the classic text format (labels are written `listener` first).
pub fn series_value(scrape: &str, metric: &str, listener: &str) -> Option<String> {
    let prefix = format!(r#"{metric}{{listener="{listener}","#);
    scrape
        .lines()
        .find(|line| line.starts_with(&prefix))
        .and_then(|line| line.rsplit(' ').next())
        .map(str::to_owned)
}

/// Scrapes the daemon's endpoint until `done` holds for the body (which it returns); fails
/// after [`patience`] with the last body.
pub fn scrape_until(metrics_port: u16, done: impl Fn(&str) -> bool) -> String {
    let patience = patience();
    let deadline = Instant::now() + patience;
    let mut last = String::new();
    loop {
        if let Ok((200, body)) = http_get(metrics_port, "/metrics") {
            if done(&body) {
                return body;
            }
            last = body;
        }
        assert!(
            Instant::now() < deadline,
            "the scrape did not show what was expected within {patience:?}; last:\n{last}"
        );
        thread::sleep(POLL);
    }
}

#[test]
fn promtool_finds_nothing_to_lint_in_a_scrape() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let metrics_port = free_port("127.0.0.1");
    let _daemon = Daemon::start(&[
        "--interval",
        "0.5",
        "--port",
        &addr.port().to_string(),
        "--prometheus",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    let mut conns = connect_many(&server, addr, 3);
    conns.pop().expect("three connections").close();
    // Every kind of series there: counters, gauges and a histogram with an observation.
    let listener = addr.to_string();
    let scrape = scrape_until(metrics_port, |body| {
        series_value(body, "tracker_connections_closed_total", &listener).as_deref() == Some("1")
            && series_value(body, "tracker_connection_lifetime_seconds_count", &listener).as_deref()
                == Some("1")
    });
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool (`cargo xtask test` installs the prometheus package)");
    promtool
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(scrape.as_bytes())
        .expect("feeding promtool");
    let output = promtool.wait_with_output().expect("waiting for promtool");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && findings.trim().is_empty(),
        "promtool check metrics ({}):\n{findings}\nscrape:\n{scrape}",
        output.status
    );
    drop(conns);
}
