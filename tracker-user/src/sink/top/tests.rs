//! The live view's tests, drawn on a test backend.

use super::*;
use crate::kernel::hooks::HookChoice;
use crate::model::{ErrorKind, Snapshot};
use crate::observer::Owner;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;

fn listener(name: &str, curr: usize, peak: usize) -> ListenerReport {
    ListenerReport::quiet(
        crate::tracker_id::TrackerId::listen(0, name.parse().unwrap()),
        Snapshot {
            name: name.to_owned(),
            curr,
            peak,
            peak_sessions: 0,
            errors: Default::default(),
            conn_for_ns: 0,
            active_for_ns: 0,
            opened: 0,
            closed: 0,
            sessions: 0,
            busy: 0,
            busy_peak: 0,
        },
    )
}

fn batch_view(reports: &[ListenerReport], totals: IntervalTotals) -> BatchView {
    BatchView::from(&ReportBatch {
        reports,
        totals,
        per_interval: true,
    })
}

fn totals() -> IntervalTotals {
    IntervalTotals {
        unix_time_s: 1_700_000_000.0,
        interval_s: 2.0,
        lost_events: 0,
        untracked_connections: 0,
        listen_overflows: 0,
        listen_drops: 0,
        unattributed_closes: 0,
        hooks: {
            let mut hooks = HookChoice::default();
            hooks.set(Capability::Turns, Some("fexit tcp_recvmsg/tcp_sendmsg"));
            hooks
        },
    }
}

/// Renders with `render` on a `width`×`height` test terminal.
fn render(width: u16, height: u16, render: impl FnOnce(&mut Frame)) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(render).unwrap();
    terminal.backend().buffer().clone()
}

/// The screen as lines of text, trailing blanks trimmed.
fn lines(buffer: &Buffer) -> Vec<String> {
    let width = usize::from(buffer.area.width);
    buffer
        .content
        .chunks(width)
        .map(|row| {
            let text: String = row.iter().map(|cell| cell.symbol()).collect();
            text.trim_end().to_owned()
        })
        .collect()
}

fn line_with<'a>(lines: &'a [String], needle: &str) -> (usize, &'a str) {
    lines
        .iter()
        .enumerate()
        .find(|(_, line)| line.contains(needle))
        .map(|(index, line)| (index, line.as_str()))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", lines.join("\n")))
}

/// The style of the cell where `needle` starts on row `y`.
fn style_at(buffer: &Buffer, y: usize, line: &str, needle: &str) -> Style {
    let byte = line.find(needle).unwrap();
    let x = line[..byte].chars().count();
    buffer
        .cell((u16::try_from(x).unwrap(), u16::try_from(y).unwrap()))
        .unwrap()
        .style()
}

fn busy_listener() -> ListenerReport {
    let mut report = listener("127.0.0.1:8080", 8, 8);
    report.owners = vec![
        Owner {
            pid: 4242,
            comm: "nginx".into(),
            cmdline: String::new(),
        },
        Owner {
            pid: 4243,
            comm: "nginx".into(),
            cmdline: String::new(),
        },
    ];
    let snapshot = &mut report.snapshot;
    snapshot.peak_sessions = 3;
    snapshot.busy = 2;
    snapshot.busy_peak = 5;
    snapshot.conn_for_ns = 12_340_000_000;
    snapshot.active_for_ns = 1_960_000_000;
    snapshot.opened = 11;
    snapshot.closed = 3;
    snapshot.errors.record(ErrorKind::ALL[0]);
    report
}

#[test]
fn rows_show_every_figure_sorted_busiest_first() {
    let mut gone = listener("[::1]:9000", 0, 1);
    gone.gone = true;
    let reports = [
        listener("127.0.0.1:10", 0, 0),
        gone,
        listener("127.0.0.1:9", 0, 0),
        busy_listener(),
        listener("0.0.0.0:22", 2, 5),
    ];
    let buffer = render(120, 12, |frame| {
        draw(frame, &batch_view(&reports, totals()))
    });
    let screen = lines(&buffer);
    println!("{}", screen.join("\n"));

    assert_eq!(
        screen[0],
        "tracker top — 5 listeners — interval 2.0s — q quits"
    );
    let (header_y, header) = line_with(&screen, "LISTENER");
    for heading in HEADINGS {
        assert!(header.contains(heading), "{header}");
    }
    // curr descending, then peak descending, then the address (9 before 10).
    let order: Vec<usize> = [
        "127.0.0.1:8080",
        "0.0.0.0:22",
        "[::1]:9000",
        "127.0.0.1:9 ",
        "127.0.0.1:10",
    ]
    .iter()
    .map(|name| line_with(&screen, name).0)
    .collect();
    assert!(order.is_sorted(), "rows out of order: {order:?}");
    assert_eq!(order[0], header_y + 1);

    let (busy_y, busy) = line_with(&screen, "127.0.0.1:8080");
    let fields: Vec<&str> = busy.split_whitespace().collect();
    assert_eq!(
        fields,
        [
            "127.0.0.1:8080",
            "nginx/4242",
            "+1",
            "-",
            "8",
            "8▲",
            "3",
            "2",
            "12.3",
            "2.0",
            "11",
            "3",
            "1"
        ]
    );
    assert!(
        style_at(&buffer, busy_y, busy, "8▲")
            .add_modifier
            .contains(Modifier::BOLD)
    );

    // Below its peak: no marker.
    let (_, ssh) = line_with(&screen, "0.0.0.0:22");
    assert!(!ssh.contains(AT_PEAK), "{ssh}");
    assert_eq!(ssh.split_whitespace().nth(1), Some("-"));
    // Idle at zero: curr equals peak, but nothing is open, so no marker either.
    assert!(!line_with(&screen, "127.0.0.1:10").1.contains(AT_PEAK));

    let (gone_y, gone) = line_with(&screen, "[::1]:9000 (gone)");
    assert!(
        style_at(&buffer, gone_y, gone, "[::1]")
            .add_modifier
            .contains(Modifier::DIM)
    );
    // No warnings when nothing was lost.
    assert!(!screen.iter().any(|line| line.contains('⚠')));
}

#[test]
fn peak_digits_line_up_with_and_without_the_marker() {
    let reports = [listener("127.0.0.1:1", 3, 3), listener("127.0.0.1:2", 1, 3)];
    let buffer = render(100, 6, |frame| draw(frame, &batch_view(&reports, totals())));
    let screen = lines(&buffer);
    let column_of = |needle: &str, row: &str| {
        let (_, line) = line_with(&screen, row);
        line[..line.find(needle).unwrap()].chars().count()
    };
    assert_eq!(
        column_of("3▲", "127.0.0.1:1"),
        column_of("3 ", "127.0.0.1:2 ")
    );
}

#[test]
fn narrow_terminals_cut_process_names_before_listener_names() {
    let mut report = listener("[2001:db8::1234:5678]:8443", 1, 1);
    report.owners = vec![Owner {
        pid: 1_234_567,
        comm: "a-long-command".into(),
        cmdline: String::new(),
    }];
    let reports = [report];
    let screen = lines(&render(96, 6, |frame| {
        draw(frame, &batch_view(&reports, totals()))
    }));
    println!("{}", screen.join("\n"));
    let (_, row) = line_with(&screen, "[2001:db8::1234:5678]:8443 ");
    // Every figure still shows, the last one at the screen's edge at most.
    assert!(row.ends_with(" 0"), "{row}");
    // The name gave way to keep every figure and the whole pid.
    assert!(row.contains(" a…/1234567 "), "{row}");
}

#[test]
fn losses_and_untracked_connections_are_warned_about_in_red() {
    let reports = [busy_listener()];
    let warned = IntervalTotals {
        lost_events: 12,
        untracked_connections: 1,
        listen_overflows: 0,
        listen_drops: 0,
        ..totals()
    };
    let buffer = render(120, 10, |frame| draw(frame, &batch_view(&reports, warned)));
    let screen = lines(&buffer);
    println!("{}", screen.join("\n"));

    assert_eq!(
        screen[0],
        "tracker top — 1 listener — interval 2.0s — q quits"
    );
    let (lost_y, lost) = line_with(&screen, "⚠ 12 kernel events lost");
    assert_eq!(
        lost,
        "⚠ 12 kernel events lost in the last interval: counts may be off"
    );
    let style = style_at(&buffer, lost_y, lost, "12");
    assert_eq!(style.fg, Some(Color::Red));
    assert!(style.add_modifier.contains(Modifier::BOLD));
    let (untracked_y, untracked) = line_with(&screen, "⚠ 1 connection not tracked");
    assert_eq!(
        style_at(&buffer, untracked_y, untracked, "1").fg,
        Some(Color::Red)
    );
    // The warnings come before the table, where they cannot scroll out of sight.
    assert!(untracked_y < line_with(&screen, "LISTENER").0);
}

#[test]
fn totals_since_start_are_labelled_and_no_listeners_is_said() {
    let batch = BatchView::from(&ReportBatch {
        reports: &[],
        totals: totals(),
        per_interval: false,
    });
    let screen = lines(&render(100, 6, |frame| draw(frame, &batch)));
    assert_eq!(
        screen[0],
        "tracker top — 0 listeners — interval 2.0s, totals since start — q quits"
    );
    line_with(&screen, "no listeners on the watched ports yet");
}

#[test]
fn waiting_screen_before_the_first_report() {
    let screen = lines(&render(80, 3, draw_waiting));
    assert_eq!(
        screen,
        [
            "tracker top — waiting for the first report — q quits",
            "",
            ""
        ]
    );
}

#[test]
fn process_names_are_cut_before_pids() {
    assert_eq!(fit_process("nginx", "/42 +3", 11), "nginx/42 +3");
    assert_eq!(fit_process("nginx", "/42 +3", 9), "ng…/42 +3");
    assert_eq!(fit_process("nginx", "/42 +3", 8), "n…/42 +3");
    // No room for the pid: never part of it.
    assert_eq!(fit_process("nginx", "/42 +3", 7), "nginx…");
    assert_eq!(fit_process("a-long-command", "/42", 7), "a-l…/42");
    assert_eq!(fit_process("a-long-command", "/1234567", 7), "a-long…");
    assert_eq!(fit_process("-", "", 7), "-");
}

#[test]
fn quit_keys() {
    let key = |code, modifiers| KeyEvent::new(code, modifiers);
    for quit in [
        key(KeyCode::Char('q'), KeyModifiers::NONE),
        key(KeyCode::Char('Q'), KeyModifiers::SHIFT),
        key(KeyCode::Esc, KeyModifiers::NONE),
        key(KeyCode::Char('c'), KeyModifiers::CONTROL),
    ] {
        assert!(is_quit_key(quit), "{quit:?}");
    }
    for other in [
        key(KeyCode::Char('c'), KeyModifiers::NONE),
        key(KeyCode::Char('x'), KeyModifiers::CONTROL),
        key(KeyCode::Enter, KeyModifiers::NONE),
    ] {
        assert!(!is_quit_key(other), "{other:?}");
    }
    let mut released = key(KeyCode::Char('q'), KeyModifiers::NONE);
    released.kind = KeyEventKind::Release;
    assert!(!is_quit_key(released));
}

#[test]
fn namespaced_and_connect_trackers_show_their_full_names() {
    use crate::tracker_id::TrackerId;

    let addr = "127.0.0.1:8080".parse().unwrap();
    let reports = [
        TrackerId::listen(0, addr),
        TrackerId::listen(4026532481, addr),
        TrackerId::connect(addr),
    ]
    .map(|id| ListenerReport {
        id,
        ..listener("127.0.0.1:8080", 1, 1)
    });
    let buffer = render(120, 8, |frame| draw(frame, &batch_view(&reports, totals())));
    let screen = lines(&buffer);
    for name in ["netns:4026532481/127.0.0.1:8080", "connect:127.0.0.1:8080"] {
        line_with(&screen, name);
    }
    let bare = screen
        .iter()
        .filter(|line| line.trim_start().starts_with("127.0.0.1:8080"))
        .count();
    assert_eq!(bare, 1, "{}", screen.join("\n"));
}

#[test]
fn the_owner_column_names_the_pod_container_or_unit() {
    use crate::host::workload::cgroup_path::{Container, Qos, Runtime};
    use crate::host::workload::{Pod, Workload};

    let mut unit = listener("127.0.0.1:1", 0, 0);
    unit.workload.unit = Some("nginx.service".into());
    let mut container = listener("127.0.0.1:2", 0, 0);
    container.workload = Workload {
        unit: None,
        container: Some(Container {
            runtime: Some(Runtime::Podman),
            id: "0123456789ab".repeat(5) + "cdef",
        }),
        pod: None,
    };
    let mut pod = listener("127.0.0.1:3", 0, 0);
    pod.workload.pod = Some(Pod {
        uid: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
        qos: Qos::Burstable,
        namespace: Some("shop".into()),
        name: Some("a-very-long-pod-name-from-a-deployment-7f9c".into()),
    });
    let reports = [unit, container, pod];
    let buffer = render(160, 8, |frame| draw(frame, &batch_view(&reports, totals())));
    let screen = lines(&buffer);
    let owner = |name: &str| {
        line_with(&screen, name)
            .1
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_owned()
    };
    assert_eq!(owner("127.0.0.1:1"), "nginx.service");
    assert_eq!(owner("127.0.0.1:2"), "podman:0123456789ab");
    assert_eq!(owner("127.0.0.1:3"), "shop/a-very-long-pod-name-from-…");
}
