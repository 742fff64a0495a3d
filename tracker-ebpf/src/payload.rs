//! Reading the payload of a tracked connection's system call: protocol detection from the
//! first bytes the client sends, and the HTTP/2 frame walk in both directions. The reading
//! itself is `tracker_common::walk`, shared with the host tests and the fuzzer; this module
//! finds the call's buffer, runs the walk's steps under `bpf_loop` and reports frames.
//!
//! Where the bytes are: the socket tracepoints run inside the server's read/write-family
//! system call, in its thread, once the bytes reached (or before they left) the user buffer
//! the call names. The call's number and arguments are still in the user registers the task
//! saved when it entered the kernel (`bpf_task_pt_regs` of the current task), so the buffer is
//! found there, only for the tracked connections that need it, without hooking system-call
//! entry (which would put every system call of every process on the host through the kernel's
//! slow tracing path). The buffer is a flat one, an iovec array, or a msghdr holding one;
//! calls that are none of those (io_uring, sendfile) give no buffer, and the connection's
//! sessions become unknown.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_loop, bpf_task_pt_regs},
    },
    macros::map,
    maps::PerCpuArray,
};
use aya_log_ebpf::debug;
use tracker_common::{
    ConnTrack, DIRECTION_OUT, RegsLayout, SYSCALL_BUFFERS_MAX_ENTRIES, buf_shape,
    payloads::{H2FramePayload, WalkLostPayload},
    proto::{AnswerStatus, H2Walk, Protocol},
    walk::{
        self, CallWalk, MAX_STEPS, SyscallBuffer, UserMemory, detect_call, opens_or_ends_streams,
    },
};

use crate::record::kernel;
use crate::ring::emit_for_socket;
use crate::settings::{CONFIG, SYSCALL_BUFFERS};

/// The memory of the process making the current system call.
struct CurrentTask;

impl UserMemory for CurrentTask {
    #[inline(always)]
    fn read<const N: usize>(&self, address: u64) -> Option<[u8; N]> {
        // SAFETY: bpf_probe_read_user copies from user memory and fails cleanly on a bad
        // address.
        unsafe { bpf_probe_read_user(address as *const [u8; N]) }.ok()
    }
}

/// Where a hook's payload is.
#[derive(Clone, Copy)]
pub enum Source {
    /// In the buffer of the current thread's system call (the socket hooks).
    Syscall,
    /// Plaintext at this user address, in one piece (the TLS library hooks).
    Plaintext(u64),
}

impl Source {
    /// The buffer holding `bytes` bytes moved in `direction`.
    #[inline(always)]
    pub fn buffer(self, direction: u32, bytes: u32) -> SyscallBuffer {
        match self {
            Self::Syscall => syscall_buffer(direction),
            Self::Plaintext(ptr) => SyscallBuffer {
                ptr,
                count: u64::from(bytes),
                shape: buf_shape::FLAT,
            },
        }
    }
}

/// The buffer of the current thread's system call, if it is a read/write-family call in
/// `direction`; no buffer (all zeroes) otherwise.
#[inline(always)]
pub fn syscall_buffer(direction: u32) -> SyscallBuffer {
    let Some(config) = CONFIG.get(0) else {
        return SyscallBuffer::default();
    };
    if config.payload == 0 {
        return SyscallBuffer::default();
    }
    // SAFETY: plain helper calls; the registers pointer is only read through
    // bpf_probe_read_kernel.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let Some(call) = SyscallRegs::read(regs, &config.regs) else {
        return SyscallBuffer::default();
    };
    if call.number >= SYSCALL_BUFFERS_MAX_ENTRIES {
        return SyscallBuffer::default();
    }
    let Some(&kind) = SYSCALL_BUFFERS.get(call.number) else {
        return SyscallBuffer::default();
    };
    if kind == 0 || kind >> 8 != direction || call.arg2 == 0 {
        return SyscallBuffer::default();
    }
    SyscallBuffer {
        ptr: call.arg2,
        count: call.arg3,
        shape: kind & 0xff,
    }
}

/// The system call number and the arguments that name a read/write-family call's buffer, as
/// the current task saved them. The number is its register's low 32 bits: arm64 saves it as a
/// 32-bit field whose neighbour is not always zero, and no number reaches past 32 bits on
/// x86_64 (a task outside a system call has all ones there, far past the table's end either
/// way).
struct SyscallRegs {
    number: u32,
    arg2: u64,
    arg3: u64,
}

impl SyscallRegs {
    /// Reads them from the saved registers at `regs`: in one copy where `layout` has them in
    /// one window (x86_64), one by one otherwise. None if the number cannot be read. Each copy
    /// is a helper call, and on the first send of every HTTP/1 answer these copies are most
    /// of what a request costs the programs.
    #[inline(always)]
    fn read(regs: u64, layout: &RegsLayout) -> Option<Self> {
        if layout.window == RegsLayout::NO_WINDOW {
            return Some(Self {
                number: kernel::<u32>(regs.wrapping_add(u64::from(layout.syscall_nr)))?,
                arg2: kernel::<u64>(regs.wrapping_add(u64::from(layout.arg2))).unwrap_or(0),
                arg3: kernel::<u64>(regs.wrapping_add(u64::from(layout.arg3))).unwrap_or(0),
            });
        }
        let words = kernel::<[u64; 4]>(regs.wrapping_add(u64::from(layout.window)))?;
        // A match rather than an index, so the verifier sees only constant offsets.
        let word = |offset: u32| match layout.word_in_window(offset) {
            0 => words[0],
            1 => words[1],
            2 => words[2],
            _ => words[3],
        };
        Some(Self {
            // Little-endian targets only (as the BPF build's `bpfel` target): the low half.
            number: word(layout.syscall_nr) as u32,
            arg2: word(layout.arg2),
            arg3: word(layout.arg3),
        })
    }
}

/// First payload from the client: decide the protocol and prepare the walk. Returns the
/// protocol as `u32`, for the daemon.
#[inline(always)]
pub fn detect_protocol(track: &mut ConnTrack, buf: &SyscallBuffer, total: u32) -> u32 {
    let protocol = detect_call(&CurrentTask, buf, total);
    track.protocol = protocol as u32;
    if protocol == Protocol::Http2 {
        track.walk_in = H2Walk::inbound();
        track.walk_out = H2Walk::outbound();
    }
    protocol as u32
}

/// After a `101 Switching Protocols`, the client's next payload decides what the connection
/// speaks: HTTP/2 (an h2c upgrade), whose walks start here, or something that is no longer
/// HTTP (a WebSocket). The server's frames sent between its `101` and now (its SETTINGS, the
/// upgraded request's response) are not walked: the outbound walk starts at its next send,
/// which begins with a frame when the server writes whole frames. Returns the protocol.
#[inline(always)]
pub fn switch_protocol(track: &mut ConnTrack, buf: &SyscallBuffer, total: u32) -> Protocol {
    let protocol = if detect_call(&CurrentTask, buf, total) == Protocol::Http2 {
        track.walk_in = H2Walk::inbound();
        track.walk_out = H2Walk::outbound();
        Protocol::Http2
    } else {
        Protocol::Hijacked
    };
    track.protocol = protocol as u32;
    protocol
}

/// What the current send of `total` bytes from `source`, the first of an HTTP/1 answer, is
/// for its request's turn (see `walk::answer_call`).
#[inline(always)]
pub fn answer_status(source: Source, total: u32) -> AnswerStatus {
    let buf = source.buffer(DIRECTION_OUT, total);
    walk::answer_call(&CurrentTask, &buf, total)
}

/// A walk in progress and what its frames are reported with, shared with the `bpf_loop`
/// callback through the per-CPU [`WALK_SCRATCH`] map rather than the stack: the verifier then
/// sees unknown values at each callback entry, so it checks the body once instead of
/// following every iteration's exact numbers (which exceeds its jump limit).
#[derive(Clone, Copy)]
#[repr(C)]
struct WalkScratch {
    call: CallWalk,
    skaddr: u64,
    now: u64,
    direction: u32,
    _pad: u32,
}

/// Per-CPU state of the HTTP/2 frame walk in progress.
#[map]
static WALK_SCRATCH: PerCpuArray<WalkScratch> = PerCpuArray::with_max_entries(1, 0);

/// One step of the walk. Runs under `bpf_loop`, so the verifier checks this body once instead
/// of once per iteration, which is what lets a call hold hundreds of frames. Returns 1 to stop.
#[inline(never)]
extern "C" fn walk_step(_index: u64, _context: *mut c_void) -> i64 {
    let Some(state) = WALK_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch slot; programs using it do not nest on one CPU (they run in
    // system-call context only).
    let state = unsafe { &mut *state };
    let more = state.call.advance(&CurrentTask, |frame| {
        if opens_or_ends_streams(&frame.header, state.direction) {
            let note = H2FramePayload::of(&frame, state.direction);
            emit_for_socket(state.skaddr, state.now, note);
        }
    });
    i64::from(!more)
}

/// Runs `call`'s steps under `bpf_loop`; false if the loop could not run.
#[inline(always)]
fn run_steps(call: &mut CallWalk, skaddr: u64, direction: u32, now: u64) -> bool {
    let Some(scratch) = WALK_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch slot (see `walk_step`).
    let scratch = unsafe { &mut *scratch };
    *scratch = WalkScratch {
        call: *call,
        skaddr,
        now,
        direction,
        _pad: 0,
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
    *call = scratch.call;
    looped >= 0
}

/// Walks the HTTP/2 frames in one system call's `total` bytes.
#[inline(always)]
pub fn walk_frames<C: EbpfContext>(
    ctx: &C,
    walk: &mut H2Walk,
    skaddr: u64,
    direction: u32,
    buf: &SyscallBuffer,
    total: u32,
    now: u64,
) {
    // Lost once, reported once.
    if walk.is_desync() {
        return;
    }
    let walked = walk::walk_call(&CurrentTask, walk, buf, total, |call| {
        run_steps(call, skaddr, direction, now)
    });
    if walked.is_err() {
        // Reaches the daemon's log (RUST_LOG=debug) through aya-log.
        debug!(
            ctx,
            "HTTP/2 frame walk lost on socket {:x}: its sessions are unknown from now on", skaddr
        );
        emit_for_socket(skaddr, now, WalkLostPayload);
    }
}
