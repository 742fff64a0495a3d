//! Who owns a socket: the processes holding it, from `/proc/<pid>/fd` (`socket:[inode]`
//! links), and their names.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use crate::event::comm_to_string;
use crate::observer::Owner;
use crate::tcp_table::TcpSocket;

/// Listening sockets grouped by address, each with the number of sockets on it (more than
/// one for SO_REUSEPORT groups) and the processes holding them.
pub fn group_listeners(listeners: &[TcpSocket]) -> BTreeMap<SocketAddr, (u32, Vec<Owner>)> {
    let owners = socket_owners(Path::new("/proc"));
    let mut grouped: BTreeMap<SocketAddr, (u32, Vec<Owner>)> = BTreeMap::new();
    for listener in listeners {
        let entry = grouped.entry(listener.local).or_default();
        entry.0 += 1;
        if let Some(found) = owners.get(&u64::from(listener.inode)) {
            entry.1.extend(found.iter().cloned());
        }
    }
    grouped
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
                list.push(Owner {
                    pid,
                    comm,
                    cmdline: process_cmdline(pid).unwrap_or_default(),
                });
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

/// The kernel's `TcpExt: ListenOverflows` and `ListenDrops` for the daemon's network
/// namespace (`/proc/net/netstat`): connections refused because an accept queue was full, and
/// all connections dropped at a listener (overflows included).
pub fn listen_counters() -> Option<(u64, u64)> {
    parse_listen_counters(&fs::read_to_string("/proc/net/netstat").ok()?)
}

fn parse_listen_counters(netstat: &str) -> Option<(u64, u64)> {
    let mut tcp_ext = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
    let names = tcp_ext.next()?.split_whitespace();
    let values = tcp_ext.next()?.split_whitespace();
    let table: HashMap<&str, u64> = names
        .zip(values)
        .filter_map(|(name, value)| Some((name, value.parse().ok()?)))
        .collect();
    Some((*table.get("ListenOverflows")?, *table.get("ListenDrops")?))
}

/// The command line of process `pid`, arguments separated by spaces, if it still exists.
pub fn process_cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<String> = raw
        .split(|&byte| byte == 0)
        .filter(|word| !word.is_empty())
        .map(|word| String::from_utf8_lossy(word).into_owned())
        .collect();
    Some(words.join(" "))
}

/// Inode number of the daemon's own network namespace (`/proc/self/ns/net`).
pub fn own_netns() -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    u32::try_from(fs::metadata("/proc/self/ns/net").ok()?.ino()).ok()
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
    use crate::tcp_table::SockDiag;

    #[test]
    fn listen_counters_are_read_by_name() {
        let netstat = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 7 9\nIpExt: A\nIpExt: 1\n";
        assert_eq!(parse_listen_counters(netstat), Some((7, 9)));
        assert_eq!(parse_listen_counters("IpExt: A\nIpExt: 1\n"), None);
        assert!(
            listen_counters().is_some(),
            "this kernel has /proc/net/netstat"
        );
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
        let listeners = SockDiag::open().unwrap().listeners().unwrap();
        let grouped = group_listeners(&listeners);
        let (sockets, owners) = &grouped[&addr];
        assert_eq!(*sockets, 1);
        let ours = owners
            .iter()
            .find(|owner| owner.pid == std::process::id())
            .expect("we own our listener");
        let exe = std::env::args().next().unwrap();
        assert!(ours.cmdline.starts_with(&exe), "{} vs {exe}", ours.cmdline);
    }
}
