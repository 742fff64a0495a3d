//! Who runs a listener: a real podman container, and real cgroup v2 hierarchies of the shapes
//! systemd, container runtimes and the kubelet make, each with a server inside.

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Value, json};

use crate::support::{Daemon, Python, free_port, sum};

/// Where cgroup2 is mounted here (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid
/// host), from `/proc/self/mountinfo`.
fn cgroup2_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let mount_point = mount.split(' ').nth(4)?;
            fs.starts_with("cgroup2 ")
                .then(|| PathBuf::from(mount_point))
        })
        .expect("cgroup2 is mounted (the VMs mount it at /sys/fs/cgroup)")
}

/// A tree of cgroups below a directory of its own, removed (deepest first) when dropped.
struct CgroupTree {
    root: PathBuf,
    made: Vec<PathBuf>,
}

impl CgroupTree {
    fn new() -> Self {
        // Each tree its own root: a tree whose removal failed never stands in another's way.
        static TREES: AtomicU32 = AtomicU32::new(0);
        let root = cgroup2_root().join(format!(
            "tracker-workloads-{}-{}",
            std::process::id(),
            TREES.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&root).unwrap_or_else(|error| panic!("creating {root:?}: {error}"));
        Self {
            made: vec![root.clone()],
            root,
        }
    }

    /// Makes cgroup `relative` (and its parents); its path as the daemon reports it.
    fn make(&mut self, relative: &str) -> (PathBuf, String) {
        let mut dir = self.root.clone();
        for component in relative.split('/') {
            dir.push(component);
            if !dir.exists() {
                fs::create_dir(&dir).unwrap_or_else(|error| panic!("creating {dir:?}: {error}"));
                self.made.push(dir.clone());
            }
        }
        let reported = format!("/{}", dir.strip_prefix(cgroup2_root()).unwrap().display());
        (dir, reported)
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// A pod's log directory in the kubelet's layout, removed when dropped (with
/// `/var/log/pods` itself if this made it).
struct PodLogDir {
    dir: PathBuf,
    made_parent: bool,
}

impl PodLogDir {
    fn create(namespace: &str, name: &str, uid: &str) -> Self {
        let parent = Path::new("/var/log/pods");
        let made_parent = !parent.exists();
        let dir = parent.join(format!("{namespace}_{name}_{uid}"));
        fs::create_dir_all(dir.join("app")).expect("creating the pod's log directory");
        Self { dir, made_parent }
    }
}

impl Drop for PodLogDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        if self.made_parent {
            let _ = fs::remove_dir("/var/log/pods");
        }
    }
}

/// A server that joins cgroup `join` (its directory), listens on `port`, then, if given,
/// moves to cgroup `then`; it accepts and closes connections until killed.
const SERVER: &str = r"
import os, socket, sys
join, port, then = sys.argv[1], int(sys.argv[2]), sys.argv[3]
open(join + '/cgroup.procs', 'w').write(str(os.getpid()))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', port))
s.listen()
if then:
    open(then + '/cgroup.procs', 'w').write(str(os.getpid()))
print('listening', flush=True)
while True:
    s.accept()[0].close()
";

fn serve(join: &Path, port: u16, then: Option<&Path>) -> Python {
    let then = then
        .map(|dir| dir.display().to_string())
        .unwrap_or_default();
    let mut server = Python::start(
        SERVER,
        &[&join.display().to_string(), &port.to_string(), &then],
    );
    assert_eq!(server.line(), "listening");
    server
}

/// A 64-hex container id, different for each `seed`.
fn container_id(seed: u8) -> String {
    format!("{:02x}", seed).repeat(32)
}

/// A pod uid unique to this run.
fn pod_uid(seed: u16) -> String {
    format!(
        "{:08x}-{seed:04x}-4000-8000-0000{:08x}",
        std::process::id(),
        std::process::id()
    )
}

/// The fields a report gives about who runs its listener.
fn workload_of(report: &Value) -> Value {
    json!({
        "cgroup": report["cgroup"],
        "unit": report["unit"],
        "container": report["container"],
        "pod": report["pod"],
    })
}

/// One shape of cgroup path, and what the daemon should report for a listener opened in it.
struct Shape {
    path: String,
    unit: Value,
    container: Value,
    pod: Value,
}

fn shapes() -> Vec<Shape> {
    let unit_name = format!("tracker-workloads-{}.service", std::process::id());
    let (named_uid, bare_uid) = (pod_uid(1), pod_uid(2));
    let container = |runtime: &str, seed| json!({"runtime": runtime, "id": container_id(seed)});
    vec![
        Shape {
            path: format!("system.slice/{unit_name}"),
            unit: json!(unit_name),
            container: Value::Null,
            pod: Value::Null,
        },
        Shape {
            path: format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
                named_uid.replace('-', "_"),
                container_id(1)
            ),
            unit: Value::Null,
            container: container("containerd", 1),
            pod: json!({"uid": named_uid, "qos": "burstable", "namespace": "shop", "name": "cart-7f9"}),
        },
        Shape {
            path: format!("kubepods/besteffort/pod{bare_uid}/{}", container_id(2)),
            unit: Value::Null,
            container: json!({"runtime": null, "id": container_id(2)}),
            pod: json!({"uid": bare_uid, "qos": "besteffort", "namespace": null, "name": null}),
        },
        Shape {
            path: format!("docker/{}", container_id(3)),
            unit: Value::Null,
            container: container("docker", 3),
            pod: Value::Null,
        },
        Shape {
            path: format!("machine.slice/libpod-{}.scope/container", container_id(4)),
            unit: Value::Null,
            container: container("podman", 4),
            pod: Value::Null,
        },
        Shape {
            path: format!("k8s.io/{}", container_id(5)),
            unit: Value::Null,
            container: container("containerd", 5),
            pod: Value::Null,
        },
        Shape {
            path: "somewhere/else".to_owned(),
            unit: Value::Null,
            container: Value::Null,
            pod: Value::Null,
        },
    ]
}

#[test]
fn listeners_in_cgroups_are_reported_under_their_unit_container_and_pod() {
    let mut tree = CgroupTree::new();
    let _pod_logs = PodLogDir::create("shop", "cart-7f9", &pod_uid(1));
    let shapes = shapes();
    let dirs: Vec<(PathBuf, String)> = shapes.iter().map(|shape| tree.make(&shape.path)).collect();
    let ports: Vec<u16> = shapes.iter().map(|_| free_port("127.0.0.1")).collect();
    // The first listener predates the daemon (found in the kernel's table, its cgroup read
    // from /proc); the others it sees open.
    let mut servers = vec![serve(&dirs[0].0, ports[0], None)];
    let mut args = vec!["--interval".to_owned(), "0.5".to_owned()];
    for port in &ports {
        args.extend(["--port".to_owned(), port.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = Daemon::start(&args);
    for ((dir, _), port) in dirs.iter().zip(&ports).skip(1) {
        servers.push(serve(dir, *port, None));
    }
    for ((shape, (_, cgroup)), port) in shapes.iter().zip(&dirs).zip(&ports) {
        let report = daemon.next_report(&format!("127.0.0.1:{port}"));
        assert_eq!(
            workload_of(&report),
            json!({
                "cgroup": cgroup,
                "unit": shape.unit,
                "container": shape.container,
                "pod": shape.pod,
            }),
            "{report}"
        );
    }
    drop(servers);
}

#[test]
fn a_listener_is_reported_under_the_cgroup_it_was_opened_in() {
    let mut tree = CgroupTree::new();
    let (opened_in, cgroup) = tree.make(&format!("docker/{}", container_id(9)));
    let (moved_to, _) = tree.make("system.slice/elsewhere.service");
    let port = free_port("127.0.0.1");
    let mut daemon = Daemon::start(&["--interval", "0.5", "--port", &port.to_string()]);
    // It moves on right after listen(), before the daemon (which collects events every 20 ms)
    // would read its /proc/<pid>/cgroup: the kernel's stamp at listen() says where it was.
    let server = serve(&opened_in, port, Some(&moved_to));
    let report = daemon.next_report(&format!("127.0.0.1:{port}"));
    assert_eq!(
        workload_of(&report),
        json!({
            "cgroup": cgroup,
            "unit": null,
            "container": {"runtime": "docker", "id": container_id(9)},
            "pod": null,
        }),
        "{report}"
    );
    drop(server);
}

/// A podman container, removed (at once, not after podman's 10 s grace) when dropped.
struct Container {
    id: String,
    /// Its root filesystem, and podman's storage for it.
    dir: PathBuf,
}

/// `podman` with storage of its own under `dir`: the vfs driver, as the VMs' `/var` is an
/// overlay that podman's overlay driver cannot stack on, and the cgroupfs manager, as no
/// systemd runs there.
fn podman(dir: &Path) -> Command {
    let mut command = Command::new("podman");
    command
        .arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
        .args(["--events-backend", "file"]);
    command
}

impl Container {
    /// busybox's `httpd` on 127.0.0.1:`port` in a container of its own network namespace,
    /// from a root filesystem in a directory (no image, no registry). runc rather than
    /// crun, which refuses a cgroup v1/v2 hybrid host; the ulimits podman would set by
    /// default exceed what this host grants.
    fn httpd(port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("tracker-podman-{}", std::process::id()));
        let rootfs = dir.join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::create_dir_all(rootfs.join("www")).unwrap();
        fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("copying busybox-static's /bin/busybox (`cargo xtask test` installs it)");
        fs::write(rootfs.join("www/index.html"), "ok\n").unwrap();
        let output = podman(&dir)
            .args(["run", "-d", "--runtime", "runc"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .args(["--network", "none", "--rootfs"])
            .arg(&rootfs)
            .args(["/bin/busybox", "httpd", "-f", "-h", "/www", "-p"])
            .arg(format!("127.0.0.1:{port}"))
            .output()
            .expect("running podman (`cargo xtask test` installs it)");
        assert!(
            output.status.success(),
            "podman run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let id = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        assert_eq!(id.len(), 64, "podman printed no container id: {id:?}");
        Self { id, dir }
    }

    /// The host's pid of its process.
    fn pid(&self) -> u32 {
        let output = podman(&self.dir)
            .args(["inspect", "-f", "{{.State.Pid}}", &self.id])
            .output()
            .expect("running podman inspect");
        let text = String::from_utf8_lossy(&output.stdout);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("no pid from podman inspect: {text:?}"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&self.dir)
            .args(["rm", "-f", "-t", "0", &self.id])
            .output();
        // vfs storage holds the container's files; podman unmounts them on removal.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The inode of process `pid`'s network namespace, as the daemon names listeners in it.
fn netns_of(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino()
}

#[test]
fn a_listener_in_a_podman_container_is_reported_under_the_container() {
    const REQUESTS: u64 = 3;
    let port = free_port("127.0.0.1");
    let mut daemon = Daemon::start(&["--interval", "0.5", "--port", &port.to_string()]);
    let container = Container::httpd(port);
    let pid = container.pid();
    // Named by its container, not by its network namespace, which is in a field of its own.
    let listener = format!("podman:{}/127.0.0.1:{port}", &container.id[..12]);
    let report = daemon.next_report(&listener);
    assert_eq!(report["netns"], netns_of(pid), "{report}");
    assert_eq!(
        report["container"],
        json!({"runtime": "podman", "id": container.id}),
        "{report}"
    );
    assert_eq!(report["pod"], Value::Null, "{report}");
    // Clients from inside the container's namespace (it has no other way in).
    for _ in 0..REQUESTS {
        let output = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "curl", "-sf"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .expect("running nsenter");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "ok\n",
            "curl in the container's namespace: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let closed = Cell::new(0);
    let reports = daemon.reports_until(&listener, |report| {
        closed.set(closed.get() + report["closed"].as_u64().unwrap());
        closed.get() >= REQUESTS
    });
    assert_eq!(
        (sum(&reports, "opened"), sum(&reports, "closed")),
        (REQUESTS as f64, REQUESTS as f64),
        "{reports:#?}"
    );
    for report in &reports {
        assert_eq!(report["container"]["id"], container.id.as_str(), "{report}");
    }
}
