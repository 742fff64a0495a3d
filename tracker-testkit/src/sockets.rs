//! Loopback sockets: ports the kernel picks, and connection pairs opened by hand.

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A port free on `ip` right now (the kernel picks it).
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|listener| listener.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// A connection pair: the client socket and the server's accepted socket.
pub struct Conn {
    pub client: TcpStream,
    pub server: TcpStream,
    pub opened: Instant,
}

impl Conn {
    /// Closes both ends (client first) and returns how long the connection lived.
    pub fn close(self) -> Duration {
        drop(self.client);
        // Wait for the server side to see the client's FIN, so the kernel's close follows.
        let mut server = self.server;
        let _ = server.read(&mut [0u8; 16]);
        drop(server);
        self.opened.elapsed()
    }
}

/// Opens `count` connections to `listener` and accepts them.
pub fn connect_many(listener: &TcpListener, target: SocketAddr, count: usize) -> Vec<Conn> {
    (0..count)
        .map(|_| {
            let opened = Instant::now();
            let client = TcpStream::connect(target).expect("connecting");
            let (server, _) = listener.accept().expect("accepting");
            Conn {
                client,
                server,
                opened,
            }
        })
        .collect()
}

/// Sets the listen backlog of `listener` (std listens with 128).
pub fn set_backlog(listener: &TcpListener, backlog: i32) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: listen() again on a listening socket only updates its backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), backlog) }, 0);
}
