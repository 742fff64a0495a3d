//! The TCP table from `/proc/net/tcp` and `/proc/net/tcp6`: one line per socket,
//! `sl local rem st tx_queue:rx_queue tr:when retrnsmt uid timeout inode ...`, addresses as the
//! kernel's 32-bit words in hex (network byte order, printed as native integers) and ports in
//! hex. For a listener, `rx_queue` is its accept queue.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::TcpSocket;

/// Every socket of both families whose state is in `states`. A host without IPv6 has no
/// `tcp6` file.
pub(super) fn sockets(states: &[u8]) -> io::Result<Vec<TcpSocket>> {
    let mut sockets = Vec::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound && path.ends_with('6') => {
                continue;
            }
            Err(error) => return Err(io::Error::new(error.kind(), format!("{path}: {error}"))),
        };
        for line in text.lines().skip(1) {
            let (socket, time_wait) = parse_line(line).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{path}: unexpected line {line:?}"),
                )
            })?;
            if states.contains(&socket.state) && !time_wait {
                sockets.push(socket);
            }
        }
    }
    Ok(sockets)
}

/// The socket on `line`, and whether it is a TIME_WAIT mini-socket (listed under its
/// substate; see [`super::CONNECTION_STATES`]).
fn parse_line(line: &str) -> Option<(TcpSocket, bool)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [
        _slot,
        local,
        remote,
        state,
        queues,
        timer,
        _retransmits,
        _uid,
        _timeout,
        inode,
        ..,
    ] = fields[..]
    else {
        return None;
    };
    let (_tx_queue, rx_queue) = queues.split_once(':')?;
    let (timer, _expires) = timer.split_once(':')?;
    let socket = TcpSocket {
        state: u8::from_str_radix(state, 16).ok()?,
        local: parse_endpoint(local)?,
        remote: parse_endpoint(remote)?,
        recv_queue: u32::from_str_radix(rx_queue, 16).ok()?,
        backlog: None,
        inode: inode.parse().ok()?,
    };
    Some((socket, timer == TIME_WAIT_TIMER))
}

/// The `tr` field's code for a TIME_WAIT mini-socket's timer.
const TIME_WAIT_TIMER: &str = "03";

/// `0100007F:1F90` (127.0.0.1:8080 on a little-endian host) or 32 hex digits for IPv6.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |index: usize| -> Option<[u8; 4]> {
        let digits = address.get(index * 8..index * 8 + 8)?;
        Some(u32::from_str_radix(digits, 16).ok()?.to_ne_bytes())
    };
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0; 16];
            for index in 0..4 {
                octets[index * 4..index * 4 + 4].copy_from_slice(&word(index)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::host::tcp_table::LISTEN;

    #[test]
    fn lines_of_both_families_are_parsed() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 1072 1 00000000c3dbeead 100 0 0 10 0";
        assert_eq!(
            parse_line(v4),
            Some((
                TcpSocket {
                    state: LISTEN,
                    local: "127.0.0.1:8080".parse().unwrap(),
                    remote: "0.0.0.0:0".parse().unwrap(),
                    recv_queue: 3,
                    backlog: None,
                    inode: 1072,
                },
                false
            ))
        );
        let v6 = "   1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:D431 01 00000000:00000000 00:00000000 00000000     0        0 5521 1 0000000000000000 20 4 30 10 -1";
        let (socket, time_wait) = parse_line(v6).unwrap();
        assert!(!time_wait);
        assert_eq!(socket.local, "[::1]:8080".parse().unwrap());
        assert_eq!(socket.remote, "[::1]:54321".parse().unwrap());
        assert_eq!((socket.state, socket.inode), (1, 5521));
    }

    #[test]
    fn time_wait_mini_sockets_are_told_apart() {
        let fin_wait2 = "   2: 0100007F:1F90 0100007F:D431 05 00000000:00000000 03:00000DA6 00000000     0        0 0 3 0000000000000000";
        let (socket, time_wait) = parse_line(fin_wait2).unwrap();
        assert_eq!((socket.state, time_wait), (5, true));
    }

    #[test]
    fn malformed_lines_are_refused() {
        assert_eq!(parse_line("  sl  local_address rem_address   st"), None);
        assert_eq!(
            parse_line("0: 0100007F:1F90 00000000:0000 0A 00000000 00:00000000 00000000 0 0 1"),
            None
        );
        assert_eq!(parse_endpoint("0100007:1F90"), None);
    }
}
