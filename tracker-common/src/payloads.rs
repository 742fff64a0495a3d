//! What a short record ([`ShortEvent`]) carries besides its kind, socket and time: one type per
//! event kind, packed into the record's `aux` and `detail` by the kernel and unpacked by the
//! daemon, both here, so that neither side reads those two fields by hand.

use crate::proto::Protocol;
use crate::{EventKind, FrameDetail, ShortEvent, walk};

/// The payload of one event kind's short record.
pub trait ShortPayload: Copy {
    const KIND: EventKind;
    /// `(aux, detail)`.
    fn pack(self) -> (u64, u32);
}

impl ShortEvent {
    /// The short record of `payload`'s kind about socket `skaddr` at `timestamp_ns`.
    #[inline(always)]
    pub fn new<P: ShortPayload>(skaddr: u64, timestamp_ns: u64, payload: P) -> Self {
        let (aux, detail) = payload.pack();
        Self {
            kind: P::KIND as u32,
            detail,
            timestamp_ns,
            skaddr,
            aux,
        }
    }
}

/// [`EventKind::ConnClose`] of a connection the daemon knows by its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnClosePayload {
    /// When the turn the close cut short ended (see [`EventKind::Turn`]); 0: it was idle.
    pub turn_end_ns: u64,
}

impl ShortPayload for ConnClosePayload {
    const KIND: EventKind = EventKind::ConnClose;

    #[inline(always)]
    fn pack(self) -> (u64, u32) {
        (self.turn_end_ns, 0)
    }
}

impl ConnClosePayload {
    pub const fn unpack(aux: u64, _detail: u32) -> Self {
        Self { turn_end_ns: aux }
    }
}

/// [`EventKind::Turn`]: a request/response turn begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnPayload {
    /// When the previous turn ended (the server's last send before this payload); 0: the
    /// connection was idle.
    pub previous_end_ns: u64,
    /// What this turn decided about the connection's protocol, if anything.
    pub decided: Decided,
}

impl ShortPayload for TurnPayload {
    const KIND: EventKind = EventKind::Turn;

    #[inline(always)]
    fn pack(self) -> (u64, u32) {
        (self.previous_end_ns, self.decided.0)
    }
}

impl TurnPayload {
    pub const fn unpack(aux: u64, detail: u32) -> Self {
        Self {
            previous_end_ns: aux,
            decided: Decided(detail),
        }
    }
}

/// What a turn decided about its connection's protocol: nothing (most turns), the protocol
/// of its first payload (carried in the turn rather than in an event of its own, to save one
/// event per connection), or an upgrade by the server's `101`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decided(u32);

impl Decided {
    /// Set with [`Protocol::Switching`]: the server's `101` upgraded the connection, and its
    /// upgrade request's turn ends.
    const UPGRADED: u32 = 0x100;
    /// Set with [`Protocol::Tls`] when the kernel saw the TLS handshake inside a hooked TLS
    /// library call: the plaintext will be followed, and decide the protocol again later.
    const TLS_FOLLOWED: u32 = 0x200;

    /// Nothing decided.
    pub const NOTHING: Self = Self(0);

    /// The protocol of the connection's first payload (as `u32`, see [`Protocol`]).
    #[inline(always)]
    pub const fn protocol(protocol: u32) -> Self {
        Self(protocol)
    }

    /// TLS whose handshake the kernel saw inside a hooked library.
    #[inline(always)]
    pub const fn tls_followed() -> Self {
        Self(Protocol::Tls as u32 | Self::TLS_FOLLOWED)
    }

    /// Upgraded by the server's `101 Switching Protocols`.
    #[inline(always)]
    pub const fn upgraded() -> Self {
        Self(Protocol::Switching as u32 | Self::UPGRADED)
    }

    #[inline(always)]
    pub const fn is_nothing(self) -> bool {
        self.0 == 0
    }

    /// The protocol decided, as `u32` (0: none; a value from a newer kernel side may be no
    /// [`Protocol`] this daemon knows).
    pub const fn protocol_value(self) -> u32 {
        self.0 & !(Self::UPGRADED | Self::TLS_FOLLOWED)
    }

    pub const fn is_upgrade(self) -> bool {
        self.0 & Self::UPGRADED != 0
    }

    pub const fn is_tls_followed(self) -> bool {
        self.0 & Self::TLS_FOLLOWED != 0
    }
}

/// [`EventKind::H2Frame`]: an HTTP/2 frame that opens or ends streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct H2FramePayload {
    pub detail: FrameDetail,
    pub stream_id: u32,
    /// A GOAWAY's last stream id (see [`walk::Frame::last_stream_id`]).
    pub last_stream_id: u32,
}

impl ShortPayload for H2FramePayload {
    const KIND: EventKind = EventKind::H2Frame;

    /// The frame's [`FrameDetail`] in `detail`; its stream id in bits 0..32 of `aux`, its last
    /// stream id in bits 32..64.
    #[inline(always)]
    fn pack(self) -> (u64, u32) {
        let ids = u64::from(self.stream_id) | u64::from(self.last_stream_id) << 32;
        (ids, self.detail.pack())
    }
}

impl H2FramePayload {
    /// The payload of `frame`, which went in `direction`.
    #[inline(always)]
    pub fn of(frame: &walk::Frame, direction: u32) -> Self {
        Self {
            detail: FrameDetail::new(&frame.header, direction),
            stream_id: frame.header.stream_id,
            last_stream_id: frame.last_stream_id,
        }
    }

    pub const fn unpack(aux: u64, detail: u32) -> Self {
        Self {
            detail: FrameDetail::unpack(detail),
            stream_id: aux as u32,
            last_stream_id: (aux >> 32) as u32,
        }
    }
}

/// The kinds whose short record says nothing beyond its socket and time.
macro_rules! bare_payload {
    ($($name:ident => $kind:ident: $doc:literal),* $(,)?) => {$(
        #[doc = $doc]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name;

        impl ShortPayload for $name {
            const KIND: EventKind = EventKind::$kind;

            #[inline(always)]
            fn pack(self) -> (u64, u32) {
                (0, 0)
            }
        }
    )*};
}

bare_payload! {
    AcceptedPayload => Accepted: "[`EventKind::Accepted`]: the server accepted the connection.",
    CloseCalledPayload => CloseCalled: "[`EventKind::CloseCalled`]: the server called `close()`.",
    WalkLostPayload => WalkLost: "[`EventKind::WalkLost`]: the frame walk lost its place.",
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::FrameHeader;

    #[test]
    fn each_payload_unpacks_to_what_was_packed() {
        let turn = TurnPayload {
            previous_end_ns: 7,
            decided: Decided::tls_followed(),
        };
        let (aux, detail) = turn.pack();
        let back = TurnPayload::unpack(aux, detail);
        assert_eq!(back, turn);
        assert!(back.decided.is_tls_followed() && !back.decided.is_upgrade());
        assert_eq!(back.decided.protocol_value(), Protocol::Tls as u32);

        let upgrade = Decided::upgraded();
        assert!(upgrade.is_upgrade() && !upgrade.is_tls_followed());
        assert_eq!(upgrade.protocol_value(), Protocol::Switching as u32);
        assert!(Decided::NOTHING.is_nothing());

        let frame = walk::Frame {
            header: FrameHeader {
                length: 9,
                kind: 7,
                flags: 1,
                stream_id: 5,
            },
            last_stream_id: 39,
        };
        let payload = H2FramePayload::of(&frame, crate::DIRECTION_OUT);
        let (aux, detail) = payload.pack();
        assert_eq!(H2FramePayload::unpack(aux, detail), payload);

        let close = ConnClosePayload { turn_end_ns: 900 };
        let (aux, detail) = close.pack();
        assert_eq!(ConnClosePayload::unpack(aux, detail), close);
        assert_eq!(
            ShortEvent::new(1, 2, AcceptedPayload).kind,
            EventKind::Accepted as u32
        );
    }
}
