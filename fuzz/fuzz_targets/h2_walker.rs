//! Feeds arbitrary bytes through `H2Walk::feed` in chunks chosen by the input and checks the
//! frames agree with walking the same bytes in one call.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracker_common::proto::{FrameHeader, H2Walk};

/// Feeds one chunk, asserting the walker keeps to its read contracts.
fn feed(walk: &mut H2Walk, chunk: &[u8], out: &mut Vec<FrameHeader>) -> Result<(), ()> {
    let len = u32::try_from(chunk.len()).expect("fuzz inputs are small");
    walk.feed(
        len,
        |off, dst| {
            let start = off as usize;
            assert!(start + 9 <= chunk.len(), "read past the chunk");
            dst.copy_from_slice(&chunk[start..start + 9]);
            true
        },
        |off| {
            assert!((off as usize) < chunk.len(), "read_byte past the chunk");
            Some(chunk[off as usize])
        },
        |h| out.push(h),
    )
}

fuzz_target!(|input: &[u8]| {
    // Byte 0: direction (bit 0) and how many chunk-size bytes follow (bits 1..=5).
    let Some((&control, rest)) = input.split_first() else {
        return;
    };
    let inbound = control & 1 == 1;
    let n_sizes = usize::from(control >> 1 & 0x1f).min(rest.len());
    let (sizes, data) = rest.split_at(n_sizes);
    let start = if inbound {
        H2Walk::inbound()
    } else {
        H2Walk::outbound()
    };

    let mut one_shot = start;
    let mut expected = Vec::new();
    let one_shot_result = feed(&mut one_shot, data, &mut expected);

    // Chunk sizes cycle through the size bytes; with no size bytes, 1-byte chunks. A size byte
    // of 0 feeds an empty chunk (which must change nothing) followed by a 1-byte one, so the
    // loop always advances.
    let mut walk = start;
    let mut got = Vec::new();
    let mut chunked_result = Ok(());
    let mut pos = 0;
    let mut i = 0;
    while pos < data.len() {
        let size = match sizes {
            [] => 1,
            _ => usize::from(sizes[i % sizes.len()]),
        };
        i += 1;
        let size = if size == 0 {
            let before = walk;
            let r = feed(&mut walk, &[], &mut got);
            assert_eq!(before, walk, "an empty chunk changed the walk state");
            assert_eq!(r.is_err(), walk.is_desync());
            1
        } else {
            size
        };
        let end = (pos + size).min(data.len());
        let r = feed(&mut walk, &data[pos..end], &mut got);
        chunked_result = chunked_result.and(r);
        pos = end;
        assert!(walk.have < 9);
        if walk.is_desync() {
            assert!(r.is_err());
        }
    }

    if one_shot_result.is_ok() && chunked_result.is_ok() {
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
        assert_eq!(meaningful(&one_shot), meaningful(&walk), "same end state");
    } else {
        // Up to the point where either gave up, both saw the same headers.
        let n = expected.len().min(got.len());
        assert_eq!(expected[..n], got[..n]);
        // The chunked walk sees the same headers, never more per call than the one-shot walk,
        // so it cannot give up on a stream the one-shot walk accepted.
        if one_shot_result.is_ok() {
            assert!(
                chunked_result.is_ok(),
                "chunked walk gave up on a stream the one-shot walk accepted"
            );
        }
    }
});
