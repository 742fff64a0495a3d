//! Simulated user memory for running the walk on the host (the tests and the fuzzer): one
//! system call's payload laid out as the kernel would find it, in a flat buffer, an iovec
//! array or a msghdr.

extern crate alloc;

use alloc::vec::Vec;

use super::{Frame, Iovec, Lost, MSGHDR_IOV, MSGHDR_IOVLEN, SyscallBuffer, UserMemory, walk_call};
use crate::buf_shape;
use crate::proto::{FrameHeader, H2Walk};

/// Where the iovec array is laid out.
const IOVEC_ARRAY: u64 = 0x10_0000;
/// Where the msghdr is laid out.
const MSGHDR: u64 = 0x20_0000;
/// Size of a `struct user_msghdr`.
const MSGHDR_SIZE: usize = 56;
/// Where the first segment is; the others follow at [`SEGMENT_STRIDE`], so segments are never
/// adjacent and a read across a segment's end fails as it would on an unmapped page.
const SEGMENT_BASE: u64 = 0x1_0000_0000;
const SEGMENT_STRIDE: u64 = 0x1_0000_0000;

/// The memory of one system call moving `total` bytes through the buffer `buf`.
#[derive(Clone, Debug)]
pub struct CallMemory {
    /// (address, bytes), not overlapping.
    regions: Vec<(u64, Vec<u8>)>,
    pub buf: SyscallBuffer,
    pub total: u32,
}

impl CallMemory {
    /// Lays out `segments` as one call's buffer of shape `shape` (one of
    /// [`buf_shape`]; a flat buffer takes the segments joined into one).
    ///
    /// # Panics
    ///
    /// If the call holds 4 GiB or more, or `shape` is not one of [`buf_shape`].
    pub fn new(segments: &[&[u8]], shape: u32) -> Self {
        let total: usize = segments.iter().map(|s| s.len()).sum();
        let total = u32::try_from(total).expect("a call moves less than 4 GiB");
        let mut regions = Vec::new();
        if shape == buf_shape::FLAT {
            regions.push((SEGMENT_BASE, segments.concat()));
            let buf = SyscallBuffer {
                ptr: SEGMENT_BASE,
                count: u64::from(total),
                shape,
            };
            return Self {
                regions,
                buf,
                total,
            };
        }
        let mut array = Vec::new();
        for (base, segment) in (0..)
            .map(|i| SEGMENT_BASE + i * SEGMENT_STRIDE)
            .zip(segments)
        {
            regions.push((base, segment.to_vec()));
            let len = segment.len() as u64;
            array.extend_from_slice(&Iovec { base, len }.to_bytes());
        }
        regions.push((IOVEC_ARRAY, array));
        let count = segments.len() as u64;
        let buf = match shape {
            buf_shape::IOVEC => SyscallBuffer {
                ptr: IOVEC_ARRAY,
                count,
                shape,
            },
            buf_shape::MSGHDR => {
                let mut msghdr = alloc::vec![0u8; MSGHDR_SIZE];
                let iov = MSGHDR_IOV as usize;
                let iovlen = MSGHDR_IOVLEN as usize;
                msghdr[iov..iov + 8].copy_from_slice(&IOVEC_ARRAY.to_ne_bytes());
                msghdr[iovlen..iovlen + 8].copy_from_slice(&count.to_ne_bytes());
                regions.push((MSGHDR, msghdr));
                SyscallBuffer {
                    ptr: MSGHDR,
                    count: 0,
                    shape,
                }
            }
            other => panic!("unknown buffer shape {other}"),
        };
        Self {
            regions,
            buf,
            total,
        }
    }

    /// Walks this call with [`walk_call`] and [`super::CallWalk::run`], as the kernel would.
    pub fn walk(
        &self,
        walk: &mut H2Walk,
        mut on_frame: impl FnMut(FrameHeader),
    ) -> Result<(), Lost> {
        self.walk_frames(walk, |frame| on_frame(frame.header))
    }

    /// [`CallMemory::walk`], with what the walk read of each frame's payload.
    pub fn walk_frames(&self, walk: &mut H2Walk, on_frame: impl FnMut(Frame)) -> Result<(), Lost> {
        walk_call(self, walk, &self.buf, self.total, |call| {
            call.run(self, on_frame)
        })
    }
}

impl UserMemory for CallMemory {
    fn read<const N: usize>(&self, address: u64) -> Option<[u8; N]> {
        self.regions.iter().find_map(|(start, bytes)| {
            let offset = usize::try_from(address.checked_sub(*start)?).ok()?;
            bytes.get(offset..offset.checked_add(N)?)?.try_into().ok()
        })
    }
}
