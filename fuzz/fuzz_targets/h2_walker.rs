//! Walks arbitrary bytes with the kernel's walk driver (`tracker_common::walk`), split into
//! system calls and iovecs chosen by the input, and checks the frames agree with walking the
//! same bytes as one flat call.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracker_common::buf_shape;
use tracker_common::proto::{FrameHeader, H2Walk};
use tracker_common::walk::{Lost, MAX_IOVECS, sim::CallMemory};

/// Frames seen and the first failure of a walk through `calls`, each a list of iovecs.
fn walk(
    start: H2Walk,
    calls: &[Vec<&[u8]>],
    shape: u32,
) -> (Vec<FrameHeader>, Result<(), Lost>, H2Walk) {
    let mut walk = start;
    let mut frames = Vec::new();
    let mut result = Ok(());
    for segments in calls {
        let memory = CallMemory::new(segments, shape);
        if memory.total == 0 {
            // The kernel side only walks calls that moved bytes.
            continue;
        }
        let r = memory.walk(&mut walk, |h| frames.push(h));
        assert_eq!(
            r.is_err(),
            walk.is_desync(),
            "a failed call loses the walker"
        );
        assert!(walk.have < 9);
        result = result.and(r);
    }
    (frames, result, walk)
}

/// Cuts `data` into pieces whose sizes cycle through `sizes`, each at least `min` bytes (no
/// sizes: one piece), at most `max` pieces (the last takes the rest).
fn cut<'a>(data: &'a [u8], sizes: &[u8], min: usize, max: usize) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = data;
    let mut cycle = sizes.iter().cycle();
    while !rest.is_empty() && pieces.len() + 1 < max {
        let Some(&size) = cycle.next() else { break };
        let (piece, tail) = rest.split_at(usize::from(size).max(min).min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    pieces.push(rest);
    pieces
}

fuzz_target!(|input: &[u8]| {
    // Byte 0: direction (bit 0), buffer shape (bits 1..=2), how many call-size bytes follow
    // (bits 3..=7). Byte 1: iovec size within each call (0: one iovec per call).
    let [control, iovec_size, rest @ ..] = input else {
        return;
    };
    let inbound = control & 1 == 1;
    let shape = match control >> 1 & 3 {
        0 => buf_shape::FLAT,
        1 => buf_shape::IOVEC,
        _ => buf_shape::MSGHDR,
    };
    let n_sizes = usize::from(control >> 3).min(rest.len());
    let (sizes, data) = rest.split_at(n_sizes);
    let start = if inbound {
        H2Walk::inbound()
    } else {
        H2Walk::outbound()
    };

    let (expected, one_shot_result, one_shot) = walk(start, &[vec![data]], buf_shape::FLAT);

    let iovec_sizes: &[u8] = if shape == buf_shape::FLAT || *iovec_size == 0 {
        &[]
    } else {
        core::slice::from_ref(iovec_size)
    };
    // With no size bytes, 1-byte calls.
    let call_sizes: &[u8] = if sizes.is_empty() { &[1] } else { sizes };
    let calls: Vec<Vec<&[u8]>> = cut(data, call_sizes, 1, usize::MAX)
        .into_iter()
        .map(|call| cut(call, iovec_sizes, 0, MAX_IOVECS as usize))
        .collect();
    let (got, split_result, split) = walk(start, &calls, shape);

    // Up to the point where either gave up, both saw the same headers.
    let n = expected.len().min(got.len());
    assert_eq!(expected[..n], got[..n]);
    // Giving up inside the stream depends on the bytes only; only the per-call budgets can
    // tell the two walks apart.
    if one_shot_result.is_ok() {
        assert!(
            matches!(split_result, Ok(()) | Err(Lost::Budget)),
            "split walk gave up ({split_result:?}) on a stream the one-shot walk accepted"
        );
    }
    if split_result == Err(Lost::Stream) {
        assert!(one_shot_result.is_err());
    }
    if one_shot_result.is_ok() && split_result.is_ok() {
        assert_eq!(expected, got);
        // Same end state; bytes of `header` past `have` are leftovers with no meaning.
        let meaningful = |w: &H2Walk| {
            (
                w.skip,
                w.have,
                w.header[..w.have as usize].to_vec(),
                w.desync,
            )
        };
        assert_eq!(meaningful(&one_shot), meaningful(&split), "same end state");
    }
});
