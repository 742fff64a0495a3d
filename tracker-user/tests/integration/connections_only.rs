//! `--connections-only`: occupancy at the lowest cost. Lives are counted as always; busy time
//! and sessions are null in JSON and absent from Prometheus, as on a kernel without a turns
//! hook, and the start-up line says it was asked for.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;

use crate::prometheus::{scrape_until, series_value};
use crate::support::{Daemon, connect_many, free_port, max, sum};

/// Every figure that needs the turns hook.
const TURNS_FIELDS: [&str; 8] = [
    "active_for_s",
    "busy",
    "busy_peak",
    "peak_sessions",
    "sessions",
    "sessions_unknown",
    "sessions_untracked",
    "upgraded",
];

#[test]
fn connections_only_counts_lives_and_leaves_busy_time_and_sessions_null() {
    const CONNECTIONS: usize = 3;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let name = addr.to_string();
    let metrics_port = free_port("127.0.0.1");
    let mut daemon = Daemon::start(&[
        "--connections-only",
        "--interval",
        "0.5",
        "--port",
        &addr.port().to_string(),
        "--prometheus",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    assert!(
        daemon.attach_line().contains("turns: off as asked"),
        "{}",
        daemon.attach_line()
    );

    // A request and its answer on each: what would be a turn and a session.
    let mut conns = connect_many(&listener, addr, CONNECTIONS);
    for conn in &mut conns {
        conn.client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut request = [0u8; 27];
        conn.server.read_exact(&mut request).unwrap();
        conn.server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
    }
    let mut reports = daemon.reports_until(&name, |report| report["curr"] == CONNECTIONS);
    for conn in conns {
        conn.close();
    }
    let closed = std::cell::Cell::new(0.0);
    reports.extend(daemon.reports_until(&name, |report| {
        closed.set(closed.get() + report["closed"].as_f64().unwrap());
        closed.get() >= CONNECTIONS as f64 && report["curr"] == 0
    }));

    assert_eq!(sum(&reports, "opened"), CONNECTIONS as f64, "{reports:#?}");
    assert_eq!(max(&reports, "peak"), CONNECTIONS as u64, "{reports:#?}");
    assert!(sum(&reports, "conn_for_s") > 0.0, "{reports:#?}");
    for report in &reports {
        assert!(report["hooks"]["turns"].is_null(), "{report}");
        assert!(!report["hooks"]["lifecycle"].is_null(), "{report}");
        for field in TURNS_FIELDS {
            assert!(report[field].is_null(), "{field} is not null: {report}");
        }
        assert_eq!(report["errs"], 0, "{report}");
    }

    let scrape = scrape_until(metrics_port, |body| {
        series_value(body, "tracker_connections_closed_total", &name).as_deref()
            == Some(&CONNECTIONS.to_string())
    });
    for absent in [
        "tracker_busy_seconds_total",
        "tracker_busy_connections",
        "tracker_sessions_total",
        "tracker_sessions_peak",
        "tracker_sessions_unknown_connections",
        "tracker_sessions_untracked_total",
        "tracker_connection_peak_sessions_count",
        "tracker_connections_upgraded_total",
    ] {
        assert_eq!(
            series_value(&scrape, absent, &name),
            None,
            "{absent}:\n{scrape}"
        );
    }
    assert!(!scrape.contains(r#"capability="turns""#), "{scrape}");
}
