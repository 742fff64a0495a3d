//! The TCP table through netlink `sock_diag` (INET_DIAG dumps, decoded by the
//! `netlink-packet-sock-diag` crate): binary, filtered by state in the kernel, and with each
//! listener's backlog.

use std::io;
use std::net::SocketAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags, Timer,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};
use tracker_common::{ConnKey, wire_addr};

use super::{LISTEN, TcpSocket};

/// A netlink socket for sock_diag dumps, reused across dumps.
pub struct SockDiag {
    socket: Socket,
    buffer: Vec<u8>,
}

impl SockDiag {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&NetlinkAddr::new(0, 0))?;
        Ok(Self {
            socket,
            buffer: vec![0; 64 * 1024],
        })
    }

    /// TCP listening sockets, IPv4 and IPv6.
    pub fn listeners(&mut self) -> io::Result<Vec<TcpSocket>> {
        self.dump(StateFlags::from_bits_truncate(1 << LISTEN))
    }

    /// TCP sockets in `states` (not time-wait ones), IPv4 and IPv6.
    pub fn sockets(&mut self, states: &[u8]) -> io::Result<Vec<TcpSocket>> {
        let states = states.iter().fold(StateFlags::empty(), |flags, &state| {
            flags | StateFlags::from_bits_truncate(1 << state)
        });
        self.dump(states)
    }

    /// TCP sockets in `states`, both families.
    fn dump(&mut self, states: StateFlags) -> io::Result<Vec<TcpSocket>> {
        let mut sockets = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump_family(family, states.clone(), &mut sockets)?;
        }
        Ok(sockets)
    }

    fn dump_family(
        &mut self,
        family: u8,
        states: StateFlags,
        sockets: &mut Vec<TcpSocket>,
    ) -> io::Result<()> {
        let socket_id = any_socket(family);
        self.ask(family, states, socket_id, true, |header, _| {
            // Time-wait sockets are listed under their substate; they are not connections.
            if header.timer == Some(Timer::TimeWait) {
                return;
            }
            let id = &header.socket_id;
            sockets.push(TcpSocket {
                state: header.state,
                local: SocketAddr::new(id.source_address, id.source_port),
                remote: SocketAddr::new(id.destination_address, id.destination_port),
                recv_queue: header.recv_queue,
                // For a listener the kernel puts its backlog in this field.
                backlog: (header.state == LISTEN).then_some(header.send_queue),
                inode: header.inode,
            });
        })
    }

    /// Time-wait sockets in FIN_WAIT2 (still waiting for the client's FIN) of `family`.
    pub fn time_wait_in_fin_wait2(&mut self, family: u8) -> io::Result<Vec<TimeWaitSocket>> {
        let socket_id = any_socket(family);
        let mut sockets = Vec::new();
        let states = StateFlags::from_bits_truncate(1 << FIN_WAIT2);
        self.ask(family, states, socket_id, true, |header, expires_ms| {
            if let Some(socket) = TimeWaitSocket::of(header, expires_ms) {
                sockets.push(socket);
            }
        })?;
        Ok(sockets)
    }

    /// The time-wait socket of the connection `key`, if the kernel has one: looked up by its
    /// endpoints (no dump), so the cost does not grow with the kernel's table.
    pub fn time_wait_of(&mut self, key: &ConnKey) -> io::Result<Option<TimeWaitSocket>> {
        let decode = |addr| {
            wire_addr::decode(key.family, addr).map_err(|family| {
                io::Error::other(format!("time-wait look-up: address family {family}"))
            })
        };
        let (local, remote) = (decode(key.local_addr)?, decode(key.remote_addr)?);
        let family = if local.is_ipv4() { AF_INET } else { AF_INET6 };
        let socket_id = SocketId {
            source_port: key.local_port,
            destination_port: key.remote_port,
            source_address: local,
            destination_address: remote,
            interface_id: 0,
            // INET_DIAG_NOCOOKIE: any socket with these endpoints.
            cookie: [0xff; 8],
        };
        let mut found = None;
        let states = StateFlags::all();
        match self.ask(family, states, socket_id, false, |header, expires_ms| {
            found = TimeWaitSocket::of(header, expires_ms);
        }) {
            Ok(()) => Ok(found),
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Sends one request, a dump (`dump`) or the look-up of the socket `socket_id` names,
    /// and hands each socket of the answer to `each`, with its timer's expiry in
    /// milliseconds (read from the message itself: the decoder drops it for time-wait
    /// sockets).
    fn ask(
        &mut self,
        family: u8,
        states: StateFlags,
        socket_id: SocketId,
        dump: bool,
        mut each: impl FnMut(&InetResponseHeader, u32),
    ) -> io::Result<()> {
        let mut header = NetlinkHeader::default();
        header.flags = if dump {
            NLM_F_REQUEST | NLM_F_DUMP
        } else {
            NLM_F_REQUEST
        };
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states,
                socket_id,
            })
            .into(),
        );
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;

        loop {
            let size = self.socket.recv(&mut &mut self.buffer[..], 0)?;
            let mut offset = 0;
            while offset < size {
                let message =
                    NetlinkMessage::<SockDiagMessage>::deserialize(&self.buffer[offset..size])
                        .map_err(|error| io::Error::other(format!("sock_diag reply: {error}")))?;
                let length = message.header.length as usize;
                match message.payload {
                    // A dump that fails once started (inet_diag is loaded, but the kernel
                    // has no TCP handler for it) ends with the error in its DONE message.
                    NetlinkPayload::Done(done) if done.code < 0 => {
                        return Err(io::Error::from_raw_os_error(-done.code));
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(error) => {
                        return Err(match error.code {
                            Some(code) if code.get() < 0 => {
                                io::Error::from_raw_os_error(-code.get())
                            }
                            _ => io::Error::other(format!("sock_diag: {error}")),
                        });
                    }
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        let at = offset + NETLINK_HEADER_BYTES + EXPIRES_AT;
                        let expires_ms = self.buffer[..size]
                            .get(at..at + 4)
                            .map_or(0, |raw| u32::from_ne_bytes(raw.try_into().unwrap()));
                        each(&response.header, expires_ms);
                        // A look-up is answered by one message, with no DONE after it.
                        if !dump {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

/// The socket id of a dump of `family`: any socket.
fn any_socket(family: u8) -> SocketId {
    if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    }
}

/// Bytes of a netlink message header, before the `inet_diag_msg`.
const NETLINK_HEADER_BYTES: usize = 16;
/// Where `idiag_expires` sits in `struct inet_diag_msg`: after family, state, timer and
/// retransmits (4 bytes) and the socket id (48).
const EXPIRES_AT: usize = 52;
/// `TCP_FIN_WAIT2`.
const FIN_WAIT2: u8 = 5;
/// `TCP_TIME_WAIT`.
pub const TIME_WAIT: u8 = 6;

/// A time-wait socket as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWaitSocket {
    /// Its substate: FIN_WAIT2 (the client's FIN has not come) or [`TIME_WAIT`].
    pub state: u8,
    pub key: ConnKey,
    /// Milliseconds until its timer fires and the kernel frees it.
    pub expires_ms: u32,
}

impl TimeWaitSocket {
    fn of(header: &InetResponseHeader, expires_ms: u32) -> Option<Self> {
        if header.timer != Some(Timer::TimeWait) {
            return None;
        }
        let id = &header.socket_id;
        Some(Self {
            state: header.state,
            key: ConnKey::new(
                SocketAddr::new(id.source_address, id.source_port),
                SocketAddr::new(id.destination_address, id.destination_port),
            ),
            expires_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn lists_our_listener_with_its_backlog_and_queue() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Two connections wait in the accept queue: nobody accepts them.
        let _clients = [
            TcpStream::connect(addr).unwrap(),
            TcpStream::connect(addr).unwrap(),
        ];
        let mut diag = SockDiag::open().unwrap();
        let found = diag
            .listeners()
            .unwrap()
            .into_iter()
            .find(|socket| socket.local == addr)
            .expect("our listener is listed");
        assert_eq!(found.state, 10);
        assert_eq!(found.recv_queue, 2);
        assert_eq!(
            found.backlog,
            Some(128),
            "std listens with a backlog of 128"
        );
        assert_ne!(found.inode, 0);
    }

    #[test]
    fn lists_established_connections_both_ways_in_both_families() {
        let mut diag = SockDiag::open().unwrap();
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let listener = TcpListener::bind(bind).unwrap();
            let addr = listener.local_addr().unwrap();
            let client = TcpStream::connect(addr).unwrap();
            let (_server, peer) = listener.accept().unwrap();
            let connections = diag
                .sockets(&crate::host::tcp_table::CONNECTION_STATES)
                .unwrap();
            assert!(
                connections
                    .iter()
                    .any(|socket| socket.local == addr && socket.remote == peer),
                "server side of {peer} → {addr} not listed"
            );
            assert!(
                connections
                    .iter()
                    .any(|socket| socket.local == client.local_addr().unwrap()
                        && socket.remote == addr),
                "client side not listed"
            );
        }
    }

    #[test]
    fn finds_a_time_wait_socket_in_fin_wait2_by_its_endpoints_and_in_a_dump() {
        let mut diag = SockDiag::open().unwrap();
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let listener = TcpListener::bind(bind).unwrap();
            let addr = listener.local_addr().unwrap();
            let client = TcpStream::connect(addr).unwrap();
            let (server, peer) = listener.accept().unwrap();
            // Closed by the server, kept open by the client: once the client acknowledges the
            // FIN, the kernel hands the socket to a time-wait socket in FIN_WAIT2.
            drop(server);
            let key = ConnKey::new(addr, peer);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let found = loop {
                if let Some(found) = diag.time_wait_of(&key).unwrap() {
                    break found;
                }
                assert!(std::time::Instant::now() < deadline, "no time-wait socket");
                std::thread::sleep(std::time::Duration::from_millis(10));
            };
            assert_eq!(found.state, FIN_WAIT2, "{found:?}");
            assert_eq!(found.key, key);
            assert!((1..=60_000).contains(&found.expires_ms), "{found:?}");
            let family = if addr.is_ipv4() { AF_INET } else { AF_INET6 };
            let listed = diag.time_wait_in_fin_wait2(family).unwrap();
            assert!(listed.iter().any(|socket| socket.key == key), "{listed:?}");
            drop(client);
        }
    }
}
