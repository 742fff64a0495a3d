//! tracefs: found, or mounted when missing, and the tracepoint layouts our programs assume,
//! checked against the kernel's `format` files before anything is attached.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Where tracefs lives on current kernels (aya looks here first too).
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Where older set-ups mount it, under debugfs.
const LEGACY_TRACEFS: &str = "/sys/kernel/debug/tracing";

/// tracefs as the daemon found it. If the daemon mounted it, dropping this unmounts it again so
/// that the host is left as it was.
#[derive(Debug)]
pub struct Tracefs {
    root: PathBuf,
    mounted_by_us: bool,
}

/// The mount source the daemon gives tracefs when it mounts it, followed by its pid: in
/// `/proc/self/mountinfo` it tells our mount from the system's, and whether the daemon that
/// mounted it is still running.
const MOUNT_SOURCE_PREFIX: &str = "tracker:";

impl Tracefs {
    /// Finds tracefs, mounting it at [`TRACEFS`] when neither usual place has it.
    ///
    /// A tracefs that an earlier daemon mounted and could not unmount (it was killed) is
    /// taken over: this daemon unmounts it at exit, so the host ends up as it was before
    /// either ran.
    pub fn find_or_mount() -> anyhow::Result<Self> {
        for candidate in [TRACEFS, LEGACY_TRACEFS] {
            if is_populated(Path::new(candidate)) {
                let left_over = candidate == TRACEFS && left_over_by_dead_daemon().is_some();
                return Ok(Self {
                    root: PathBuf::from(candidate),
                    mounted_by_us: left_over,
                });
            }
        }
        mount_tracefs(Path::new(TRACEFS)).with_context(|| {
            format!(
                "tracefs is not mounted and mounting it at {TRACEFS} failed \
                 (try: mount -t tracefs nodev {TRACEFS})"
            )
        })?;
        if !is_populated(Path::new(TRACEFS)) {
            bail!("mounted tracefs at {TRACEFS} but it has no events: is CONFIG_FTRACE off?");
        }
        log::info!("mounted tracefs at {TRACEFS}; it is unmounted again at exit");
        Ok(Self {
            root: PathBuf::from(TRACEFS),
            mounted_by_us: true,
        })
    }

    /// Reads `events/<category>/<name>/format`.
    pub fn format(&self, category: &str, name: &str) -> anyhow::Result<String> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        fs::read_to_string(&path).with_context(|| {
            format!(
                "tracepoint {category}:{name} is not available on this kernel ({})",
                path.display()
            )
        })
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if self.mounted_by_us {
            let Ok(target) = CString::new(TRACEFS) else {
                return;
            };
            // SAFETY: a valid NUL-terminated path. MNT_DETACH: if something else started using
            // tracefs meanwhile, it keeps working until it lets go.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
                let error = io::Error::last_os_error();
                // EINVAL: no longer a mount point; another daemon that took over the same
                // left-over mount has already unmounted it.
                if error.raw_os_error() != Some(libc::EINVAL) {
                    log::warn!("could not unmount {TRACEFS}: {error}");
                }
            }
        }
    }
}

fn is_populated(path: &Path) -> bool {
    path.join("events").is_dir()
}

/// The pid of the daemon that mounted the tracefs visible at [`TRACEFS`], when that daemon is
/// gone (logged); None when the mount is someone else's or its daemon still runs.
fn left_over_by_dead_daemon() -> Option<u32> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let pid = mounted_by_daemon(&mountinfo, TRACEFS)?;
    let running = fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end() == "tracker");
    if running || pid == std::process::id() {
        return None;
    }
    log::warn!(
        "tracefs at {TRACEFS} was mounted by a tracker (pid {pid}) that did not exit cleanly; \
         this one unmounts it at exit"
    );
    Some(pid)
}

/// The pid in the source of the topmost tracefs mounted at `target` (as `/proc/*/mountinfo`
/// lists mounts), when a daemon mounted it.
fn mounted_by_daemon(mountinfo: &str, target: &str) -> Option<u32> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // "36 35 0:12 / /sys/kernel/tracing rw,relatime shared:9 - tracefs nodev rw"
            let (mount, filesystem) = line.split_once(" - ")?;
            let mount_point = mount.split(' ').nth(4)?;
            let mut filesystem = filesystem.split(' ');
            let (kind, source) = (filesystem.next()?, filesystem.next()?);
            (mount_point == target && kind == "tracefs").then_some(source)
        })
        // Later lines are mounted over earlier ones at the same place.
        .next_back()?
        .strip_prefix(MOUNT_SOURCE_PREFIX)?
        .parse()
        .ok()
}

fn mount_tracefs(target: &Path) -> io::Result<()> {
    let to_c = |text: &str| CString::new(text).map_err(io::Error::other);
    let source = to_c(&format!("{MOUNT_SOURCE_PREFIX}{}", std::process::id()))?;
    let fstype = to_c("tracefs")?;
    let target = to_c(
        target
            .to_str()
            .ok_or_else(|| io::Error::other("non-UTF-8 path"))?,
    )?;
    // SAFETY: valid NUL-terminated strings and no mount data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Checks that every `(name, offset, size)` in `expected` matches a `field:` line of a
/// tracepoint `format` file. The error names each differing field.
pub fn check_format(format: &str, expected: &[(&str, usize, usize)]) -> Result<(), String> {
    let fields: Vec<(String, usize, usize)> = format.lines().filter_map(parse_field_line).collect();
    let mismatches: Vec<String> = expected
        .iter()
        .filter_map(|&(name, offset, size)| {
            match fields.iter().find(|(field, ..)| field == name) {
                Some((_, found_offset, found_size)) if (*found_offset, *found_size) == (offset, size) => None,
                Some((_, found_offset, found_size)) => Some(format!(
                    "{name} at offset {found_offset} size {found_size}, expected offset {offset} size {size}"
                )),
                None => Some(format!("{name} missing")),
            }
        })
        .collect();
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(mismatches.join("; "))
    }
}

/// `field:__u8 saddr[4]; offset:32; size:4; signed:0;` → `("saddr", 32, 4)`.
fn parse_field_line(line: &str) -> Option<(String, usize, usize)> {
    let mut parts = line.trim().split(';').map(str::trim);
    let declaration = parts.next()?.strip_prefix("field:")?;
    let name = declaration.split_whitespace().last()?;
    let name = name.split('[').next()?.to_owned();
    let mut offset = None;
    let mut size = None;
    for part in parts {
        if let Some(value) = part.strip_prefix("offset:") {
            offset = value.parse().ok();
        } else if let Some(value) = part.strip_prefix("size:") {
            size = value.parse().ok();
        }
    }
    Some((name, offset?, size?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracker_common::inet_sock_set_state::FIELDS;

    /// `sock:inet_sock_set_state` as kernel 6.18 prints it.
    const FORMAT_6_18: &str = "name: inet_sock_set_state
ID: 2287
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:int oldstate;	offset:16;	size:4;	signed:1;
	field:int newstate;	offset:20;	size:4;	signed:1;
	field:__u16 sport;	offset:24;	size:2;	signed:0;
	field:__u16 dport;	offset:26;	size:2;	signed:0;
	field:__u16 family;	offset:28;	size:2;	signed:0;
	field:__u16 protocol;	offset:30;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:32;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:36;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:40;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:56;	size:16;	signed:0;

print fmt: \"family=%s ...\"
";

    #[test]
    fn our_layout_matches_kernel_6_18() {
        assert_eq!(check_format(FORMAT_6_18, &FIELDS), Ok(()));
    }

    #[test]
    fn a_moved_or_missing_field_is_named() {
        let moved = FORMAT_6_18.replace("sport;\toffset:24", "sport;\toffset:28");
        let error = check_format(&moved, &FIELDS).unwrap_err();
        assert!(
            error.contains("sport at offset 28 size 2, expected offset 24 size 2"),
            "{error}"
        );

        let missing = FORMAT_6_18.replace("protocol", "proto");
        assert_eq!(
            check_format(&missing, &FIELDS).unwrap_err(),
            "protocol missing"
        );
    }

    #[test]
    fn a_daemon_mount_is_told_from_the_system_one_by_its_source() {
        let system = "22 26 0:7 / /sys rw,nosuid shared:7 - sysfs sysfs rw
36 22 0:12 / /sys/kernel/tracing rw,relatime shared:9 - tracefs nodev rw
";
        assert_eq!(mounted_by_daemon(system, TRACEFS), None);
        let ours = format!(
            "{system}90 36 0:12 / /sys/kernel/tracing rw,relatime - tracefs tracker:4242 rw\n"
        );
        assert_eq!(mounted_by_daemon(&ours, TRACEFS), Some(4242));
        assert_eq!(mounted_by_daemon(&ours, LEGACY_TRACEFS), None);
        let covered =
            format!("{ours}91 90 0:12 / /sys/kernel/tracing rw,relatime - tracefs nodev rw\n");
        assert_eq!(mounted_by_daemon(&covered, TRACEFS), None);
    }

    #[test]
    fn field_lines_parse() {
        assert_eq!(
            parse_field_line("\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;"),
            Some(("skaddr".to_owned(), 8, 8))
        );
        assert_eq!(parse_field_line("print fmt: \"x\""), None);
    }
}
