extern crate std;

use proptest::prelude::*;
use std::vec::Vec;

use super::sim::CallMemory;
use super::*;
use crate::DIRECTION_OUT;
use crate::proto::{H2_PREFACE, flag, frame};

const SHAPES: [u32; 3] = [buf_shape::FLAT, buf_shape::IOVEC, buf_shape::MSGHDR];

/// Encodes a frame with `payload_byte` as filler; `reserved` sets the reserved stream-id bit,
/// which the parser must drop.
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
        // Payload bytes that look like headers of an impossible type, so a walker that read
        // payload as a header would desync and the test would notice.
        encode(&mut out, h, i % 3 == 0, 0xff);
    }
    out
}

fn start(inbound: bool) -> H2Walk {
    if inbound {
        H2Walk::inbound()
    } else {
        H2Walk::outbound()
    }
}

/// Splits `data` at the given sizes, the rest as a final piece; empty pieces are kept.
fn split<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = data;
    for &size in sizes {
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    pieces.push(rest);
    pieces
}

/// What walking a stream produced.
#[derive(Debug)]
struct Outcome {
    frames: Vec<FrameHeader>,
    /// The first failure, if any.
    result: Result<(), Lost>,
    walk: H2Walk,
}

/// Walks `data` as system calls of the sizes in `calls` (the rest as a last call; empty calls
/// are skipped, as the kernel side never walks them), each call laid out as `shape` with its
/// bytes split into iovecs of the sizes in `iovecs` (cycled; empty: one iovec per call).
fn walk_stream(
    walk: H2Walk,
    data: &[u8],
    calls: &[usize],
    iovecs: &[usize],
    shape: u32,
) -> Outcome {
    let mut outcome = Outcome {
        frames: Vec::new(),
        result: Ok(()),
        walk,
    };
    let mut cycle = iovecs.iter().copied().cycle();
    for call in split(data, calls).into_iter().filter(|c| !c.is_empty()) {
        let mut sizes = Vec::new();
        let mut covered = 0;
        // At most MAX_IOVECS segments: the last one takes what is left.
        while covered < call.len() && sizes.len() + 1 < MAX_IOVECS as usize {
            let Some(size) = cycle.next() else { break };
            sizes.push(size);
            covered += size;
        }
        let memory = CallMemory::new(&split(call, &sizes), shape);
        let result = memory.walk(&mut outcome.walk, |h| outcome.frames.push(h));
        outcome.result = outcome.result.and(result);
    }
    outcome
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
fn whole_stream_yields_every_frame_in_every_shape() {
    for inbound in [false, true] {
        for shape in SHAPES {
            let frames = fixed_frames();
            let data = build(&frames, inbound);
            let got = walk_stream(start(inbound), &data, &[], &[], shape);
            assert_eq!(got.result, Ok(()), "shape {shape}");
            assert_eq!(got.frames, frames, "shape {shape}");
            assert_eq!(
                got.walk,
                H2Walk::outbound(),
                "a stream ending on a frame boundary is clean"
            );
        }
    }
}

#[test]
fn every_split_point_between_calls_and_between_iovecs() {
    let frames = fixed_frames();
    let data = build(&frames, true);
    for at in 0..=data.len() {
        let two_calls = walk_stream(H2Walk::inbound(), &data, &[at], &[], buf_shape::FLAT);
        assert_eq!(
            (two_calls.result, &two_calls.frames),
            (Ok(()), &frames),
            "calls split at {at}"
        );
        for shape in [buf_shape::IOVEC, buf_shape::MSGHDR] {
            let two_iovecs = walk_stream(H2Walk::inbound(), &data, &[], &[at], shape);
            assert_eq!(
                (two_iovecs.result, &two_iovecs.frames),
                (Ok(()), &frames),
                "iovecs split at {at}"
            );
        }
    }
}

#[test]
fn one_byte_calls_and_one_byte_iovecs() {
    let frames = fixed_frames();
    let data = build(&frames, true);
    let ones = std::vec![1; data.len()];
    let got = walk_stream(H2Walk::inbound(), &data, &ones, &[], buf_shape::FLAT);
    assert_eq!((got.result, got.frames), (Ok(()), frames.clone()));
    // Calls of MAX_IOVECS one-byte iovecs.
    let calls = std::vec![MAX_IOVECS as usize; data.len() / MAX_IOVECS as usize];
    let got = walk_stream(H2Walk::inbound(), &data, &calls, &[1], buf_shape::IOVEC);
    assert_eq!((got.result, got.frames), (Ok(()), frames));
}

#[test]
fn empty_iovecs_are_stepped_over() {
    let frames = fixed_frames();
    let data = build(&frames, false);
    let got = walk_stream(
        H2Walk::outbound(),
        &data,
        &[],
        &[0, 0, 7, 0, 30],
        buf_shape::MSGHDR,
    );
    assert_eq!((got.result, got.frames), (Ok(()), frames));
}

#[test]
fn payload_skip_spans_calls() {
    let frames = [FrameHeader {
        length: 1000,
        kind: frame::DATA,
        flags: 0,
        stream_id: 1,
    }];
    let data = build(&frames, false);
    let mut walk = H2Walk::outbound();
    let mut out = Vec::new();
    let mut call = |bytes: &[u8], walk: &mut H2Walk| {
        CallMemory::new(&[bytes], buf_shape::FLAT).walk(walk, |h| out.push(h))
    };
    assert_eq!(call(&data[..100], &mut walk), Ok(()));
    assert_eq!(walk.skip, 1000 - 91);
    assert_eq!(call(&data[100..500], &mut walk), Ok(()));
    assert_eq!(walk.skip, 1000 - 491);
    assert_eq!(call(&data[500..], &mut walk), Ok(()));
    assert_eq!(walk.skip, 0);
    assert_eq!(out, frames);
}

#[test]
fn partial_header_is_kept_between_calls() {
    let frames = [FrameHeader {
        length: 0,
        kind: frame::HEADERS,
        flags: 1,
        stream_id: 9,
    }];
    let data = build(&frames, false);
    let mut walk = H2Walk::outbound();
    let mut out = Vec::new();
    let first = CallMemory::new(&[&data[..4]], buf_shape::IOVEC);
    assert_eq!(first.walk(&mut walk, |h| out.push(h)), Ok(()));
    assert_eq!(walk.have, 4);
    assert_eq!(&walk.header[..4], &data[..4]);
    assert!(out.is_empty());
    let rest = CallMemory::new(&[&data[4..]], buf_shape::FLAT);
    assert_eq!(rest.walk(&mut walk, |h| out.push(h)), Ok(()));
    assert_eq!(walk.have, 0);
    assert_eq!(out, frames);
}

#[test]
fn step_budget_per_call() {
    // Empty frames take one step each.
    let max = MAX_STEPS as usize;
    let data = build(&empty_frames(max), false);
    let got = walk_stream(H2Walk::outbound(), &data, &[], &[], buf_shape::FLAT);
    assert_eq!((got.frames.len(), got.result), (max, Ok(())));
    // One more frame in the same call loses the walk, after delivering the budget.
    let data = build(&empty_frames(max + 1), false);
    let got = walk_stream(H2Walk::outbound(), &data, &[], &[], buf_shape::FLAT);
    assert_eq!((got.frames.len(), got.result), (max, Err(Lost::Budget)));
    assert!(got.walk.is_desync());
    // The same frames over two calls are fine.
    let got = walk_stream(
        H2Walk::outbound(),
        &data,
        &[data.len() / 2],
        &[],
        buf_shape::FLAT,
    );
    assert_eq!((got.frames.len(), got.result), (max + 1, Ok(())));
}

#[test]
fn iovec_budget_per_call() {
    let data = build(&fixed_frames(), false);
    let within: Vec<&[u8]> = split(&data, &[1; MAX_IOVECS as usize - 1]);
    assert_eq!(within.len(), MAX_IOVECS as usize);
    let mut walk = H2Walk::outbound();
    assert_eq!(
        CallMemory::new(&within, buf_shape::IOVEC).walk(&mut walk, |_| {}),
        Ok(())
    );
    let over: Vec<&[u8]> = split(&data, &[1; MAX_IOVECS as usize]);
    let mut walk = H2Walk::outbound();
    assert_eq!(
        CallMemory::new(&over, buf_shape::IOVEC).walk(&mut walk, |_| {}),
        Err(Lost::Budget)
    );
    assert!(walk.is_desync());
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
    let good = build(&fixed_frames(), false);
    for case in cases {
        let got = walk_stream(
            H2Walk::outbound(),
            &[&case[..], &good].concat(),
            &[9],
            &[],
            buf_shape::FLAT,
        );
        assert_eq!(got.result, Err(Lost::Stream), "{case:?}");
        assert!(
            got.frames.is_empty(),
            "valid data after the give-up is ignored"
        );
        assert!(got.walk.is_desync());
    }
    // Frame types up to 0x20 and connection-level types on stream 0 are accepted.
    let data = [0, 0, 0, 0x20, 0, 0, 0, 0, 0];
    assert_eq!(
        walk_stream(H2Walk::outbound(), &data, &[], &[], buf_shape::FLAT).result,
        Ok(())
    );
}

#[test]
fn a_lost_walker_is_not_run_again() {
    let mut walk = H2Walk::outbound();
    walk.desync = 1;
    let memory = CallMemory::new(&[&build(&fixed_frames(), false)], buf_shape::FLAT);
    let result = walk_call(&memory, &mut walk, &memory.buf, memory.total, |_| {
        panic!("a lost walker takes no steps")
    });
    assert_eq!(result, Err(Lost::Stream));
}

#[test]
fn a_failed_loop_loses_the_walk() {
    let memory = CallMemory::new(&[&build(&fixed_frames(), false)], buf_shape::FLAT);
    let mut walk = H2Walk::outbound();
    let result = walk_call(&memory, &mut walk, &memory.buf, memory.total, |_| false);
    assert_eq!(result, Err(Lost::Budget));
    assert!(walk.is_desync());
}

#[test]
fn missing_or_short_buffers_lose_the_walk() {
    let data = build(&fixed_frames(), false);
    let walk_with = |memory: &CallMemory, buf: SyscallBuffer, total: u32| {
        let mut walk = H2Walk::outbound();
        let result = walk_call(memory, &mut walk, &buf, total, |call| {
            call.run(memory, |_| {})
        });
        assert_eq!(result.is_err(), walk.is_desync());
        result
    };
    let memory = CallMemory::new(&[&data[..20], &data[20..]], buf_shape::IOVEC);
    let total = memory.total;
    // No buffer at all.
    assert_eq!(
        walk_with(&memory, SyscallBuffer::default(), total),
        Err(Lost::Buffer)
    );
    // An iovec array that cannot be read.
    let unmapped = SyscallBuffer {
        ptr: 0x42,
        ..memory.buf
    };
    assert_eq!(walk_with(&memory, unmapped, total), Err(Lost::Buffer));
    // No iovecs, or fewer bytes in the iovecs than the call moved.
    let none = SyscallBuffer {
        count: 0,
        ..memory.buf
    };
    assert_eq!(walk_with(&memory, none, total), Err(Lost::Buffer));
    let one = SyscallBuffer {
        count: 1,
        ..memory.buf
    };
    assert_eq!(walk_with(&memory, one, total), Err(Lost::Buffer));
    // A flat buffer that cannot be read: the walker cannot read the first header.
    let flat = SyscallBuffer {
        ptr: 0x42,
        count: u64::from(total),
        shape: buf_shape::FLAT,
    };
    assert_eq!(walk_with(&memory, flat, total), Err(Lost::Stream));
    // A call shorter than its buffer walks only its own bytes.
    assert_eq!(walk_with(&memory, memory.buf, 9), Ok(()));
}

#[test]
fn detection_reads_the_first_segment_only() {
    let detect = |segments: &[&[u8]], shape| {
        let memory = CallMemory::new(segments, shape);
        detect_call(&memory, &memory.buf, memory.total)
    };
    assert_eq!(detect(&[H2_PREFACE], buf_shape::FLAT), Protocol::Http2);
    assert_eq!(
        detect(&[b"GET / HTTP/1.1\r\nHost: x\r\n"], buf_shape::IOVEC),
        Protocol::Http1
    );
    // Short first segments are read byte by byte.
    assert_eq!(
        detect(&[b"GET ", b"/ HTTP/1.1\r\n"], buf_shape::MSGHDR),
        Protocol::Http1
    );
    assert_eq!(
        detect(&[b"PRI *", b" HTTP/2.0"], buf_shape::IOVEC),
        Protocol::Http2
    );
    assert_eq!(detect(&[b"\x16\x03\x01"], buf_shape::FLAT), Protocol::Tls);
    // Too short to decide, and no way to decide later: Other.
    assert_eq!(
        detect(&[b"GE", b"T / HTTP/1.1"], buf_shape::IOVEC),
        Protocol::Other
    );
    assert_eq!(
        detect(&[b"SSH-2.0-OpenSSH_9.2"], buf_shape::FLAT),
        Protocol::Other
    );
}

/// The kind of answer a server's call holding `segments` is, laid out as `shape`.
fn answer(segments: &[&[u8]], shape: u32) -> AnswerStatus {
    let memory = CallMemory::new(segments, shape);
    answer_call(&memory, &memory.buf, memory.total)
}

#[test]
fn a_101_is_found_at_the_start_of_the_first_segment() {
    let response: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n";
    for shape in [buf_shape::FLAT, buf_shape::IOVEC, buf_shape::MSGHDR] {
        assert_eq!(answer(&[response], shape), AnswerStatus::Switching);
    }
    // With the upgraded protocol's first bytes in the same call, or in the next iovec.
    // An empty SETTINGS frame.
    let frames: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    assert_eq!(
        answer(&[&[response, frames].concat()], buf_shape::FLAT),
        AnswerStatus::Switching
    );
    assert_eq!(
        answer(&[response, frames], buf_shape::IOVEC),
        AnswerStatus::Switching
    );
    assert_eq!(
        answer(&[b"HTTP/1.1 200 OK\r\n\r\n"], buf_shape::FLAT),
        AnswerStatus::Final
    );
    // A status line split before its code is not looked for further.
    assert_eq!(
        answer(&[b"HTTP/1.1 ", b"101 Switching"], buf_shape::IOVEC),
        AnswerStatus::Final
    );
    let memory = CallMemory::new(&[response], buf_shape::FLAT);
    assert_eq!(
        answer_call(&memory, &SyscallBuffer::default(), 40),
        AnswerStatus::Final
    );
    assert_eq!(
        answer_call(&memory, &memory.buf, 11),
        AnswerStatus::Final,
        "only the bytes the call moved"
    );
}

#[test]
fn an_interim_answer_alone_in_its_call_is_not_the_answer() {
    let interims: [&[u8]; 4] = [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 100\r\n\r\n",
        b"HTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n",
    ];
    let last: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    for interim in interims {
        for shape in [buf_shape::FLAT, buf_shape::IOVEC, buf_shape::MSGHDR] {
            assert_eq!(
                answer(&[interim], shape),
                AnswerStatus::Interim,
                "{interim:?}"
            );
        }
        // The final answer in the same call, joined or in the next iovec: the call is the answer.
        assert_eq!(
            answer(&[&[interim, last].concat()], buf_shape::FLAT),
            AnswerStatus::Final,
            "{interim:?}"
        );
        assert_eq!(
            answer(&[interim, last], buf_shape::IOVEC),
            AnswerStatus::Final,
            "{interim:?}"
        );
        // Only the bytes the call moved count: a buffer holding more is still the interim.
        let memory = CallMemory::new(&[&[interim, last].concat()], buf_shape::FLAT);
        assert_eq!(
            answer_call(&memory, &memory.buf, interim.len() as u32),
            AnswerStatus::Interim,
            "{interim:?}"
        );
        // A head cut short (its blank line in a later call) is taken for the answer.
        let cut = &interim[..interim.len() - 2];
        assert_eq!(answer(&[cut], buf_shape::FLAT), AnswerStatus::Final);
    }
}

#[test]
fn the_blank_line_is_found_at_every_offset_of_the_scanned_bytes() {
    // Every head length from the shortest (a bare status line) to the last the scan covers.
    let head = |len: usize| {
        let mut head = b"HTTP/1.1 103".to_vec();
        head.resize(len - proto::HEAD_END.len(), b'x');
        head.extend_from_slice(&proto::HEAD_END);
        head
    };
    let last: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";
    for len in 16..=HEAD_SCAN_BYTES as usize {
        let interim = head(len);
        assert_eq!(
            answer(&[&interim], buf_shape::FLAT),
            AnswerStatus::Interim,
            "{len}"
        );
        assert_eq!(
            answer(&[&[&interim[..], last].concat()], buf_shape::FLAT),
            AnswerStatus::Final,
            "{len}"
        );
    }
    // Beyond the scanned bytes the head is taken for the answer.
    let long = head(HEAD_SCAN_BYTES as usize + 1);
    assert_eq!(answer(&[&long], buf_shape::FLAT), AnswerStatus::Final);
}

#[test]
fn detection_without_a_readable_buffer_is_other() {
    let memory = CallMemory::new(&[H2_PREFACE], buf_shape::FLAT);
    assert_eq!(
        detect_call(&memory, &SyscallBuffer::default(), 24),
        Protocol::Other
    );
    let unmapped = SyscallBuffer {
        ptr: 0x42,
        ..memory.buf
    };
    assert_eq!(detect_call(&memory, &unmapped, 24), Protocol::Other);
    assert_eq!(detect_call(&memory, &unmapped, 3), Protocol::Other);
    // Only the bytes the call moved count.
    assert_eq!(detect_call(&memory, &memory.buf, 2), Protocol::Other);
    assert_eq!(detect_call(&memory, &memory.buf, 4), Protocol::Http2);
}

#[test]
fn reported_frames_are_those_that_open_or_end_streams() {
    let f = |kind, flags| FrameHeader {
        length: 0,
        kind,
        flags,
        stream_id: 1,
    };
    for direction in [DIRECTION_IN, DIRECTION_OUT] {
        assert!(opens_or_ends_streams(&f(frame::RST_STREAM, 0), direction));
        assert!(opens_or_ends_streams(
            &f(frame::DATA, flag::END_STREAM),
            direction
        ));
        assert!(opens_or_ends_streams(
            &f(frame::HEADERS, flag::END_STREAM),
            direction
        ));
        assert!(!opens_or_ends_streams(&f(frame::DATA, 0), direction));
        assert!(!opens_or_ends_streams(
            &f(frame::CONTINUATION, 0),
            direction
        ));
        assert!(!opens_or_ends_streams(&f(6, 0), direction));
    }
    // A client's HEADERS opens a stream; a server's only matters when it ends one.
    assert!(opens_or_ends_streams(&f(frame::HEADERS, 0), DIRECTION_IN));
    assert!(!opens_or_ends_streams(&f(frame::HEADERS, 0), DIRECTION_OUT));
    // A server's GOAWAY says which streams it will still answer; a client's names none of
    // the client's streams.
    assert!(opens_or_ends_streams(&f(frame::GOAWAY, 0), DIRECTION_OUT));
    assert!(!opens_or_ends_streams(&f(frame::GOAWAY, 0), DIRECTION_IN));
}

/// `streams` client streams as `HEADERS` (a 20-byte header block) each, followed by a
/// `RST_STREAM` if `reset` (the rapid-reset pattern).
fn client_streams(streams: u32, reset: bool) -> Vec<FrameHeader> {
    let mut frames = Vec::new();
    for i in 0..streams {
        let stream_id = 2 * i + 1;
        frames.push(FrameHeader {
            length: 20,
            kind: frame::HEADERS,
            flags: 0x4 | flag::END_STREAM,
            stream_id,
        });
        if reset {
            frames.push(FrameHeader {
                length: 4,
                kind: frame::RST_STREAM,
                flags: 0,
                stream_id,
            });
        }
    }
    frames
}

#[test]
fn five_thousand_frames_in_one_call_are_walked_whole() {
    for frames in [client_streams(5_000, false), client_streams(2_500, true)] {
        let data = build(&frames, true);
        for shape in SHAPES {
            // One iovec, then 64 of them (the last one holding most).
            for iovecs in [&[][..], &[1000][..]] {
                let got = walk_stream(H2Walk::inbound(), &data, &[], iovecs, shape);
                assert_eq!(got.result, Ok(()), "shape {shape}, iovecs {iovecs:?}");
                assert_eq!(got.frames, frames, "shape {shape}, iovecs {iovecs:?}");
            }
        }
    }
}

#[test]
fn a_call_of_half_the_step_budget_in_frames_with_payload_is_walked_whole() {
    // Each frame takes two steps (its header, its payload's skip): the most frames a call
    // is sure to hold, whatever they carry, as the README states.
    let frames: Vec<FrameHeader> = (0..MAX_STEPS / 2)
        .map(|i| FrameHeader {
            length: 1 + i % 7,
            kind: 6,
            flags: 0,
            stream_id: 0,
        })
        .collect();
    assert_eq!(frames.len(), 32_768);
    let data = build(&frames, false);
    let got = walk_stream(H2Walk::outbound(), &data, &[], &[], buf_shape::FLAT);
    assert_eq!((got.frames.len(), got.result), (frames.len(), Ok(())));
}

/// A GOAWAY naming `last_stream_id` (with the reserved bit set, which is not part of it),
/// error code 0 and 5 bytes of debug data.
fn goaway(last_stream_id: u32) -> Vec<u8> {
    let mut out = Vec::new();
    encode(
        &mut out,
        &FrameHeader {
            length: 13,
            kind: frame::GOAWAY,
            flags: 0,
            stream_id: 0,
        },
        false,
        0,
    );
    out.truncate(9);
    out.extend_from_slice(&(last_stream_id | 0x8000_0000).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(b"bye!!");
    out
}

/// The last stream ids of the GOAWAYs in calls made of `pieces`, each one segment.
fn goaway_ids(calls: &[&[&[u8]]]) -> Vec<u32> {
    let mut walk = H2Walk::outbound();
    let mut ids = Vec::new();
    for segments in calls {
        let memory = CallMemory::new(segments, buf_shape::IOVEC);
        let result = memory.walk_frames(&mut walk, |f| {
            if f.header.kind == frame::GOAWAY {
                ids.push(f.last_stream_id);
            } else {
                assert_eq!(f.last_stream_id, UNKNOWN_STREAM);
            }
        });
        assert_eq!(result, Ok(()));
    }
    ids
}

#[test]
fn a_goaway_gives_its_last_stream_id_when_its_payload_follows_in_the_segment() {
    let mut data = build(&fixed_frames()[..4], false);
    let start = data.len();
    data.extend_from_slice(&goaway(99));
    assert_eq!(goaway_ids(&[&[&data]]), [99]);
    // Its header alone in a segment, or its id cut: not known.
    let header_end = start + 9;
    assert_eq!(
        goaway_ids(&[&[&data[..header_end], &data[header_end..]]]),
        [UNKNOWN_STREAM]
    );
    assert_eq!(
        goaway_ids(&[&[&data[..header_end + 3]], &[&data[header_end + 3..]]]),
        [UNKNOWN_STREAM]
    );
    // A header split across segments, with the id after it in the same segment: known.
    assert_eq!(
        goaway_ids(&[&[&data[..start + 4], &data[start + 4..]]]),
        [99]
    );
    // Zero, and the largest id.
    assert_eq!(goaway_ids(&[&[&goaway(0)]]), [0]);
    assert_eq!(goaway_ids(&[&[&goaway(0x7fff_ffff)]]), [0x7fff_ffff]);
}

fn arb_frame() -> impl Strategy<Value = FrameHeader> {
    (0u32..300, 0u8..=0x20, any::<u8>(), 0u32..=0x7fff_ffff).prop_map(
        |(length, kind, flags, stream_id)| {
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
        },
    )
}

fn arb_shape() -> impl Strategy<Value = u32> {
    prop::sample::select(&SHAPES[..])
}

proptest! {
    #[test]
    fn well_formed_streams_survive_any_split(
        frames in proptest::collection::vec(arb_frame(), 0..40),
        inbound in any::<bool>(),
        calls in proptest::collection::vec(prop_oneof![Just(1usize), 0usize..40, 0usize..700], 0..80),
        iovecs in proptest::collection::vec(prop_oneof![Just(1usize), 0usize..20, 0usize..400], 0..16),
        shape in arb_shape(),
    ) {
        let data = build(&frames, inbound);
        let got = walk_stream(start(inbound), &data, &calls, &iovecs, shape);
        prop_assert_eq!(got.result, Ok(()));
        prop_assert_eq!(got.frames, frames);
    }

    #[test]
    fn random_bytes_never_panic_and_agree_with_one_shot(
        data in proptest::collection::vec(any::<u8>(), 0..2000),
        calls in proptest::collection::vec(0usize..64, 0..64),
        iovecs in proptest::collection::vec(0usize..16, 0..8),
        inbound in any::<bool>(),
        shape in arb_shape(),
    ) {
        let whole = walk_stream(start(inbound), &data, &[], &[], buf_shape::FLAT);
        let split = walk_stream(start(inbound), &data, &calls, &iovecs, shape);
        prop_assert!(split.walk.have < 9);
        // Up to where either gave up, both saw the same headers.
        let n = whole.frames.len().min(split.frames.len());
        prop_assert_eq!(&whole.frames[..n], &split.frames[..n]);
        // Giving up inside the stream depends on the bytes, not on how they were split: only
        // the per-call budgets can differ.
        let stream_lost = |o: &Outcome| o.result == Err(Lost::Stream);
        if whole.result.is_ok() {
            prop_assert!(split.result.is_ok() || split.result == Err(Lost::Budget), "{:?}", split.result);
        }
        if stream_lost(&whole) {
            prop_assert!(split.result.is_err());
        }
        if stream_lost(&split) {
            prop_assert!(whole.result.is_err());
        }
        if whole.result.is_ok() && split.result.is_ok() {
            prop_assert_eq!(whole.frames, split.frames);
        }
    }
}
