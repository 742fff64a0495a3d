//! Per-connection session logic: turns protocol observations from the kernel into session
//! starts and ends for [`Tracker::session_add`] and [`Tracker::session_done`].
//!
//! Pure state machines, no I/O: the daemon feeds them what the kernel saw (the detected
//! [`Protocol`], HTTP/1 turn boundaries, HTTP/2 frame headers) and applies the returned counts
//! with [`apply`].
//!
//! What a session is depends on the protocol:
//! * HTTP/1: one request/response turn. It opens when the client starts a request and closes
//!   when the turn ends (the server has answered and the client speaks again, or the
//!   connection goes idle or closes).
//! * HTTP/2: one client-initiated stream, from the client's HEADERS to the end of the
//!   server's response (its END_STREAM) or a reset, or to the server's GOAWAY if that names
//!   it unprocessed.
//! * Anything else (TLS, other protocols, or a connection first seen mid-stream so its start
//!   could not be classified): no sessions are counted.

use std::collections::BTreeSet;
use std::hash::Hash;

use tracker_common::proto::{FrameHeader, Protocol, flag, frame};

use crate::model::Tracker;

/// Most HTTP/2 streams tracked open at once on one connection. Servers advertise
/// SETTINGS_MAX_CONCURRENT_STREAMS of 100 to 1000 in practice, so more means a misbehaving
/// peer or a walker reading garbage; either way memory per connection stays bounded.
pub const MAX_OPEN_STREAMS: usize = 1024;

/// What a connection's HTTP/2 streams are doing, from the frames seen so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct H2Streams {
    /// Client-initiated streams whose response has not ended.
    open: BTreeSet<u32>,
    /// Highest stream id the client opened a stream with. A HEADERS at or below it is
    /// trailers or belongs to a stream already over, never a new stream (RFC 9113 §5.1.1:
    /// stream ids only grow).
    highest_client_stream: u32,
    /// The last stream id of the server's GOAWAY (the lowest, if it sent several): the
    /// streams above it were not processed and no later one will be (RFC 9113 §6.8).
    processed_up_to: Option<u32>,
    /// New streams not tracked because [`MAX_OPEN_STREAMS`] were already open, since
    /// [`H2Streams::take_overflow`] last took them.
    overflow: u64,
}

impl H2Streams {
    /// A frame the client sent. HEADERS on an odd stream id above the highest seen opens a
    /// session (trailers on an open stream do not). RST_STREAM on an open stream closes it.
    /// The client's END_STREAM closes nothing: it only ends the request, the session lasts
    /// until the response ends. Nor does its GOAWAY: that names the last of the server's
    /// streams it processed, and the client's own streams still get their answers. Returns
    /// `(opened, closed)`.
    pub fn client_frame(&mut self, frame: &FrameHeader) -> (u32, u32) {
        match frame.kind {
            frame::HEADERS => (self.client_headers(frame.stream_id), 0),
            frame::RST_STREAM => (0, self.close(frame.stream_id)),
            _ => (0, 0),
        }
    }

    /// A frame the server sent. HEADERS or DATA with END_STREAM on an open stream closes it;
    /// RST_STREAM closes it. A GOAWAY closes the open streams above its last stream id
    /// (`goaway_last_stream`), which the server did not process; those at or below it may
    /// still complete (RFC 9113 §6.8), as a server's graceful shutdown or reload lets them.
    /// A GOAWAY whose last stream id the kernel could not read closes nothing: its streams
    /// end as they would, or with the connection. Returns `(opened, closed)`; the server never
    /// opens a session (its pushed streams are not requests).
    pub fn server_frame(
        &mut self,
        frame: &FrameHeader,
        goaway_last_stream: Option<u32>,
    ) -> (u32, u32) {
        let closed = match frame.kind {
            frame::HEADERS | frame::DATA if frame.flags & flag::END_STREAM != 0 => {
                self.close(frame.stream_id)
            }
            frame::RST_STREAM => self.close(frame.stream_id),
            frame::GOAWAY => goaway_last_stream.map_or(0, |last| self.goaway(last)),
            _ => 0,
        };
        (0, closed)
    }

    /// Everything still open ends (the walk lost its place). Returns how many did.
    pub fn close_all(&mut self) -> u32 {
        let n = count(self.open.len());
        self.open.clear();
        n
    }

    /// Streams open now.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// New streams that were not tracked because [`MAX_OPEN_STREAMS`] were already open,
    /// since the last call.
    pub fn take_overflow(&mut self) -> u64 {
        std::mem::take(&mut self.overflow)
    }

    fn client_headers(&mut self, stream_id: u32) -> u32 {
        // Even ids are server-initiated; a client HEADERS on one is a protocol error the
        // server will answer with GOAWAY, not a request.
        if stream_id.is_multiple_of(2) || stream_id <= self.highest_client_stream {
            return 0;
        }
        self.highest_client_stream = stream_id;
        if self.processed_up_to.is_some_and(|last| stream_id > last) {
            // Sent after the server's GOAWAY: never processed.
            return 0;
        }
        if self.open.len() >= MAX_OPEN_STREAMS {
            // Not tracked, so its end is ignored too and the counts stay balanced.
            self.overflow = self.overflow.saturating_add(1);
            return 0;
        }
        u32::from(self.open.insert(stream_id))
    }

    fn close(&mut self, stream_id: u32) -> u32 {
        u32::from(self.open.remove(&stream_id))
    }

    /// The server's GOAWAY with last stream id `last`: the open streams above it end.
    fn goaway(&mut self, last: u32) -> u32 {
        let last = self
            .processed_up_to
            .map_or(last, |earlier| earlier.min(last));
        self.processed_up_to = Some(last);
        let unprocessed = self.open.split_off(&last.saturating_add(1));
        count(unprocessed.len())
    }
}

/// Converts a collection size to a session count. Sizes here are at most
/// [`MAX_OPEN_STREAMS`], so saturation never happens; it just avoids a cast.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The sessions of one connection, by protocol.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Sessions {
    /// No session accounting: TLS, another protocol, not decided yet, or a connection first
    /// seen mid-stream (its first bytes, which decide the protocol, were missed).
    #[default]
    Unknown,
    /// HTTP/1.x: a session is one request/response turn, opened when the turn starts (the
    /// client's request) and closed when it ends. At most one is open at a time; pipelined
    /// requests are counted as one turn.
    Http1 {
        /// A turn is open.
        in_request: bool,
    },
    /// HTTP/2: a session is one client-initiated stream. Boxed: most connections are not
    /// HTTP/2, and the daemon keeps one of these per connection (100k connections and more).
    Http2(Box<H2Streams>),
}

impl Sessions {
    /// The session state for a connection whose protocol was detected as `protocol`.
    /// `saw_start` is false when the connection was first seen mid-stream: the detected
    /// protocol is then a guess from arbitrary bytes (and an HTTP/2 walk would not know
    /// where frames start), so nothing is tracked.
    pub fn new(protocol: Protocol, saw_start: bool) -> Self {
        match protocol {
            _ if !saw_start => Self::Unknown,
            Protocol::Http1 => Self::Http1 { in_request: false },
            Protocol::Http2 => Self::Http2(Box::default()),
            Protocol::Undetermined
            | Protocol::Tls
            | Protocol::Other
            | Protocol::Switching
            | Protocol::Hijacked => Self::Unknown,
        }
    }

    /// HTTP/1: a request/response turn started. Returns the sessions opened (1, or 0 if a turn
    /// was already open or the protocol is not HTTP/1).
    pub fn turn_started(&mut self) -> u32 {
        match self {
            Self::Http1 { in_request } if !*in_request => {
                *in_request = true;
                1
            }
            _ => 0,
        }
    }

    /// HTTP/1: the current turn ended. Returns the sessions closed (1, or 0 if no turn was open
    /// or the protocol is not HTTP/1).
    pub fn turn_ended(&mut self) -> u32 {
        match self {
            Self::Http1 { in_request } if *in_request => {
                *in_request = false;
                1
            }
            _ => 0,
        }
    }

    /// HTTP/2: a frame the client sent, see [`H2Streams::client_frame`]. `(0, 0)` otherwise.
    pub fn client_frame(&mut self, frame: &FrameHeader) -> (u32, u32) {
        match self {
            Self::Http2(streams) => streams.client_frame(frame),
            _ => (0, 0),
        }
    }

    /// HTTP/2: a frame the server sent, see [`H2Streams::server_frame`]. `(0, 0)` otherwise.
    pub fn server_frame(
        &mut self,
        frame: &FrameHeader,
        goaway_last_stream: Option<u32>,
    ) -> (u32, u32) {
        match self {
            Self::Http2(streams) => streams.server_frame(frame, goaway_last_stream),
            _ => (0, 0),
        }
    }

    /// Every open session ends, for a walk that lost its place. Returns how many did. A
    /// connection that closes with sessions open leaves them to the [`Tracker`] instead,
    /// which counts it in `conns_lost`.
    pub fn close_all(&mut self) -> u32 {
        match self {
            Self::Unknown => 0,
            Self::Http1 { .. } => self.turn_ended(),
            Self::Http2(streams) => streams.close_all(),
        }
    }

    /// Sessions that started but could not be tracked (see [`H2Streams::take_overflow`]),
    /// since the last call.
    pub fn take_untracked(&mut self) -> u64 {
        match self {
            Self::Http2(streams) => streams.take_overflow(),
            _ => 0,
        }
    }

    /// Sessions open now.
    pub fn open_count(&self) -> usize {
        match self {
            Self::Unknown => 0,
            Self::Http1 { in_request } => usize::from(*in_request),
            Self::Http2(streams) => streams.open_count(),
        }
    }
}

/// Applies `opened` session starts, then `closed` session ends, to `key`'s connection.
/// Starts go first so a count that both opens and closes never dips below zero. Returns false
/// if any call was inconsistent (the tracker counted the error).
pub fn apply<K: Eq + Hash + Clone>(
    tracker: &mut Tracker<K>,
    key: &K,
    (opened, closed): (u32, u32),
) -> bool {
    let mut ok = true;
    for _ in 0..opened {
        ok &= tracker.session_add(key);
    }
    for _ in 0..closed {
        ok &= tracker.session_done(key);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConnState;

    fn f(kind: u8, flags: u8, stream_id: u32) -> FrameHeader {
        FrameHeader {
            length: 0,
            kind,
            flags,
            stream_id,
        }
    }

    fn headers(stream_id: u32) -> FrameHeader {
        f(frame::HEADERS, 0x4, stream_id)
    }

    fn headers_end(stream_id: u32) -> FrameHeader {
        f(frame::HEADERS, 0x4 | flag::END_STREAM, stream_id)
    }

    fn data(stream_id: u32) -> FrameHeader {
        f(frame::DATA, 0, stream_id)
    }

    fn data_end(stream_id: u32) -> FrameHeader {
        f(frame::DATA, flag::END_STREAM, stream_id)
    }

    fn rst(stream_id: u32) -> FrameHeader {
        f(frame::RST_STREAM, 0, stream_id)
    }

    fn goaway() -> FrameHeader {
        f(frame::GOAWAY, 0, 0)
    }

    #[test]
    fn client_headers_open_new_odd_streams_only() {
        let mut s = H2Streams::default();
        assert_eq!(s.client_frame(&headers(1)), (1, 0));
        assert_eq!(s.client_frame(&headers(5)), (1, 0));
        // Below the highest seen: not a new stream (3 was skipped, ids only grow).
        assert_eq!(s.client_frame(&headers(3)), (0, 0));
        // Even ids are not client streams.
        assert_eq!(s.client_frame(&headers(8)), (0, 0));
        // Stream 0 is the connection.
        assert_eq!(s.client_frame(&headers(0)), (0, 0));
        assert_eq!(s.open_count(), 2);
    }

    #[test]
    fn trailers_do_not_double_open() {
        let mut s = H2Streams::default();
        assert_eq!(s.client_frame(&headers(1)), (1, 0));
        assert_eq!(s.client_frame(&data(1)), (0, 0));
        // Request trailers: HEADERS with END_STREAM on the same stream.
        assert_eq!(s.client_frame(&headers_end(1)), (0, 0));
        assert_eq!(s.open_count(), 1);
        // Response headers, then response trailers close it.
        assert_eq!(s.server_frame(&headers(1), None), (0, 0));
        assert_eq!(s.server_frame(&headers_end(1), None), (0, 1));
        // A late client HEADERS on the finished stream does not reopen it.
        assert_eq!(s.client_frame(&headers(1)), (0, 0));
        assert_eq!(s.open_count(), 0);
    }

    #[test]
    fn client_end_stream_does_not_close() {
        let mut s = H2Streams::default();
        assert_eq!(s.client_frame(&headers_end(1)), (1, 0));
        assert_eq!(s.client_frame(&data_end(1)), (0, 0));
        assert_eq!(s.open_count(), 1);
        assert_eq!(s.server_frame(&data_end(1), None), (0, 1));
        assert_eq!(s.open_count(), 0);
    }

    #[test]
    fn server_end_stream_closes_only_open_streams() {
        let mut s = H2Streams::default();
        s.client_frame(&headers(1));
        // DATA without END_STREAM does nothing.
        assert_eq!(s.server_frame(&data(1), None), (0, 0));
        // END_STREAM on a stream never opened (or a pushed, even one) does nothing.
        assert_eq!(s.server_frame(&data_end(3), None), (0, 0));
        assert_eq!(s.server_frame(&headers_end(2), None), (0, 0));
        assert_eq!(s.server_frame(&data_end(1), None), (0, 1));
        // A second END_STREAM on the closed stream does not close twice.
        assert_eq!(s.server_frame(&data_end(1), None), (0, 0));
        // Other frame kinds from the server are ignored.
        assert_eq!(s.server_frame(&f(frame::CONTINUATION, 1, 1), None), (0, 0));
    }

    #[test]
    fn rst_from_either_side_closes() {
        let mut s = H2Streams::default();
        s.client_frame(&headers(1));
        s.client_frame(&headers(3));
        assert_eq!(s.client_frame(&rst(1)), (0, 1));
        assert_eq!(s.server_frame(&rst(3), None), (0, 1));
        // Resetting a stream that is not open closes nothing.
        assert_eq!(s.client_frame(&rst(1)), (0, 0));
        assert_eq!(s.server_frame(&rst(7), None), (0, 0));
        assert_eq!(s.open_count(), 0);
    }

    #[test]
    fn a_server_goaway_ends_only_the_streams_above_its_last_stream_id() {
        let mut s = H2Streams::default();
        for id in (1..=99).step_by(2).chain([101, 103]) {
            assert_eq!(s.client_frame(&headers(id)), (1, 0));
        }
        // Graceful: 1..=99 were processed and still get their answers; 101 and 103 were not.
        assert_eq!(s.server_frame(&goaway(), Some(99)), (0, 2));
        assert_eq!(s.open_count(), 50);
        assert_eq!(s.server_frame(&data_end(103), None), (0, 0));
        // A stream the client opened after the GOAWAY is not processed either.
        assert_eq!(s.client_frame(&headers(105)), (0, 0));
        // A second GOAWAY only ever lowers the last stream id.
        assert_eq!(s.server_frame(&goaway(), Some(0x7fff_ffff)), (0, 0));
        assert_eq!(s.client_frame(&headers(107)), (0, 0));
        assert_eq!(s.server_frame(&goaway(), Some(89)), (0, 5));
        for id in (1..=89).step_by(2) {
            assert_eq!(s.server_frame(&data_end(id), None), (0, 1));
        }
        assert_eq!(s.open_count(), 0);
    }

    #[test]
    fn the_double_goaway_of_a_graceful_shutdown_ends_nothing_processed() {
        let mut s = H2Streams::default();
        s.client_frame(&headers(1));
        // The first GOAWAY names the highest id (more streams may be on their way)...
        assert_eq!(s.server_frame(&goaway(), Some(0x7fff_ffff)), (0, 0));
        // ... and a stream that crossed it is still processed.
        assert_eq!(s.client_frame(&headers(3)), (1, 0));
        assert_eq!(s.server_frame(&goaway(), Some(3)), (0, 0));
        assert_eq!(s.server_frame(&data_end(1), None), (0, 1));
        assert_eq!(s.server_frame(&headers_end(3), None), (0, 1));
    }

    #[test]
    fn a_client_goaway_or_an_unread_last_stream_id_ends_nothing() {
        let mut s = H2Streams::default();
        for id in [1, 3, 5] {
            s.client_frame(&headers(id));
        }
        assert_eq!(s.client_frame(&goaway()), (0, 0));
        assert_eq!(s.server_frame(&goaway(), None), (0, 0));
        assert_eq!(s.open_count(), 3);
        // New streams are still counted: neither named a limit.
        assert_eq!(s.client_frame(&headers(7)), (1, 0));
        // A GOAWAY(0): nothing was processed.
        assert_eq!(s.server_frame(&goaway(), Some(0)), (0, 4));
    }

    #[test]
    fn close_all_ends_everything() {
        let mut s = H2Streams::default();
        for id in [1, 3, 5, 7] {
            s.client_frame(&headers(id));
        }
        s.server_frame(&data_end(3), None);
        assert_eq!(s.close_all(), 3);
        assert_eq!(s.open_count(), 0);
        assert_eq!(s.close_all(), 0);
    }

    #[test]
    fn h2load_like_ten_concurrent_streams() {
        // h2load -m 10: the client keeps 10 streams in flight; each response ends with DATA +
        // END_STREAM and frees a slot for the next request.
        let mut s = H2Streams::default();
        let (mut opened, mut closed, mut peak) = (0, 0, 0);
        let mut track = |r: (u32, u32), s: &H2Streams| {
            opened += r.0;
            closed += r.1;
            peak = peak.max(s.open_count());
        };
        // SETTINGS and WINDOW_UPDATE first: no sessions.
        let r = s.client_frame(&f(4, 0, 0));
        track(r, &s);
        let r = s.server_frame(&f(4, 0, 0), None);
        track(r, &s);
        let mut next = 1;
        for _ in 0..10 {
            let r = s.client_frame(&headers_end(next));
            track(r, &s);
            next += 2;
        }
        let mut oldest = 1;
        for _ in 0..90 {
            let r = s.server_frame(&headers(oldest), None);
            track(r, &s);
            let r = s.server_frame(&data(oldest), None);
            track(r, &s);
            let r = s.server_frame(&data_end(oldest), None);
            track(r, &s);
            oldest += 2;
            let r = s.client_frame(&headers_end(next));
            track(r, &s);
            next += 2;
        }
        while oldest < next {
            let r = s.server_frame(&data_end(oldest), None);
            track(r, &s);
            oldest += 2;
        }
        assert_eq!((opened, closed, peak), (100, 100, 10));
        assert_eq!(s.open_count(), 0);
    }

    #[test]
    fn open_streams_are_bounded() {
        let mut s = H2Streams::default();
        let mut id = 1;
        for _ in 0..MAX_OPEN_STREAMS {
            assert_eq!(s.client_frame(&headers(id)), (1, 0));
            id += 2;
        }
        let untracked = id;
        assert_eq!(s.client_frame(&headers(untracked)), (0, 0));
        assert_eq!(s.open_count(), MAX_OPEN_STREAMS);
        assert_eq!(s.take_overflow(), 1);
        // The untracked stream's end is ignored; its trailers do not open it either.
        assert_eq!(s.client_frame(&headers(untracked)), (0, 0));
        assert_eq!(s.server_frame(&data_end(untracked), None), (0, 0));
        // Once one closes, new streams are tracked again.
        assert_eq!(s.server_frame(&data_end(1), None), (0, 1));
        assert_eq!(s.client_frame(&headers(untracked + 2)), (1, 0));
        assert_eq!(s.take_overflow(), 0, "taken already, none since");
        assert_eq!(s.close_all(), count(MAX_OPEN_STREAMS));
    }

    #[test]
    fn sessions_by_protocol() {
        assert_eq!(
            Sessions::new(Protocol::Http1, true),
            Sessions::Http1 { in_request: false }
        );
        assert_eq!(
            Sessions::new(Protocol::Http2, true),
            Sessions::Http2(Box::default())
        );
        for p in [Protocol::Tls, Protocol::Other, Protocol::Undetermined] {
            assert_eq!(Sessions::new(p, true), Sessions::Unknown);
        }
        for p in [Protocol::Http1, Protocol::Http2] {
            assert_eq!(Sessions::new(p, false), Sessions::Unknown);
        }
    }

    #[test]
    fn http1_turns() {
        let mut s = Sessions::new(Protocol::Http1, true);
        assert_eq!(s.turn_started(), 1);
        // More request bytes in the same turn do not open another session.
        assert_eq!(s.turn_started(), 0);
        assert_eq!(s.open_count(), 1);
        assert_eq!(s.turn_ended(), 1);
        assert_eq!(s.turn_ended(), 0);
        assert_eq!(s.open_count(), 0);
        assert_eq!(s.turn_started(), 1);
        assert_eq!(s.close_all(), 1);
        assert_eq!(s.close_all(), 0);
        // Frames are meaningless for HTTP/1.
        assert_eq!(s.client_frame(&headers(1)), (0, 0));
        assert_eq!(s.server_frame(&rst(1), None), (0, 0));
    }

    #[test]
    fn unknown_and_http2_ignore_turns() {
        let mut s = Sessions::Unknown;
        assert_eq!((s.turn_started(), s.turn_ended()), (0, 0));
        assert_eq!(s.client_frame(&headers(1)), (0, 0));
        assert_eq!((s.open_count(), s.close_all()), (0, 0));

        let mut s = Sessions::new(Protocol::Http2, true);
        assert_eq!((s.turn_started(), s.turn_ended()), (0, 0));
        assert_eq!(s.client_frame(&headers(1)), (1, 0));
        assert_eq!(s.client_frame(&headers(3)), (1, 0));
        assert_eq!(s.server_frame(&rst(1), None), (0, 1));
        assert_eq!(s.open_count(), 1);
        assert_eq!(s.close_all(), 1);
    }

    #[test]
    fn apply_drives_the_tracker_without_errors() {
        let mut tracker = Tracker::new("test");
        let key = 1u64;
        assert!(tracker.conn_state(key, 0, ConnState::New));
        let mut s = Sessions::new(Protocol::Http2, true);
        for id in [1, 3, 5] {
            assert!(apply(&mut tracker, &key, s.client_frame(&headers(id))));
        }
        assert!(apply(
            &mut tracker,
            &key,
            s.server_frame(&data_end(3), None)
        ));
        assert!(apply(&mut tracker, &key, (0, s.close_all())));
        // No session is left open, so closing the connection loses none.
        assert!(tracker.conn_state(key, 10, ConnState::Closed));
        // Unbalanced ends are reported by the tracker.
        assert!(tracker.conn_state(2, 20, ConnState::New));
        assert!(!apply(&mut tracker, &2, (0, 1)));
    }
}
