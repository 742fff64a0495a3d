//! `security_sock_graft`: the server took a connection off a listener's accept queue.
//!
//! Why this hook: right after `inet_csk_accept` returns the accepted socket, `inet_accept`
//! locks it and attaches it to the new file (`sock_graft`), which calls the security module
//! hook `security_sock_graft(sk, parent)` out of line (Debian's 6.1 and 6.12: the accepted
//! socket is the one `inet_csk_accept` returned, checked with a kprobe beside a kretprobe).
//! The lock matters: a child joins the accept queue before its handshake's last step has run
//! the state change program, so a server on another CPU can take it off the queue (and
//! `inet_csk_accept` return it) before `TRACKED` has it; by the time the socket's lock is
//! taken that step is over. Its entry has the socket as its first argument, so fentry, or a
//! kprobe where fentry is refused: no return probe, so no pool of instances that threads
//! blocked in `accept()` would hold. Other families' accepts
//! (Unix sockets) graft too; they are not in `TRACKED`. Needs `CONFIG_SECURITY_NETWORK`,
//! which every major distribution's kernel has; without it the daemon falls back to the
//! kretprobe on `inet_csk_accept`.

use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};

use crate::probes::inet_csk_accept::accepted;
use crate::record::btf_arg_value;

/// `void security_sock_graft(struct sock *sk, struct socket *parent)`.
#[fentry(function = "security_sock_graft")]
pub fn fentry_security_sock_graft(ctx: FEntryContext) -> i32 {
    accepted(btf_arg_value(&ctx, 0));
    0
}

/// `void security_sock_graft(struct sock *sk, struct socket *parent)`.
#[kprobe]
pub fn kprobe_security_sock_graft(ctx: ProbeContext) -> u32 {
    if let Some(skaddr) = ctx.arg::<u64>(0) {
        accepted(skaddr);
    }
    0
}
