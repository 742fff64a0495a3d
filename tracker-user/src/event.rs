//! Decoding of the kernel's [`SockEvent`] records into typed events.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracker_common::proto::{FrameHeader, Protocol};
use tracker_common::{AF_INET, AF_INET6, DIRECTION_IN, EventKind, SockEvent, SockNote};

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
    },
    /// A listening socket closed.
    ListenerDown {
        sock: SockId,
        addr: SocketAddr,
        netns: Netns,
    },
    /// A server-side connection was established.
    ConnOpen {
        sock: SockId,
        local: SocketAddr,
        remote: SocketAddr,
        at: Nanos,
        netns: Netns,
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
    /// bytes showed (None on later turns).
    Turn {
        sock: SockId,
        at: Nanos,
        previous_end: Option<Nanos>,
        protocol: Option<Protocol>,
    },
    /// An HTTP/2 frame that opens or ends streams; `inbound`: sent by the client.
    H2Frame {
        sock: SockId,
        frame: FrameHeader,
        inbound: bool,
    },
    /// The kernel lost its place in the connection's HTTP/2 frames.
    WalkLost { sock: SockId },
    /// The server accepted a tracked connection (took it off the accept queue).
    Accepted { sock: SockId, at: Nanos },
    /// The server closed a tracked connection (its last reference to the socket).
    ServerClosed { sock: SockId, at: Nanos },
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
        short = size_of::<SockNote>()
    )]
    Size(usize),
    #[error("unknown event kind {0}")]
    Kind(u32),
    #[error("unknown address family {0}")]
    Family(u16),
}

impl Event {
    /// Decodes one ring-buffer record: a [`SockEvent`], or a short [`SockNote`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() == size_of::<SockNote>() {
            // SAFETY: the length was checked, `SockNote` is `Pod` and `read_unaligned` makes
            // no alignment assumption.
            let note = unsafe { bytes.as_ptr().cast::<SockNote>().read_unaligned() };
            return Self::from_raw(&SockEvent {
                kind: note.kind,
                pid: 0,
                timestamp_ns: note.timestamp_ns,
                skaddr: note.skaddr,
                family: 0,
                local_port: 0,
                remote_port: 0,
                _pad: 0,
                local_addr: [0; 16],
                remote_addr: [0; 16],
                comm: [0; 16],
                aux: note.aux,
                detail: note.detail,
                netns: 0,
            });
        }
        if bytes.len() < size_of::<SockEvent>() {
            return Err(DecodeError::Size(bytes.len()));
        }
        // SAFETY: the length was checked, `SockEvent` is `Pod` (any bit pattern is valid) and
        // `read_unaligned` makes no alignment assumption about the ring's memory.
        let raw = unsafe { bytes.as_ptr().cast::<SockEvent>().read_unaligned() };
        Self::from_raw(&raw)
    }

    /// Decodes an already copied record.
    pub fn from_raw(raw: &SockEvent) -> Result<Self, DecodeError> {
        let kind = EventKind::try_from(raw.kind).map_err(DecodeError::Kind)?;
        let sock = raw.skaddr;
        let at = raw.timestamp_ns;
        let aux = (raw.aux != 0).then_some(raw.aux);
        let local = || socket_addr(raw.family, raw.local_addr, raw.local_port);
        let remote = || socket_addr(raw.family, raw.remote_addr, raw.remote_port);
        Ok(match kind {
            EventKind::ListenerUp => Self::ListenerUp {
                sock,
                addr: local()?,
                pid: raw.pid,
                comm: comm_to_string(&raw.comm),
                netns: raw.netns,
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
            },
            EventKind::ConnClose => Self::ConnClose {
                sock,
                endpoints: if raw.family == 0 {
                    None
                } else {
                    Some((local()?, remote()?))
                },
                at,
                turn_end: aux,
                netns: raw.netns,
            },
            // Known by socket only: the kernel does not copy addresses for these.
            EventKind::Turn => Self::Turn {
                sock,
                at,
                previous_end: aux,
                // A value from a newer kernel side: no sessions we could interpret.
                protocol: (raw.detail != 0)
                    .then(|| Protocol::try_from(raw.detail).unwrap_or(Protocol::Other)),
            },
            EventKind::H2Frame => {
                let [kind, flags, direction, _] = raw.detail.to_le_bytes();
                Self::H2Frame {
                    sock,
                    frame: FrameHeader {
                        // Only the header fields that decide streams are carried.
                        length: 0,
                        kind,
                        flags,
                        stream_id: raw.aux as u32,
                    },
                    inbound: u32::from(direction) == DIRECTION_IN,
                }
            }
            EventKind::WalkLost => Self::WalkLost { sock },
            EventKind::Accepted => Self::Accepted { sock, at },
            EventKind::ServerClosed => Self::ServerClosed { sock, at },
            EventKind::OutboundOpen => Self::OutboundOpen {
                sock,
                local: local()?,
                remote: remote()?,
                at,
            },
        })
    }
}

fn socket_addr(family: u16, addr: [u8; 16], port: u16) -> Result<SocketAddr, DecodeError> {
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(addr)),
        other => return Err(DecodeError::Family(other)),
    };
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

    fn raw(kind: u32, family: u16) -> SockEvent {
        let mut local_addr = [0u8; 16];
        let mut remote_addr = [0u8; 16];
        if family == AF_INET {
            local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
            remote_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        } else {
            local_addr[15] = 1;
            remote_addr[15] = 2;
        }
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
            }
        );
    }

    #[test]
    fn decodes_ipv6_listener_with_owner() {
        let event = Event::decode(&bytes_of(&raw(EventKind::ListenerUp as u32, AF_INET6))).unwrap();
        assert_eq!(
            event,
            Event::ListenerUp {
                sock: 0xffff_8880_0000_1000,
                addr: "[::1]:8080".parse().unwrap(),
                pid: 42,
                comm: "nginx".to_owned(),
                netns: 0,
            }
        );
    }

    #[test]
    fn decodes_short_records() {
        let note = SockNote {
            kind: EventKind::ConnClose as u32,
            detail: 0,
            timestamp_ns: 2_000,
            skaddr: 0xffff_8880_0000_2000,
            aux: 1_500,
        };
        // SAFETY: `SockNote` is plain old data; viewing it as bytes is what the ring does.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const note).cast::<u8>(), size_of::<SockNote>())
        };
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
    }

    #[test]
    fn decodes_turns_without_addresses() {
        let mut turn = raw(EventKind::Turn as u32, 0);
        turn.aux = 500;
        assert_eq!(
            Event::from_raw(&turn),
            Ok(Event::Turn {
                sock: 0xffff_8880_0000_1000,
                at: 1_000,
                previous_end: Some(500),
                protocol: None,
            })
        );
        turn.aux = 0;
        assert!(matches!(
            Event::from_raw(&turn),
            Ok(Event::Turn {
                previous_end: None,
                ..
            })
        ));
    }

    #[test]
    fn decodes_http2_frames_and_protocols() {
        let mut frame = raw(EventKind::H2Frame as u32, 0);
        frame.detail = 0x01 | 0x01 << 8 | 1 << 16;
        frame.aux = 7;
        assert_eq!(
            Event::from_raw(&frame),
            Ok(Event::H2Frame {
                sock: 0xffff_8880_0000_1000,
                frame: FrameHeader {
                    length: 0,
                    kind: 1,
                    flags: 1,
                    stream_id: 7
                },
                inbound: false,
            })
        );
        // A connection's first turn carries its protocol.
        let mut first_turn = raw(EventKind::Turn as u32, 0);
        first_turn.detail = Protocol::Http2 as u32;
        assert!(matches!(
            Event::from_raw(&first_turn),
            Ok(Event::Turn {
                protocol: Some(Protocol::Http2),
                ..
            })
        ));
        first_turn.detail = 99;
        assert!(matches!(
            Event::from_raw(&first_turn),
            Ok(Event::Turn {
                protocol: Some(Protocol::Other),
                ..
            })
        ));
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(Event::decode(&[0u8; 10]), Err(DecodeError::Size(10)));
        assert_eq!(
            Event::from_raw(&raw(77, AF_INET)),
            Err(DecodeError::Kind(77))
        );
        assert_eq!(
            Event::from_raw(&raw(EventKind::ConnOpen as u32, 3)),
            Err(DecodeError::Family(3))
        );
    }

    #[test]
    fn comm_stops_at_nul_and_tolerates_bad_utf8() {
        assert_eq!(comm_to_string(b"abc\0def"), "abc");
        assert_eq!(comm_to_string(&[0xff, b'x']), "\u{fffd}x");
    }
}
