//! Decoding of the kernel's ring records ([`SockEvent`], and the short [`ShortEvent`]) into
//! typed events.

use std::net::SocketAddr;

use tracker_common::payloads::{ConnClosePayload, H2FramePayload, TurnPayload};
use tracker_common::proto::{FrameHeader, Protocol, frame};
use tracker_common::walk::UNKNOWN_STREAM;
use tracker_common::{DIRECTION_IN, EventKind, OPEN_UNTRACKED, ShortEvent, SockEvent, wire_addr};

use crate::model::Nanos;

/// Kernel address of a socket: a connection's identity while it lives.
pub type SockId = u64;

/// Inode number of a network namespace (as in `/proc/<pid>/ns/net`); 0 when unknown, which
/// counts as the daemon's own namespace.
pub type Netns = u32;

/// One kernel event, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A socket entered LISTEN. `pid`/`comm` are the process that called `listen()`.
    ListenerUp {
        sock: SockId,
        addr: SocketAddr,
        pid: u32,
        comm: String,
        netns: Netns,
        /// The cgroup v2 id of that process (0: unknown).
        cgroup_id: u64,
        /// Its cgroup's path, once the daemon has found it (None as decoded).
        cgroup: Option<String>,
    },
    /// A listening socket closed.
    ListenerDown {
        sock: SockId,
        addr: SocketAddr,
        netns: Netns,
    },
    /// A server-side connection was established. `untracked`: the kernel could not take it
    /// into its table of tracked connections, so it will not see its accept.
    ConnOpen {
        sock: SockId,
        local: SocketAddr,
        remote: SocketAddr,
        at: Nanos,
        netns: Netns,
        untracked: bool,
    },
    /// A tracked server-side connection closed. `turn_end` is when its last turn ended, if
    /// it was in one.
    ConnClose {
        sock: SockId,
        /// (local, remote), for a connection adopted from the kernel's table rather than seen
        /// open; None for the others, which the daemon knows by `sock`.
        endpoints: Option<(SocketAddr, SocketAddr)>,
        at: Nanos,
        turn_end: Option<Nanos>,
        netns: Netns,
    },
    /// A request/response turn began at `at`; the previous one ended at `previous_end` (None:
    /// the connection was idle). On a connection's first turn, `protocol` is what its first
    /// bytes showed (None on later turns). `upgraded`: the connection's server answered `101
    /// Switching Protocols` at `at`, ending the previous turn there; `protocol` is then
    /// [`Protocol::Switching`] and no turn begins (the client's next bytes may start one, as
    /// HTTP/2, in a later turn event).
    Turn {
        sock: SockId,
        at: Nanos,
        previous_end: Option<Nanos>,
        protocol: Option<Protocol>,
        upgraded: bool,
        /// With [`Protocol::Tls`]: the kernel saw the handshake inside a hooked TLS library,
        /// so the plaintext will decide the protocol in a later turn.
        tls_followed: bool,
    },
    /// An HTTP/2 frame that opens or ends streams; `inbound`: sent by the client.
    H2Frame {
        sock: SockId,
        frame: FrameHeader,
        /// A GOAWAY's last stream id, if the kernel could read it.
        goaway_last_stream: Option<u32>,
        inbound: bool,
    },
    /// The kernel lost its place in the connection's HTTP/2 frames.
    WalkLost { sock: SockId },
    /// The server accepted a tracked connection (took it off the accept queue).
    Accepted { sock: SockId, at: Nanos },
    /// The server closed a tracked connection (its last reference to the socket).
    CloseCalled { sock: SockId, at: Nanos },
    /// A connection this host opened to a `--connect` destination (`remote`) was
    /// established.
    OutboundOpen {
        sock: SockId,
        local: SocketAddr,
        remote: SocketAddr,
        at: Nanos,
    },
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "event record of {0} bytes, expected {full} or {short}",
        full = size_of::<SockEvent>(),
        short = size_of::<ShortEvent>()
    )]
    Size(usize),
    #[error("unknown event kind {0}")]
    Kind(u32),
    #[error("{kind:?} event in a {len}-byte record, which cannot carry it")]
    Record { kind: EventKind, len: usize },
    #[error("unknown address family {0}")]
    Family(u16),
}

impl Event {
    /// Decodes one ring-buffer record: a [`SockEvent`], or a short [`ShortEvent`] (told apart
    /// by length).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() == size_of::<ShortEvent>() {
            // SAFETY: the length was checked, `ShortEvent` is `Pod` and `read_unaligned` makes
            // no alignment assumption.
            let note = unsafe { bytes.as_ptr().cast::<ShortEvent>().read_unaligned() };
            return Self::from_note(&note);
        }
        if bytes.len() < size_of::<SockEvent>() {
            return Err(DecodeError::Size(bytes.len()));
        }
        // SAFETY: the length was checked, `SockEvent` is `Pod` (any bit pattern is valid) and
        // `read_unaligned` makes no alignment assumption about the ring's memory.
        let raw = unsafe { bytes.as_ptr().cast::<SockEvent>().read_unaligned() };
        Self::from_event(&raw)
    }

    /// Decodes a full record: an event that carries endpoints.
    pub fn from_event(raw: &SockEvent) -> Result<Self, DecodeError> {
        let kind = EventKind::try_from(raw.kind).map_err(DecodeError::Kind)?;
        let sock = raw.skaddr;
        let at = raw.timestamp_ns;
        let local = || socket_addr(raw.family, raw.local_addr, raw.local_port);
        let remote = || socket_addr(raw.family, raw.remote_addr, raw.remote_port);
        Ok(match kind {
            EventKind::ListenerUp => Self::ListenerUp {
                sock,
                addr: local()?,
                pid: raw.pid,
                comm: comm_to_string(&raw.comm),
                netns: raw.netns,
                cgroup_id: raw.aux,
                cgroup: None,
            },
            EventKind::ListenerDown => Self::ListenerDown {
                sock,
                addr: local()?,
                netns: raw.netns,
            },
            EventKind::ConnOpen => Self::ConnOpen {
                sock,
                local: local()?,
                remote: remote()?,
                at,
                netns: raw.netns,
                untracked: raw.detail == OPEN_UNTRACKED,
            },
            // A connection adopted from the kernel's table, known by its endpoints (none when
            // the kernel could not read them).
            EventKind::ConnClose => Self::ConnClose {
                sock,
                endpoints: if raw.family == 0 {
                    None
                } else {
                    Some((local()?, remote()?))
                },
                at,
                turn_end: (raw.aux != 0).then_some(raw.aux),
                netns: raw.netns,
            },
            EventKind::OutboundOpen => Self::OutboundOpen {
                sock,
                local: local()?,
                remote: remote()?,
                at,
            },
            EventKind::Turn
            | EventKind::H2Frame
            | EventKind::WalkLost
            | EventKind::Accepted
            | EventKind::CloseCalled => {
                return Err(DecodeError::Record {
                    kind,
                    len: size_of::<SockEvent>(),
                });
            }
        })
    }

    /// Decodes a short record: an event about a socket the daemon knows by address.
    pub fn from_note(note: &ShortEvent) -> Result<Self, DecodeError> {
        let kind = EventKind::try_from(note.kind).map_err(DecodeError::Kind)?;
        let sock = note.skaddr;
        let at = note.timestamp_ns;
        let stamp = |ns: u64| (ns != 0).then_some(ns);
        Ok(match kind {
            EventKind::ConnClose => Self::ConnClose {
                sock,
                endpoints: None,
                at,
                turn_end: stamp(ConnClosePayload::unpack(note.aux, note.detail).turn_end_ns),
                netns: 0,
            },
            EventKind::Turn => {
                let turn = TurnPayload::unpack(note.aux, note.detail);
                let value = turn.decided.protocol_value();
                Self::Turn {
                    sock,
                    at,
                    previous_end: stamp(turn.previous_end_ns),
                    // A value from a newer kernel side: no sessions we could interpret.
                    protocol: (value != 0)
                        .then(|| Protocol::try_from(value).unwrap_or(Protocol::Other)),
                    upgraded: turn.decided.is_upgrade(),
                    tls_followed: turn.decided.is_tls_followed(),
                }
            }
            EventKind::H2Frame => {
                let H2FramePayload {
                    detail,
                    stream_id,
                    last_stream_id,
                } = H2FramePayload::unpack(note.aux, note.detail);
                Self::H2Frame {
                    sock,
                    frame: FrameHeader {
                        // Only the header fields that decide streams are carried.
                        length: 0,
                        kind: detail.kind,
                        flags: detail.flags,
                        stream_id,
                    },
                    goaway_last_stream: (detail.kind == frame::GOAWAY
                        && last_stream_id != UNKNOWN_STREAM)
                        .then_some(last_stream_id),
                    inbound: detail.direction == DIRECTION_IN,
                }
            }
            EventKind::WalkLost => Self::WalkLost { sock },
            EventKind::Accepted => Self::Accepted { sock, at },
            EventKind::CloseCalled => Self::CloseCalled { sock, at },
            EventKind::ListenerUp
            | EventKind::ListenerDown
            | EventKind::ConnOpen
            | EventKind::OutboundOpen => {
                return Err(DecodeError::Record {
                    kind,
                    len: size_of::<ShortEvent>(),
                });
            }
        })
    }
}

fn socket_addr(family: u16, addr: [u8; 16], port: u16) -> Result<SocketAddr, DecodeError> {
    let ip = wire_addr::decode(family, addr).map_err(DecodeError::Family)?;
    Ok(SocketAddr::new(ip, port))
}

/// A kernel `comm` (NUL-padded, not necessarily UTF-8) as a printable string.
pub fn comm_to_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracker_common::payloads::Decided;
    use tracker_common::{AF_INET, AF_INET6, DIRECTION_OUT};

    fn raw(kind: u32, family: u16) -> SockEvent {
        let (local_addr, remote_addr) = if family == AF_INET {
            (wire_addr::v4([127, 0, 0, 1]), wire_addr::v4([127, 0, 0, 2]))
        } else {
            let ip = |last: &str| wire_addr::v6(format!("::{last}").parse().unwrap());
            (ip("1"), ip("2"))
        };
        SockEvent {
            kind,
            pid: 42,
            timestamp_ns: 1_000,
            skaddr: 0xffff_8880_0000_1000,
            family,
            local_port: 8080,
            remote_port: 40000,
            _pad: 0,
            local_addr,
            remote_addr,
            comm: *b"nginx\0\0\0\0\0\0\0\0\0\0\0",
            aux: 0,
            detail: 0,
            netns: 0,
        }
    }

    fn bytes_of(event: &SockEvent) -> Vec<u8> {
        // SAFETY: SockEvent is plain old data without hidden padding.
        unsafe {
            std::slice::from_raw_parts(
                (event as *const SockEvent).cast::<u8>(),
                size_of::<SockEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_ipv4_open() {
        let event = Event::decode(&bytes_of(&raw(EventKind::ConnOpen as u32, AF_INET))).unwrap();
        assert_eq!(
            event,
            Event::ConnOpen {
                sock: 0xffff_8880_0000_1000,
                local: "127.0.0.1:8080".parse().unwrap(),
                remote: "127.0.0.2:40000".parse().unwrap(),
                at: 1_000,
                netns: 0,
                untracked: false,
            }
        );
    }

    #[test]
    fn decodes_ipv6_listener_with_owner() {
        let mut listen = raw(EventKind::ListenerUp as u32, AF_INET6);
        listen.aux = 7;
        let event = Event::decode(&bytes_of(&listen)).unwrap();
        assert_eq!(
            event,
            Event::ListenerUp {
                sock: 0xffff_8880_0000_1000,
                addr: "[::1]:8080".parse().unwrap(),
                pid: 42,
                comm: "nginx".to_owned(),
                netns: 0,
                cgroup_id: 7,
                cgroup: None,
            }
        );
    }

    fn note(kind: EventKind, aux: u64, detail: u32) -> ShortEvent {
        ShortEvent {
            kind: kind as u32,
            detail,
            timestamp_ns: 2_000,
            skaddr: 0xffff_8880_0000_2000,
            aux,
        }
    }

    fn note_bytes(note: &ShortEvent) -> &[u8] {
        // SAFETY: `ShortEvent` is plain old data; viewing it as bytes is what the ring does.
        unsafe {
            std::slice::from_raw_parts(
                (note as *const ShortEvent).cast::<u8>(),
                size_of::<ShortEvent>(),
            )
        }
    }

    #[test]
    fn decodes_short_records() {
        let close = note(EventKind::ConnClose, 1_500, 0);
        let bytes = note_bytes(&close);
        assert_eq!(
            Event::decode(bytes),
            Ok(Event::ConnClose {
                sock: 0xffff_8880_0000_2000,
                endpoints: None,
                at: 2_000,
                turn_end: Some(1_500),
                netns: 0,
            })
        );
        assert_eq!(Event::decode(&bytes[..31]), Err(DecodeError::Size(31)));
        assert_eq!(
            Event::decode(note_bytes(&note(EventKind::WalkLost, 0, 0))),
            Ok(Event::WalkLost {
                sock: 0xffff_8880_0000_2000
            })
        );
    }

    #[test]
    fn decodes_server_accepts_and_closes_from_short_records() {
        let sock = 0xffff_8880_0000_2000;
        assert_eq!(
            Event::decode(note_bytes(&note(EventKind::Accepted, 0, 0))),
            Ok(Event::Accepted { sock, at: 2_000 })
        );
        assert_eq!(
            Event::decode(note_bytes(&note(EventKind::CloseCalled, 0, 0))),
            Ok(Event::CloseCalled { sock, at: 2_000 })
        );
        assert!(matches!(
            Event::from_event(&raw(EventKind::Accepted as u32, AF_INET)),
            Err(DecodeError::Record {
                kind: EventKind::Accepted,
                ..
            })
        ));
    }

    #[test]
    fn decodes_turns_without_addresses() {
        assert_eq!(
            Event::from_note(&note(EventKind::Turn, 500, 0)),
            Ok(Event::Turn {
                sock: 0xffff_8880_0000_2000,
                at: 2_000,
                previous_end: Some(500),
                protocol: None,
                upgraded: false,
                tls_followed: false,
            })
        );
        assert!(matches!(
            Event::from_note(&note(EventKind::Turn, 0, 0)),
            Ok(Event::Turn {
                previous_end: None,
                ..
            })
        ));
    }

    #[test]
    fn decodes_http2_frames_and_protocols() {
        let header = FrameHeader {
            length: 0,
            kind: 1,
            flags: 1,
            stream_id: 7,
        };
        let frame_note = |header, last_stream_id, direction| {
            let frame = tracker_common::walk::Frame {
                header,
                last_stream_id,
            };
            ShortEvent::new(
                0xffff_8880_0000_2000,
                2_000,
                H2FramePayload::of(&frame, direction),
            )
        };
        for (direction, inbound) in [(DIRECTION_IN, true), (DIRECTION_OUT, false)] {
            assert_eq!(
                Event::from_note(&frame_note(header, UNKNOWN_STREAM, direction)),
                Ok(Event::H2Frame {
                    sock: 0xffff_8880_0000_2000,
                    frame: header,
                    goaway_last_stream: None,
                    inbound,
                })
            );
        }
        // A GOAWAY's last stream id, when the kernel read it.
        let goaway = FrameHeader {
            length: 8,
            kind: frame::GOAWAY,
            flags: 0,
            stream_id: 0,
        };
        for (last, expected) in [(99, Some(99)), (0, Some(0)), (UNKNOWN_STREAM, None)] {
            assert_eq!(
                Event::from_note(&frame_note(goaway, last, DIRECTION_OUT)),
                Ok(Event::H2Frame {
                    sock: 0xffff_8880_0000_2000,
                    frame: FrameHeader {
                        length: 0,
                        ..goaway
                    },
                    goaway_last_stream: expected,
                    inbound: false,
                })
            );
        }
        // A connection's first turn carries its protocol.
        assert!(matches!(
            Event::from_note(&note(EventKind::Turn, 0, Protocol::Http2 as u32)),
            Ok(Event::Turn {
                protocol: Some(Protocol::Http2),
                ..
            })
        ));
        // The server's `101`: the connection leaves HTTP/1.
        assert!(matches!(
            Event::from_note(&ShortEvent::new(
                0xffff_8880_0000_2000,
                2_000,
                TurnPayload {
                    previous_end_ns: 0,
                    decided: Decided::upgraded(),
                }
            )),
            Ok(Event::Turn {
                protocol: Some(Protocol::Switching),
                upgraded: true,
                tls_followed: false,
                ..
            })
        ));
        assert!(matches!(
            Event::from_note(&note(EventKind::Turn, 0, 99)),
            Ok(Event::Turn {
                protocol: Some(Protocol::Other),
                ..
            })
        ));
    }

    #[test]
    fn a_close_with_endpoints_comes_in_a_full_record() {
        let mut close = raw(EventKind::ConnClose as u32, AF_INET);
        close.aux = 900;
        assert_eq!(
            Event::decode(&bytes_of(&close)),
            Ok(Event::ConnClose {
                sock: 0xffff_8880_0000_1000,
                endpoints: Some((
                    "127.0.0.1:8080".parse().unwrap(),
                    "127.0.0.2:40000".parse().unwrap()
                )),
                at: 1_000,
                turn_end: Some(900),
                netns: 0,
            })
        );
    }

    #[test]
    fn rejects_events_in_the_wrong_record() {
        assert_eq!(
            Event::from_event(&raw(EventKind::Turn as u32, 0)),
            Err(DecodeError::Record {
                kind: EventKind::Turn,
                len: 96
            })
        );
        assert_eq!(
            Event::decode(note_bytes(&note(EventKind::ConnOpen, 0, 0))),
            Err(DecodeError::Record {
                kind: EventKind::ConnOpen,
                len: 32
            })
        );
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(Event::decode(&[0u8; 10]), Err(DecodeError::Size(10)));
        assert_eq!(
            Event::from_event(&raw(77, AF_INET)),
            Err(DecodeError::Kind(77))
        );
        assert_eq!(
            Event::from_event(&raw(EventKind::ConnOpen as u32, 3)),
            Err(DecodeError::Family(3))
        );
    }

    #[test]
    fn comm_stops_at_nul_and_tolerates_bad_utf8() {
        assert_eq!(comm_to_string(b"abc\0def"), "abc");
        assert_eq!(comm_to_string(&[0xff, b'x']), "\u{fffd}x");
    }
}
