//! The kernel's own TCP socket tables, through netlink `sock_diag` (INET_DIAG dumps), using the
//! `netlink-packet-sock-diag` crate rather than parsing `/proc/net/tcp` text.
//!
//! The daemon reads them at start-up (listeners and connections that already exist), at every
//! report (to reconcile its model with the kernel after lost events) and between reports (to
//! sample accept-queue occupancy). A dump covers the daemon's network namespace.

use std::io;
use std::net::SocketAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

/// One TCP socket as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagSocket {
    /// TCP state (`include/net/tcp_states.h`).
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// For a listener, connections waiting in its accept queue; otherwise bytes unread.
    pub recv_queue: u32,
    /// For a listener, its backlog (the accept queue's limit); otherwise bytes unsent.
    pub send_queue: u32,
    pub inode: u32,
}

/// States in which a server-side connection exists for the model: from ESTABLISHED until its
/// socket reaches CLOSE (TIME_WAIT sockets have already passed through CLOSE).
pub fn connection_states() -> StateFlags {
    StateFlags::ESTABLISHED
        | StateFlags::FIN_WAIT1
        | StateFlags::FIN_WAIT2
        | StateFlags::CLOSE_WAIT
        | StateFlags::LAST_ACK
        | StateFlags::CLOSING
}

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
    pub fn listeners(&mut self) -> io::Result<Vec<DiagSocket>> {
        self.dump(StateFlags::LISTEN)
    }

    /// TCP connections in [`connection_states`], IPv4 and IPv6.
    pub fn connections(&mut self) -> io::Result<Vec<DiagSocket>> {
        self.dump(connection_states())
    }

    /// TCP sockets in `states`, both families.
    pub fn dump(&mut self, states: StateFlags) -> io::Result<Vec<DiagSocket>> {
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
        sockets: &mut Vec<DiagSocket>,
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
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(error) => {
                        return Err(io::Error::other(format!("sock_diag: {error}")));
                    }
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        let header = &response.header;
                        let id = &header.socket_id;
                        sockets.push(DiagSocket {
                            state: header.state,
                            local: SocketAddr::new(id.source_address, id.source_port),
                            remote: SocketAddr::new(id.destination_address, id.destination_port),
                            recv_queue: header.recv_queue,
                            send_queue: header.send_queue,
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
        assert_eq!(found.send_queue, 128, "std listens with a backlog of 128");
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
