//! The VM's initramfs: Debian's static busybox, the few modules needed to reach the host's
//! filesystem (virtio PCI, 9p over virtio, overlayfs), and two scripts.
//!
//! Stage one (busybox, in the initramfs) loads the modules, mounts the guest's root read-only
//! over 9p (the host's `/`, or another architecture's userland with the workspace mounted at
//! its host path inside), lays tmpfs (or tmpfs-backed overlays) where programs write, lays
//! the kernel package's modules over `/usr/lib` and `switch_root`s into that root: the
//! kernel's on-demand module loading (`tcp_diag` for `ss`) runs `/sbin/modprobe` from PID 1's
//! root, so a chroot below PID 1 is not enough. Stage two (the root's `/bin/sh`, as PID 1)
//! mounts the kernel filesystems the daemon uses, brings up loopback, runs the integration
//! tests and prints their exit status on the console.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};

use crate::cpio::Cpio;
use crate::vm_kernel::Kernel;

/// The line stage two prints with the tests' exit status; the runner looks for it.
pub const EXIT_MARKER: &str = "TRACKER_VM_EXIT=";
/// The line stage two prints first, followed by the kernel release: boot is over.
pub const BOOT_MARKER: &str = "TRACKER_VM_BOOTED ";

/// What needs writing inside the VM (host paths stay read-only): tmpfs where the host's
/// content does not matter, tmpfs overlays where it does (nginx's /var/lib/nginx, root's
/// home, and what `dpkg -i` writes: its database under /var/lib/dpkg, the package's files
/// under /usr and /etc). /lib is a link to usr/lib on Debian 12; /usr/lib gets its own
/// overlay below, with the kernel's modules.
const EMPTY_TMPFS: &[&str] = &["/tmp", "/run"];
const OVERLAID: &[&str] = &["/var", "/root", "/etc", "/usr"];

/// How stage one mounts 9p: read-only, cached (nothing changes the shared folders during a
/// run), large messages.
const NINE_P_OPTIONS: &str = "trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144";

/// Modules stage one loads, in a working order once their dependencies are added.
const ROOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// The root stage one switches into, shared by the host over 9p under [`ROOT_TAG`].
pub enum GuestRoot {
    /// The host's own `/`: the guest runs the host's programs and sees every host path.
    Host,
    /// Another architecture's userland unpacked in `dir` (see `vm_userland`), with the host's
    /// `workspace` shared under [`WORKSPACE_TAG`] and mounted at its own path inside, where
    /// cargo put the cross-built tests and daemon.
    Foreign { dir: PathBuf, workspace: PathBuf },
}

/// The 9p tags the host shares the guest's root and, for a foreign root, the workspace under.
pub const ROOT_TAG: &str = "hostroot";
pub const WORKSPACE_TAG: &str = "workspace";

impl GuestRoot {
    /// The host folder shared as the guest's `/`.
    pub fn shared_dir(&self) -> &Path {
        match self {
            Self::Host => Path::new("/"),
            Self::Foreign { dir, .. } => dir,
        }
    }

    /// The busybox of the guest's architecture, for stage one.
    fn busybox(&self) -> PathBuf {
        crate::vm_userland::inside(self.shared_dir(), Path::new("/bin/busybox"))
    }
}

/// What the tests run inside the VM: the binary, its arguments, where, and with what
/// extra environment.
pub struct GuestCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
}

/// Writes the initramfs for `kernel` running `command` in `root` to `out`.
pub fn build(
    kernel: &Kernel,
    root: &GuestRoot,
    command: &GuestCommand,
    out: &Path,
) -> anyhow::Result<()> {
    let mut archive = Cpio::default();
    for dir in ["/bin", "/dev", "/proc", "/sys", "/newroot", "/modules"] {
        archive.directory(dir);
    }
    let busybox_path = root.busybox();
    let busybox = std::fs::read(&busybox_path).with_context(|| {
        format!(
            "reading {} (Debian's busybox-static)",
            busybox_path.display()
        )
    })?;
    archive.file("/bin/busybox", 0o755, &busybox);
    archive.symlink("/bin/sh", "busybox");
    for (index, module) in load_order(kernel)?.iter().enumerate() {
        let name = module
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| anyhow!("bad module path {}", module.display()))?;
        let plain = name.split(".ko").next().unwrap_or(name);
        // Busybox's insmod takes plain ELF objects; Debian compresses some kernels' modules.
        let object = read_module(module)?;
        archive.file(&format!("/modules/{index:02}-{plain}.ko"), 0o644, &object);
    }
    archive.file("/init", 0o755, stage_one(kernel, root).as_bytes());
    archive.file("/stage-two", 0o755, stage_two(root, command).as_bytes());
    std::fs::write(out, archive.finish()).with_context(|| format!("writing {}", out.display()))
}

/// The modules to load, dependencies first, skipping those built into the kernel.
fn load_order(kernel: &Kernel) -> anyhow::Result<Vec<PathBuf>> {
    let dir = kernel.modules_dir();
    let dep = std::fs::read_to_string(dir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", dir.display()))?;
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let mut order = Vec::new();
    for wanted in ROOT_MODULES {
        if builtin.lines().any(|line| module_name(line) == *wanted) {
            continue;
        }
        let (path, _) = dep
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(path, _)| module_name(path) == *wanted)
            .ok_or_else(|| anyhow!("{} has no module {wanted}", kernel.package))?;
        add_with_dependencies(&dep, path, &mut order);
    }
    Ok(order.into_iter().map(|path| dir.join(path)).collect())
}

/// `kernel/fs/9p/9p.ko.xz` → `9p`.
fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file)
}

/// Appends `path` after its dependencies (modules.dep lists each module's whole closure,
/// innermost last).
fn add_with_dependencies(dep: &str, path: &str, order: &mut Vec<String>) {
    if order.iter().any(|known| known == path) {
        return;
    }
    let dependencies = dep
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(module, _)| *module == path)
        .map(|(_, dependencies)| dependencies.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_default();
    for dependency in dependencies.into_iter().rev() {
        add_with_dependencies(dep, dependency, order);
    }
    order.push(path.to_owned());
}

fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else if name.ends_with(".ko.gz") {
        "gzip"
    } else {
        return std::fs::read(path).with_context(|| format!("reading {name}"));
    };
    let output = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("starting {tool} for {name}"))?;
    if !output.status.success() {
        bail!("{tool} -dc {name} failed ({})", output.status);
    }
    Ok(output.stdout)
}

fn stage_one(kernel: &Kernel, root: &GuestRoot) -> String {
    let modules_lower = format!("/newroot{}", kernel.root.join("lib").display());
    let mut script = String::from(
        r#"#!/bin/busybox sh
bb=/bin/busybox
fail() {
    echo "tracker-vm: $*"
    echo "EXIT_MARKER125"
    $bb poweroff -f
}
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
for module in /modules/*.ko; do
    $bb insmod "$module" || fail "loading $module"
done
$bb mount -t 9p -o NINE_P ROOT_TAG /newroot || fail "mounting the guest's root over 9p"
"#,
    )
    .replace("EXIT_MARKER", EXIT_MARKER)
    .replace("ROOT_TAG", ROOT_TAG)
    .replace("NINE_P", NINE_P_OPTIONS);
    // Before anything under the workspace is used: the kernel's modules are cached there.
    if let GuestRoot::Foreign { workspace, .. } = root {
        let at = format!("/newroot{}", workspace.display());
        script += &format!(
            "$bb mount -t 9p -o {NINE_P_OPTIONS} {WORKSPACE_TAG} {at} \\\n    \
             || fail \"mounting the workspace over 9p\"\n"
        );
    }
    for dir in EMPTY_TMPFS {
        script += &format!(
            "$bb mount -t tmpfs -o mode=1777 tmpfs /newroot{dir} || fail \"tmpfs on {dir}\"\n"
        );
    }
    // The root's /usr/lib, held before /usr is overlaid, for the lower layer of the /usr/lib
    // overlay: an overlay over the /usr overlay would stack two deep.
    script += "$bb mkdir -p /newroot/run/vm-lower/usr/lib\n\
               $bb mount --bind /newroot/usr/lib /newroot/run/vm-lower/usr/lib \\\n    \
               || fail \"holding the root's /usr/lib\"\n";
    // Overlay upper layers live on the guest's /run, which the tests never empty.
    for dir in OVERLAID {
        let layer = format!("/newroot/run/vm-overlay{dir}");
        script += &format!(
            "$bb mkdir -p {layer}/upper {layer}/work\n\
             $bb mount -t overlay overlay -o lowerdir=/newroot{dir},upperdir={layer}/upper,workdir={layer}/work /newroot{dir} \
             || fail \"overlay on {dir}\"\n"
        );
    }
    // man-db's dpkg trigger, which `dpkg -i` and `dpkg --purge` fire for the package's man
    // pages, rebuilds the index from every man page on the system: minutes under emulation
    // over 9p. The guest's copy of the setting goes (the host's stays); nothing in the guest
    // reads the index.
    script += "$bb rm -f /newroot/var/lib/man-db/auto-update\n";
    // The package's modules under /usr/lib/modules/<release> (/lib is a link to usr/lib on
    // Debian 12), over the root's own, and a writable layer above both (dpkg -i writes
    // /lib/systemd/system).
    let layer = "/newroot/run/vm-overlay/usr-lib";
    script += &format!(
        "$bb mkdir -p {layer}/upper {layer}/work\n\
         $bb mount -t overlay overlay -o lowerdir={modules_lower}:/newroot/run/vm-lower/usr/lib,upperdir={layer}/upper,workdir={layer}/work /newroot/usr/lib \
         || fail \"overlay of the kernel's modules on /usr/lib\"\n\
         $bb cp /stage-two /newroot/run/vm-stage-two\n\
         $bb mount --move /dev /newroot/dev\n\
         $bb mount --move /proc /newroot/proc\n\
         $bb mount --move /sys /newroot/sys\n\
         exec $bb switch_root /newroot /run/vm-stage-two\n"
    );
    script
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn stage_two(root: &GuestRoot, command: &GuestCommand) -> String {
    let mut script = String::from(
        r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
"#,
    );
    // A foreign root has the servers and clients but not a system's tools (mount, ip, ...):
    // busybox's stand in, after the packages' own on the path.
    if let GuestRoot::Foreign { .. } = root {
        script += "/bin/busybox mkdir -p /run/busybox\n\
                   /bin/busybox --install -s /run/busybox\n\
                   export PATH=$PATH:/run/busybox\n";
    }
    script += &r#"echo "BOOT_MARKER$(uname -r)"
mkdir -p /dev/pts /dev/shm
mount -t devpts -o mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# A memory cgroup online before any test: the kernel patches every memcg_kmem_online() site
# when the first one appears, and under emulation a CPU running through one of those sites
# while another patches it can trap (an int3 oops in kmem_cache_alloc, seen when the podman
# test made the first container's cgroup). Done now, nothing else runs.
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
mkdir /sys/fs/cgroup/memcg-online
hostname tracker-vm
ip link set lo up
"#
    .replace("BOOT_MARKER", BOOT_MARKER);
    for (name, value) in &command.env {
        script += &format!("export {name}={}\n", shell_quote(value));
    }
    script += &format!("cd {}\n", shell_quote(&command.dir.to_string_lossy()));
    script += &shell_quote(&command.program.to_string_lossy());
    for arg in &command.args {
        script += " ";
        script += &shell_quote(arg);
    }
    script += &format!(
        "\nstatus=$?\n\
         echo \"{EXIT_MARKER}$status\"\n\
         kill -KILL -1 2>/dev/null\n\
         sync\n\
         /bin/busybox poweroff -f\n"
    );
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_come_first_once() {
        let dep = "kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n\
                   kernel/net/9p/9pnet.ko.xz:\n\
                   kernel/fs/netfs/netfs.ko.xz:\n\
                   kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\n";
        let mut order = Vec::new();
        add_with_dependencies(dep, "kernel/net/9p/9pnet_virtio.ko.xz", &mut order);
        add_with_dependencies(dep, "kernel/fs/9p/9p.ko.xz", &mut order);
        assert_eq!(
            order,
            [
                "kernel/net/9p/9pnet.ko.xz",
                "kernel/net/9p/9pnet_virtio.ko.xz",
                "kernel/fs/netfs/netfs.ko.xz",
                "kernel/fs/9p/9p.ko.xz",
            ]
        );
        assert_eq!(module_name("kernel/fs/9p/9p.ko.xz"), "9p");
        assert_eq!(module_name("kernel/fs/overlayfs/overlay.ko"), "overlay");
    }

    /// What `dpkg -i` writes is writable in the guest, and /usr/lib keeps the kernel's modules
    /// over the host's own: its lower layer is the host's /usr/lib, held before /usr is
    /// overlaid, and its overlay comes after /usr's, which would otherwise hide it.
    fn kernel(root: &str) -> Kernel {
        Kernel {
            series: "6.1",
            arch: crate::vm_kernel::Arch::Amd64,
            package: "linux-image-6.1.0-1-amd64".into(),
            release: "6.1.0-1-amd64".into(),
            root: root.into(),
            vmlinux: format!("{root}/vmlinuz").into(),
        }
    }

    fn foreign() -> GuestRoot {
        GuestRoot::Foreign {
            dir: "/w/target/userland".into(),
            workspace: "/w".into(),
        }
    }

    #[test]
    fn stage_one_overlays_what_dpkg_writes() {
        let script = stage_one(&kernel("/k"), &GuestRoot::Host);
        let position = |needle: &str| {
            script
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not in:\n{script}"))
        };
        for dir in ["/var", "/etc", "/usr"] {
            position(&format!(
                "-o lowerdir=/newroot{dir},upperdir=/newroot/run/vm-overlay{dir}/upper,"
            ));
        }
        let hold = position("mount --bind /newroot/usr/lib /newroot/run/vm-lower/usr/lib");
        let usr = position("-o lowerdir=/newroot/usr,");
        let usr_lib = position(
            "-o lowerdir=/newroot/k/lib:/newroot/run/vm-lower/usr/lib,\
             upperdir=/newroot/run/vm-overlay/usr-lib/upper,",
        );
        assert!(hold < usr && usr < usr_lib, "{script}");
        let var = position("-o lowerdir=/newroot/var,");
        assert!(var < position("rm -f /newroot/var/lib/man-db/auto-update"));
        assert!(!script.contains(WORKSPACE_TAG), "{script}");
    }

    /// A foreign root gets the workspace at its host path before the kernel's modules, which
    /// are cached in it, are laid over /usr/lib.
    #[test]
    fn a_foreign_root_mounts_the_workspace_before_the_modules_under_it() {
        let script = stage_one(&kernel("/w/target/k"), &foreign());
        let position = |needle: &str| {
            script
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not in:\n{script}"))
        };
        let root = position(&format!(" {ROOT_TAG} /newroot "));
        let workspace = position(&format!(" {WORKSPACE_TAG} /newroot/w "));
        let modules = position("-o lowerdir=/newroot/w/target/k/lib:");
        assert!(root < workspace && workspace < modules, "{script}");
        let two = stage_two(&foreign(), &command());
        assert!(
            two.contains("/bin/busybox --install -s /run/busybox"),
            "{two}"
        );
        assert!(!stage_two(&GuestRoot::Host, &command()).contains("--install"));
    }

    fn command() -> GuestCommand {
        GuestCommand {
            program: "/t/integration-abc".into(),
            args: vec!["it's".into(), "--test-threads=1".into()],
            dir: "/src".into(),
            env: vec![("SCALE".into(), "4".into())],
        }
    }

    #[test]
    fn stage_two_quotes_what_it_runs() {
        let script = stage_two(&GuestRoot::Host, &command());
        assert!(script.contains(
            "export SCALE='4'\ncd '/src'\n'/t/integration-abc' 'it'\\''s' '--test-threads=1'\n"
        ));
        assert!(script.contains(EXIT_MARKER));
    }
}
