//! HTTP/2 connections' streams as sessions, through the observer.

use tracker_common::proto::{FrameHeader, Protocol, frame};

use super::{SECOND, close, open, report_of, up};
use crate::event::Event;
use crate::model::ErrorKind;
use crate::observer::Observer;

/// An HTTP/2 connection that closes with streams still open counts in `conns_lost`; one
/// whose streams all ended, or whose server's GOAWAY named the rest unprocessed, does not.
#[test]
fn http2_connections_closed_with_streams_open_count_as_lost() {
    let mut observer = Observer::new(None);
    let _ = observer.apply(&up(1, "127.0.0.1:80"));
    let frame_event = |sock, kind, flags, stream_id, goaway_last_stream, inbound| Event::H2Frame {
        sock,
        frame: FrameHeader {
            length: 0,
            kind,
            flags,
            stream_id,
        },
        goaway_last_stream,
        inbound,
    };
    for (sock, remote) in [(10, "127.0.0.1:5000"), (11, "127.0.0.1:5001")] {
        let _ = observer.apply(&open(sock, "127.0.0.1:80", remote, 0));
        let _ = observer.apply(&Event::Turn {
            sock,
            at: SECOND,
            previous_end: None,
            protocol: Some(Protocol::Http2),
            upgraded: false,
            tls_followed: false,
        });
        for stream_id in [1, 3, 5] {
            let _ = observer.apply(&frame_event(
                sock,
                frame::HEADERS,
                0x5,
                stream_id,
                None,
                true,
            ));
        }
    }
    // 10: stream 1 answered, stream 3 reset, 5 left unprocessed by a GOAWAY(3).
    for event in [
        frame_event(10, frame::DATA, 0x1, 1, None, false),
        frame_event(10, frame::RST_STREAM, 0, 3, None, true),
        frame_event(10, frame::GOAWAY, 0, 0, Some(3), false),
    ] {
        let _ = observer.apply(&event);
    }
    let _ = observer.apply(&close(10, "127.0.0.1:80", "127.0.0.1:5000", 2 * SECOND));
    let report = report_of(&mut observer, 3 * SECOND, "127.0.0.1:80");
    assert_eq!(report.snapshot.errors.total(), 0, "{report:?}");
    assert_eq!(report.snapshot.peak_sessions, 3);
    // 11: the client goes with all three open.
    let _ = observer.apply(&close(11, "127.0.0.1:80", "127.0.0.1:5001", 4 * SECOND));
    let report = report_of(&mut observer, 5 * SECOND, "127.0.0.1:80");
    assert_eq!(
        report.snapshot.errors.get(ErrorKind::ConnsLost),
        1,
        "{report:?}"
    );
    assert_eq!(report.snapshot.errors.total(), 1, "{report:?}");
    assert_eq!(report.snapshot.peak_sessions, 3, "the lost streams did run");
}
