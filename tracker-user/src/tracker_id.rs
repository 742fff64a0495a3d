//! [`TrackerId`]: what one tracker follows, and the name it goes by in every report.

use std::fmt;
use std::net::SocketAddr;

use crate::event::Netns;

/// Which side of its connections a tracker watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A listening address: connections accepted through it.
    Listen,
    /// A destination (`--connect`): connections this host opens to it.
    Connect,
}

impl Role {
    /// The name reports give the role (`role` in JSON).
    pub fn name(self) -> &'static str {
        match self {
            Role::Listen => "listen",
            Role::Connect => "connect",
        }
    }
}

/// One tracker's identity: the key of its state in the observer and in every sink.
///
/// The same address in two network namespaces, or as a listener and as a `--connect`
/// destination, is two trackers. Ordered as reports are: listeners before destinations, the
/// daemon's own namespace first, then by address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrackerId {
    pub role: Role,
    /// Network namespace (inode number); 0 for the daemon's own.
    pub netns: Netns,
    /// The listening address, or the destination of a `--connect` tracker.
    pub addr: SocketAddr,
}

impl TrackerId {
    /// A listener on `addr` in namespace `netns` (0: the daemon's own).
    pub fn listen(netns: Netns, addr: SocketAddr) -> Self {
        Self {
            role: Role::Listen,
            netns,
            addr,
        }
    }

    /// The connections this host opens to `destination`.
    pub fn connect(destination: SocketAddr) -> Self {
        Self {
            role: Role::Connect,
            netns: 0,
            addr: destination,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The namespace when it is not the daemon's own.
    pub fn foreign_netns(&self) -> Option<Netns> {
        (self.netns != 0).then_some(self.netns)
    }

    pub fn is_connect(&self) -> bool {
        self.role == Role::Connect
    }
}

/// `127.0.0.1:8080`, `[::1]:8080`, `netns:4026532481/127.0.0.1:8080`, `connect:127.0.0.1:5432`.
impl fmt::Display for TrackerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.role, self.netns) {
            (Role::Connect, _) => write!(f, "connect:{}", self.addr),
            (Role::Listen, 0) => write!(f, "{}", self.addr),
            (Role::Listen, netns) => write!(f, "netns:{netns}/{}", self.addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_forms() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(TrackerId::listen(0, addr).to_string(), "127.0.0.1:8080");
        assert_eq!(
            TrackerId::listen(4026532481, addr).to_string(),
            "netns:4026532481/127.0.0.1:8080"
        );
        assert_eq!(
            TrackerId::connect(addr).to_string(),
            "connect:127.0.0.1:8080"
        );
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(TrackerId::listen(0, v6).to_string(), "[::1]:80");
    }

    #[test]
    fn same_address_in_two_namespaces_is_two_trackers() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let ids = [
            TrackerId::connect(addr),
            TrackerId::listen(7, addr),
            TrackerId::listen(0, addr),
        ];
        assert_ne!(ids[1], ids[2]);
        let mut sorted = ids;
        sorted.sort();
        assert_eq!(sorted, [ids[2], ids[1], ids[0]]);
    }
}
