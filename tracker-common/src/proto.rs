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

/// At most this many frame headers are handled per [`H2Walk::feed`] call, which bounds the
/// walker's loop for the verifier. A chunk holding more desynchronises the walker.
pub const MAX_FRAMES_PER_CHUNK: u32 = 64;

/// Frame types above this are not defined by any RFC or draft we know of; seeing one means we
/// are reading payload as if it were a header.
const MAX_PLAUSIBLE_KIND: u8 = 0x20;

/// Mask of the stream identifier without the reserved bit.
const STREAM_ID_MASK: u32 = 0x7fff_ffff;

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

    /// Walks the next `len` bytes of the stream, one contiguous chunk, with [`H2Walk::step`].
    ///
    /// * `read(offset, dst)` copies the 9 bytes at chunk offset `offset` into `dst` and returns
    ///   `false` if it cannot (in the kernel: `bpf_probe_read_user` failed). It is only called
    ///   with `offset + 9 <= len`.
    /// * `read_byte(offset)` returns one byte, `None` if it cannot; it is only used for a header
    ///   split across chunks, with `offset < len`.
    /// * `on_frame` gets each complete frame header, in stream order.
    ///
    /// At most [`MAX_FRAMES_PER_CHUNK`] headers are handled per call. If the chunk holds more,
    /// or a step fails, the walker sets `desync` and returns `Err(())`, now and on every later
    /// call, without calling `on_frame` again.
    #[expect(
        clippy::result_unit_err,
        reason = "the only failure is 'gave up', already recorded in `desync`; an error type \
                  would add nothing for the BPF caller"
    )]
    #[inline(always)]
    pub fn feed(
        &mut self,
        len: u32,
        mut read: impl FnMut(u32, &mut [u8; 9]) -> bool,
        mut read_byte: impl FnMut(u32) -> Option<u8>,
        mut on_frame: impl FnMut(FrameHeader),
    ) -> Result<(), ()> {
        let mut off: u32 = 0;
        let mut frames: u32 = 0;
        for _ in 0..MAX_STEPS_PER_CHUNK {
            if self.desync != 0 {
                return Err(());
            }
            if off >= len {
                return Ok(());
            }
            if self.skip == 0 && self.have == 0 && frames >= MAX_FRAMES_PER_CHUNK {
                // A further header starts in this chunk: over the budget.
                return self.give_up();
            }
            let at = off;
            let step = self.step(len - off, |dst| read(at, dst), || read_byte(at))?;
            off = off.saturating_add(step.consumed);
            if let Some(header) = step.frame {
                on_frame(header);
                frames = frames.saturating_add(1);
            }
        }
        // The step budget covers the frame budget (see MAX_STEPS_PER_CHUNK); ending here means
        // the chunk still had bytes, so give up rather than lose our place silently.
        if off >= len { Ok(()) } else { self.give_up() }
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

/// Steps [`H2Walk::feed`] may take on one chunk: each frame takes at most a header step and a
/// skip step, a header split at either end of the chunk at most 8 byte steps, and one pass
/// notices the end.
const MAX_STEPS_PER_CHUNK: u32 = 2 * MAX_FRAMES_PER_CHUNK + 2 * FRAME_HEADER_LEN + 2;

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    #[test]
    fn protocol_round_trips_and_rejects_unknown() {
        for p in [
            Protocol::Undetermined,
            Protocol::Http1,
            Protocol::Http2,
            Protocol::Tls,
            Protocol::Other,
        ] {
            assert_eq!(Protocol::try_from(p as u32), Ok(p));
        }
        assert_eq!(Protocol::try_from(5), Err(5));
        assert_eq!(Protocol::try_from(u32::MAX), Err(u32::MAX));
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

    /// Encodes a frame with `payload_byte` as filler; `reserved` sets the reserved stream-id
    /// bit, which the parser must drop.
    fn encode(out: &mut Vec<u8>, h: &FrameHeader, reserved: bool, payload_byte: u8) {
        let len = h.length.to_be_bytes();
        out.extend_from_slice(&len[1..]);
        out.push(h.kind);
        out.push(h.flags);
        let sid = h.stream_id | if reserved { 0x8000_0000 } else { 0 };
        out.extend_from_slice(&sid.to_be_bytes());
        out.extend(core::iter::repeat_n(payload_byte, h.length as usize));
    }

    fn build(frames: &[FrameHeader], inbound: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if inbound {
            out.extend_from_slice(H2_PREFACE);
        }
        for (i, h) in frames.iter().enumerate() {
            // Payload bytes that look like headers of an impossible type, so a walker that
            // read payload as a header would desync and the test would notice.
            encode(&mut out, h, i % 3 == 0, 0xff);
        }
        out
    }

    /// Feeds one chunk, checking the walker keeps to the read contracts.
    fn feed_chunk(walk: &mut H2Walk, chunk: &[u8], out: &mut Vec<FrameHeader>) -> Result<(), ()> {
        let len = chunk.len() as u32;
        walk.feed(
            len,
            |off, dst| {
                assert!(off + 9 <= len, "read past the chunk: {off} + 9 > {len}");
                dst.copy_from_slice(&chunk[off as usize..off as usize + 9]);
                true
            },
            |off| {
                assert!(off < len, "read_byte past the chunk: {off} >= {len}");
                Some(chunk[off as usize])
            },
            |h| out.push(h),
        )
    }

    /// Feeds `data` split at the given chunk sizes (the rest as a final chunk).
    fn walk_chunks(
        mut walk: H2Walk,
        data: &[u8],
        sizes: impl IntoIterator<Item = usize>,
    ) -> (Vec<FrameHeader>, Result<(), ()>, H2Walk) {
        let mut out = Vec::new();
        let mut rest = data;
        let mut result = Ok(());
        for size in sizes {
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            rest = tail;
            result = result.and(feed_chunk(&mut walk, chunk, &mut out));
        }
        if !rest.is_empty() {
            result = result.and(feed_chunk(&mut walk, rest, &mut out));
        }
        (out, result, walk)
    }

    fn fixed_frames() -> Vec<FrameHeader> {
        let f = |length, kind, flags, stream_id| FrameHeader {
            length,
            kind,
            flags,
            stream_id,
        };
        Vec::from([
            f(18, 4, 0, 0),                // SETTINGS
            f(4, 8, 0, 0),                 // WINDOW_UPDATE
            f(0, 4, 1, 0),                 // SETTINGS ack
            f(37, frame::HEADERS, 0x4, 1), // HEADERS, END_HEADERS
            f(0, frame::DATA, flag::END_STREAM, 1),
            f(12, frame::HEADERS, 0, 3), // HEADERS without END_HEADERS
            f(5, frame::CONTINUATION, 0x4, 3),
            f(8, frame::DATA, 0, 3),
            f(4, frame::RST_STREAM, 0, 3),
            f(8, 6, 0, 0), // PING
            f(1, frame::HEADERS, 0x5, 5),
            f(8, frame::GOAWAY, 0, 0),
        ])
    }

    #[test]
    fn whole_stream_yields_every_frame() {
        for inbound in [false, true] {
            let frames = fixed_frames();
            let data = build(&frames, inbound);
            let walk = if inbound {
                H2Walk::inbound()
            } else {
                H2Walk::outbound()
            };
            let (got, result, end) = walk_chunks(walk, &data, []);
            assert_eq!(result, Ok(()));
            assert_eq!(got, frames);
            assert_eq!(
                end,
                H2Walk::outbound(),
                "a stream ending on a frame boundary is clean"
            );
        }
    }

    #[test]
    fn every_single_split_point_yields_every_frame() {
        let frames = fixed_frames();
        let data = build(&frames, true);
        for split in 0..=data.len() {
            let (got, result, _) = walk_chunks(H2Walk::inbound(), &data, [split]);
            assert_eq!(result, Ok(()), "split at {split}");
            assert_eq!(got, frames, "split at {split}");
        }
    }

    #[test]
    fn one_byte_chunks_yield_every_frame() {
        let frames = fixed_frames();
        let data = build(&frames, true);
        let (got, result, _) = walk_chunks(
            H2Walk::inbound(),
            &data,
            core::iter::repeat_n(1, data.len()),
        );
        assert_eq!(result, Ok(()));
        assert_eq!(got, frames);
    }

    #[test]
    fn payload_skip_spans_chunks() {
        let frames = [FrameHeader {
            length: 1000,
            kind: frame::DATA,
            flags: 0,
            stream_id: 1,
        }];
        let data = build(&frames, false);
        let mut walk = H2Walk::outbound();
        let mut out = Vec::new();
        assert_eq!(feed_chunk(&mut walk, &data[..100], &mut out), Ok(()));
        assert_eq!(walk.skip, 1000 - 91);
        assert_eq!(feed_chunk(&mut walk, &data[100..500], &mut out), Ok(()));
        assert_eq!(walk.skip, 1000 - 491);
        assert_eq!(feed_chunk(&mut walk, &data[500..], &mut out), Ok(()));
        assert_eq!(walk.skip, 0);
        assert_eq!(out, frames);
    }

    #[test]
    fn partial_header_is_kept_between_chunks() {
        let frames = [FrameHeader {
            length: 0,
            kind: frame::HEADERS,
            flags: 1,
            stream_id: 9,
        }];
        let data = build(&frames, false);
        let mut walk = H2Walk::outbound();
        let mut out = Vec::new();
        assert_eq!(feed_chunk(&mut walk, &data[..4], &mut out), Ok(()));
        assert_eq!(walk.have, 4);
        assert_eq!(&walk.header[..4], &data[..4]);
        assert!(out.is_empty());
        assert_eq!(feed_chunk(&mut walk, &data[4..], &mut out), Ok(()));
        assert_eq!(walk.have, 0);
        assert_eq!(out, frames);
    }

    fn empty_frames(n: usize) -> Vec<FrameHeader> {
        (0..n)
            .map(|i| FrameHeader {
                length: 0,
                kind: 6,
                flags: 0,
                stream_id: i as u32,
            })
            .collect()
    }

    #[test]
    fn frame_budget_per_chunk() {
        let max = MAX_FRAMES_PER_CHUNK as usize;
        // Exactly the budget is fine, also when the next header starts in the same chunk.
        let data = build(&empty_frames(max), false);
        let (got, result, _) = walk_chunks(H2Walk::outbound(), &data, []);
        assert_eq!((got.len(), result), (max, Ok(())));
        // One more frame in the same chunk desyncs, after delivering the budget.
        let data = build(&empty_frames(max + 1), false);
        let (got, result, walk) = walk_chunks(H2Walk::outbound(), &data, []);
        assert_eq!((got.len(), result), (max, Err(())));
        assert!(walk.is_desync());
        // A budget's worth plus a partial header left over also desyncs (more than 64 frames
        // started in the chunk).
        let (got, result, _) = walk_chunks(H2Walk::outbound(), &data, [data.len() - 1]);
        assert_eq!((got.len(), result), (max, Err(())));
        // The same frames over two chunks are fine.
        let (got, result, _) = walk_chunks(H2Walk::outbound(), &data, [data.len() / 2]);
        assert_eq!((got.len(), result), (max + 1, Ok(())));
    }

    #[test]
    fn implausible_headers_desync_for_good() {
        let cases: [[u8; 9]; 5] = [
            [0, 0, 0, 0x21, 0, 0, 0, 0, 1],              // unknown type
            [0, 0, 0, frame::DATA, 0, 0, 0, 0, 0],       // DATA on stream 0
            [0, 0, 0, frame::HEADERS, 0, 0x80, 0, 0, 0], // stream 0 with the reserved bit
            [0, 0, 4, frame::RST_STREAM, 0, 0, 0, 0, 0],
            [0, 0, 0, frame::CONTINUATION, 0, 0, 0, 0, 0],
        ];
        for case in cases {
            let mut walk = H2Walk::outbound();
            let mut out = Vec::new();
            assert_eq!(feed_chunk(&mut walk, &case, &mut out), Err(()), "{case:?}");
            assert!(out.is_empty());
            assert!(walk.is_desync());
            // Valid data afterwards is ignored.
            let good = build(&fixed_frames(), false);
            assert_eq!(feed_chunk(&mut walk, &good, &mut out), Err(()));
            assert!(out.is_empty());
        }
        // Frame types up to 0x20 and connection-level types on stream 0 are accepted.
        let data = [0, 0, 0, 0x20, 0, 0, 0, 0, 0];
        assert_eq!(walk_chunks(H2Walk::outbound(), &data, []).1, Ok(()));
    }

    #[test]
    fn failed_reads_desync() {
        let data = build(&fixed_frames(), false);
        let mut walk = H2Walk::outbound();
        let r = walk.feed(
            data.len() as u32,
            |_, _| false,
            |_| Some(0),
            |_| panic!("no frame"),
        );
        assert_eq!(r, Err(()));
        assert!(walk.is_desync());

        let mut walk = H2Walk::outbound();
        let r = walk.feed(
            4,
            |_, _| panic!("too short for read"),
            |_| None,
            |_| panic!("no frame"),
        );
        assert_eq!(r, Err(()));
        assert!(walk.is_desync());
    }

    fn arb_frame() -> impl Strategy<Value = FrameHeader> {
        (
            0u32..300,
            0u8..=MAX_PLAUSIBLE_KIND,
            any::<u8>(),
            0u32..=STREAM_ID_MASK,
        )
            .prop_map(|(length, kind, flags, stream_id)| {
                let needs_stream = matches!(
                    kind,
                    frame::DATA | frame::HEADERS | frame::RST_STREAM | frame::CONTINUATION
                );
                let stream_id = if needs_stream && stream_id == 0 {
                    1
                } else {
                    stream_id
                };
                FrameHeader {
                    length,
                    kind,
                    flags,
                    stream_id,
                }
            })
    }

    /// Walks `data` the way the eBPF program does: one system call split into segments
    /// (iovecs), driven by [`H2Walk::step`] from a single loop, with no per-chunk frame budget.
    fn walk_segments(mut walk: H2Walk, data: &[u8], sizes: &[usize]) -> Vec<FrameHeader> {
        let mut out = Vec::new();
        let mut rest = data;
        let mut segments: Vec<&[u8]> = Vec::new();
        for &size in sizes {
            let (segment, tail) = rest.split_at(size.min(rest.len()));
            segments.push(segment);
            rest = tail;
        }
        segments.push(rest);
        for segment in segments {
            let mut at = 0usize;
            while at < segment.len() {
                let step = walk
                    .step(
                        (segment.len() - at) as u32,
                        |dst| {
                            dst.copy_from_slice(&segment[at..at + 9]);
                            true
                        },
                        || Some(segment[at]),
                    )
                    .expect("a well-formed stream never desyncs");
                assert!(step.consumed > 0, "a step must make progress");
                at += step.consumed as usize;
                out.extend(step.frame);
            }
        }
        out
    }

    proptest! {
        #[test]
        fn stepping_through_segments_yields_every_frame(
            frames in proptest::collection::vec(arb_frame(), 0..40),
            inbound in any::<bool>(),
            sizes in proptest::collection::vec(prop_oneof![Just(1usize), 0usize..20, 0usize..400], 0..64),
        ) {
            let data = build(&frames, inbound);
            let start = if inbound { H2Walk::inbound() } else { H2Walk::outbound() };
            prop_assert_eq!(walk_segments(start, &data, &sizes), frames);
        }

        #[test]
        fn random_streams_survive_any_chunking(
            frames in proptest::collection::vec(arb_frame(), 0..40),
            inbound in any::<bool>(),
            sizes in proptest::collection::vec(prop_oneof![Just(1usize), 0usize..40, 0usize..700], 0..80),
            split in any::<prop::sample::Index>(),
        ) {
            let data = build(&frames, inbound);
            let start = if inbound { H2Walk::inbound() } else { H2Walk::outbound() };

            let (whole, result, _) = walk_chunks(start, &data, []);
            prop_assert_eq!(result, Ok(()));
            prop_assert_eq!(&whole, &frames);

            let at = split.index(data.len() + 1);
            let (two, result, _) = walk_chunks(start, &data, [at]);
            prop_assert_eq!(result, Ok(()));
            prop_assert_eq!(&two, &frames);

            let (chunked, result, _) = walk_chunks(start, &data, sizes);
            prop_assert_eq!(result, Ok(()));
            prop_assert_eq!(&chunked, &frames);

            let (bytewise, result, _) = walk_chunks(start, &data, core::iter::repeat_n(1, data.len()));
            prop_assert_eq!(result, Ok(()));
            prop_assert_eq!(&bytewise, &frames);
        }

        #[test]
        fn random_bytes_never_panic_and_agree_with_one_shot(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            sizes in proptest::collection::vec(0usize..64, 0..64),
            inbound in any::<bool>(),
        ) {
            let start = if inbound { H2Walk::inbound() } else { H2Walk::outbound() };
            let (whole, whole_result, _) = walk_chunks(start, &data, []);
            let (chunked, chunked_result, walk) = walk_chunks(start, &data, sizes);
            prop_assert!(walk.have < 9);
            if whole_result.is_ok() && chunked_result.is_ok() {
                prop_assert_eq!(whole, chunked);
            } else {
                // Whatever came before the give-up agrees.
                let n = whole.len().min(chunked.len());
                prop_assert_eq!(&whole[..n], &chunked[..n]);
            }
        }
    }
}
