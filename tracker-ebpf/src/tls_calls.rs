//! The TLS library calls in progress, per thread, and which socket each `SSL *` reads and
//! writes: the entry probes (`probes::openssl`) note a call, the socket hooks tie it to their
//! socket, and the return probe hands the plaintext to the turns.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::map, maps::LruHashMap, programs::ProbeContext,
};

use tracker_common::{ConnTrack, proto::Protocol};

use crate::settings::CONFIG;

/// What a noted call does (see [`ssl_call_on`]).
pub const READ: u32 = 1;
pub const WRITE: u32 = 2;
/// Binds its `SSL *` only: its socket I/O is counted as the socket hooks see it.
pub const HANDSHAKE: u32 = 3;

/// A TLS library call in progress on a thread.
#[derive(Clone, Copy)]
pub struct SslCall {
    pub ssl: u64,
    /// The plaintext buffer (user address).
    pub buffer: u64,
    /// Where an `_ex` function writes its byte count (0: the return value is the count).
    pub count_at: u64,
    /// The socket the call read or wrote, once the socket hooks saw it (0: not yet).
    pub skaddr: u64,
    pub kind: u32,
    _pad: u32,
}

/// Calls in progress, by thread (`pid_tgid`). A thread is in at most one of these functions
/// at a time (they do not call one another); a note whose return was never seen (the thread
/// died in it) is replaced by the thread's next call or pushed out by newer ones.
#[map]
pub static SSL_CALLS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16384, 0);

/// An `SSL *` of one process (the same address means different objects in different
/// processes, and forked workers share their layout).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct SslKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}

/// The socket each `SSL *` was last seen reading or writing. Least recently used bindings
/// make room: a connection that is in use is bound again at its next socket I/O.
#[map]
pub static SSL_SOCKETS: LruHashMap<SslKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// Notes the current thread's call of `kind` from its arguments (`ex`: an `_ex` function,
/// whose byte count is written through its fourth argument).
#[inline(always)]
pub fn note(ctx: &ProbeContext, kind: u32, ex: bool) {
    let call = SslCall {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buffer: ctx.arg::<u64>(1).unwrap_or(0),
        count_at: if ex {
            ctx.arg::<u64>(3).unwrap_or(0)
        } else {
            0
        },
        skaddr: 0,
        kind,
        _pad: 0,
    };
    let _ = SSL_CALLS.insert(&bpf_get_current_pid_tgid(), &call, 0);
}

/// Whether I/O on `track`'s socket may be inside a TLS library call: not once its own bytes
/// were read as plaintext HTTP (its socket I/O is then its payload), so the socket hooks skip
/// [`ssl_call_on`]'s lookup for those. Until then it may be: a TLS connection's first read
/// is the library's handshake, which binds its `SSL *` to the socket, and a connection whose
/// bytes could not be read (`Other`) may be TLS too.
#[inline(always)]
pub fn may_be_in_tls_call(track: &ConnTrack) -> bool {
    let plaintext_http = track.protocol == Protocol::Http1 as u32
        || track.protocol == Protocol::Http2 as u32
        || track.protocol == Protocol::Switching as u32;
    track.tls != 0 || !plaintext_http
}

/// Called by the socket hooks for I/O on tracked connection `skaddr`: if the current thread is
/// inside a TLS library call, ties the call's `SSL *` to the socket and returns the call's
/// kind; 0 outside one. In a [`READ`] or [`WRITE`] the plaintext is followed instead, so the
/// socket hook leaves the bytes alone.
#[inline(always)]
pub fn ssl_call_on(skaddr: u64) -> u32 {
    if CONFIG.get(0).is_none_or(|config| config.tls == 0) {
        return 0;
    }
    let thread = bpf_get_current_pid_tgid();
    let Some(call) = SSL_CALLS.get_ptr_mut(&thread) else {
        return 0;
    };
    // SAFETY: this thread's live note; only this thread writes it.
    let call = unsafe { &mut *call };
    if call.skaddr != skaddr {
        call.skaddr = skaddr;
        let key = SslKey {
            tgid: (thread >> 32) as u32,
            _pad: 0,
            ssl: call.ssl,
        };
        let _ = SSL_SOCKETS.insert(&key, &skaddr, 0);
    }
    call.kind
}
