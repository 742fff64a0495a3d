//! From a cgroup v2 id to its path: the id is the inode number of the cgroup's directory in
//! the cgroup2 hierarchy (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a host in hybrid
//! mode), found by walking it; the walk's result is kept until an id is missing from it.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cgroup_path;

/// A miss walks the hierarchy again at most this often: a host with many cgroups costs a
/// few milliseconds a walk, and a listener churning in a cgroup the walk cannot see (one
/// removed already) must not make the daemon walk for each of its events.
const WALK_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// Paths of cgroup v2 ids, from the cgroup2 hierarchy.
#[derive(Debug)]
pub struct Cgroups {
    /// Where cgroup2 is mounted; None on a host without it.
    root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    last_walk: Option<Instant>,
}

impl Cgroups {
    /// The hierarchy mounted on this host (as `/proc/self/mountinfo` lists it).
    pub fn new() -> Self {
        let root = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|mountinfo| cgroup2_mount(&mountinfo));
        Self::at(root)
    }

    /// The hierarchy mounted at `root`.
    pub fn at(root: Option<PathBuf>) -> Self {
        Self {
            root,
            by_id: HashMap::new(),
            last_walk: None,
        }
    }

    /// The path of cgroup `id` below the hierarchy's root (`/system.slice/nginx.service`).
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        // 0: the kernel gave no id (no cgroup v2 on this host).
        if id == 0 {
            return None;
        }
        if let Some(path) = self.by_id.get(&id) {
            return Some(path.clone());
        }
        let root = self.root.clone()?;
        if self
            .last_walk
            .is_some_and(|last| last.elapsed() < WALK_AT_MOST_EVERY)
        {
            return None;
        }
        self.last_walk = Some(Instant::now());
        self.by_id.clear();
        walk(&root, &root, &mut self.by_id);
        self.by_id.get(&id).cloned()
    }

    /// The cgroup of a listener opened by `pid` in cgroup `id`: the kernel's where it names a
    /// container or pod, or where `/proc/<pid>/cgroup` (whose cgroup v1 lines can say more on a
    /// hybrid host) does not; otherwise what the process's own file says.
    pub fn of_listener(&mut self, id: u64, pid: u32) -> Option<String> {
        let kernel = self.path_of(id).filter(|path| path != "/");
        if kernel.as_deref().is_some_and(names_something) {
            return kernel;
        }
        let process = proc_cgroup(pid);
        if process.as_deref().is_some_and(names_something) {
            return process;
        }
        kernel.or(process)
    }
}

impl Default for Cgroups {
    fn default() -> Self {
        Self::new()
    }
}

fn names_something(path: &str) -> bool {
    let parsed = cgroup_path::parse(path);
    parsed.container.is_some() || parsed.pod.is_some()
}

/// Records every cgroup below `dir` by the inode of its directory.
fn walk(root: &Path, dir: &Path, by_id: &mut HashMap<u64, String>) {
    let Ok(metadata) = fs::metadata(dir) else {
        return;
    };
    let relative = dir.strip_prefix(root).unwrap_or(dir);
    by_id.insert(metadata.ino(), format!("/{}", relative.display()));
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        // Cgroups are directories; their control files are not.
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            walk(root, &entry.path(), by_id);
        }
    }
}

/// Where cgroup2 is mounted, from the text of `/proc/self/mountinfo`.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mount_point = mount.split(' ').nth(4)?;
        (fs.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// The cgroup of process `pid` from `/proc/<pid>/cgroup`, if it still runs.
pub fn proc_cgroup(pid: u32) -> Option<String> {
    choose_line(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The most telling path of a `/proc/<pid>/cgroup`: one that names a container or pod
/// (cgroup v2's first), else cgroup v2's, else the systemd hierarchy's of cgroup v1, else any
/// hierarchy's that is not the root.
fn choose_line(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let v2 = lines.iter().find(|line| line.starts_with("0::"));
    let systemd = lines.iter().find(|line| line.contains(":name=systemd:"));
    let ordered: Vec<&str> = v2
        .into_iter()
        .chain(systemd)
        .chain(lines.iter())
        .map(|line| cgroup_path::path_of_line(line))
        .filter(|path| *path != "/" && !path.is_empty())
        .collect();
    ordered
        .iter()
        .find(|path| names_something(path))
        .or(ordered.first())
        .map(|path| (*path).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f9a1c6b2d8e4f7a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a";

    #[test]
    fn the_cgroup2_mount_is_found_on_hybrid_and_unified_hosts() {
        let hybrid = "25 22 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n\
            26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n\
            27 25 0:24 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"), None);
    }

    #[test]
    fn the_most_telling_line_of_proc_cgroup_is_taken() {
        let unified = "0::/system.slice/nginx.service\n";
        assert_eq!(
            choose_line(unified).as_deref(),
            Some("/system.slice/nginx.service")
        );
        // Docker on a hybrid host: cgroup v2 knows only the root.
        let hybrid = format!("12:pids:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n");
        assert_eq!(choose_line(&hybrid), Some(format!("/docker/{ID}")));
        let plain = "4:pids:/user.slice\n1:name=systemd:/user.slice/session-2.scope\n0::/user.slice/session-2.scope\n";
        assert_eq!(
            choose_line(plain).as_deref(),
            Some("/user.slice/session-2.scope")
        );
        assert_eq!(choose_line("0::/\n"), None);
        assert_eq!(choose_line(""), None);
    }

    #[test]
    fn an_id_is_found_by_the_inode_of_its_directory() {
        let root = std::env::temp_dir().join(format!("tracker-cgroups-{}", std::process::id()));
        let leaf = root.join("system.slice/nginx.service");
        fs::create_dir_all(&leaf).unwrap();
        let mut cgroups = Cgroups::at(Some(root.clone()));
        let id = fs::metadata(&leaf).unwrap().ino();
        assert_eq!(
            cgroups.path_of(id).as_deref(),
            Some("/system.slice/nginx.service")
        );
        assert_eq!(
            cgroups
                .path_of(fs::metadata(&root).unwrap().ino())
                .as_deref(),
            Some("/")
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
