//! Listening sockets that already exist, from `/proc/net/tcp{,6}`, and the processes that own
//! them, from `/proc/<pid>/fd`.
//!
//! Used at start-up (so listeners opened before the daemon are named from the first report) and
//! when a connection arrives on a listener no event announced. The parsers are pure functions
//! over the files' text so they are tested without root.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use crate::event::comm_to_string;
use crate::observer::Owner;

/// `st` column value of a socket in LISTEN.
const TCP_LISTEN_HEX: &str = "0A";

/// One listening socket from `/proc/net/tcp{,6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedListener {
    pub addr: SocketAddr,
    pub inode: u64,
}

/// All TCP listening sockets of the daemon's network namespace, grouped by address, each with
/// the number of sockets on it (more than one for SO_REUSEPORT groups) and their owners.
pub fn scan_listeners() -> io::Result<BTreeMap<SocketAddr, (u32, Vec<Owner>)>> {
    let mut listeners = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match fs::read_to_string(table) {
            Ok(text) => listeners.extend(parse_tcp_table(&text)),
            // No IPv6 in this kernel: nothing listens there.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io::Error::new(error.kind(), format!("{table}: {error}"))),
        }
    }
    let owners = socket_owners(Path::new("/proc"));
    let mut grouped: BTreeMap<SocketAddr, (u32, Vec<Owner>)> = BTreeMap::new();
    for listener in listeners {
        let entry = grouped.entry(listener.addr).or_default();
        entry.0 += 1;
        if let Some(found) = owners.get(&listener.inode) {
            entry.1.extend(found.iter().cloned());
        }
    }
    Ok(grouped)
}

/// The LISTEN rows of a `/proc/net/tcp` or `/proc/net/tcp6` table.
pub fn parse_tcp_table(text: &str) -> Vec<ScannedListener> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&TCP_LISTEN_HEX) {
                return None;
            }
            let addr = parse_hex_socket_addr(fields.get(1)?)?;
            let inode = fields.get(9)?.parse().ok()?;
            Some(ScannedListener { addr, inode })
        })
        .collect()
}

/// Parses `0100007F:1F90` (IPv4) or 32 hex digits `:port` (IPv6). The kernel prints each
/// 32-bit word of the address as the host reads the in-memory (network-order) bytes, so the
/// bytes come back with `to_ne_bytes`.
fn parse_hex_socket_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let ip = match words.as_slice() {
        [word] => IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (chunk, word) in bytes.chunks_exact_mut(4).zip([a, b, c, d]) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Socket inode → processes holding it, from `<proc>/<pid>/fd/*` links (`socket:[inode]`).
/// Processes that exit during the walk, or whose fds we cannot read, are skipped.
pub fn socket_owners(proc_root: &Path) -> HashMap<u64, Vec<Owner>> {
    let mut owners: HashMap<u64, Vec<Owner>> = HashMap::new();
    let Ok(entries) = fs::read_dir(proc_root) else {
        return owners;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let mut comm = None;
        for fd in fds.flatten() {
            let Some(inode) = fs::read_link(fd.path())
                .ok()
                .and_then(|target| socket_inode(target.to_str()?))
            else {
                continue;
            };
            let comm = comm
                .get_or_insert_with(|| process_comm(pid).unwrap_or_default())
                .clone();
            let list = owners.entry(inode).or_default();
            if !list.iter().any(|owner| owner.pid == pid) {
                list.push(Owner { pid, comm });
            }
        }
    }
    owners
}

/// The command name of process `pid` (its main thread's `comm`), if it still exists.
pub fn process_comm(pid: u32) -> Option<String> {
    fs::read(format!("/proc/{pid}/comm"))
        .ok()
        .map(|bytes| comm_to_string(bytes.trim_ascii_end()))
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 5555 1 0000000000000000 20 4 30 10 -1
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn parses_ipv4_listeners_only() {
        assert_eq!(
            parse_tcp_table(TCP),
            vec![
                ScannedListener {
                    addr: "127.0.0.1:8080".parse().unwrap(),
                    inode: 31337
                },
                ScannedListener {
                    addr: "0.0.0.0:22".parse().unwrap(),
                    inode: 1234
                },
            ]
        );
    }

    #[test]
    fn parses_ipv6_listeners() {
        let listeners = parse_tcp_table(TCP6);
        assert_eq!(listeners[0].addr, "[::1]:8080".parse().unwrap());
        assert_eq!(listeners[1].addr, "[::]:80".parse().unwrap());
    }

    #[test]
    fn garbage_rows_are_skipped() {
        assert!(parse_tcp_table("header\n0: zz:zz 00:00 0A\n\n").is_empty());
        assert_eq!(parse_hex_socket_addr("0100007F"), None);
        assert_eq!(parse_hex_socket_addr("01007F:0050"), None);
    }

    #[test]
    fn socket_links_are_recognised() {
        assert_eq!(socket_inode("socket:[987]"), Some(987));
        assert_eq!(socket_inode("pipe:[987]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn finds_the_owner_of_our_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let text = fs::read_to_string("/proc/net/tcp").unwrap();
        let inode = parse_tcp_table(&text)
            .into_iter()
            .find(|scanned| scanned.addr == addr)
            .expect("our listener is in /proc/net/tcp")
            .inode;
        let owners = socket_owners(Path::new("/proc"));
        let pid = std::process::id();
        assert!(owners[&inode].iter().any(|owner| owner.pid == pid));
    }
}
