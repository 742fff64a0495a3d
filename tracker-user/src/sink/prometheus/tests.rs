//! The Prometheus sink's tests: reports in, exposition text out.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use super::*;
use crate::kernel::hooks::{Capability, HookChoice};
use crate::model::{ConnState, Tracker};
use crate::observer::{ClosedConnection, Owner};
use crate::sink::IntervalTotals;

const SEC: Nanos = 1_000_000_000;
const LABELS: &str = r#"listener="127.0.0.1:8080",port="8080",process="nginx""#;

fn remote(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn report(tracker: &mut Tracker<SocketAddr>, now: Nanos) -> ListenerReport {
    ListenerReport {
        owners: vec![Owner {
            pid: 7,
            comm: "nginx".into(),
            cmdline: String::new(),
        }],
        ..ListenerReport::quiet(
            TrackerId::listen(0, "127.0.0.1:8080".parse().unwrap()),
            tracker.snapshot(now, true),
        )
    }
}

fn closed(lifetime_ns: Nanos, peak_sessions: u32) -> ClosedConnection {
    ClosedConnection {
        lifetime_ns,
        peak_sessions,
    }
}

/// Every capability served, as on a kernel with fentry.
fn all_hooks() -> HookChoice {
    let mut hooks = HookChoice::default();
    hooks.set(
        Capability::Lifecycle,
        Some("raw tracepoint inet_sock_set_state"),
    );
    hooks.set(Capability::Turns, Some("fexit tcp_recvmsg/tcp_sendmsg"));
    hooks.set(Capability::Accept, Some("fexit inet_csk_accept"));
    hooks.set(Capability::Close, Some("fentry tcp_close"));
    hooks
}

/// The same traffic in two reports, made as the daemon does: three
/// connections, one of which closes in the first interval and one in the second; an error
/// in each interval; ring buffer losses in both.
fn two_reports() -> [(ListenerReport, IntervalTotals); 2] {
    let mut tracker = Tracker::new("127.0.0.1:8080");
    for port in 1..=3 {
        tracker.conn_state(remote(port), 0, ConnState::New);
    }
    tracker.conn_state(remote(1), SEC, ConnState::Active);
    tracker.conn_state(remote(1), 2 * SEC, ConnState::Closed);
    tracker.conn_state(remote(9), 2 * SEC, ConnState::Idle);
    let mut first = report(&mut tracker, 4 * SEC);
    first.closed_connections = vec![closed(2 * SEC, 0)];
    tracker.conn_state(remote(2), 5 * SEC, ConnState::Active);
    tracker.conn_state(remote(2), 6 * SEC, ConnState::Closed);
    tracker.conn_state(remote(8), 6 * SEC, ConnState::Idle);
    let mut second = report(&mut tracker, 8 * SEC);
    second.closed_connections = vec![closed(6 * SEC, 3)];
    let totals = |lost_events| IntervalTotals {
        unix_time_s: 0.0,
        interval_s: 4.0,
        lost_events,
        untracked_connections: 1,
        listen_overflows: 0,
        listen_drops: 0,
        unattributed_closes: 1,
        hooks: all_hooks(),
    };
    [
        (first, totals(2)),
        (
            second,
            IntervalTotals {
                untracked_connections: 0,
                unattributed_closes: 0,
                ..totals(3)
            },
        ),
    ]
}

fn publish(sink: &mut Inner, report: &ListenerReport, totals: IntervalTotals) {
    sink.apply(&ReportBatch {
        reports: std::slice::from_ref(report),
        totals,
        per_interval: true,
    });
}

/// The value of the sample line `name{labels}`, which must be there exactly once.
fn sample(text: &str, series: &str) -> String {
    let prefix = format!("{series} ");
    let values: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .collect();
    assert_eq!(values.len(), 1, "{series} in:\n{text}");
    values[0].to_owned()
}

fn assert_after_two_reports(text: &str) {
    let expect = |series: &str, value: &str| assert_eq!(sample(text, series), value, "{text}");
    expect(
        &format!("tracker_connections_opened_total{{{LABELS}}}"),
        "3",
    );
    expect(
        &format!("tracker_connections_closed_total{{{LABELS}}}"),
        "2",
    );
    expect(
        &format!(r#"tracker_errors_total{{{LABELS},kind="no_conn_in_map"}}"#),
        "2",
    );
    expect(
        &format!(r#"tracker_errors_total{{{LABELS},kind="conns_lost"}}"#),
        "0",
    );
    // Open time: 2 s + 6 s for the closed ones, 8 s for the one still open.
    expect(
        &format!("tracker_connection_seconds_total{{{LABELS}}}"),
        "16.0",
    );
    expect(&format!("tracker_busy_seconds_total{{{LABELS}}}"), "2.0");
    expect("tracker_lost_events_total", "5");
    expect("tracker_untracked_connections_total", "1");
    expect("tracker_unattributed_closes_total", "1");
    expect(&format!("tracker_connections{{{LABELS}}}"), "1");
    expect(&format!("tracker_listener_up{{{LABELS}}}"), "1");
    expect(
        &format!("tracker_connection_lifetime_seconds_count{{{LABELS}}}"),
        "2",
    );
    expect(
        &format!("tracker_connection_lifetime_seconds_sum{{{LABELS}}}"),
        "8.0",
    );
    expect(
        &format!(r#"tracker_connection_lifetime_seconds_bucket{{le="2.048",{LABELS}}}"#),
        "1",
    );
    expect(
        &format!(r#"tracker_connection_lifetime_seconds_bucket{{le="8.192",{LABELS}}}"#),
        "2",
    );
    expect(
        &format!("tracker_connection_peak_sessions_count{{{LABELS}}}"),
        "2",
    );
    expect(
        &format!(r#"tracker_connection_peak_sessions_bucket{{le="0.0",{LABELS}}}"#),
        "1",
    );
    expect(
        &format!(r#"tracker_connection_peak_sessions_bucket{{le="4.0",{LABELS}}}"#),
        "2",
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn per_interval_reports_are_added_up() {
    let mut sink = Inner::new();
    let [(first, first_totals), (second, second_totals)] = two_reports();
    publish(&mut sink, &first, first_totals);
    let text = sink.encode_openmetrics().unwrap();
    assert_eq!(
        sample(
            &text,
            &format!("tracker_connections_opened_total{{{LABELS}}}")
        ),
        "3"
    );
    assert_eq!(
        sample(&text, &format!("tracker_connections_peak{{{LABELS}}}")),
        "3"
    );
    publish(&mut sink, &second, second_totals);
    let text = sink.encode_openmetrics().unwrap();
    assert_after_two_reports(&text);
    // The peak of the second interval only: the reset brought it down to the 2 open then.
    assert_eq!(
        sample(&text, &format!("tracker_connections_peak{{{LABELS}}}")),
        "2"
    );
}

#[test]
fn hooks_are_named_and_unserved_figures_have_no_series() {
    let mut hooks = all_hooks();
    hooks.set(Capability::Turns, None);
    hooks.set(Capability::Close, None);
    let [(mut report, totals), _] = two_reports();
    report.accepted = 2;
    let mut sink = Inner::new();
    publish(&mut sink, &report, IntervalTotals { hooks, ..totals });
    let text = sink.encode_openmetrics().unwrap();
    assert_eq!(
        sample(
            &text,
            r#"tracker_hook_info{capability="accept",hook="fexit inet_csk_accept"}"#
        ),
        "1"
    );
    assert!(!text.contains("capability=\"turns\""), "{text}");
    assert_eq!(
        sample(
            &text,
            &format!("tracker_connections_accepted_total{{{LABELS}}}")
        ),
        "2"
    );
    for absent in [
        "tracker_busy_seconds_total{",
        "tracker_busy_connections{",
        "tracker_sessions_peak{",
        "tracker_connections_server_closed_total{",
    ] {
        assert!(!text.contains(absent), "{absent} in {text}");
    }
}

#[test]
fn gone_listener_keeps_its_counters_and_is_down() {
    let mut sink = Inner::new();
    let mut tracker = Tracker::new("127.0.0.1:8080");
    tracker.conn_state(remote(1), 0, ConnState::New);
    tracker.conn_state(remote(1), SEC, ConnState::Closed);
    let mut last = report(&mut tracker, SEC);
    last.gone = true;
    publish(&mut sink, &last, IntervalTotals::default());
    // Later reports no longer list it.
    sink.apply(&ReportBatch {
        reports: &[],
        totals: IntervalTotals::default(),
        per_interval: true,
    });
    let text = sink.encode_openmetrics().unwrap();
    assert_eq!(
        sample(&text, &format!("tracker_listener_up{{{LABELS}}}")),
        "0"
    );
    assert_eq!(
        sample(
            &text,
            &format!("tracker_connections_opened_total{{{LABELS}}}")
        ),
        "1"
    );
    // Listening again with a fresh tracker: its first figures are all new.
    let mut fresh = Tracker::new("127.0.0.1:8080");
    fresh.conn_state(remote(2), 2 * SEC, ConnState::New);
    publish(
        &mut sink,
        &report(&mut fresh, 3 * SEC),
        IntervalTotals::default(),
    );
    let text = sink.encode_openmetrics().unwrap();
    assert_eq!(
        sample(
            &text,
            &format!("tracker_connections_opened_total{{{LABELS}}}")
        ),
        "2"
    );
    assert_eq!(
        sample(&text, &format!("tracker_listener_up{{{LABELS}}}")),
        "1"
    );
}

#[test]
fn owner_change_moves_gauges_but_keeps_counters() {
    let mut sink = Inner::new();
    let mut tracker = Tracker::new("127.0.0.1:8080");
    tracker.conn_state(remote(1), 0, ConnState::New);
    let mut unowned = report(&mut tracker, SEC);
    unowned.owners.clear();
    publish(&mut sink, &unowned, IntervalTotals::default());
    tracker.conn_state(remote(2), SEC, ConnState::New);
    publish(
        &mut sink,
        &report(&mut tracker, 2 * SEC),
        IntervalTotals::default(),
    );
    let text = sink.encode_openmetrics().unwrap();
    let unowned_labels = r#"listener="127.0.0.1:8080",port="8080",process="""#;
    assert_eq!(
        sample(
            &text,
            &format!("tracker_connections_opened_total{{{unowned_labels}}}")
        ),
        "1"
    );
    assert_eq!(
        sample(
            &text,
            &format!("tracker_connections_opened_total{{{LABELS}}}")
        ),
        "1"
    );
    assert_eq!(
        sample(&text, &format!("tracker_connections{{{LABELS}}}")),
        "2"
    );
    assert!(
        !text.contains(&format!("tracker_connections{{{unowned_labels}}}")),
        "{text}"
    );
}

/// `GET path` over a plain socket: the status code, the content type and the body.
#[test]
fn each_listener_has_one_info_series_naming_who_runs_it() {
    use crate::host::workload::cgroup_path::{Container, Qos, Runtime};
    use crate::host::workload::{Pod, Workload};

    let mut sink = Inner::new();
    let mut tracker = Tracker::new("127.0.0.1:8080");
    let plain = report(&mut tracker, SEC);
    publish(&mut sink, &plain, IntervalTotals::default());
    let text = sink.encode_openmetrics().unwrap();
    let unknown = format!(
        r#"tracker_listener_info{{{LABELS},unit="",container="",pod="",pod_namespace=""}}"#
    );
    assert_eq!(sample(&text, &unknown), "1");
    // Its workload becomes known: the series moves, and the other series keep their labels.
    let id = "ab".repeat(32);
    let known = ListenerReport {
        workload: Workload {
            unit: None,
            container: Some(Container {
                runtime: Some(Runtime::Containerd),
                id: id.clone(),
            }),
            pod: Some(Pod {
                uid: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
                qos: Qos::Burstable,
                namespace: Some("shop".into()),
                name: Some("cart".into()),
            }),
        },
        ..report(&mut tracker, 2 * SEC)
    };
    publish(&mut sink, &known, IntervalTotals::default());
    let text = sink.encode_openmetrics().unwrap();
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"tracker_listener_info{{{LABELS},unit="",container="{id}",pod="cart",pod_namespace="shop"}}"#
            )
        ),
        "1"
    );
    assert!(!text.contains(&unknown), "{text}");
    assert_eq!(text.matches("tracker_listener_info{").count(), 1, "{text}");
    assert_eq!(
        sample(&text, &format!("tracker_listener_up{{{LABELS}}}")),
        "1"
    );
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, Option<String>, String) {
    http_get_accepting(addr, path, "*/*")
}

/// `GET path` with an `Accept` header.
fn http_get_accepting(addr: SocketAddr, path: &str, accept: &str) -> (u16, Option<String>, String) {
    let mut stream = TcpStream::connect(addr).expect("connecting to the endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers: {response}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response}"));
    let content_type = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_owned())
    });
    (status, content_type, body.to_owned())
}

#[tokio::test]
async fn serves_metrics_and_nothing_else() {
    let mut sink = PrometheusSink::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = sink.local_addr();
    assert_ne!(addr.port(), 0);
    let mut tracker = Tracker::new("127.0.0.1:8080");
    tracker.conn_state(remote(1), 0, ConnState::New);
    let flow = sink
        .publish(&ReportBatch {
            reports: &[report(&mut tracker, SEC)],
            totals: IntervalTotals::default(),
            per_interval: true,
        })
        .unwrap();
    assert_eq!(flow, Flow::Continue);

    // The server runs on this (current-thread) runtime: the blocking client must not.
    let (metrics, other) =
        tokio::task::spawn_blocking(move || (http_get(addr, "/metrics"), http_get(addr, "/other")))
            .await
            .unwrap();
    let (status, content_type, body) = metrics;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type.as_deref(), Some(CLASSIC_CONTENT_TYPE));
    assert!(
        body.lines()
            .any(|line| line == format!("tracker_connections_opened_total{{{LABELS}}} 1")),
        "{body}"
    );
    assert!(
        body.contains("# TYPE tracker_connections_opened_total counter\n"),
        "{body}"
    );
    assert!(!body.contains("# EOF"), "{body}");
    assert_eq!(other.0, 404);

    let (status, content_type, body) = tokio::task::spawn_blocking(move || {
        http_get_accepting(
            addr,
            "/metrics",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type.as_deref(), Some(OPENMETRICS_CONTENT_TYPE));
    assert!(body.ends_with("# EOF\n"), "{body}");
}

#[tokio::test]
async fn address_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let Err(error) = PrometheusSink::start(addr).await else {
        panic!("binding {addr} twice succeeded");
    };
    let message = format!("{error:#}");
    assert!(message.contains(&addr.to_string()), "{message}");
    assert!(message.contains("in use"), "{message}");
}

#[test]
fn same_address_in_two_namespaces_is_two_sets_of_series() {
    let mut sink = Inner::new();
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let mut trackers = [0, 4026532481].map(|netns| {
        let id = TrackerId::listen(netns, addr);
        (id, Tracker::new(id.to_string()))
    });
    for (n, (_, tracker)) in (1..).zip(trackers.iter_mut()) {
        for port in 0..n {
            tracker.conn_state(remote(port), 0, ConnState::New);
        }
    }
    let reports: Vec<ListenerReport> = trackers
        .iter_mut()
        .map(|(id, tracker)| ListenerReport::quiet(*id, tracker.snapshot(SEC, true)))
        .collect();
    sink.apply(&ReportBatch {
        reports: &reports,
        totals: IntervalTotals::default(),
        per_interval: true,
    });
    // The namespaced one gains an owner: only its own gauges move.
    let mut owned = reports[1].clone();
    owned.owners = vec![Owner {
        pid: 9,
        comm: "srv".into(),
        cmdline: String::new(),
    }];
    publish(&mut sink, &owned, IntervalTotals::default());
    let text = sink.encode_openmetrics().unwrap();
    let own = r#"listener="127.0.0.1:8080",port="8080",process="""#;
    let namespaced = r#"listener="netns:4026532481/127.0.0.1:8080",port="8080",process="srv""#;
    assert_eq!(sample(&text, &format!("tracker_connections{{{own}}}")), "1");
    assert_eq!(
        sample(&text, &format!("tracker_connections{{{namespaced}}}")),
        "2"
    );
    assert_eq!(
        sample(&text, &format!("tracker_connections_opened_total{{{own}}}")),
        "1"
    );
}
