//! Application-protocol recognition and an HTTP/2 frame-header walker.
//!
//! This module is compiled into the eBPF program as well as the daemon, so it is written for the
//! kernel verifier: no reachable panic (slices are read with `.get()` or fixed arrays with
//! constant indices), no recursion, no allocation, every loop bounded by a `const`, arithmetic
//! that cannot overflow, and only a few bytes of locals. Functions that take closures are
//! `#[inline(always)]` because BPF cannot call through a closure that was not inlined.

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How many bytes of the preface [`detect`] compares: the request-line part, which is all that
/// fits in the 16 bytes the kernel side captures.
const H2_PREFACE_DETECT_LEN: usize = 14;

/// Fewer matching bytes of the preface than this are not enough to call a stream HTTP/2: "PRI"
/// alone could still turn into something else, "PRI " cannot be HTTP/1 or TLS.
const H2_PREFACE_MIN_LEN: usize = 4;

/// HTTP/1 request methods with their trailing space, the only way an HTTP/1 request can start.
const HTTP1_METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Upper bound of the per-byte loop in [`prefix_match`]; every pattern above is shorter.
const MAX_PATTERN_LEN: usize = 16;

/// TLS record type of a handshake record, the first byte a TLS client sends.
const TLS_HANDSHAKE: u8 = 0x16;
/// Major version byte of every TLS record version (SSL 3.0 .. TLS 1.3 all use 3.x).
const TLS_MAJOR: u8 = 0x03;

/// Protocol of a connection. Carried in events and maps as a plain `u32` and decoded with
/// `TryFrom<u32>`, so an unknown value is an error the daemon can count rather than an invalid
/// enum.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Not enough bytes seen yet to decide.
    Undetermined = 0,
    /// An HTTP/1.x request line.
    Http1 = 1,
    /// The HTTP/2 prior-knowledge preface (h2c, or h2 after TLS was terminated elsewhere).
    Http2 = 2,
    /// A TLS record: the payload is opaque to us.
    Tls = 3,
    /// Anything else.
    Other = 4,
    /// An HTTP/1 connection whose server answered `101 Switching Protocols` (WebSocket,
    /// `Upgrade: h2c`): what it speaks next is decided from the client's next bytes.
    Switching = 5,
    /// A connection that left HTTP after a `101` for something other than HTTP/2 (a WebSocket):
    /// open, but with no requests, turns or sessions (the original library's `Hijacked`).
    Hijacked = 6,
}

impl TryFrom<u32> for Protocol {
    type Error = u32;

    fn try_from(raw: u32) -> Result<Self, u32> {
        match raw {
            0 => Ok(Self::Undetermined),
            1 => Ok(Self::Http1),
            2 => Ok(Self::Http2),
            3 => Ok(Self::Tls),
            4 => Ok(Self::Other),
            5 => Ok(Self::Switching),
            6 => Ok(Self::Hijacked),
            other => Err(other),
        }
    }
}

/// Result of comparing the available bytes with the start of a pattern.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prefix {
    /// The whole pattern is there.
    Full,
    /// Every available byte matches, but the input ends before the pattern does; `usize` is how
    /// many bytes matched.
    Partial(usize),
    /// A byte differs.
    Mismatch,
}

/// How many bytes of a response [`answer_status`] needs: `HTTP/1.1 101`.
pub const STATUS_BYTES: usize = 12;

/// What an HTTP/1 answer's status line says of the request's turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerStatus {
    /// A final status (2xx to 5xx), or bytes that are not an HTTP/1 status line at all: the
    /// answer itself.
    Final,
    /// An interim `1xx` other than `101` (`100 Continue`, `102 Processing`, `103 Early
    /// Hints`): the request goes on, its answer is still to come.
    Interim,
    /// `101 Switching Protocols`: the connection leaves HTTP/1 once it is sent.
    Switching,
}

/// Classifies a response starting with `first` (its first [`STATUS_BYTES`] bytes): `HTTP/1.x`,
/// a space, then a three-digit status code.
#[inline]
pub fn answer_status(first: &[u8; STATUS_BYTES]) -> AnswerStatus {
    let [
        h,
        t1,
        t2,
        p,
        slash,
        one,
        dot,
        _minor,
        space,
        hundreds,
        tens,
        units,
    ] = *first;
    let http1 = [h, t1, t2, p, slash, one, dot] == *b"HTTP/1." && space == b' ';
    if !http1 || hundreds != b'1' || !tens.is_ascii_digit() || !units.is_ascii_digit() {
        return AnswerStatus::Final;
    }
    if tens == b'0' && units == b'1' {
        AnswerStatus::Switching
    } else {
        AnswerStatus::Interim
    }
}

/// The end of an HTTP/1 message head: the blank line after its last header.
pub const HEAD_END: [u8; 4] = *b"\r\n\r\n";

/// Compares `input` with the beginning of `pattern` (at most [`MAX_PATTERN_LEN`] bytes).
#[inline]
fn prefix_match(input: &[u8], pattern: &[u8]) -> Prefix {
    for i in 0..MAX_PATTERN_LEN {
        let Some(&want) = pattern.get(i) else {
            return Prefix::Full;
        };
        match input.get(i) {
            None => return Prefix::Partial(i),
            Some(&got) if got != want => return Prefix::Mismatch,
            Some(_) => {}
        }
    }
    // Only reached for a pattern longer than the bound, which none of ours is; treating it as
    // matched keeps the function total.
    Prefix::Full
}

/// Decides the protocol from the first bytes the client sent: `first` is up to 16 bytes of its
/// first inbound payload, shorter if that read was shorter.
#[inline]
pub fn detect(first: &[u8]) -> Protocol {
    if first.is_empty() {
        return Protocol::Undetermined;
    }
    let preface = H2_PREFACE
        .get(..H2_PREFACE_DETECT_LEN)
        .unwrap_or(H2_PREFACE);
    match prefix_match(first, preface) {
        Prefix::Full => return Protocol::Http2,
        Prefix::Partial(n) if n >= H2_PREFACE_MIN_LEN => return Protocol::Http2,
        // "P", "PR", "PRI": also the start of POST/PUT/PATCH, so wait for more either way.
        Prefix::Partial(_) => return Protocol::Undetermined,
        Prefix::Mismatch => {}
    }
    let mut undetermined = false;
    for method in HTTP1_METHODS {
        match prefix_match(first, method) {
            Prefix::Full => return Protocol::Http1,
            Prefix::Partial(_) => undetermined = true,
            Prefix::Mismatch => {}
        }
    }
    if undetermined {
        return Protocol::Undetermined;
    }
    match (first.first(), first.get(1)) {
        (Some(&TLS_HANDSHAKE), Some(&TLS_MAJOR)) => Protocol::Tls,
        (Some(&TLS_HANDSHAKE), None) => Protocol::Undetermined,
        _ => Protocol::Other,
    }
}

/// Frame types (RFC 9113 §6) the session logic looks at.
pub mod frame {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const GOAWAY: u8 = 7;
    pub const CONTINUATION: u8 = 9;
}

/// Frame flags the session logic looks at.
pub mod flag {
    /// On DATA and HEADERS: the sender's half of the stream ends with this frame.
    pub const END_STREAM: u8 = 0x1;
}

/// Size of an HTTP/2 frame header.
pub const FRAME_HEADER_LEN: u32 = 9;

/// Frame types above this are not defined by any RFC or draft we know of; seeing one means we
/// are reading payload as if it were a header.
const MAX_PLAUSIBLE_KIND: u8 = 0x20;

/// Mask of the stream identifier without the reserved bit.
pub const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// A decoded HTTP/2 frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length (24 bits).
    pub length: u32,
    /// Frame type, see [`frame`].
    pub kind: u8,
    /// Flags, see [`flag`].
    pub flags: u8,
    /// Stream identifier, reserved bit masked off.
    pub stream_id: u32,
}

/// Decodes a 9-byte frame header.
#[inline]
pub fn parse_header(bytes: &[u8; 9]) -> FrameHeader {
    FrameHeader {
        length: u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]),
        kind: bytes[3],
        flags: bytes[4],
        stream_id: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & STREAM_ID_MASK,
    }
}

/// Whether a header could be real. The length is 24 bits so any value is possible; what gives
/// away a walker that lost its place is an unknown type, or a stream-bound type on stream 0.
#[inline]
fn plausible(header: &FrameHeader) -> bool {
    if header.kind > MAX_PLAUSIBLE_KIND {
        return false;
    }
    let stream_bound = matches!(
        header.kind,
        frame::DATA | frame::HEADERS | frame::RST_STREAM | frame::CONTINUATION
    );
    !(stream_bound && header.stream_id == 0)
}

/// Per-direction state of the frame walker. It lives in a BPF map value, hence `#[repr(C)]`
/// with the padding spelled out (24 bytes, no holes), and all zeroes is a valid state: the start
/// of a stream that has no preface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct H2Walk {
    /// Payload bytes (or preface bytes) still to skip before the next frame header.
    pub skip: u32,
    /// Bytes of a partial frame header collected so far in `header`, `0..=8`.
    pub have: u32,
    /// The partial frame header, valid in `header[..have]`.
    pub header: [u8; 9],
    /// 1 once the walker gave up; it then ignores everything.
    pub desync: u8,
    /// Explicit padding to the 4-byte alignment.
    pub _pad: [u8; 6],
}

impl H2Walk {
    /// Walk state for the client→server direction: the 24-byte preface comes first.
    pub const fn inbound() -> Self {
        Self {
            skip: H2_PREFACE.len() as u32,
            have: 0,
            header: [0; 9],
            desync: 0,
            _pad: [0; 6],
        }
    }

    /// Walk state for the server→client direction: frames start at once.
    pub const fn outbound() -> Self {
        Self {
            skip: 0,
            have: 0,
            header: [0; 9],
            desync: 0,
            _pad: [0; 6],
        }
    }

    /// Whether the walker has given up on this stream.
    pub const fn is_desync(&self) -> bool {
        self.desync != 0
    }

    fn give_up<T>(&mut self) -> Result<T, ()> {
        self.desync = 1;
        Err(())
    }

    /// Advances by one step through a segment of the stream with `avail > 0` bytes left at
    /// the current position: skips pending payload (up to `avail` bytes), reads a whole
    /// 9-byte header (`read` copies the 9 bytes at the current position; only called when
    /// `avail >= 9`), or collects one byte of a header split across segments (`read_byte`).
    ///
    /// One step does a bounded amount of work with no loop, so a caller can drive it from a
    /// single bounded loop across segments (iovecs) without nesting loops, which is what
    /// keeps the BPF verifier's work small. On a failed read or an implausible header (type
    /// above 0x20, or DATA, HEADERS, RST_STREAM or CONTINUATION on stream 0) it sets `desync`
    /// and returns `Err(())`, now and on every later call.
    #[expect(
        clippy::result_unit_err,
        reason = "the only failure is 'gave up', already recorded in `desync`; an error type \
                  would add nothing for the BPF caller"
    )]
    #[inline(always)]
    pub fn step(
        &mut self,
        avail: u32,
        read: impl FnOnce(&mut [u8; 9]) -> bool,
        read_byte: impl FnOnce() -> Option<u8>,
    ) -> Result<Step, ()> {
        if self.desync != 0 {
            return Err(());
        }
        if avail == 0 {
            return Ok(Step::NOTHING);
        }
        // `skip > 0` implies `have == 0`: a header is only collected once the previous
        // payload has been skipped entirely.
        if self.skip > 0 {
            let consumed = self.skip.min(avail);
            self.skip -= consumed;
            return Ok(Step {
                consumed,
                frame: None,
            });
        }
        let (consumed, bytes) = if self.have == 0 && avail >= FRAME_HEADER_LEN {
            let mut bytes = [0u8; 9];
            if !read(&mut bytes) {
                return self.give_up();
            }
            (FRAME_HEADER_LEN, bytes)
        } else {
            let Some(slot) = self.header.get_mut(self.have as usize) else {
                return self.give_up();
            };
            let Some(byte) = read_byte() else {
                return self.give_up();
            };
            *slot = byte;
            self.have = self.have.saturating_add(1);
            if self.have < FRAME_HEADER_LEN {
                return Ok(Step {
                    consumed: 1,
                    frame: None,
                });
            }
            self.have = 0;
            (1, self.header)
        };
        let header = parse_header(&bytes);
        if !plausible(&header) {
            return self.give_up();
        }
        self.skip = header.length;
        Ok(Step {
            consumed,
            frame: Some(header),
        })
    }
}

/// The result of one [`H2Walk::step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the segment the step used.
    pub consumed: u32,
    /// The frame header the step completed, if any.
    pub frame: Option<FrameHeader>,
}

impl Step {
    const NOTHING: Self = Self {
        consumed: 0,
        frame: None,
    };
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::vec::Vec;

    #[test]
    fn protocol_round_trips_and_rejects_unknown() {
        for p in [
            Protocol::Undetermined,
            Protocol::Http1,
            Protocol::Http2,
            Protocol::Tls,
            Protocol::Other,
            Protocol::Switching,
            Protocol::Hijacked,
        ] {
            assert_eq!(Protocol::try_from(p as u32), Ok(p));
        }
        assert_eq!(Protocol::try_from(7), Err(7));
        assert_eq!(Protocol::try_from(u32::MAX), Err(u32::MAX));
    }

    #[test]
    fn a_status_line_says_final_interim_or_switching() {
        let status = |line: &[u8]| {
            let mut first = [0u8; STATUS_BYTES];
            first.copy_from_slice(&line[..STATUS_BYTES]);
            answer_status(&first)
        };
        assert_eq!(
            status(b"HTTP/1.1 101 Switching Protocols\r\n"),
            AnswerStatus::Switching
        );
        assert_eq!(
            status(b"HTTP/1.0 101 Switching Protocols\r\n"),
            AnswerStatus::Switching
        );
        for interim in [
            &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
            b"HTTP/1.1 102 Processing\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
            b"HTTP/1.0 199 Misc\r\n",
        ] {
            assert_eq!(status(interim), AnswerStatus::Interim, "{interim:?}");
        }
        for last in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 0"[..],
            b"HTTP/1.1 204 No Content\r\n",
            b"HTTP/1.1 417 Expectation Failed\r\n",
            b"HTTP/2.0 101 Switching\r\n",
            b"HTTP/1.1 1x0 Odd\r\n\r\n",
            b"HTTP/1.1  100 Continue\r\n",
            b"HTTP/1.1\t100 Continue\r\n",
            b"\x81\x05hello world!",
        ] {
            assert_eq!(status(last), AnswerStatus::Final, "{last:?}");
        }
    }

    #[test]
    fn detect_http2_preface() {
        assert_eq!(detect(&H2_PREFACE[..16]), Protocol::Http2);
        assert_eq!(detect(H2_PREFACE), Protocol::Http2);
        assert_eq!(detect(b"PRI * HTTP/2.0"), Protocol::Http2);
        // As few as 4 matching bytes decide it.
        assert_eq!(detect(b"PRI "), Protocol::Http2);
        assert_eq!(detect(b"PRI * H"), Protocol::Http2);
        // Fewer than 4 bytes are not enough.
        assert_eq!(detect(b"PRI"), Protocol::Undetermined);
        assert_eq!(detect(b"PR"), Protocol::Undetermined);
        assert_eq!(detect(b"P"), Protocol::Undetermined);
        // A different version, or a different method starting with PRI, is not HTTP/2.
        assert_eq!(detect(b"PRI * HTTP/1.1\r\n"), Protocol::Other);
        assert_eq!(detect(b"PRIX"), Protocol::Other);
    }

    #[test]
    fn detect_http1_methods() {
        for method in HTTP1_METHODS {
            let mut line = Vec::from(method);
            line.extend_from_slice(b"/index.html HTTP/1.1\r\n");
            assert_eq!(detect(&line[..16]), Protocol::Http1, "{line:?}");
            // Exactly the method and its space.
            assert_eq!(detect(method), Protocol::Http1, "{method:?}");
            // Every proper prefix is still undecided.
            for n in 1..method.len() {
                assert_eq!(
                    detect(&method[..n]),
                    Protocol::Undetermined,
                    "{method:?} {n}"
                );
            }
        }
        // Method without the space, lower case, or unknown methods are not HTTP/1.
        assert_eq!(detect(b"GETX /"), Protocol::Other);
        assert_eq!(detect(b"get / HTTP/1.1"), Protocol::Other);
        assert_eq!(detect(b"PROPFIND / HTTP/1.1"), Protocol::Other);
        assert_eq!(detect(b"GET\t/"), Protocol::Other);
    }

    #[test]
    fn detect_tls_and_other() {
        assert_eq!(detect(&[0x16, 0x03, 0x01, 0x02, 0x00]), Protocol::Tls);
        assert_eq!(detect(&[0x16, 0x03]), Protocol::Tls);
        assert_eq!(detect(&[0x16]), Protocol::Undetermined);
        assert_eq!(detect(&[0x16, 0x02]), Protocol::Other);
        assert_eq!(detect(&[0x17, 0x03, 0x03]), Protocol::Other);
        assert_eq!(detect(b"SSH-2.0-OpenSSH"), Protocol::Other);
        assert_eq!(detect(b"\0"), Protocol::Other);
        assert_eq!(detect(b""), Protocol::Undetermined);
    }

    #[test]
    fn walk_layout_is_stable() {
        assert_eq!(core::mem::size_of::<H2Walk>(), 24);
        assert_eq!(core::mem::align_of::<H2Walk>(), 4);
        assert_eq!(H2Walk::default(), H2Walk::outbound());
        assert_eq!(H2Walk::inbound().skip, 24);
    }

    #[test]
    fn parse_header_masks_reserved_bit() {
        let h = parse_header(&[0x01, 0x02, 0x03, 0x01, 0x05, 0x80, 0x00, 0x00, 0x07]);
        assert_eq!(
            h,
            FrameHeader {
                length: 0x010203,
                kind: 1,
                flags: 5,
                stream_id: 7
            }
        );
        let h = parse_header(&[0xff; 9]);
        assert_eq!(h.length, 0x00ff_ffff);
        assert_eq!(h.stream_id, 0x7fff_ffff);
    }

    #[test]
    fn step_skips_payload_then_reads_a_header() {
        let mut walk = H2Walk {
            skip: 5,
            ..H2Walk::outbound()
        };
        let no_read = |_: &mut [u8; 9]| -> bool { panic!("nothing to read while skipping") };
        let step = walk.step(3, no_read, || panic!("nothing to read while skipping"));
        assert_eq!(
            step,
            Ok(Step {
                consumed: 3,
                frame: None
            })
        );
        assert_eq!(walk.skip, 2);
        let header = [0, 0, 4, frame::RST_STREAM, 0, 0, 0, 0, 3];
        walk.skip = 0;
        let step = walk.step(
            20,
            |dst| {
                *dst = header;
                true
            },
            || panic!("a whole header is copied at once"),
        );
        assert_eq!(step.map(|s| s.consumed), Ok(9));
        assert_eq!(walk.skip, 4);
        // A header that cannot be read is the end of the walk.
        walk.skip = 0;
        assert_eq!(walk.step(20, |_| false, || Some(0)), Err(()));
        assert!(walk.is_desync());
        assert_eq!(walk.step(20, |_| true, || Some(0)), Err(()));
    }
}
