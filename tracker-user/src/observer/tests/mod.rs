//! The observer's unit tests: events in, reports out.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use tracker_common::proto::Protocol;

use super::*;
use crate::event::{Event, SockId};
use crate::model::{ErrorKind, Nanos};
use crate::tracker_id::TrackerId;

mod http2;
mod kernel_busy;
mod owners;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn open(sock: SockId, local: &str, remote: &str, at: Nanos) -> Event {
    Event::ConnOpen {
        netns: 0,
        sock,
        local: addr(local),
        remote: addr(remote),
        at,
        untracked: false,
    }
}

fn close(sock: SockId, local: &str, remote: &str, at: Nanos) -> Event {
    Event::ConnClose {
        netns: 0,
        sock,
        endpoints: Some((addr(local), addr(remote))),
        at,
        turn_end: None,
    }
}

fn turn(sock: SockId, at: Nanos, previous_end: Option<Nanos>) -> Event {
    Event::Turn {
        sock,
        at,
        previous_end,
        protocol: None,
        upgraded: false,
        tls_followed: false,
    }
}

fn up(sock: SockId, listener: &str) -> Event {
    Event::ListenerUp {
        netns: 0,
        sock,
        addr: addr(listener),
        pid: 7,
        comm: "srv".into(),
        cgroup_id: 0,
        cgroup: None,
    }
}

fn report_of(observer: &mut Observer, now: Nanos, listener: &str) -> ListenerReport {
    observer
        .report(now)
        .into_iter()
        .find(|report| report.id == TrackerId::listen(0, addr(listener)))
        .unwrap_or_else(|| panic!("no report for {listener}"))
}

const SECOND: Nanos = 1_000_000_000;

#[test]
fn connections_count_under_their_exact_listener() {
    let mut observer = Observer::new(None);
    assert_eq!(observer.apply(&up(1, "127.0.0.1:8080")), Applied::Done);
    assert_eq!(
        observer.apply(&open(10, "127.0.0.1:8080", "127.0.0.1:5000", 0)),
        Applied::Done
    );
    assert_eq!(
        observer.apply(&open(11, "127.0.0.1:8080", "127.0.0.1:5001", 0)),
        Applied::Done
    );
    assert_eq!(
        observer.apply(&close(10, "127.0.0.1:8080", "127.0.0.1:5000", 2 * SECOND)),
        Applied::Done
    );
    let report = report_of(&mut observer, 3 * SECOND, "127.0.0.1:8080");
    assert_eq!(report.snapshot.curr, 1);
    assert_eq!(report.snapshot.peak, 2);
    assert_eq!(report.snapshot.opened, 2);
    assert_eq!(report.snapshot.closed, 1);
    assert_eq!(report.snapshot.conn_for_ns, 5 * SECOND);
    assert_eq!(report.snapshot.errors.total(), 0);
    assert_eq!(
        report.owners,
        vec![Owner {
            pid: 7,
            comm: "srv".into(),
            cmdline: String::new(),
        }]
    );
    assert!(!report.gone);
}

#[test]
fn wildcard_listeners_take_connections_of_their_family() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "0.0.0.0:80"));
    let _ = observer.apply(&up(2, "[::]:80"));
    let _ = observer.apply(&open(10, "127.0.0.1:80", "127.0.0.1:5000", 0));
    let _ = observer.apply(&open(11, "[::1]:80", "[::1]:5000", 0));
    let _ = observer.apply(&open(
        12,
        "[::ffff:127.0.0.1]:80",
        "[::ffff:127.0.0.1]:5001",
        0,
    ));
    let reports = observer.report(SECOND);
    let curr = |name: &str| {
        reports
            .iter()
            .find(|report| report.id == TrackerId::listen(0, addr(name)))
            .unwrap()
            .snapshot
            .curr
    };
    assert_eq!(curr("0.0.0.0:80"), 1);
    assert_eq!(curr("[::]:80"), 2);
}

#[test]
fn unknown_listener_asks_for_a_rescan_then_counts() {
    let mut observer = Observer::new(None);
    let event = open(10, "127.0.0.1:9000", "127.0.0.1:5000", 0);
    assert_eq!(observer.apply(&event), Applied::NeedsRescan);
    observer.add_scanned_listener(addr("0.0.0.0:9000"), &[]);
    observer.apply_after_rescan(&event);
    assert_eq!(
        report_of(&mut observer, SECOND, "0.0.0.0:9000")
            .snapshot
            .curr,
        1
    );

    // Still unknown after the rescan: tracked under its own local address.
    let event = open(11, "127.0.0.1:9100", "127.0.0.1:5000", 0);
    assert_eq!(observer.apply(&event), Applied::NeedsRescan);
    observer.apply_after_rescan(&event);
    assert_eq!(
        report_of(&mut observer, SECOND, "127.0.0.1:9100")
            .snapshot
            .curr,
        1
    );
}

#[test]
fn listener_with_unassigned_port_asks_for_a_rescan() {
    let mut observer = Observer::new(None);
    assert_eq!(observer.apply(&up(1, "0.0.0.0:0")), Applied::NeedsRescan);
    assert_eq!(observer.listener_addrs().count(), 0);
}

#[test]
fn close_never_seen_open_counts_no_conn_in_map() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "127.0.0.1:8080"));
    let _ = observer.apply(&close(10, "127.0.0.1:8080", "127.0.0.1:5000", SECOND));
    let report = report_of(&mut observer, SECOND, "127.0.0.1:8080");
    assert_eq!(report.snapshot.errors.get(ErrorKind::NoConnInMap), 1);
    assert_eq!(report.snapshot.closed, 0);
}

#[test]
fn close_for_an_unknown_listener_is_counted_as_unattributed() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&close(10, "127.0.0.1:8080", "127.0.0.1:5000", SECOND));
    assert_eq!(observer.stats().unattributed, 1);
}

#[test]
fn reused_socket_address_closes_the_dangling_connection() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "127.0.0.1:8080"));
    let _ = observer.apply(&open(10, "127.0.0.1:8080", "127.0.0.1:5000", 0));
    // Close lost; the kernel reuses socket 10 for a new connection.
    let _ = observer.apply(&open(10, "127.0.0.1:8080", "127.0.0.1:5001", SECOND));
    let report = report_of(&mut observer, 2 * SECOND, "127.0.0.1:8080");
    assert_eq!(report.snapshot.curr, 1);
    assert_eq!(report.snapshot.errors.get(ErrorKind::DanglingConn), 1);
    assert_eq!(observer.connections(), 1);
}

#[test]
fn closed_listener_is_reported_until_its_connections_are_gone() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "127.0.0.1:8080"));
    let _ = observer.apply(&open(10, "127.0.0.1:8080", "127.0.0.1:5000", 0));
    let _ = observer.apply(&Event::ListenerDown {
        netns: 0,
        sock: 1,
        addr: addr("127.0.0.1:8080"),
    });
    let report = report_of(&mut observer, SECOND, "127.0.0.1:8080");
    assert!(report.gone);
    assert_eq!(report.snapshot.curr, 1);
    let _ = observer.apply(&close(10, "127.0.0.1:8080", "127.0.0.1:5000", 2 * SECOND));
    let report = report_of(&mut observer, 3 * SECOND, "127.0.0.1:8080");
    assert!(report.gone);
    assert_eq!(report.snapshot.closed, 1);
    assert!(observer.report(4 * SECOND).is_empty());
}

#[test]
fn reuseport_group_is_one_listener_until_the_last_socket_closes() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "127.0.0.1:8080"));
    let _ = observer.apply(&Event::ListenerUp {
        netns: 0,
        sock: 2,
        addr: addr("127.0.0.1:8080"),
        pid: 8,
        comm: "worker".into(),
        cgroup_id: 0,
        cgroup: Some("/system.slice/srv.service".into()),
    });
    observer.add_scanned_listener_sockets(addr("127.0.0.1:9090"), 2, &[]);
    let reports = observer.report(SECOND);
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].owners.len(), 2);
    assert_eq!(
        reports[0].cgroup.as_deref(),
        Some("/system.slice/srv.service")
    );

    for (sock, listener) in [(1, "127.0.0.1:8080"), (99, "127.0.0.1:9090")] {
        let _ = observer.apply(&Event::ListenerDown {
            netns: 0,
            sock,
            addr: addr(listener),
        });
    }
    assert!(
        observer
            .report(2 * SECOND)
            .iter()
            .all(|report| !report.gone)
    );
    for (sock, listener) in [(2, "127.0.0.1:8080"), (98, "127.0.0.1:9090")] {
        let _ = observer.apply(&Event::ListenerDown {
            netns: 0,
            sock,
            addr: addr(listener),
        });
    }
    assert!(observer.report(3 * SECOND).iter().all(|report| report.gone));
    assert!(observer.report(4 * SECOND).is_empty());
}

#[test]
fn port_filter_ignores_other_listeners() {
    let mut observer = Observer::new(Some(BTreeSet::from([8080])));
    let _ = observer.apply(&up(1, "127.0.0.1:8080"));
    let _ = observer.apply(&up(2, "127.0.0.1:9090"));
    observer.add_scanned_listener(addr("127.0.0.1:7070"), &[]);
    assert_eq!(
        observer.apply(&open(10, "127.0.0.1:9090", "127.0.0.1:5000", 0)),
        Applied::Done
    );
    let reports = observer.report(SECOND);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].id, TrackerId::listen(0, addr("127.0.0.1:8080")));
}

#[test]
fn thousands_of_short_connections_are_counted_exactly() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "[::1]:8080"));
    for n in 0..5_000u64 {
        let remote = format!("[::1]:{}", 10_000 + n % 50_000);
        let _ = observer.apply(&open(100 + n, "[::1]:8080", &remote, n * 1_000));
        let _ = observer.apply(&close(100 + n, "[::1]:8080", &remote, n * 1_000 + 500));
    }
    let report = report_of(&mut observer, SECOND, "[::1]:8080");
    assert_eq!(
        (report.snapshot.opened, report.snapshot.closed),
        (5_000, 5_000)
    );
    assert_eq!(report.snapshot.curr, 0);
    assert_eq!(report.snapshot.peak, 1);
    assert_eq!(report.snapshot.conn_for_ns, 5_000 * 500);
    assert_eq!(observer.connections(), 0);
}

#[test]
fn turns_make_busy_time() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "127.0.0.1:80"));
    let _ = observer.apply(&open(10, "127.0.0.1:80", "127.0.0.1:5000", 0));
    // Request at 1 s answered by 3 s; next request at 5 s answered by 6 s; close at 8 s.
    let _ = observer.apply(&turn(10, SECOND, None));
    let _ = observer.apply(&turn(10, 5 * SECOND, Some(3 * SECOND)));
    let _ = observer.apply(&Event::ConnClose {
        netns: 0,
        sock: 10,
        endpoints: None,
        at: 8 * SECOND,
        turn_end: Some(6 * SECOND),
    });
    let report = report_of(&mut observer, 9 * SECOND, "127.0.0.1:80");
    assert_eq!(report.snapshot.active_for_ns, 3 * SECOND);
    assert_eq!(report.snapshot.conn_for_ns, 8 * SECOND);
    assert_eq!(report.snapshot.busy_peak, 1);
    assert_eq!(report.snapshot.errors.total(), 0);
}

#[test]
fn unused_connection_is_never_busy() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "127.0.0.1:80"));
    let _ = observer.apply(&open(10, "127.0.0.1:80", "127.0.0.1:5000", 0));
    let _ = observer.apply(&close(10, "127.0.0.1:80", "127.0.0.1:5000", 4 * SECOND));
    let report = report_of(&mut observer, 5 * SECOND, "127.0.0.1:80");
    assert_eq!(report.snapshot.active_for_ns, 0);
    assert_eq!(report.snapshot.busy_peak, 0);
}

#[test]
fn provisional_idle_at_a_report_is_corrected_by_the_real_turn_end() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "127.0.0.1:80"));
    let _ = observer.apply(&open(10, "127.0.0.1:80", "127.0.0.1:5000", 0));
    let _ = observer.apply(&turn(10, SECOND, None));
    assert_eq!(observer.busy_sockets(), vec![10]);
    // At the 4 s report the server had last sent at 2 s.
    observer.provisional_idle(10, 2 * SECOND);
    assert!(observer.busy_sockets().is_empty());
    let first = report_of(&mut observer, 4 * SECOND, "127.0.0.1:80");
    assert_eq!(first.snapshot.active_for_ns, SECOND);
    assert_eq!(first.snapshot.busy, 0);
    // It went on sending until 5 s; the next request comes at 6 s.
    let _ = observer.apply(&turn(10, 6 * SECOND, Some(5 * SECOND)));
    observer.provisional_idle(10, 7 * SECOND);
    let second = report_of(&mut observer, 8 * SECOND, "127.0.0.1:80");
    // 2→5 s added back, plus 6→7 s.
    assert_eq!(second.snapshot.active_for_ns, 4 * SECOND);
}

#[test]
fn provisional_idle_without_more_sends_changes_nothing_later() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "127.0.0.1:80"));
    let _ = observer.apply(&open(10, "127.0.0.1:80", "127.0.0.1:5000", 0));
    let _ = observer.apply(&turn(10, SECOND, None));
    observer.provisional_idle(10, 2 * SECOND);
    let first = report_of(&mut observer, 4 * SECOND, "127.0.0.1:80");
    assert_eq!(first.snapshot.active_for_ns, SECOND);
    let _ = observer.apply(&turn(10, 6 * SECOND, Some(2 * SECOND)));
    let second = report_of(&mut observer, 7 * SECOND, "127.0.0.1:80");
    assert_eq!(second.snapshot.active_for_ns, SECOND);
}

#[test]
fn closed_connections_are_logged_once_with_lifetime_and_sessions() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "127.0.0.1:80"));
    let _ = observer.apply(&open(10, "127.0.0.1:80", "127.0.0.1:5000", SECOND));
    let _ = observer.apply(&Event::Turn {
        sock: 10,
        at: 2 * SECOND,
        previous_end: None,
        protocol: Some(Protocol::Http1),
        upgraded: false,
        tls_followed: false,
    });
    let _ = observer.apply(&close(10, "127.0.0.1:80", "127.0.0.1:5000", 4 * SECOND));
    let report = report_of(&mut observer, 5 * SECOND, "127.0.0.1:80");
    assert_eq!(
        report.closed_connections,
        vec![ClosedConnection {
            lifetime_ns: 3 * SECOND,
            peak_sessions: 1
        }]
    );
    assert_eq!(report.snapshot.errors.total(), 0);
    let later = report_of(&mut observer, 6 * SECOND, "127.0.0.1:80");
    assert!(later.closed_connections.is_empty());
}

/// An adopted connection the kernel closed before it was asked to report that close is
/// closed by the daemon, once, as a correction; a connection that was not adopted is left.
#[test]
fn an_adopted_connection_gone_before_its_close_was_followed_is_closed_as_a_correction() {
    let mut observer = Observer::new(None);
    observer.add_scanned_listener(addr("0.0.0.0:80"), &[]);
    let local = addr("127.0.0.1:80");
    observer.adopt(local, addr("127.0.0.1:5000"), SECOND);
    observer.close_adopted(local, addr("127.0.0.1:5000"), 2 * SECOND);
    observer.close_adopted(local, addr("127.0.0.1:5000"), 2 * SECOND);
    observer.close_adopted(local, addr("127.0.0.1:6000"), 2 * SECOND);
    let report = report_of(&mut observer, 3 * SECOND, "0.0.0.0:80");
    assert_eq!((report.snapshot.curr, report.snapshot.closed), (0, 1));
    assert_eq!(report.corrections, 1);
    assert_eq!(report.snapshot.errors.total(), 0);
}

#[test]
fn adopted_connections_count_and_close_without_errors() {
    let mut observer = Observer::new(None);
    observer.add_scanned_listener(addr("0.0.0.0:80"), &[]);
    let local = addr("127.0.0.1:80");
    assert_eq!(
        observer.adopt(local, addr("127.0.0.1:5000"), SECOND),
        Some(addr("0.0.0.0:80"))
    );
    assert_eq!(
        observer.adopt(local, addr("127.0.0.1:5000"), SECOND),
        None,
        "already there"
    );
    assert_eq!(
        observer.adopt(addr("127.0.0.1:81"), addr("127.0.0.1:5000"), SECOND),
        None
    );
    let first = report_of(&mut observer, 2 * SECOND, "0.0.0.0:80");
    assert_eq!((first.snapshot.curr, first.sessions_unknown()), (1, 1));
    // Its close comes with a socket address the observer never saw.
    let _ = observer.apply(&close(77, "127.0.0.1:80", "127.0.0.1:5000", 3 * SECOND));
    let second = report_of(&mut observer, 4 * SECOND, "0.0.0.0:80");
    assert_eq!((second.snapshot.curr, second.snapshot.closed), (0, 1));
    assert_eq!(second.snapshot.errors.total(), 0);
    assert_eq!(second.closed_connections.len(), 1);
}

#[test]
fn reconciliation_closes_lost_closes_and_adopts_lost_opens() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "127.0.0.1:80"));
    let _ = observer.apply(&open(10, "127.0.0.1:80", "127.0.0.1:5000", 0));
    let _ = observer.apply(&open(11, "127.0.0.1:80", "127.0.0.1:5001", 0));
    // The kernel still has 5001, no longer 5000 (close lost), and has 5002 (open lost).
    let kernel = [
        (addr("127.0.0.1:80"), addr("127.0.0.1:5001")),
        (addr("127.0.0.1:80"), addr("127.0.0.1:5002")),
        (addr("127.0.0.1:9999"), addr("127.0.0.1:6000")),
    ];
    let found = observer.discrepancies(&kernel);
    assert_eq!(
        found.model_only,
        BTreeSet::from([(addr("127.0.0.1:80"), addr("127.0.0.1:5000"))])
    );
    assert_eq!(
        found.kernel_only,
        BTreeSet::from([(addr("127.0.0.1:80"), addr("127.0.0.1:5002"))])
    );
    let again = observer.discrepancies(&kernel[..1]);
    let confirmed = found.confirmed_by(&again);
    assert!(confirmed.kernel_only.is_empty(), "5002 was seen only once");
    assert_eq!(confirmed.model_only.len(), 1);

    let adopted = observer.correct(&found, SECOND);
    assert_eq!(
        adopted,
        vec![(addr("127.0.0.1:80"), addr("127.0.0.1:5002"))]
    );
    let report = report_of(&mut observer, 2 * SECOND, "127.0.0.1:80");
    assert_eq!(report.snapshot.curr, 2);
    assert_eq!(report.corrections, 2);
    assert_eq!(report.snapshot.errors.total(), 0);
    assert_eq!(observer.connections(), 1, "socket 10 forgotten");
    assert!(observer.discrepancies(&kernel).is_empty());
}

#[test]
fn accept_queue_samples_sum_reuseport_groups_and_keep_the_peak() {
    let mut observer = Observer::new(None);
    observer.add_scanned_listener_sockets(addr("127.0.0.1:80"), 2, &[]);
    let listener = addr("127.0.0.1:80");
    observer.sample_accept_queues(&[(listener, 3, Some(128)), (listener, 4, Some(128))]);
    observer.sample_accept_queues(&[(listener, 1, Some(128)), (listener, 0, Some(128))]);
    let report = report_of(&mut observer, SECOND, "127.0.0.1:80");
    assert_eq!(
        (
            report.accept_queue,
            report.accept_queue_peak,
            report.accept_backlog
        ),
        (Some(1), Some(7), Some(256))
    );
    let next = report_of(&mut observer, 2 * SECOND, "127.0.0.1:80");
    assert_eq!(
        next.accept_queue_peak,
        Some(1),
        "peak restarts from the current length"
    );
}

#[test]
fn a_backlog_unknown_for_one_socket_of_a_group_is_unknown_for_the_group() {
    let mut observer = Observer::new(None);
    let listener = addr("127.0.0.1:80");
    observer.add_scanned_listener_sockets(listener, 2, &[]);
    observer.sample_accept_queues(&[(listener, 3, Some(128)), (listener, 4, None)]);
    let report = report_of(&mut observer, SECOND, "127.0.0.1:80");
    assert_eq!(
        (report.accept_queue, report.accept_backlog),
        (Some(7), None)
    );
}

#[test]
fn outbound_connections_are_tracked_per_destination() {
    let target = addr("127.0.0.1:5432");
    let mut observer = Observer::new(Some(BTreeSet::from([80]))).with_connect_targets(&[target]);
    let outbound_open = |sock, local: &str, at| Event::OutboundOpen {
        sock,
        local: addr(local),
        remote: target,
        at,
    };
    let _ = observer.apply(&outbound_open(20, "127.0.0.1:40000", 0));
    let _ = observer.apply(&outbound_open(21, "127.0.0.1:40001", 0));
    let _ = observer.apply(&close(20, "127.0.0.1:40000", "127.0.0.1:5432", SECOND));
    let reports = observer.report(2 * SECOND);
    let report = reports
        .iter()
        .find(|report| report.id.is_connect())
        .expect("outbound report");
    assert_eq!(report.id, TrackerId::connect(target));
    assert_eq!(report.snapshot.name, "connect:127.0.0.1:5432");
    assert_eq!((report.snapshot.curr, report.snapshot.peak), (1, 2));
    assert_eq!((report.snapshot.opened, report.snapshot.closed), (2, 1));
    assert_eq!(report.snapshot.errors.total(), 0);
    assert_eq!(report.closed_connections.len(), 1);
    assert!(!report.gone);
}

#[test]
fn http2_streams_beyond_the_limit_are_reported_untracked() {
    use crate::sessions::MAX_OPEN_STREAMS;
    use tracker_common::proto::{FrameHeader, frame};

    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "127.0.0.1:80"));
    let _ = observer.apply(&open(10, "127.0.0.1:80", "127.0.0.1:5000", 0));
    let _ = observer.apply(&Event::Turn {
        sock: 10,
        at: SECOND,
        previous_end: None,
        protocol: Some(Protocol::Http2),
        upgraded: false,
        tls_followed: false,
    });
    for n in 0..=u32::try_from(MAX_OPEN_STREAMS).unwrap() {
        let _ = observer.apply(&Event::H2Frame {
            sock: 10,
            frame: FrameHeader {
                length: 0,
                kind: frame::HEADERS,
                flags: 0x4,
                stream_id: 2 * n + 1,
            },
            goaway_last_stream: None,
            inbound: true,
        });
    }
    let report = report_of(&mut observer, 2 * SECOND, "127.0.0.1:80");
    assert_eq!(report.snapshot.peak_sessions, MAX_OPEN_STREAMS);
    assert_eq!(report.sessions_untracked, 1);
    let next = report_of(&mut observer, 3 * SECOND, "127.0.0.1:80");
    assert_eq!(next.sessions_untracked, 0, "counted in its interval only");
}

/// A `101` ends HTTP/1 on a connection: the upgrade request is one HTTP/1 session, then an
/// h2c connection counts its streams, and one that left HTTP (a WebSocket) is never busy.
#[test]
fn upgraded_connections_go_on_as_http2_or_leave_http() {
    use tracker_common::proto::{FrameHeader, frame};

    let ms = SECOND / 1000;
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "127.0.0.1:80"));
    let upgrade = |sock, remote| {
        [
            open(sock, "127.0.0.1:80", remote, 0),
            Event::Turn {
                sock,
                at: SECOND,
                previous_end: None,
                protocol: Some(Protocol::Http1),
                upgraded: false,
                tls_followed: false,
            },
            // The server's `101` at 1.1 s.
            Event::Turn {
                sock,
                at: 1100 * ms,
                previous_end: Some(1100 * ms),
                protocol: Some(Protocol::Switching),
                upgraded: true,
                tls_followed: false,
            },
        ]
    };
    for event in upgrade(10, "127.0.0.1:5000")
        .iter()
        .chain(&upgrade(11, "127.0.0.1:5001"))
    {
        let _ = observer.apply(event);
    }
    // The h2c client's preface; the WebSocket's client never sends.
    let _ = observer.apply(&Event::Turn {
        sock: 10,
        at: 1200 * ms,
        previous_end: None,
        protocol: Some(Protocol::Http2),
        upgraded: false,
        tls_followed: false,
    });
    for stream_id in [13, 15] {
        let _ = observer.apply(&Event::H2Frame {
            sock: 10,
            frame: FrameHeader {
                length: 0,
                kind: frame::HEADERS,
                flags: 0x5,
                stream_id,
            },
            goaway_last_stream: None,
            inbound: true,
        });
    }
    let report = report_of(&mut observer, 2 * SECOND, "127.0.0.1:80");
    assert_eq!(report.upgraded, 2);
    assert_eq!(report.snapshot.peak_sessions, 2, "{report:?}");
    assert_eq!(report.snapshot.curr, 2);
    assert_eq!(report.snapshot.busy, 1, "the h2c one only: {report:?}");
    // Both upgrade requests (0.1 s each), and the h2c connection's turn from 1.2 s.
    assert_eq!(report.snapshot.active_for_ns, 200 * ms + 800 * ms);
    assert_eq!(report.sessions_unknown(), 0);
    assert_eq!(report.snapshot.errors.total(), 0, "{report:?}");
}

#[test]
fn server_accepts_and_closes_are_counted_per_listener_and_interval() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "127.0.0.1:8080"));
    let _ = observer.apply(&open(10, "127.0.0.1:8080", "127.0.0.1:5000", 0));
    let _ = observer.apply(&open(11, "127.0.0.1:8080", "127.0.0.1:5001", 0));
    for sock in [10, 11] {
        assert_eq!(
            observer.apply(&Event::Accepted { sock, at: 1 }),
            Applied::Done
        );
    }
    let _ = observer.apply(&Event::CloseCalled { sock: 10, at: 2 });
    // A socket the observer does not track counts nowhere.
    let _ = observer.apply(&Event::Accepted { sock: 99, at: 3 });
    let report = report_of(&mut observer, SECOND, "127.0.0.1:8080");
    assert_eq!((report.accepted, report.server_closed), (2, 1));
    let next = report_of(&mut observer, 2 * SECOND, "127.0.0.1:8080");
    assert_eq!((next.accepted, next.server_closed), (0, 0));
    let running = report.then(&next);
    assert_eq!((running.accepted, running.server_closed), (2, 1));
}

fn endpoint(netns: u32, local: &str) -> tracker_common::Endpoint {
    let local = addr(local);
    let key = tracker_common::ConnKey::new(local, local);
    tracker_common::Endpoint {
        netns,
        family: key.family,
        port: local.port(),
        addr: key.local_addr,
    }
}

fn kernel_totals(opened: u64, closed: u64) -> tracker_common::EndpointTotals {
    tracker_common::EndpointTotals {
        connections: tracker_common::Spans {
            started: opened,
            ended: closed,
            ..tracker_common::Spans::default()
        },
        ..tracker_common::EndpointTotals::default()
    }
}

/// Periods started at `starts` and ended at `ends`, as the kernel counts them.
fn spans(starts: &[u64], ends: &[u64]) -> tracker_common::Spans {
    tracker_common::Spans {
        started: starts.len() as u64,
        ended: ends.len() as u64,
        started_at_sum: starts.iter().sum(),
        ended_at_sum: ends.iter().sum(),
    }
}

/// Totals of connections opened at `opens` and closed at `closes`.
fn stamped_totals(opens: &[u64], closes: &[u64]) -> tracker_common::EndpointTotals {
    tracker_common::EndpointTotals {
        connections: spans(opens, closes),
        ..tracker_common::EndpointTotals::default()
    }
}

/// Once the kernel's totals are applied, `opened` and `closed` are the kernel's, per interval
/// and per listener (a wildcard listener takes every local address of its port), whatever
/// events came; outbound trackers and unwatched ports keep their own.
#[test]
fn kernel_totals_replace_the_counts_events_gave() {
    let mut observer = Observer::new(Some(BTreeSet::from([80, 81])));
    observer.add_scanned_listener(addr("0.0.0.0:80"), &[]);
    observer.add_scanned_listener(addr("127.0.0.1:81"), &[]);
    // One open seen, where the kernel counted five on two addresses of port 80.
    let _ = observer.apply(&open(1, "127.0.0.1:80", "127.0.0.1:5000", SECOND));
    observer.apply_kernel_totals(
        &[
            (endpoint(0, "127.0.0.1:80"), kernel_totals(3, 1)),
            (endpoint(0, "10.0.0.1:80"), kernel_totals(2, 0)),
            (endpoint(0, "127.0.0.2:81"), kernel_totals(9, 9)),
            (endpoint(0, "127.0.0.1:82"), kernel_totals(4, 4)),
        ],
        2 * SECOND,
    );
    let first = report_of(&mut observer, 2 * SECOND, "0.0.0.0:80");
    assert_eq!((first.snapshot.opened, first.snapshot.closed), (5, 1));
    assert_eq!(first.snapshot.curr, 1, "curr stays the model's");
    // The next interval takes only what is new since.
    observer.apply_kernel_totals(
        &[
            (endpoint(0, "127.0.0.1:80"), kernel_totals(4, 4)),
            (endpoint(0, "10.0.0.1:80"), kernel_totals(2, 0)),
        ],
        3 * SECOND,
    );
    let reports = observer.report(3 * SECOND);
    let second = &reports[0];
    assert_eq!(second.id, TrackerId::listen(0, addr("0.0.0.0:80")));
    assert_eq!((second.snapshot.opened, second.snapshot.closed), (1, 3));
    let other = &reports[1];
    assert_eq!(other.id, TrackerId::listen(0, addr("127.0.0.1:81")));
    assert_eq!(
        (other.snapshot.opened, other.snapshot.closed),
        (0, 0),
        "127.0.0.2:81 is not this listener's address"
    );
}

/// The daemon counts a close itself only where the kernel could not: a connection that
/// predates it and closed before the kernel was asked to follow it. One whose open event was
/// lost was counted by the kernel at both ends.
#[test]
fn the_daemon_counts_only_the_closes_the_kernel_could_not() {
    let mut observer = Observer::new(None);
    observer.add_scanned_listener(addr("0.0.0.0:80"), &[]);
    observer.apply_kernel_totals(&[], 0);
    let local = addr("127.0.0.1:80");
    observer.adopt(local, addr("127.0.0.1:5000"), SECOND);
    let lost_open = Discrepancies {
        kernel_only: BTreeSet::from([(local, addr("127.0.0.1:6000"))]),
        ..Discrepancies::default()
    };
    assert_eq!(observer.correct(&lost_open, SECOND).len(), 1);
    observer.close_adopted(local, addr("127.0.0.1:5000"), 2 * SECOND);
    observer.close_adopted(local, addr("127.0.0.1:6000"), 2 * SECOND);
    let report = report_of(&mut observer, 3 * SECOND, "0.0.0.0:80");
    assert_eq!(report.snapshot.curr, 0);
    assert_eq!((report.snapshot.opened, report.snapshot.closed), (0, 1));
}

/// A connection gone from the kernel's table that the model saw open is found with its socket
/// and open time, so that the daemon can check the kernel's tracked entry; a close counted for
/// it adds to the kernel's count.
#[test]
fn connections_seen_open_are_found_by_socket_for_a_close_the_kernel_skipped() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(100, "127.0.0.1:80"));
    observer.apply_kernel_totals(&[], 0);
    let _ = observer.apply(&open(1, "127.0.0.1:80", "127.0.0.1:5000", SECOND));
    let _ = observer.apply(&open(2, "127.0.0.1:80", "127.0.0.1:6000", SECOND));
    let local = addr("127.0.0.1:80");
    let gone = BTreeSet::from([(local, addr("127.0.0.1:5000"))]);
    assert_eq!(observer.sockets_of(&gone), vec![(local, 1, SECOND)]);
    observer.count_unseen_close(local, 2 * SECOND, None);
    let report = report_of(&mut observer, 2 * SECOND, "127.0.0.1:80");
    assert_eq!((report.snapshot.opened, report.snapshot.closed), (0, 1));
}

/// Connection time comes from the kernel's stamp sums: connections whose events never came
/// count from their open to their close, a connection that predates the daemon counts from
/// its adoption, and a close only the daemon found ends its connection's time there.
#[test]
fn connection_time_is_the_kernels_with_the_daemons_own_opens_and_closes() {
    let ms = SECOND / 1000;
    let mut observer = Observer::new(None);
    observer.add_scanned_listener(addr("0.0.0.0:80"), &[]);
    observer.apply_kernel_totals(&[], 0);
    let local = addr("127.0.0.1:80");
    let at = stamped_totals;
    // A predates the daemon (adopted at 1 s, closed at 3.5 s); B opened at 1.5 s and C lived
    // from 2 s to 3 s, and the daemon saw none of their events.
    observer.adopt(local, addr("127.0.0.1:5000"), SECOND);
    let (b_open, c_open, c_close, a_close) = (1500 * ms, 2000 * ms, 3000 * ms, 3500 * ms);
    let totals = at(&[b_open, c_open], &[c_close, a_close]);
    observer.apply_kernel_totals(&[(endpoint(0, "127.0.0.1:80"), totals)], 4 * SECOND);
    let first = report_of(&mut observer, 4 * SECOND, "0.0.0.0:80");
    assert_eq!((first.snapshot.opened, first.snapshot.closed), (2, 2));
    assert_eq!(
        first.snapshot.conn_for_ns,
        2500 * ms + 2500 * ms + 1000 * ms
    );
    // B closes at 5 s.
    let totals = at(&[b_open, c_open], &[c_close, a_close, 5 * SECOND]);
    observer.apply_kernel_totals(&[(endpoint(0, "127.0.0.1:80"), totals)], 6 * SECOND);
    let second = report_of(&mut observer, 6 * SECOND, "0.0.0.0:80");
    assert_eq!(
        second.snapshot.conn_for_ns, SECOND,
        "A adds nothing once closed"
    );
    // D opens at 6.5 s; the kernel skips its close, which the daemon counts at 7 s.
    let totals = at(
        &[b_open, c_open, 6500 * ms],
        &[c_close, a_close, 5 * SECOND],
    );
    observer.apply_kernel_totals(&[(endpoint(0, "127.0.0.1:80"), totals)], 8 * SECOND);
    observer.count_unseen_close(addr("0.0.0.0:80"), 7 * SECOND, None);
    let third = report_of(&mut observer, 8 * SECOND, "0.0.0.0:80");
    assert_eq!((third.snapshot.opened, third.snapshot.closed), (1, 1));
    assert_eq!(third.snapshot.conn_for_ns, 500 * ms);
    let fourth = report_of(&mut observer, 9 * SECOND, "0.0.0.0:80");
    assert_eq!(fourth.snapshot.conn_for_ns, 0);
}

/// A connection that opened between the attach and the start-up scan is adopted by the scan
/// and then seen open: the kernel counted its open, so its time is counted once, from there.
#[test]
fn a_connection_adopted_and_then_seen_open_counts_its_time_once() {
    let ms = SECOND / 1000;
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(100, "127.0.0.1:80"));
    observer.apply_kernel_totals(&[], 0);
    let local = addr("127.0.0.1:80");
    observer.adopt(local, addr("127.0.0.1:5000"), SECOND);
    let _ = observer.apply(&open(1, "127.0.0.1:80", "127.0.0.1:5000", 900 * ms));
    let totals = stamped_totals(&[900 * ms], &[]);
    observer.apply_kernel_totals(&[(endpoint(0, "127.0.0.1:80"), totals)], 2 * SECOND);
    let report = report_of(&mut observer, 2 * SECOND, "127.0.0.1:80");
    assert_eq!(report.snapshot.curr, 1);
    assert_eq!(report.snapshot.conn_for_ns, 1100 * ms);
}

/// The closing phase (from the server's close to the kernel's CLOSE) comes from the kernel's
/// totals: how many are closing at the report, and the time they took in the interval. It is
/// counted beside the connections' lives, which end at the server's close.
#[test]
fn connections_the_server_closed_are_closing_until_the_kernel_finishes_them() {
    let ms = SECOND / 1000;
    let mut observer = Observer::new(None);
    observer.add_scanned_listener(addr("0.0.0.0:80"), &[]);
    observer.apply_kernel_totals(&[], 0);
    let local = endpoint(0, "127.0.0.1:80");
    // Three opened at 1 s; the server closed two at 2 s, and the kernel finished one of them
    // at 2.5 s.
    let mut totals = stamped_totals(&[SECOND; 3], &[2500 * ms]);
    totals.closing = spans(&[2 * SECOND; 2], &[2500 * ms]);
    observer.apply_kernel_totals(&[(local, totals)], 3 * SECOND);
    let first = report_of(&mut observer, 3 * SECOND, "0.0.0.0:80");
    assert_eq!(first.closing, 1);
    assert_eq!(first.closing_ns, 500 * ms + SECOND);
    assert_eq!((first.snapshot.opened, first.snapshot.closed), (3, 2));
    assert_eq!(first.snapshot.conn_for_ns, 2 * SECOND + 2 * SECOND);
    // The other finishes at 3.5 s; the third is reset at 3.2 s (no closing phase).
    let mut totals = stamped_totals(&[SECOND; 3], &[2500 * ms, 3500 * ms, 3200 * ms]);
    totals.closing = spans(&[2 * SECOND; 2], &[2500 * ms, 3500 * ms]);
    observer.apply_kernel_totals(&[(local, totals)], 4 * SECOND);
    let second = report_of(&mut observer, 4 * SECOND, "0.0.0.0:80");
    assert_eq!((second.closing, second.closing_ns), (0, 500 * ms));
    assert_eq!((second.snapshot.opened, second.snapshot.closed), (0, 1));
    assert_eq!(second.snapshot.conn_for_ns, 200 * ms);
    let running = first.then(&second);
    assert_eq!((running.closing, running.closing_ns), (0, 2 * SECOND));
}

/// Where lives start at the accept, a connection counts from the server's accept: not while
/// it waits in the accept queue, not at all if it closes there, and the kernel's table does
/// not make it a correction meanwhile.
#[test]
fn lives_start_at_the_accept_where_the_kernel_has_an_accept_hook() {
    let ms = SECOND / 1000;
    let mut observer = Observer::new(None).with_life_start(LifeStart::Accept);
    let _ = observer.apply(&up(100, "127.0.0.1:80"));
    let _ = observer.apply(&open(1, "127.0.0.1:80", "127.0.0.1:5000", SECOND));
    let _ = observer.apply(&open(2, "127.0.0.1:80", "127.0.0.1:5001", SECOND));
    let queued = [
        (addr("127.0.0.1:80"), addr("127.0.0.1:5000")),
        (addr("127.0.0.1:80"), addr("127.0.0.1:5001")),
    ];
    assert!(
        observer.discrepancies(&queued).is_empty(),
        "queued, not lost"
    );
    let waiting = report_of(&mut observer, 2 * SECOND, "127.0.0.1:80");
    assert_eq!((waiting.snapshot.curr, waiting.snapshot.peak), (0, 0));
    // One is accepted at 2.5 s and closed by the server at 3 s; the other is reset in the
    // queue.
    let _ = observer.apply(&Event::Accepted {
        sock: 1,
        at: 2500 * ms,
    });
    assert_eq!(
        observer.discrepancies(&queued[..1]),
        Discrepancies::default()
    );
    let _ = observer.apply(&close(2, "127.0.0.1:80", "127.0.0.1:5001", 2600 * ms));
    let _ = observer.apply(&close(1, "127.0.0.1:80", "127.0.0.1:5000", 3 * SECOND));
    let report = report_of(&mut observer, 4 * SECOND, "127.0.0.1:80");
    assert_eq!((report.snapshot.curr, report.snapshot.peak), (0, 1));
    assert_eq!(report.snapshot.conn_for_ns, 500 * ms);
    assert_eq!(report.snapshot.errors.total(), 0, "{report:?}");
    assert_eq!(report.closed_connections[0].lifetime_ns, 500 * ms);
    // The kernel's totals count accepted lives, not handshakes.
    observer.apply_kernel_totals(&[], 4 * SECOND);
    let mut totals = stamped_totals(&[SECOND; 2], &[2600 * ms]);
    totals.accepted = spans(&[2500 * ms], &[3 * SECOND]);
    totals.closing = spans(&[3 * SECOND], &[]);
    observer.apply_kernel_totals(&[(endpoint(0, "127.0.0.1:80"), totals)], 5 * SECOND);
    let kernel = report_of(&mut observer, 5 * SECOND, "127.0.0.1:80");
    assert_eq!((kernel.snapshot.opened, kernel.snapshot.closed), (1, 1));
    assert_eq!(kernel.snapshot.conn_for_ns, 500 * ms);
}

/// A TLS connection whose handshake the kernel saw inside a hooked library waits, neither
/// unknown nor counted, until its plaintext decides the protocol; one whose handshake was not
/// seen so is unknown, and its listener says it serves TLS the daemon cannot see into.
#[test]
fn tls_is_unknown_only_where_its_plaintext_is_not_followed() {
    let ms = SECOND / 1000;
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "127.0.0.1:443"));
    let tls_turn = |sock, at, previous_end, protocol, tls_followed| Event::Turn {
        sock,
        at,
        previous_end,
        protocol: Some(protocol),
        upgraded: false,
        tls_followed,
    };
    for event in [
        open(10, "127.0.0.1:443", "127.0.0.1:5000", 0),
        open(11, "127.0.0.1:443", "127.0.0.1:5001", 0),
        // The ClientHellos.
        tls_turn(10, 100 * ms, None, Protocol::Tls, true),
        tls_turn(11, 100 * ms, None, Protocol::Tls, false),
    ] {
        let _ = observer.apply(&event);
    }
    let handshaking = report_of(&mut observer, 150 * ms, "127.0.0.1:443");
    assert_eq!(handshaking.sessions_unknown(), 1, "{handshaking:?}");
    assert_eq!(handshaking.snapshot.sessions, 0);
    assert_eq!(
        handshaking.tls,
        TlsSeen {
            followed: true,
            opaque: true
        }
    );

    // The first request's plaintext, after the handshake's turn ended at 120 ms.
    let _ = observer.apply(&tls_turn(
        10,
        200 * ms,
        Some(120 * ms),
        Protocol::Http1,
        false,
    ));
    let _ = observer.apply(&turn(10, 400 * ms, Some(300 * ms)));
    let report = report_of(&mut observer, SECOND, "127.0.0.1:443");
    assert_eq!(report.snapshot.sessions, 2, "{report:?}");
    assert_eq!(report.snapshot.peak_sessions, 1);
    assert_eq!(
        report.sessions_unknown(),
        1,
        "the opaque one only: {report:?}"
    );
    assert_eq!(report.snapshot.errors.total(), 0, "{report:?}");
}
