//! The kernel's own table of TCP sockets in the daemon's network namespace.
//!
//! The daemon reads it at start-up (listeners and connections that already exist), at reports
//! (to reconcile its model with the kernel after lost events) and between reports (to sample
//! accept queues). Netlink `sock_diag` answers best, but the kernel serves it for TCP from the
//! `tcp_diag` module, which a host may not have loaded and may refuse to load (module loading
//! disabled, a minimal kernel, a container without the module tree). `/proc/net/tcp` is
//! always there and lists the same sockets, as text the kernel formats for every socket of
//! every state (slower on a host with many connections) and without listeners' backlogs; so
//! losing `sock_diag` costs the backlog and some speed, never the snapshot or reconciliation.

mod proc_net;
mod sock_diag;

use std::io;
use std::net::SocketAddr;

use anyhow::Context as _;

pub use sock_diag::{SockDiag, TIME_WAIT, TimeWaitSocket};

/// `TCP_LISTEN` (`include/net/tcp_states.h`).
pub const LISTEN: u8 = 10;

/// States in which a server holds a connection, as the model counts it: ESTABLISHED (its
/// accept queue included) and CLOSE_WAIT (the client closed, the server not yet).
///
/// Once the server closes it (FIN_WAIT1, FIN_WAIT2, LAST_ACK, CLOSING) the kernel is only
/// finishing it: the model has seen its life end, and that phase is counted beside it. Both
/// sources also list TIME_WAIT mini-sockets under their substate; those are left out too.
pub const CONNECTION_STATES: [u8; 2] = [1, 8];

/// States of a connection the server shut down (`shutdown()`) but still holds: FIN_WAIT1,
/// FIN_WAIT2, LAST_ACK, CLOSING. Where the close hook serves, its life goes on until the
/// server's `close()`; a socket in one of them whose server still holds it has an inode (a
/// closed one is an orphan, with none).
pub const SHUT_DOWN_STATES: [u8; 4] = [4, 5, 9, 11];

/// Which connections the server holds, as the model counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldConnections {
    /// Those in [`CONNECTION_STATES`]: a `shutdown()` ends a life.
    Open,
    /// Those too that the server shut down but has not closed (the close hook serves).
    OpenOrShutDown,
}

/// One TCP socket as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    /// TCP state (`include/net/tcp_states.h`).
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// For a listener, connections waiting in its accept queue; otherwise bytes unread.
    pub recv_queue: u32,
    /// For a listener, its backlog (the accept queue's limit), when the source tells it.
    pub backlog: Option<u32>,
    pub inode: u32,
}

/// Where the daemon reads the table from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TableSource {
    /// `sock_diag`, else `/proc/net/tcp` with a warning.
    Auto,
    /// Netlink `sock_diag` only.
    SockDiag,
    /// `/proc/net/tcp` and `/proc/net/tcp6` only.
    ProcNet,
}

/// The table, through whichever source the kernel answers.
pub enum TcpTable {
    SockDiag(SockDiag),
    ProcNet,
}

impl TcpTable {
    /// Opens `source`; with [`TableSource::Auto`], `sock_diag` if a dump of the listeners
    /// works, else `/proc/net/tcp` after a warning that says what is lost.
    pub fn open(source: TableSource) -> anyhow::Result<Self> {
        match source {
            TableSource::ProcNet => Ok(Self::ProcNet),
            TableSource::SockDiag => {
                let mut diag = SockDiag::open().context("opening a sock_diag netlink socket")?;
                diag.listeners()
                    .context("the kernel does not answer TCP sock_diag")?;
                Ok(Self::SockDiag(diag))
            }
            TableSource::Auto => match Self::open(TableSource::SockDiag) {
                Ok(table) => Ok(table),
                Err(error) => {
                    log::warn!(
                        "{error:#} (is the tcp_diag module available?): reading /proc/net/tcp \
                         instead, which is slower on hosts with many connections and does not \
                         give listen backlogs (accept_backlog is null)"
                    );
                    Ok(Self::ProcNet)
                }
            },
        }
    }

    /// The source in use, for the start-up log.
    pub fn source(&self) -> &'static str {
        match self {
            Self::SockDiag(_) => "sock_diag",
            Self::ProcNet => "/proc/net/tcp",
        }
    }

    /// TCP listening sockets, IPv4 and IPv6.
    pub fn listeners(&mut self) -> io::Result<Vec<TcpSocket>> {
        match self {
            Self::SockDiag(diag) => diag.listeners(),
            Self::ProcNet => proc_net::sockets(&[LISTEN]),
        }
    }

    /// TCP connections the server holds (see [`HeldConnections`]), IPv4 and IPv6.
    pub fn connections(&mut self, held: HeldConnections) -> io::Result<Vec<TcpSocket>> {
        let mut states = CONNECTION_STATES.to_vec();
        if held == HeldConnections::OpenOrShutDown {
            states.extend(SHUT_DOWN_STATES);
        }
        let mut sockets = match self {
            Self::SockDiag(diag) => diag.sockets(&states)?,
            Self::ProcNet => proc_net::sockets(&states)?,
        };
        sockets.retain(|socket| CONNECTION_STATES.contains(&socket.state) || socket.inode != 0);
        Ok(sockets)
    }

    /// `sock_diag`, which alone looks up time-wait sockets with their timers.
    pub fn sock_diag(&mut self) -> Option<&mut SockDiag> {
        match self {
            Self::SockDiag(diag) => Some(diag),
            Self::ProcNet => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// Both sources list the same listeners and connections, with the same queues.
    #[test]
    fn both_sources_list_the_same_sockets() {
        let listener = TcpListener::bind("[::1]:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let _waiting = TcpStream::connect(addr).unwrap();
        let ours = |sockets: Vec<TcpSocket>| {
            let mut ours: Vec<_> = sockets
                .into_iter()
                .filter(|socket| socket.local.port() == addr.port() || socket.remote == addr)
                .map(|socket| TcpSocket {
                    backlog: None,
                    ..socket
                })
                .collect();
            ours.sort_by_key(|socket| (socket.local, socket.remote));
            ours
        };
        let mut diag = TcpTable::open(TableSource::SockDiag).unwrap();
        let mut proc_net = TcpTable::open(TableSource::ProcNet).unwrap();
        let listeners = ours(proc_net.listeners().unwrap());
        assert_eq!(listeners, ours(diag.listeners().unwrap()));
        assert_eq!(listeners.len(), 1);
        assert_eq!(
            listeners[0].recv_queue, 1,
            "one connection waits to be accepted"
        );
        let connections = ours(proc_net.connections(HeldConnections::Open).unwrap());
        assert_eq!(
            connections,
            ours(diag.connections(HeldConnections::Open).unwrap())
        );
        assert_eq!(connections.len(), 4, "two connections, both ends");
    }

    /// A connection the client closed is the server's until it closes too (CLOSE_WAIT); once
    /// the server has closed, its side is no longer listed, though the kernel may still be
    /// finishing it (FIN_WAIT1, LAST_ACK) or keep a TIME_WAIT mini-socket for it.
    #[test]
    fn a_connection_is_listed_until_the_server_closes_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server_side = |table: &mut TcpTable| {
            table
                .connections(HeldConnections::Open)
                .unwrap()
                .into_iter()
                .filter(|socket| socket.local == addr)
                .map(|socket| socket.state)
                .collect::<Vec<_>>()
        };
        let mut tables = [
            TcpTable::open(TableSource::SockDiag).unwrap(),
            TcpTable::open(TableSource::ProcNet).unwrap(),
        ];
        // The client closes first: the server's side waits in CLOSE_WAIT.
        let client = TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        drop(client);
        assert_eq!(server.read(&mut [0; 1]).unwrap(), 0, "the client's FIN");
        for table in &mut tables {
            assert_eq!(server_side(table), [8], "listed by {}", table.source());
        }
        drop(server);
        // The server closes first.
        let mut client = TcpStream::connect(addr).unwrap();
        drop(listener.accept().unwrap());
        for table in &mut tables {
            assert_eq!(
                server_side(table),
                Vec::<u8>::new(),
                "listed by {}",
                table.source()
            );
        }
        assert_eq!(client.read(&mut [0; 1]).unwrap(), 0, "the server's FIN");
    }

    /// A connection the server shut down is still its own until it closes it, and listed as
    /// such where asked; once closed (an orphan, with no inode) it is not.
    #[test]
    fn a_shut_down_connection_is_listed_as_held_until_the_server_closes_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(client.read(&mut [0; 1]).unwrap(), 0, "the server's FIN");
        let server_side = |table: &mut TcpTable, held: HeldConnections| {
            table
                .connections(held)
                .unwrap()
                .into_iter()
                .filter(|socket| socket.local == addr)
                .map(|socket| socket.state)
                .collect::<Vec<_>>()
        };
        for source in [TableSource::SockDiag, TableSource::ProcNet] {
            let mut table = TcpTable::open(source).unwrap();
            assert_eq!(
                server_side(&mut table, HeldConnections::Open),
                Vec::<u8>::new()
            );
            // FIN_WAIT1 until the client's acknowledgement of the FIN is processed, then
            // FIN_WAIT2: either way still the server's.
            let held = server_side(&mut table, HeldConnections::OpenOrShutDown);
            assert!(
                held == [4] || held == [5],
                "{held:?}, listed by {}",
                table.source()
            );
        }
        drop(server);
        for source in [TableSource::SockDiag, TableSource::ProcNet] {
            let mut table = TcpTable::open(source).unwrap();
            assert_eq!(
                server_side(&mut table, HeldConnections::OpenOrShutDown),
                Vec::<u8>::new(),
                "listed by {}",
                table.source()
            );
        }
    }
}
