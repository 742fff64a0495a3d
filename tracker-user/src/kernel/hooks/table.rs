//! The hook table: every capability's candidate hooks, best first (see the parent module for
//! why each is what it is).

use tracker_common::{
    PROG_FENTRY_SECURITY_SOCK_GRAFT, PROG_FENTRY_TCP_CLOSE, PROG_FEXIT_INET_CSK_ACCEPT_2,
    PROG_FEXIT_INET_CSK_ACCEPT_4, PROG_FEXIT_TCP_RECVMSG_4, PROG_FEXIT_TCP_RECVMSG_5,
    PROG_FEXIT_TCP_RECVMSG_6, PROG_FEXIT_TCP_SENDMSG, PROG_INET_SOCK_SET_STATE,
    PROG_KPROBE_SECURITY_SOCK_GRAFT, PROG_KPROBE_TCP_CLEANUP_RBUF, PROG_KPROBE_TCP_CLOSE,
    PROG_KPROBE_TCP_RECVMSG, PROG_KPROBE_TCP_RECVMSG_6, PROG_KPROBE_TCP_SENDMSG,
    PROG_KRETPROBE_INET_CSK_ACCEPT, PROG_KRETPROBE_TCP_SENDMSG, PROG_RAW_INET_SOCK_SET_STATE,
    PROG_RAW_SOCK_RECV_LENGTH, PROG_RAW_SOCK_SEND_LENGTH, PROG_SOCK_RECV_LENGTH,
    PROG_SOCK_SEND_LENGTH, inet_sock_set_state, sock_length,
};

use super::{Attach, Candidate, Capability, CapabilityHooks, HookKind};

const FEXIT_TURNS_4: &[Attach] = &[
    Attach::Fexit {
        function: "tcp_recvmsg",
        program: PROG_FEXIT_TCP_RECVMSG_4,
    },
    Attach::Fexit {
        function: "tcp_sendmsg",
        program: PROG_FEXIT_TCP_SENDMSG,
    },
];
const FEXIT_TURNS_5: &[Attach] = &[
    Attach::Fexit {
        function: "tcp_recvmsg",
        program: PROG_FEXIT_TCP_RECVMSG_5,
    },
    Attach::Fexit {
        function: "tcp_sendmsg",
        program: PROG_FEXIT_TCP_SENDMSG,
    },
];
const FEXIT_TURNS_6: &[Attach] = &[
    Attach::Fexit {
        function: "tcp_recvmsg",
        program: PROG_FEXIT_TCP_RECVMSG_6,
    },
    Attach::Fexit {
        function: "tcp_sendmsg",
        program: PROG_FEXIT_TCP_SENDMSG,
    },
];
const KPROBE_TURNS: &[Attach] = &[
    Attach::Kprobe {
        function: "tcp_recvmsg",
        program: PROG_KPROBE_TCP_RECVMSG,
    },
    Attach::Kprobe {
        function: "tcp_cleanup_rbuf",
        program: PROG_KPROBE_TCP_CLEANUP_RBUF,
    },
    Attach::Kprobe {
        function: "tcp_sendmsg",
        program: PROG_KPROBE_TCP_SENDMSG,
    },
    Attach::Kretprobe {
        function: "tcp_sendmsg",
        program: PROG_KRETPROBE_TCP_SENDMSG,
    },
];
const KPROBE_TURNS_6: &[Attach] = &[
    Attach::Kprobe {
        function: "tcp_recvmsg",
        program: PROG_KPROBE_TCP_RECVMSG_6,
    },
    Attach::Kprobe {
        function: "tcp_cleanup_rbuf",
        program: PROG_KPROBE_TCP_CLEANUP_RBUF,
    },
    Attach::Kprobe {
        function: "tcp_sendmsg",
        program: PROG_KPROBE_TCP_SENDMSG,
    },
    Attach::Kretprobe {
        function: "tcp_sendmsg",
        program: PROG_KRETPROBE_TCP_SENDMSG,
    },
];

/// The hook table, best candidate first (see the module documentation).
pub(super) const HOOKS: &[CapabilityHooks] = &[
    CapabilityHooks {
        capability: Capability::Lifecycle,
        candidates: &[
            Candidate {
                kind: HookKind::Tracepoint,
                raw: true,
                label: "raw tracepoint inet_sock_set_state",
                params: &[],
                needs_sock_layout: true,
                attach: &[Attach::Raw {
                    tracepoint: "inet_sock_set_state",
                    program: PROG_RAW_INET_SOCK_SET_STATE,
                }],
            },
            Candidate {
                kind: HookKind::Tracepoint,
                raw: false,
                label: "tracepoint sock:inet_sock_set_state",
                params: &[],
                needs_sock_layout: false,
                attach: &[Attach::Classic {
                    category: "sock",
                    name: "inet_sock_set_state",
                    program: PROG_INET_SOCK_SET_STATE,
                    fields: &inet_sock_set_state::FIELDS,
                }],
            },
        ],
    },
    CapabilityHooks {
        capability: Capability::Turns,
        candidates: &[
            turns_fexit(&[("tcp_recvmsg", &[4])], FEXIT_TURNS_4),
            turns_fexit(&[("tcp_recvmsg", &[5])], FEXIT_TURNS_5),
            turns_fexit(&[("tcp_recvmsg", &[6])], FEXIT_TURNS_6),
            turns_kprobe(&[("tcp_recvmsg", &[4, 5])], KPROBE_TURNS),
            turns_kprobe(&[("tcp_recvmsg", &[6])], KPROBE_TURNS_6),
            Candidate {
                kind: HookKind::Tracepoint,
                raw: true,
                label: "raw tracepoint sock_recv_length/sock_send_length",
                params: &[],
                needs_sock_layout: false,
                attach: &[
                    Attach::Raw {
                        tracepoint: "sock_recv_length",
                        program: PROG_RAW_SOCK_RECV_LENGTH,
                    },
                    Attach::Raw {
                        tracepoint: "sock_send_length",
                        program: PROG_RAW_SOCK_SEND_LENGTH,
                    },
                ],
            },
            Candidate {
                kind: HookKind::Tracepoint,
                raw: false,
                label: "tracepoint sock:sock_recv_length/sock_send_length",
                params: &[],
                needs_sock_layout: false,
                attach: &[
                    Attach::Classic {
                        category: "sock",
                        name: "sock_recv_length",
                        program: PROG_SOCK_RECV_LENGTH,
                        fields: &sock_length::FIELDS,
                    },
                    Attach::Classic {
                        category: "sock",
                        name: "sock_send_length",
                        program: PROG_SOCK_SEND_LENGTH,
                        fields: &sock_length::FIELDS,
                    },
                ],
            },
        ],
    },
    CapabilityHooks {
        capability: Capability::Accept,
        candidates: &[
            Candidate {
                kind: HookKind::Fentry,
                raw: false,
                label: "fentry security_sock_graft",
                params: &[],
                needs_sock_layout: false,
                attach: &[Attach::Fentry {
                    function: "security_sock_graft",
                    program: PROG_FENTRY_SECURITY_SOCK_GRAFT,
                }],
            },
            accept_fexit(2),
            accept_fexit(4),
            Candidate {
                kind: HookKind::Kprobe,
                raw: false,
                label: "kprobe security_sock_graft",
                params: &[],
                needs_sock_layout: false,
                attach: &[Attach::Kprobe {
                    function: "security_sock_graft",
                    program: PROG_KPROBE_SECURITY_SOCK_GRAFT,
                }],
            },
            Candidate {
                kind: HookKind::Kprobe,
                raw: false,
                label: "kretprobe inet_csk_accept",
                params: &[],
                needs_sock_layout: false,
                attach: &[Attach::Kretprobe {
                    function: "inet_csk_accept",
                    program: PROG_KRETPROBE_INET_CSK_ACCEPT,
                }],
            },
        ],
    },
    CapabilityHooks {
        capability: Capability::Close,
        candidates: &[
            Candidate {
                kind: HookKind::Fentry,
                raw: false,
                label: "fentry tcp_close",
                params: &[],
                needs_sock_layout: false,
                attach: &[Attach::Fentry {
                    function: "tcp_close",
                    program: PROG_FENTRY_TCP_CLOSE,
                }],
            },
            Candidate {
                kind: HookKind::Kprobe,
                raw: false,
                label: "kprobe tcp_close",
                params: &[],
                needs_sock_layout: false,
                attach: &[Attach::Kprobe {
                    function: "tcp_close",
                    program: PROG_KPROBE_TCP_CLOSE,
                }],
            },
        ],
    },
];

/// Turns through fexit, for the kernels `params` describes.
const fn turns_fexit(
    params: &'static [(&'static str, &'static [usize])],
    attach: &'static [Attach],
) -> Candidate {
    Candidate {
        kind: HookKind::Fentry,
        raw: false,
        label: "fexit tcp_recvmsg/tcp_sendmsg",
        params,
        needs_sock_layout: false,
        attach,
    }
}

/// Turns through kprobes, for the kernels `params` describes.
const fn turns_kprobe(
    params: &'static [(&'static str, &'static [usize])],
    attach: &'static [Attach],
) -> Candidate {
    Candidate {
        kind: HookKind::Kprobe,
        raw: false,
        label: "kprobe tcp_recvmsg/tcp_sendmsg",
        params,
        needs_sock_layout: false,
        attach,
    }
}

/// Accepts through fexit on a kernel whose `inet_csk_accept` has `params` parameters.
const fn accept_fexit(params: usize) -> Candidate {
    Candidate {
        kind: HookKind::Fentry,
        raw: false,
        label: "fexit inet_csk_accept",
        params: if params == 2 {
            &[("inet_csk_accept", &[2])]
        } else {
            &[("inet_csk_accept", &[4])]
        },
        needs_sock_layout: false,
        attach: if params == 2 {
            &[Attach::Fexit {
                function: "inet_csk_accept",
                program: PROG_FEXIT_INET_CSK_ACCEPT_2,
            }]
        } else {
            &[Attach::Fexit {
                function: "inet_csk_accept",
                program: PROG_FEXIT_INET_CSK_ACCEPT_4,
            }]
        },
    }
}
