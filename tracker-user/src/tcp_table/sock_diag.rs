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
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, Timer};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

use super::{CONNECTION_STATES, LISTEN, TcpSocket};

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

    /// TCP connections in [`CONNECTION_STATES`], IPv4 and IPv6.
    pub fn connections(&mut self) -> io::Result<Vec<TcpSocket>> {
        let states = CONNECTION_STATES
            .iter()
            .fold(StateFlags::empty(), |flags, &state| {
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
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let socket_id = if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
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
                        return Err(io::Error::other(format!("sock_diag: {error}")));
                    }
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response))
                        if response.header.timer != Some(Timer::TimeWait) =>
                    {
                        let header = &response.header;
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
            let connections = diag.connections().unwrap();
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
}
