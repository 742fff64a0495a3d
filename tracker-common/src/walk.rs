//! The kernel's payload reader: where one system call's bytes are in user memory (a flat
//! buffer, an `iovec` array, or a `user_msghdr` holding one), protocol detection from the
//! first bytes a client sends, and the HTTP/2 frame walk across the call's segments.
//!
//! The eBPF program runs this code with user memory read through `bpf_probe_read_user`,
//! one [`CallWalk::advance`] per `bpf_loop` iteration; the property tests and the fuzzer run
//! the same code over simulated memory (`sim`), with [`CallWalk::run`] standing
//! in for `bpf_loop`. Written for the verifier like [`proto`]: no reachable panic, no
//! recursion, every loop bounded, and generic code `#[inline(always)]` because BPF cannot
//! call through a closure or a trait method that was not inlined.
//!
//! Only bounded copies are made: 9-byte frame headers, 16 bytes for detection, `iovec`s.
//! Payload itself is skipped by length.

use crate::DIRECTION_IN;
use crate::buf_shape;
use crate::proto::{self, AnswerStatus, FrameHeader, H2Walk, Protocol, flag, frame};

/// Most iovecs followed in one system call (nginx batches up to 64 per writev).
pub const MAX_IOVECS: u64 = 64;
/// Most walker steps (a skip, a header, one byte of a split header, or moving to the next
/// iovec) per system call. A frame takes at most two (its header, its payload's skip) plus
/// the iovec moves and split-header bytes, so a call of up to 32,768 frames is walked whole:
/// a 256 KiB read of nothing but empty frames (29,127) fits. A call needing more makes the
/// connection's sessions unknown rather than guessed. `bpf_loop` allows 1 << 23 iterations;
/// this bound keeps what one call may cost small, and an ordinary call ends its loop as soon
/// as its bytes are walked.
pub const MAX_STEPS: u32 = 1 << 16;
/// [`Frame::last_stream_id`] of a frame that is not a GOAWAY, or of a GOAWAY whose payload
/// did not follow its header in the same segment. Above every stream id (31 bits).
pub const UNKNOWN_STREAM: u32 = u32::MAX;
/// Bytes copied for protocol detection.
pub const DETECT_BYTES: usize = 16;
/// Offsets in `struct user_msghdr` (x86_64 and every 64-bit ABI): `msg_iov`, `msg_iovlen`.
pub const MSGHDR_IOV: u64 = 16;
pub const MSGHDR_IOVLEN: u64 = 24;
// Read in one copy (see `segments`).
const _: () = assert!(MSGHDR_IOVLEN == MSGHDR_IOV + 8);

/// Reads the memory of the process making the system call.
pub trait UserMemory {
    /// Copies the `N` bytes at user address `address`; `None` if they cannot be read.
    fn read<const N: usize>(&self, address: u64) -> Option<[u8; N]>;
}

/// `struct iovec` of a 64-bit ABI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iovec {
    pub base: u64,
    pub len: u64,
}

impl Iovec {
    /// Size of a `struct iovec`, and the stride of an iovec array.
    pub const SIZE: u64 = 16;

    /// The `struct iovec` as user memory holds it (native byte order).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.base.to_ne_bytes());
        bytes[8..].copy_from_slice(&self.len.to_ne_bytes());
        bytes
    }

    /// The `index`th iovec of `array`, in one copy: each copy from user memory is a helper
    /// call in the programs, which costs more than the bytes it moves.
    #[inline(always)]
    fn at<M: UserMemory>(memory: &M, array: u64, index: u64) -> Option<Self> {
        let address = array.wrapping_add(index.wrapping_mul(Self::SIZE));
        let [base, len] = read_u64_pair(memory, address)?;
        Some(Self { base, len })
    }
}

/// The two `u64`s at `address`, in one copy.
#[inline(always)]
fn read_u64_pair<M: UserMemory>(memory: &M, address: u64) -> Option<[u64; 2]> {
    let bytes = memory.read::<16>(address)?;
    let (first, second) = bytes.split_at(8);
    Some([
        u64::from_ne_bytes(first.try_into().ok()?),
        u64::from_ne_bytes(second.try_into().ok()?),
    ])
}

/// Where a system call's payload is in user memory, as its arguments say. All zeroes (no
/// shape) means no buffer; not an `Option` because LLVM may copy the undefined payload of a
/// `None` through registers, which the verifier rejects as an uninitialised read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallBuffer {
    /// User address: the buffer ([`buf_shape::FLAT`]), an `iovec` array
    /// ([`buf_shape::IOVEC`]) or a `user_msghdr` ([`buf_shape::MSGHDR`]).
    pub ptr: u64,
    /// Buffer size, or number of iovecs (unused for a msghdr, which holds its own).
    pub count: u64,
    /// One of [`buf_shape`] (0: none).
    pub shape: u32,
}

/// The segments of one call's payload: the first one, and the iovec array for the rest.
#[derive(Clone, Copy)]
struct Segments {
    /// iovec array (0 for a flat buffer).
    iovecs: u64,
    /// Number of iovecs.
    count: u64,
    /// The flat buffer, or the first iovec's base.
    first: u64,
    /// Its length.
    first_len: u64,
}

#[inline(always)]
fn segments<M: UserMemory>(memory: &M, buf: &SyscallBuffer, total: u32) -> Option<Segments> {
    let (iovecs, count) = match buf.shape {
        buf_shape::FLAT => {
            return Some(Segments {
                iovecs: 0,
                count: 0,
                first: buf.ptr,
                first_len: u64::from(total),
            });
        }
        buf_shape::IOVEC => (buf.ptr, buf.count),
        buf_shape::MSGHDR => {
            let [iov, iovlen] = read_u64_pair(memory, buf.ptr.wrapping_add(MSGHDR_IOV))?;
            (iov, iovlen)
        }
        _ => return None,
    };
    if count == 0 {
        return None;
    }
    let first = Iovec::at(memory, iovecs, 0)?;
    Some(Segments {
        iovecs,
        count,
        first: first.base,
        first_len: first.len,
    })
}

/// What an HTTP/1 server's call of `total` bytes, the first of its answer to a request, is
/// for the request's turn: from the status line its first segment starts with. A call without
/// a readable buffer, or whose first segment is too short for the status code, is the answer
/// ([`AnswerStatus::Final`]). An interim `1xx` is [`AnswerStatus::Interim`] only when the call
/// holds its whole head and nothing after it: a final answer sent in the same call follows
/// the interim one's blank line, and then the call is the answer. A head whose blank line is
/// not within the first [`HEAD_SCAN_BYTES`] bytes of the first segment is taken for the answer
/// too.
#[inline(always)]
pub fn answer_call<M: UserMemory>(memory: &M, buf: &SyscallBuffer, total: u32) -> AnswerStatus {
    let Some(segments) = segments(memory, buf, total) else {
        return AnswerStatus::Final;
    };
    let available = segments.first_len.min(u64::from(total));
    if available < proto::STATUS_BYTES as u64 {
        return AnswerStatus::Final;
    }
    let Some(first) = memory.read::<{ proto::STATUS_BYTES }>(segments.first) else {
        return AnswerStatus::Final;
    };
    match proto::answer_status(&first) {
        AnswerStatus::Interim
            if head_end(memory, segments.first, available) == Some(u64::from(total)) =>
        {
            AnswerStatus::Interim
        }
        AnswerStatus::Interim => AnswerStatus::Final,
        status => status,
    }
}

/// How far into an interim answer [`answer_call`] looks for the blank line that ends its head:
/// `100 Continue` and `102 Processing` take 25 to 30 bytes; a `103 Early Hints` with many links
/// may take more, and is then taken for the final answer.
pub const HEAD_SCAN_BYTES: u64 = 256;

/// Bytes copied at a time by [`head_end`].
const HEAD_SCAN_WORD: u64 = 16;
/// Stride of those copies: each covers the [`proto::HEAD_END`] patterns starting at its first
/// `WORD − 3` offsets, so consecutive copies overlap by 3 bytes and miss none.
const HEAD_SCAN_STRIDE: u64 = HEAD_SCAN_WORD - 3;
/// Copies needed to cover [`HEAD_SCAN_BYTES`].
const HEAD_SCAN_COPIES: u64 = (HEAD_SCAN_BYTES - HEAD_SCAN_WORD).div_ceil(HEAD_SCAN_STRIDE) + 1;

/// Offset just past the first blank line (`\r\n\r\n`) in the `available` bytes at `address`,
/// if it is within [`HEAD_SCAN_BYTES`] of them.
#[inline(always)]
fn head_end<M: UserMemory>(memory: &M, address: u64, available: u64) -> Option<u64> {
    let limit = available.min(HEAD_SCAN_BYTES);
    let last_copy = limit.checked_sub(HEAD_SCAN_WORD)?;
    let mut offset = 0;
    for _ in 0..HEAD_SCAN_COPIES {
        let at = offset.min(last_copy);
        let word = memory.read::<{ HEAD_SCAN_WORD as usize }>(address.wrapping_add(at))?;
        for start in 0..HEAD_SCAN_STRIDE as usize {
            if word.get(start..start + proto::HEAD_END.len()) == Some(&proto::HEAD_END[..]) {
                return Some(at + start as u64 + proto::HEAD_END.len() as u64);
            }
        }
        if at == last_copy {
            return None;
        }
        offset += HEAD_SCAN_STRIDE;
    }
    None
}

/// Decides a connection's protocol from its first inbound call of `total` bytes: from up to
/// [`DETECT_BYTES`] of its first segment. A call without a readable buffer is
/// [`Protocol::Other`], and so is one too short to decide: later bytes cannot be matched
/// from the right offset.
#[inline(always)]
pub fn detect_call<M: UserMemory>(memory: &M, buf: &SyscallBuffer, total: u32) -> Protocol {
    let protocol = match segments(memory, buf, total) {
        Some(segments) => detect_at(
            memory,
            segments.first,
            segments.first_len.min(u64::from(total)),
        ),
        None => Protocol::Other,
    };
    if protocol == Protocol::Undetermined {
        Protocol::Other
    } else {
        protocol
    }
}

/// Detection from the `available` bytes at `address`.
#[inline(always)]
fn detect_at<M: UserMemory>(memory: &M, address: u64, available: u64) -> Protocol {
    if available >= DETECT_BYTES as u64 {
        return memory
            .read::<DETECT_BYTES>(address)
            .map_or(Protocol::Other, |first| proto::detect(&first));
    }
    // Too short to copy in one go: byte by byte, bounded.
    let mut first = [0u8; DETECT_BYTES];
    let mut n = 0;
    for (i, slot) in first.iter_mut().enumerate() {
        if i as u64 >= available {
            break;
        }
        match memory.read::<1>(address.wrapping_add(i as u64)) {
            Some([byte]) => *slot = byte,
            None => break,
        }
        n = i + 1;
    }
    match first.get(..n) {
        Some(bytes) => proto::detect(bytes),
        None => Protocol::Other,
    }
}

/// Whether the daemon needs this frame to follow streams: what opens, ends or resets them.
/// `direction` is [`DIRECTION_IN`] or [`crate::DIRECTION_OUT`]. A client's GOAWAY is not
/// needed: its last stream id is about the server's (pushed) streams, which are not sessions.
#[inline(always)]
pub fn opens_or_ends_streams(header: &FrameHeader, direction: u32) -> bool {
    match header.kind {
        frame::RST_STREAM => true,
        frame::HEADERS if direction == DIRECTION_IN => true,
        frame::GOAWAY => direction != DIRECTION_IN,
        frame::HEADERS | frame::DATA => header.flags & flag::END_STREAM != 0,
        _ => false,
    }
}

/// A frame header the walk completed, with what the daemon needs of its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: FrameHeader,
    /// A GOAWAY's last stream id (RFC 9113 §6.8: streams above it were not processed), read
    /// when its first 4 payload bytes follow the header in the same segment, as a server's
    /// whole-frame writes have them; [`UNKNOWN_STREAM`] otherwise, and for other frames.
    pub last_stream_id: u32,
}

/// Why a walk through a call lost its place. The connection's walker is then given up for
/// good ([`H2Walk::is_desync`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    /// Inside the byte stream: an implausible frame header, header bytes that could not be
    /// read, or a walker that had already given up. Depends on the bytes only, not on how
    /// they were split into calls and iovecs.
    Stream,
    /// The call's buffer: none, an unreadable iovec array, or iovecs holding fewer bytes than
    /// the call moved.
    Buffer,
    /// More than [`MAX_IOVECS`] iovecs or [`MAX_STEPS`] steps in one call, or the loop
    /// driving the steps failed.
    Budget,
}

const LOST_NONE: u32 = 0;
const LOST_STREAM: u32 = 1;
const LOST_BUFFER: u32 = 2;
const LOST_BUDGET: u32 = 3;

/// The walk through one system call's segments, a step at a time. The eBPF program keeps it
/// in a per-CPU map between `bpf_loop` iterations (the verifier then checks one iteration's
/// body instead of following every iteration's exact values), hence `#[repr(C)]` and plain
/// integers.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct CallWalk {
    /// The connection's walker in this direction.
    pub walk: H2Walk,
    /// Bytes of the call not walked yet.
    remaining: u64,
    /// Address of the next byte in the current segment.
    position: u64,
    /// Bytes left in the current segment.
    segment_left: u64,
    /// Index of the next iovec.
    next_iovec: u64,
    /// iovec array (0: a flat buffer).
    iovecs: u64,
    /// Number of iovecs.
    count: u64,
    /// `LOST_*`: why the walk stopped early.
    lost: u32,
    /// Explicit padding.
    _pad: u32,
}

impl CallWalk {
    /// Starts walking the `total` bytes of a call whose buffer is `buf`, from `walk`.
    #[inline(always)]
    pub fn new<M: UserMemory>(memory: &M, walk: H2Walk, buf: &SyscallBuffer, total: u32) -> Self {
        let mut this = Self {
            walk,
            remaining: u64::from(total),
            position: 0,
            segment_left: 0,
            next_iovec: 1,
            iovecs: 0,
            count: 0,
            lost: LOST_NONE,
            _pad: 0,
        };
        if walk.is_desync() {
            this.lost = LOST_STREAM;
            return this;
        }
        match segments(memory, buf, total) {
            Some(segments) => {
                this.position = segments.first;
                this.segment_left = segments.first_len.min(u64::from(total));
                this.iovecs = segments.iovecs;
                this.count = segments.count;
            }
            None => this.lost = LOST_BUFFER,
        }
        this
    }

    /// One step: a payload skip, a frame header, one byte of a header split across segments,
    /// or the move to the next iovec. Each frame header completed goes to `on_frame`. Returns
    /// whether to go on: false once the call is walked or the walk is lost.
    #[inline(always)]
    pub fn advance<M: UserMemory>(&mut self, memory: &M, on_frame: impl FnOnce(Frame)) -> bool {
        if self.remaining == 0 || self.lost != LOST_NONE {
            return false;
        }
        if self.segment_left == 0 {
            return self.next_segment(memory);
        }
        let at = self.position;
        let step = self.walk.step(
            self.segment_left.min(u64::from(u32::MAX)) as u32,
            |dst| match memory.read::<9>(at) {
                Some(bytes) => {
                    *dst = bytes;
                    true
                }
                None => false,
            },
            || memory.read::<1>(at).map(|[byte]| byte),
        );
        let Ok(step) = step else {
            self.lost = LOST_STREAM;
            return false;
        };
        let consumed = u64::from(step.consumed).min(self.segment_left);
        self.position = self.position.wrapping_add(consumed);
        self.segment_left -= consumed;
        self.remaining = self.remaining.saturating_sub(consumed);
        if let Some(header) = step.frame {
            on_frame(Frame {
                header,
                last_stream_id: self.last_stream_id(memory, &header),
            });
        }
        true
    }

    /// A GOAWAY's last stream id, from the 4 bytes at the current position (its payload's
    /// start) if they are in this segment; the walk skips them as payload all the same.
    #[inline(always)]
    fn last_stream_id<M: UserMemory>(&self, memory: &M, header: &FrameHeader) -> u32 {
        if header.kind != frame::GOAWAY || header.length < 4 || self.segment_left < 4 {
            return UNKNOWN_STREAM;
        }
        memory
            .read::<4>(self.position)
            .map_or(UNKNOWN_STREAM, |bytes| {
                u32::from_be_bytes(bytes) & proto::STREAM_ID_MASK
            })
    }

    #[inline(always)]
    fn next_segment<M: UserMemory>(&mut self, memory: &M) -> bool {
        if self.iovecs == 0 || self.next_iovec >= self.count {
            self.lost = LOST_BUFFER;
            return false;
        }
        if self.next_iovec >= MAX_IOVECS {
            self.lost = LOST_BUDGET;
            return false;
        }
        let Some(iovec) = Iovec::at(memory, self.iovecs, self.next_iovec) else {
            self.lost = LOST_BUFFER;
            return false;
        };
        self.next_iovec += 1;
        self.position = iovec.base;
        self.segment_left = iovec.len.min(self.remaining);
        true
    }

    /// Advances up to [`MAX_STEPS`] times, as `bpf_loop` does in the kernel. Always true (the
    /// loop cannot fail), to be passed to [`walk_call`].
    pub fn run<M: UserMemory>(&mut self, memory: &M, mut on_frame: impl FnMut(Frame)) -> bool {
        for _ in 0..MAX_STEPS {
            if !self.advance(memory, &mut on_frame) {
                break;
            }
        }
        true
    }

    /// Ends the walk: `Ok` if every byte of the call was walked. Otherwise the walker is given
    /// up for good.
    #[inline(always)]
    fn finish(&mut self) -> Result<(), Lost> {
        let lost = match self.lost {
            LOST_NONE if self.remaining == 0 => return Ok(()),
            LOST_STREAM => Lost::Stream,
            LOST_BUFFER => Lost::Buffer,
            _ => Lost::Budget,
        };
        self.walk.desync = 1;
        Err(lost)
    }
}

/// Walks the HTTP/2 frames in one system call's `total` bytes, updating the connection's
/// walker `walk`. `run` takes the walk through its steps (calls [`CallWalk::advance`] until it
/// returns false or [`MAX_STEPS`] times, handling the frames) and returns false if its loop
/// failed: [`CallWalk::run`] on the host, `bpf_loop` in the kernel.
#[inline(always)]
pub fn walk_call<M: UserMemory>(
    memory: &M,
    walk: &mut H2Walk,
    buf: &SyscallBuffer,
    total: u32,
    run: impl FnOnce(&mut CallWalk) -> bool,
) -> Result<(), Lost> {
    let mut call = CallWalk::new(memory, *walk, buf, total);
    if call.lost == LOST_NONE && !run(&mut call) {
        call.lost = LOST_BUDGET;
    }
    let result = call.finish();
    *walk = call.walk;
    result
}

#[cfg(any(test, feature = "sim"))]
pub mod sim;

#[cfg(test)]
mod tests;
