//! TLS plaintext: OpenSSL's `libssl`, hooked per library file once a listener's owner maps it.
//!
//! The kernel programs are `tracker-ebpf`'s `probes::openssl`: uprobes on `SSL_read`,
//! `SSL_read_ex`, `SSL_write`, `SSL_write_ex` and `SSL_do_handshake` (entry and return). Here
//! the daemon finds which library file each owner process maps (`/proc/<pid>/maps`, read
//! through `/proc/<pid>/root` so a container's library is the one hooked), attaches the
//! programs once per file (identified by device and inode, so one library shared by many
//! servers is hooked once), and detaches them when no owner maps that file any more.
//!
//! A hooked file traps in every process that maps it, forked workers (which serve a listener
//! without having called `listen()`) as well as TLS clients and other services: each of their
//! calls costs a trap, and the programs drop the calls whose sockets are not tracked at their
//! first lookups. Hooking per process instead would take a per-task perf event per process,
//! which makes every context switch on the host go through perf's scheduling hooks (and
//! patches the scheduler's code as the first is opened and the last closed: under emulation
//! that patching crashed a test kernel), and would miss workers forked since the last look.
//!
//! Servers whose TLS lives elsewhere (statically linked BoringSSL or rustls, Go's
//! crypto/tls) map no `libssl`: their TLS connections stay in `sessions_unknown`, and the
//! daemon says so once per process.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use aya::Ebpf;
use aya::programs::uprobe::{UProbeLinkId, UProbeScope};
use aya::programs::{ProgramError, UProbe};
use tracker_common::{PROG_URETPROBE_SSL, SSL_FUNCTIONS};

use crate::host::procfs::Owner;
use crate::tracker_id::TrackerId;

/// Functions a library must have to be followed; the others (`SSL_read_ex`, `SSL_write_ex`,
/// since OpenSSL 1.1.1) are hooked where present.
const REQUIRED: [&str; 3] = ["SSL_read", "SSL_write", "SSL_do_handshake"];

/// Loads the TLS programs (they are attached later, per library). An error means TLS plaintext
/// cannot be followed on this kernel.
pub fn load_programs(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let names = SSL_FUNCTIONS
        .iter()
        .map(|&(_, program)| program)
        .chain([PROG_URETPROBE_SSL]);
    for name in names {
        uprobe(ebpf, name)?
            .load()
            .with_context(|| format!("loading program {name}"))?;
    }
    Ok(())
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut UProbe> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    Ok(program.try_into()?)
}

/// A library file, by device and inode.
type FileId = (u64, u64);

/// The uprobe links of one library file.
type Links = Vec<(&'static str, UProbeLinkId)>;

/// One hooked library file.
struct Hooked {
    /// The path the first owner maps it at.
    path: String,
    links: Links,
    /// Owner processes that map it.
    users: BTreeSet<u32>,
}

/// The TLS libraries hooked for the watched listeners' owners.
#[derive(Default)]
pub struct TlsLibraries {
    hooked: HashMap<FileId, Hooked>,
    /// Files that could not be hooked (said once).
    failed: HashSet<FileId>,
    /// Processes already reported as serving TLS the daemon cannot see.
    warned: HashSet<u32>,
}

impl TlsLibraries {
    /// Hooks the `libssl` of each of `owners` that is not hooked yet, and unhooks the files no
    /// owner maps any more. Returns whether any library is hooked.
    pub fn sync(&mut self, ebpf: &mut Ebpf, owners: &BTreeSet<u32>) -> bool {
        let mut wanted: HashMap<FileId, (String, PathBuf, BTreeSet<u32>)> = HashMap::new();
        for &pid in owners {
            // A process does not change its libssl: only new owners are looked at.
            if let Some((&id, library)) = self
                .hooked
                .iter()
                .find(|(_, library)| library.users.contains(&pid))
            {
                if crate::host::procfs::process_alive(pid) {
                    wanted
                        .entry(id)
                        .or_insert_with(|| (library.path.clone(), PathBuf::new(), BTreeSet::new()))
                        .2
                        .insert(pid);
                }
                continue;
            }
            let Some(path) = mapped_libssl(pid) else {
                continue;
            };
            let target = PathBuf::from(format!("/proc/{pid}/root{path}"));
            let Ok(metadata) = std::fs::metadata(&target) else {
                continue;
            };
            wanted
                .entry((metadata.dev(), metadata.ino()))
                .or_insert_with(|| (path, target, BTreeSet::new()))
                .2
                .insert(pid);
        }
        let unused: Vec<FileId> = self
            .hooked
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in unused {
            if let Some(library) = self.hooked.remove(&id) {
                detach(ebpf, library.links);
                log::info!(
                    "no longer following TLS plaintext in {}: no watched server maps it",
                    library.path
                );
            }
        }
        for (id, (path, target, users)) in wanted {
            if let Some(library) = self.hooked.get_mut(&id) {
                library.users = users;
                continue;
            }
            if self.failed.contains(&id) {
                continue;
            }
            match attach(ebpf, &target) {
                Ok(links) => {
                    log::info!(
                        "following TLS plaintext in {path} (OpenSSL), for process(es) {}",
                        crate::log_pipe::few(users.iter())
                    );
                    self.hooked.insert(id, Hooked { path, links, users });
                }
                Err(error) => {
                    log::warn!(
                        "cannot follow TLS plaintext in {path}: {error:#}; sessions of TLS \
                         connections served through it stay unknown"
                    );
                    self.failed.insert(id);
                }
            }
        }
        !self.hooked.is_empty()
    }

    /// The hooked library `pid` maps, if any.
    pub fn library_of(&self, pid: u32) -> Option<&str> {
        self.hooked
            .values()
            .find(|library| library.users.contains(&pid))
            .map(|library| library.path.as_str())
    }

    /// Says once per running process of `owners` that the TLS connections of `listener`
    /// could not be followed.
    pub fn warn_opaque(&mut self, listener: &TrackerId, owners: &[Owner]) {
        for owner in owners
            .iter()
            .filter(|owner| crate::host::procfs::process_alive(owner.pid))
        {
            if self.warned.insert(owner.pid) {
                log::warn!(
                    "{} (pid {}) serves TLS on {} through a TLS library tracker does not hook \
                     (no shared libssl mapped: statically linked, or another library): \
                     sessions of those connections are unknown",
                    owner.comm,
                    owner.pid,
                    listener
                );
            }
        }
    }
}

/// The `libssl` file `pid` maps, as its mount namespace names it.
fn mapped_libssl(pid: u32) -> Option<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    libssl_in_maps(&maps).map(str::to_owned)
}

/// The first `libssl.so*` among the files of a `/proc/<pid>/maps` listing.
fn libssl_in_maps(maps: &str) -> Option<&str> {
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            path.starts_with('/')
                && Path::new(path)
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("libssl.so"))
        })
}

/// Attaches the entry and return programs to each OpenSSL function of the library at
/// `target`, for every process that maps it; on failure, detaches what was attached.
fn attach(ebpf: &mut Ebpf, target: &Path) -> anyhow::Result<Links> {
    let mut links = Vec::new();
    for (function, entry) in SSL_FUNCTIONS {
        let attached = attach_pair(ebpf, function, entry, target, &mut links);
        match attached {
            Ok(()) => {}
            Err(error) if REQUIRED.contains(&function) => {
                detach(ebpf, links);
                return Err(error);
            }
            Err(error) => log::debug!("{function} not hooked: {error:#}"),
        }
    }
    Ok(links)
}

fn attach_pair(
    ebpf: &mut Ebpf,
    function: &'static str,
    entry: &'static str,
    target: &Path,
    links: &mut Links,
) -> anyhow::Result<()> {
    // The return first: a call entering between the two attaches would otherwise leave a
    // note no return removes (see `detach` for the reverse).
    for program in [PROG_URETPROBE_SSL, entry] {
        let link = uprobe(ebpf, program)?
            .attach(function, target, UProbeScope::AllProcesses)
            .map_err(|error: ProgramError| anyhow!(error))
            .with_context(|| format!("attaching {program} to {function}"))?;
        links.push((program, link));
    }
    Ok(())
}

/// Detaches in the reverse order of attaching: each entry program before its return.
fn detach(ebpf: &mut Ebpf, links: Links) {
    for (program, link) in links.into_iter().rev() {
        let detached = uprobe(ebpf, program).and_then(|p| Ok(p.detach(link)?));
        if let Err(error) = detached {
            log::warn!("detaching {program}: {error:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::libssl_in_maps;

    #[test]
    fn finds_the_mapped_libssl_and_nothing_else() {
        let maps = "\
55d0c8a00000-55d0c8a2a000 r--p 00000000 fd:01 1311 /usr/sbin/nginx
7f3a1c000000-7f3a1c021000 rw-p 00000000 00:00 0 
7f3a1c200000-7f3a1c25e000 r--p 00000000 fd:01 2210 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f3a1c600000-7f3a1c61f000 r--p 00000000 fd:01 2231 /usr/lib/x86_64-linux-gnu/libssl.so.3
7ffd5e9f0000-7ffd5ea11000 rw-p 00000000 00:00 0 [stack]";
        assert_eq!(
            libssl_in_maps(maps),
            Some("/usr/lib/x86_64-linux-gnu/libssl.so.3")
        );
        assert_eq!(libssl_in_maps(&maps.replace("libssl", "libtls")), None);
    }
}
