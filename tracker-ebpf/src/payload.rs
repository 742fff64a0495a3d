//! Reading the payload of a tracked connection's system call: protocol detection from the
//! first bytes the client sends, and the HTTP/2 frame walk in both directions.
//!
//! Only bounded copies of frame headers (9 bytes) and of the first 16 bytes are made; payload
//! itself is skipped by length.
//!
//! Where the bytes are: the socket tracepoints run inside the server's read/write-family
//! system call, in its thread, once the bytes reached (or before they left) the user buffer
//! the call names. The call's number and arguments are still in the user registers the task
//! saved when it entered the kernel (`bpf_task_pt_regs` of the current task), so the buffer is
//! found there, only for the tracked connections that need it. (An earlier design remembered
//! every server thread's buffer from `syscalls:sys_enter_*` tracepoints; enabling those puts
//! every system call of every process on the host through the kernel's slow tracing path.)
//! The buffer is a flat one, an iovec array, or a msghdr holding one; calls that are none of
//! those (io_uring, sendfile) give no buffer, and the connection's sessions become unknown.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_loop, bpf_task_pt_regs},
    },
};
use aya_log_ebpf::debug;
use tracker_common::{
    ConnTrack, DIRECTION_IN, EventKind, SYSCALL_BUFFERS_MAX_ENTRIES, buf_shape,
    proto::{self, FrameHeader, H2Walk, Protocol, flag, frame},
};

use crate::maps::{CONFIG, SYSCALL_BUFFERS, WALK_SCRATCH, emit_for_socket};
use crate::record::kernel;

/// Most iovecs followed in one system call (nginx batches up to 64 per writev).
const MAX_IOVECS: u64 = 64;
/// Most walker steps (a skip, a header, one byte of a split header, or moving to the next
/// iovec) per system call. A call needing more makes the connection's sessions unknown rather
/// than guessed. 1024 covers 400 small frames, e.g. a client opening a few hundred streams in
/// one write.
const MAX_STEPS: u32 = 1024;
/// Bytes copied for protocol detection.
const DETECT_BYTES: usize = 16;
/// Offsets in `struct user_msghdr` (x86_64 and every 64-bit ABI): `msg_iov`, `msg_iovlen`.
const MSGHDR_IOV: u64 = 16;
const MSGHDR_IOVLEN: u64 = 24;

/// `struct iovec`.
#[derive(Clone, Copy)]
#[repr(C)]
struct Iovec {
    base: u64,
    len: u64,
}

/// The user memory holding one system call's payload.
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

/// Where a system call's payload is in user memory.
#[derive(Clone, Copy, Default)]
pub struct UserBuf {
    /// User address: the buffer ([`buf_shape::FLAT`]), an `iovec` array
    /// ([`buf_shape::IOVEC`]) or a `user_msghdr` ([`buf_shape::MSGHDR`]).
    ptr: u64,
    /// Buffer size, or number of iovecs.
    count: u64,
    /// One of [`buf_shape`] (0: none).
    shape: u32,
}

/// The buffer of the current thread's system call, if it is a read/write-family call in
/// `direction`; an all-zero `UserBuf` (no shape) otherwise. Not an `Option`: LLVM may copy
/// the undefined payload of a `None` through registers, which the verifier rejects as an
/// uninitialised read.
#[inline(always)]
pub fn syscall_buffer(direction: u32) -> UserBuf {
    let Some(config) = CONFIG.get(0) else {
        return UserBuf::default();
    };
    if config.payload == 0 {
        return UserBuf::default();
    }
    // SAFETY: plain helper calls; the registers pointer is only read through
    // bpf_probe_read_kernel.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let layout = config.regs;
    let Some(number) = kernel::<u64>(regs.wrapping_add(u64::from(layout.syscall_nr))) else {
        return UserBuf::default();
    };
    if number >= u64::from(SYSCALL_BUFFERS_MAX_ENTRIES) {
        return UserBuf::default();
    }
    let Some(&kind) = SYSCALL_BUFFERS.get(number as u32) else {
        return UserBuf::default();
    };
    if kind == 0 || kind >> 8 != direction {
        return UserBuf::default();
    }
    let ptr = kernel::<u64>(regs.wrapping_add(u64::from(layout.arg2))).unwrap_or(0);
    let count = kernel::<u64>(regs.wrapping_add(u64::from(layout.arg3))).unwrap_or(0);
    if ptr == 0 {
        return UserBuf::default();
    }
    UserBuf {
        ptr,
        count,
        shape: kind & 0xff,
    }
}

#[inline(always)]
fn read_user<T>(address: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user copies from user memory and fails cleanly on a bad address.
    unsafe { bpf_probe_read_user(address as *const T) }.ok()
}

#[inline(always)]
fn iovec_at(array: u64, index: u64) -> Option<Iovec> {
    read_user::<Iovec>(array.wrapping_add(index.wrapping_mul(16)))
}

#[inline(always)]
fn segments(buf: &UserBuf, total: u32) -> Option<Segments> {
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
        buf_shape::MSGHDR => (
            read_user::<u64>(buf.ptr.wrapping_add(MSGHDR_IOV))?,
            read_user::<u64>(buf.ptr.wrapping_add(MSGHDR_IOVLEN))?,
        ),
        _ => return None,
    };
    if count == 0 {
        return None;
    }
    let first = iovec_at(iovecs, 0)?;
    Some(Segments {
        iovecs,
        count,
        first: first.base,
        first_len: first.len,
    })
}

/// First payload from the client: decide the protocol and prepare the walk. Returns the
/// protocol as `u32`, for the daemon.
#[inline(always)]
pub fn detect_protocol(track: &mut ConnTrack, buf: &UserBuf, total: u32) -> u32 {
    let protocol = match segments(buf, total) {
        Some(segments) => {
            let available = segments.first_len.min(u64::from(total));
            let mut first = [0u8; DETECT_BYTES];
            if available >= DETECT_BYTES as u64 {
                first = read_user(segments.first).unwrap_or([0; DETECT_BYTES]);
                proto::detect(&first)
            } else {
                // Too short to copy in one go: byte by byte, bounded.
                let mut n = 0;
                for i in 0..DETECT_BYTES {
                    if i as u64 >= available {
                        break;
                    }
                    match read_user::<u8>(segments.first.wrapping_add(i as u64)) {
                        Some(byte) => first[i] = byte,
                        None => break,
                    }
                    n = i + 1;
                }
                match first.get(..n) {
                    Some(bytes) => proto::detect(bytes),
                    None => Protocol::Other,
                }
            }
        }
        // No buffer seen (a path without one of the hooked system calls).
        None => Protocol::Other,
    };
    // A first read too short to decide cannot be decided later from the right offset.
    let protocol = if protocol == Protocol::Undetermined {
        Protocol::Other
    } else {
        protocol
    };
    track.protocol = protocol as u32;
    if protocol == Protocol::Http2 {
        track.walk_in = H2Walk::inbound();
        track.walk_out = H2Walk::outbound();
    }
    protocol as u32
}

/// Whether the daemon needs this frame to follow streams.
#[inline(always)]
fn interesting(header: &FrameHeader, direction: u32) -> bool {
    match header.kind {
        frame::RST_STREAM | frame::GOAWAY => true,
        frame::HEADERS if direction == DIRECTION_IN => true,
        frame::HEADERS | frame::DATA => header.flags & flag::END_STREAM != 0,
        _ => false,
    }
}

/// The state of one walk through a system call's segments, shared with the `bpf_loop`
/// callback through the per-CPU `WALK_SCRATCH` map rather than the stack: the verifier then
/// sees unknown values at each callback entry, so it checks the body once instead of
/// following every iteration's exact numbers (which exceeds its jump limit).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct WalkLoop {
    walk: H2Walk,
    skaddr: u64,
    now: u64,
    /// Bytes of the call not walked yet.
    remaining: u64,
    /// Address of the next byte in the current segment.
    position: u64,
    /// Bytes left in the current segment.
    segment_left: u64,
    next_iovec: u64,
    iovecs: u64,
    count: u64,
    direction: u32,
    /// Non-zero once the walk failed.
    lost: u32,
}

/// One step of the walk (a skip, a header, one byte of a split header, or the move to the
/// next iovec). Runs under `bpf_loop`, so the verifier checks this body once instead of once
/// per iteration, which is what lets a call hold hundreds of frames. Returns 1 to stop.
#[inline(never)]
extern "C" fn walk_step(_index: u64, _context: *mut c_void) -> i64 {
    let Some(state) = WALK_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch slot; programs using it do not nest on one CPU (they run in
    // system-call context only).
    let state = unsafe { &mut *state };
    if state.remaining == 0 {
        return 1;
    }
    if state.segment_left == 0 {
        if state.iovecs == 0 || state.next_iovec >= state.count || state.next_iovec >= MAX_IOVECS {
            state.lost = 1;
            return 1;
        }
        let Some(iovec) = iovec_at(state.iovecs, state.next_iovec) else {
            state.lost = 1;
            return 1;
        };
        state.next_iovec += 1;
        state.position = iovec.base;
        state.segment_left = iovec.len.min(state.remaining);
        return 0;
    }
    let at = state.position;
    let step = state.walk.step(
        state.segment_left.min(u64::from(u32::MAX)) as u32,
        |dst| match read_user::<[u8; 9]>(at) {
            Some(bytes) => {
                *dst = bytes;
                true
            }
            None => false,
        },
        || read_user::<u8>(at),
    );
    let Ok(step) = step else {
        state.lost = 1;
        return 1;
    };
    let consumed = u64::from(step.consumed).min(state.segment_left);
    state.position = state.position.wrapping_add(consumed);
    state.segment_left -= consumed;
    state.remaining = state.remaining.saturating_sub(consumed);
    if let Some(header) = step.frame
        && interesting(&header, state.direction)
    {
        let detail = u32::from(header.kind) | u32::from(header.flags) << 8 | state.direction << 16;
        emit_for_socket(
            EventKind::H2Frame as u32,
            state.skaddr,
            state.now,
            u64::from(header.stream_id),
            detail,
        );
    }
    0
}

/// Walks the HTTP/2 frames in one system call's `total` bytes.
#[inline(always)]
pub fn walk_frames<C: EbpfContext>(
    ctx: &C,
    walk: &mut H2Walk,
    skaddr: u64,
    direction: u32,
    buf: &UserBuf,
    total: u32,
    now: u64,
) {
    if walk.is_desync() {
        return;
    }
    let Some(segments) = segments(buf, total) else {
        lose_walk(ctx, walk, skaddr, now);
        return;
    };
    let Some(scratch) = WALK_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot (see `walk_step`).
    let scratch = unsafe { &mut *scratch };
    *scratch = WalkLoop {
        walk: *walk,
        skaddr,
        now,
        remaining: u64::from(total),
        position: segments.first,
        segment_left: segments.first_len.min(u64::from(total)),
        next_iovec: 1,
        iovecs: segments.iovecs,
        count: segments.count,
        direction,
        lost: 0,
    };
    // The callback finds its state in the scratch map; the context pointer is unused.
    let mut unused: u64 = 0;
    // SAFETY: the callback is a plain function of this program.
    let looped = unsafe {
        bpf_loop(
            MAX_STEPS,
            walk_step as *mut c_void,
            (&raw mut unused).cast::<c_void>(),
            0,
        )
    };
    *walk = scratch.walk;
    if looped < 0 || scratch.lost != 0 || scratch.remaining != 0 {
        lose_walk(ctx, walk, skaddr, now);
    }
}

#[inline(always)]
fn lose_walk<C: EbpfContext>(ctx: &C, walk: &mut H2Walk, skaddr: u64, now: u64) {
    walk.desync = 1;
    // Reaches the daemon's log (RUST_LOG=debug) through aya-log.
    debug!(
        ctx,
        "HTTP/2 frame walk lost on socket {:x}: its sessions are unknown from now on", skaddr
    );
    emit_for_socket(EventKind::WalkLost as u32, skaddr, now, 0, 0);
}
