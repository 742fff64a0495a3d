//! `security_sock_graft`: the server took a connection off a listener's accept queue, on
//! kernels that refuse fexit on `inet_csk_accept`.
//!
//! Why this hook: right after `inet_csk_accept` returns the accepted socket, `inet_accept`
//! attaches it to the new file (`sock_graft`), which calls the security module hook
//! `security_sock_graft(sk, parent)` out of line (Debian's 6.1 and 6.12: the accepted
//! socket is the one `inet_csk_accept` returned, checked with a kprobe beside a kretprobe).
//! A kprobe at its entry has the socket as its first argument: no return probe, so no pool
//! of instances that threads blocked in `accept()` would hold. Other families' accepts
//! (Unix sockets) graft too; they are not in `TRACKED`. Needs `CONFIG_SECURITY_NETWORK`,
//! which every major distribution's kernel has; without it the daemon falls back to the
//! kretprobe on `inet_csk_accept`.

use aya_ebpf::{macros::kprobe, programs::ProbeContext};

use crate::probes::inet_csk_accept::accepted;

/// `void security_sock_graft(struct sock *sk, struct socket *parent)`.
#[kprobe]
pub fn kprobe_security_sock_graft(ctx: ProbeContext) -> u32 {
    if let Some(skaddr) = ctx.arg::<u64>(0) {
        accepted(skaddr);
    }
    0
}
