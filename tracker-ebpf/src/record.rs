//! What a hook fired with, whichever way its program is attached.
//!
//! Every socket hook has two entry points. The raw tracepoint (preferred) receives the
//! tracepoint's C arguments as they are: the kernel skips formatting a perf record, so the
//! cost of a firing that is filtered out is a few instructions. The classic tracepoint
//! (fallback, for kernels where the raw one cannot be used) reads the record the kernel
//! formatted. The hook logic is written once, against the traits here.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_probe_read_kernel,
    programs::{RawTracePointContext, TracePointContext},
};
use tracker_common::{
    AF_INET, AF_INET6, ConnKey, SockHead, SockLayout, inet_sock_set_state as state_field, wire_addr,
};

/// Reads the field at `offset` of the tracepoint record straight from the program's context.
/// Tracepoint programs may load from their context within the record, which saves the
/// `bpf_probe_read_kernel` helper call `TracePointContext::read_at` makes for every field
/// (measurable on the connection path, which runs several times per connection host-wide).
///
/// # Safety
///
/// `offset` and `size_of::<T>()` must be those of a field of this tracepoint's format (the
/// daemon checks them against the format file before attaching), aligned for `T`.
#[inline(always)]
pub unsafe fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: per the function's contract the field lies within the record and is aligned.
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// Argument `n` (or, in an fexit program, the return value after the last one) of an
/// fentry/fexit program, as a plain number. The context hands pointer arguments over as typed
/// kernel pointers, on which the verifier forbids arithmetic (aya-log's formatting of an
/// address at debug level shifts it); copied out with a helper it is a value like the one a
/// tracepoint gives.
#[inline(always)]
pub fn btf_arg_value<C: EbpfContext>(ctx: &C, n: usize) -> u64 {
    kernel((ctx.as_ptr() as u64).wrapping_add(8 * n as u64)).unwrap_or(0)
}

/// Reads kernel memory at `address`; `None` if it cannot be read.
#[inline(always)]
pub fn kernel<T>(address: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copies and fails cleanly on a bad address.
    unsafe { bpf_probe_read_kernel(address as *const T) }.ok()
}

/// One firing of `sock:inet_sock_set_state`: a TCP-family socket changed state.
pub trait StateChange: EbpfContext {
    /// The socket's kernel address.
    fn skaddr(&self) -> u64;
    /// (old state, new state).
    fn states(&self) -> (i32, i32);
    /// The socket's `IPPROTO_*` (0 if unreadable).
    fn protocol(&self) -> u16;
    /// Local port, host byte order (0 if unreadable).
    fn local_port(&self) -> u16;
    /// The socket's endpoints, its local port known already; zeroes where a read fails.
    fn endpoints_on_port(&self, local_port: u16) -> ConnKey;
    /// The socket's endpoints; zeroes where a read fails.
    #[inline(always)]
    fn endpoints(&self) -> ConnKey {
        self.endpoints_on_port(self.local_port())
    }
}

/// `sock:inet_sock_set_state` as a raw tracepoint:
/// `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`. Socket fields
/// are read at the offsets the daemon found in the kernel's BTF.
pub struct RawStateChange<'a> {
    pub ctx: &'a RawTracePointContext,
    pub layout: &'a SockLayout,
}

impl EbpfContext for RawStateChange<'_> {
    fn as_ptr(&self) -> *mut core::ffi::c_void {
        self.ctx.as_ptr()
    }
}

impl RawStateChange<'_> {
    #[inline(always)]
    fn at<T: Default>(&self, offset: u32) -> T {
        kernel(self.skaddr().wrapping_add(u64::from(offset))).unwrap_or_default()
    }
}

impl StateChange for RawStateChange<'_> {
    #[inline(always)]
    fn skaddr(&self) -> u64 {
        self.ctx.arg(0)
    }

    #[inline(always)]
    fn states(&self) -> (i32, i32) {
        // `int` arguments arrive widened to 64 bits.
        (self.ctx.arg::<u64>(1) as i32, self.ctx.arg::<u64>(2) as i32)
    }

    #[inline(always)]
    fn protocol(&self) -> u16 {
        self.at(self.layout.protocol)
    }

    #[inline(always)]
    fn local_port(&self) -> u16 {
        u16::from_be(self.at(self.layout.local_port))
    }

    #[inline(always)]
    fn endpoints_on_port(&self, local_port: u16) -> ConnKey {
        let head: SockHead = self.at(self.layout.head);
        // Every field set once, with no zeroed key to start from (see `zeroed`). A TCP socket
        // is IPv4 or IPv6; one whose head could not be read is all zeroes, as IPv4.
        let (local_addr, remote_addr) = if head.family == AF_INET6 {
            let [remote, local]: [[u8; 16]; 2] = self.at(self.layout.v6_pair);
            (local, remote)
        } else {
            (wire_addr::v4(head.local_v4), wire_addr::v4(head.remote_v4))
        };
        ConnKey {
            family: head.family,
            local_port,
            remote_port: u16::from_be(head.remote_port),
            _pad: 0,
            local_addr,
            remote_addr,
        }
    }
}

/// `sock:inet_sock_set_state` as a classic tracepoint, whose record carries every field
/// (format pasted in `probes::inet_sock_set_state`).
pub struct RecordStateChange<'a>(pub &'a TracePointContext);

impl EbpfContext for RecordStateChange<'_> {
    fn as_ptr(&self) -> *mut core::ffi::c_void {
        self.0.as_ptr()
    }
}

// SAFETY (every `field` below): offsets and sizes are those of the tracepoint's format,
// verified by the daemon before this program is attached.
impl StateChange for RecordStateChange<'_> {
    #[inline(always)]
    fn skaddr(&self) -> u64 {
        unsafe { field(self.0, state_field::SKADDR) }
    }

    #[inline(always)]
    fn states(&self) -> (i32, i32) {
        unsafe {
            (
                field(self.0, state_field::OLDSTATE),
                field(self.0, state_field::NEWSTATE),
            )
        }
    }

    #[inline(always)]
    fn protocol(&self) -> u16 {
        unsafe { field(self.0, state_field::PROTOCOL) }
    }

    #[inline(always)]
    fn local_port(&self) -> u16 {
        unsafe { field(self.0, state_field::SPORT) }
    }

    #[inline(always)]
    fn endpoints_on_port(&self, local_port: u16) -> ConnKey {
        let family: u16 = unsafe { field(self.0, state_field::FAMILY) };
        let mut key = ConnKey {
            family,
            local_port,
            remote_port: unsafe { field(self.0, state_field::DPORT) },
            ..ConnKey::default()
        };
        if family == AF_INET {
            // Copied in place, the layout of `wire_addr::v4`: through that function LLVM
            // lowers the IPv6 copies below to loads through a moved context pointer, which
            // the verifier refuses.
            let local: [u8; 4] = unsafe { field(self.0, state_field::SADDR) };
            let remote: [u8; 4] = unsafe { field(self.0, state_field::DADDR) };
            key.local_addr[..4].copy_from_slice(&local);
            key.remote_addr[..4].copy_from_slice(&remote);
        } else if family == AF_INET6 {
            key.local_addr = unsafe { field(self.0, state_field::SADDR_V6) };
            key.remote_addr = unsafe { field(self.0, state_field::DADDR_V6) };
        }
        key
    }
}

/// One firing of `sock:sock_recv_length` or `sock:sock_send_length`: `TP_PROTO(struct sock
/// *sk, int ret, int flags)` for the raw tracepoint, the same three values in the classic
/// record.
#[derive(Clone, Copy)]
pub struct SockLength {
    pub skaddr: u64,
    /// Bytes moved, or a negative error.
    pub bytes: i32,
    /// `MSG_*` flags of the call (0 for sends).
    pub flags: i32,
}

impl SockLength {
    #[inline(always)]
    pub fn from_raw(ctx: &RawTracePointContext) -> Self {
        Self {
            skaddr: ctx.arg(0),
            bytes: ctx.arg::<u64>(1) as i32,
            flags: ctx.arg::<u64>(2) as i32,
        }
    }

    /// # Safety
    ///
    /// `ctx` must be a `sock:sock_{recv,send}_length` record whose layout the daemon checked.
    #[inline(always)]
    pub unsafe fn from_record(ctx: &TracePointContext) -> Self {
        use tracker_common::sock_length as length_field;
        // SAFETY: per the function's contract.
        unsafe {
            Self {
                skaddr: field(ctx, length_field::SK),
                bytes: field(ctx, length_field::RET),
                flags: field(ctx, length_field::FLAGS),
            }
        }
    }
}
