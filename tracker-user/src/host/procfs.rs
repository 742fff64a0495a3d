//! Who owns a socket: the processes holding it, from `/proc/<pid>/fd` (`socket:[inode]`
//! links), and their names.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use crate::event::comm_to_string;
use crate::host::tcp_table::TcpSocket;

/// A process that owns (listens on) a listener.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    /// Its command line, arguments separated by spaces (empty until known).
    pub cmdline: String,
}

/// Listening sockets grouped by address, each with the number of sockets on it (more than
/// one for SO_REUSEPORT groups) and the processes holding them now.
pub fn group_listeners(listeners: &[TcpSocket]) -> BTreeMap<SocketAddr, (u32, Vec<Owner>)> {
    let inodes: HashSet<u64> = listeners
        .iter()
        .map(|listener| u64::from(listener.inode))
        .collect();
    let owners = socket_owners(Path::new("/proc"), &inodes);
    let mut grouped: BTreeMap<SocketAddr, (u32, Vec<Owner>)> = BTreeMap::new();
    for listener in listeners {
        let entry = grouped.entry(listener.local).or_default();
        entry.0 += 1;
        for owner in owners.get(&u64::from(listener.inode)).into_iter().flatten() {
            if !entry.1.iter().any(|known| known.pid == owner.pid) {
                entry.1.push(owner.clone());
            }
        }
    }
    grouped
}

/// Socket inode → processes holding it, from `<proc>/<pid>/fd/*` links (`socket:[inode]`),
/// for the sockets in `inodes` only. Processes that exit during the walk, or whose fds we
/// cannot read, are skipped. Its cost is a directory read per process and a link read per
/// open file on the host.
pub fn socket_owners(proc_root: &Path, inodes: &HashSet<u64>) -> HashMap<u64, Vec<Owner>> {
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
        let mut owner = None;
        for fd in fds.flatten() {
            let Some(inode) = fs::read_link(fd.path())
                .ok()
                .and_then(|target| socket_inode(target.to_str()?))
                .filter(|inode| inodes.contains(inode))
            else {
                continue;
            };
            let owner = owner.get_or_insert_with(|| Owner {
                pid,
                comm: process_comm(pid).unwrap_or_default(),
                cmdline: process_cmdline(pid).unwrap_or_default(),
            });
            let list = owners.entry(inode).or_default();
            if !list.iter().any(|known| known.pid == pid) {
                list.push(owner.clone());
            }
        }
    }
    owners
}

/// Whether process `pid` still runs: it exists and has not exited (an exited process whose
/// parent has not reaped it yet is a zombie, which holds no files).
pub fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| process_state(&stat))
        .is_some_and(|state| !matches!(state, 'Z' | 'X' | 'x'))
}

/// The state letter of a `/proc/<pid>/stat` line (after the command name, which may itself
/// hold spaces and parentheses).
fn process_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
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
    use crate::host::tcp_table::SockDiag;

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
    fn process_states_are_read_past_the_command_name() {
        assert_eq!(process_state("42 (nginx) S 1 42"), Some('S'));
        assert_eq!(process_state("42 (a) Z) Z 1 42"), Some('Z'));
        assert_eq!(process_state("42 (nginx"), None);
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
    }

    #[test]
    fn an_exited_process_not_yet_reaped_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| process_state(&stat))
            != Some('Z')
        {
            assert!(std::time::Instant::now() < deadline, "true did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!process_alive(pid));
        child.wait().unwrap();
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
