//! OpenSSL's `SSL_read`, `SSL_read_ex`, `SSL_write`, `SSL_write_ex` and `SSL_do_handshake`
//! (uprobes on the shared `libssl` a server maps): the plaintext of its TLS connections.
//!
//! Why these hooks: on a TLS connection the socket hooks see records they cannot read. The
//! library's read and write calls are where the plaintext sits in a user buffer, its length
//! known when the call returns. The entry program notes the call per thread (the `SSL *`, the
//! buffer, and for the `_ex` functions where the byte count will be written); the return
//! program hands the plaintext to the socket hooks' handlers (`on_recv`, `on_send`), so
//! detection, turns and the HTTP/2 walk are one code path for clear text and TLS.
//!
//! Tying an `SSL *` to its socket: the library reads and writes its socket from inside these
//! calls, in the same thread. The socket hooks find the thread's note, record the socket in it
//! (and by `SSL *`, for a later call the library serves from its buffer without touching the
//! socket) and leave the ciphertext alone: its turn is the plaintext's. `SSL_do_handshake` is
//! followed only to bind: its socket I/O (the handshake) counts as turns like any other, and it
//! binds the `SSL *` before the first read, so one freed and reused for a new connection is
//! never taken for its old one.
//!
//! Return probes, not an entry probe on the next call: a uretprobe's return instance is per
//! task (unlike a kretprobe's small shared pool), so a thread blocked in `SSL_read` costs
//! nothing to the others.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::payload::Source;
use crate::record::SockLength;
use crate::tls_calls::{HANDSHAKE, READ, SSL_CALLS, SSL_SOCKETS, SslKey, WRITE, note};
use crate::turns::{on_recv, on_send};

/// `int SSL_read(SSL *ssl, void *buf, int num)`.
#[uprobe]
pub fn uprobe_ssl_read(ctx: ProbeContext) -> u32 {
    note(&ctx, READ, false);
    0
}

/// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`.
#[uprobe]
pub fn uprobe_ssl_read_ex(ctx: ProbeContext) -> u32 {
    note(&ctx, READ, true);
    0
}

/// `int SSL_write(SSL *ssl, const void *buf, int num)`.
#[uprobe]
pub fn uprobe_ssl_write(ctx: ProbeContext) -> u32 {
    note(&ctx, WRITE, false);
    0
}

/// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)`.
#[uprobe]
pub fn uprobe_ssl_write_ex(ctx: ProbeContext) -> u32 {
    note(&ctx, WRITE, true);
    0
}

/// `int SSL_do_handshake(SSL *s)`.
#[uprobe]
pub fn uprobe_ssl_do_handshake(ctx: ProbeContext) -> u32 {
    note(&ctx, HANDSHAKE, false);
    0
}

/// The return of any of the functions above.
#[uretprobe]
pub fn uretprobe_ssl(ctx: RetProbeContext) -> u32 {
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { SSL_CALLS.get(&thread) }).copied() else {
        return 0;
    };
    let _ = SSL_CALLS.remove(&thread);
    if call.kind == HANDSHAKE {
        return 0;
    }
    // `int` results: a count, or (for `_ex`) 1 on success with the count written aside.
    let result = ctx.ret::<u64>() as i32;
    let bytes = if call.count_at == 0 {
        result
    } else if result == 1 {
        // SAFETY: bpf_probe_read_user fails cleanly on a bad address.
        unsafe { bpf_probe_read_user(call.count_at as *const u64) }
            .map_or(0, |count| count.min(i32::MAX as u64) as i32)
    } else {
        0
    };
    if bytes <= 0 {
        return 0;
    }
    let skaddr = if call.skaddr != 0 {
        call.skaddr
    } else {
        let key = SslKey {
            tgid: (thread >> 32) as u32,
            _pad: 0,
            ssl: call.ssl,
        };
        // SAFETY: a plain value copied out of the map.
        match unsafe { SSL_SOCKETS.get(&key) } {
            Some(&skaddr) => skaddr,
            None => return 0,
        }
    };
    let length = SockLength {
        skaddr,
        bytes,
        flags: 0,
    };
    let source = Source::Plaintext(call.buffer);
    if call.kind == READ {
        on_recv(&ctx, length, source);
    } else {
        on_send(&ctx, length, source);
    }
    0
}
