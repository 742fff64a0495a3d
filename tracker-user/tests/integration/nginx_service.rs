//! nginx as its service runs it: in its default daemon mode, where the process that opens the
//! listening sockets forks the master and exits, reloaded with `HUP` and upgraded in place
//! with `USR2` then `QUIT`, as operators do.

use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{nginx_config, patience};

/// The binary by its full path: a binary upgrade executes the master's `argv[0]` again.
const NGINX: &str = "/usr/sbin/nginx";

/// A daemonised nginx with its pid file, logs and temporary files in a directory of its own.
/// Every master it had (an upgrade adds one) is stopped when dropped, and the directory
/// removed.
pub struct NginxService {
    dir: PathBuf,
    workers: u32,
    /// The process that ran `nginx`: it called `listen()`, then exited once the master forked.
    pub launcher: u32,
    /// Every master seen, the current one last.
    masters: Vec<u32>,
}

impl NginxService {
    /// Starts nginx with `workers` workers and the `server { ... }` blocks in `servers`, and
    /// waits until its master and all its workers run and every port in `ports` accepts
    /// connections.
    pub fn start(servers: &str, workers: u32, ports: &[u16]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tracker-nginx-service-{}-{}",
            std::process::id(),
            ports.first().copied().unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("creating the nginx directory");
        std::fs::write(
            dir.join("nginx.conf"),
            nginx_config(&dir, workers, "", servers),
        )
        .expect("writing nginx.conf");
        let mut launcher = Command::new(NGINX)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .spawn()
            .expect("starting nginx (is nginx-light installed? `cargo xtask test` installs it)");
        let mut nginx = Self {
            dir,
            workers,
            launcher: launcher.id(),
            masters: Vec::new(),
        };
        let status = launcher.wait().expect("waiting for nginx to daemonise");
        assert!(status.success(), "nginx exited {status}:\n{}", nginx.log());
        let master = nginx.wait_for_pid_file("nginx.pid", None);
        nginx.masters.push(master);
        nginx.wait_for_workers(master, &[]);
        for &port in ports {
            let deadline = Instant::now() + patience();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "nginx did not listen on {port}:\n{}",
                    nginx.log()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        nginx
    }

    /// The master serving now.
    pub fn master(&self) -> u32 {
        *self.masters.last().expect("a master")
    }

    /// The running workers of `master` (with, during an upgrade, the new master it forked).
    pub fn workers(&self, master: u32) -> Vec<u32> {
        children(master)
    }

    /// Reloads the configuration (`HUP`): the master starts new workers and the old ones
    /// exit. Returns once every old worker has exited and the new ones run.
    pub fn reload(&self) {
        let master = self.master();
        let old = self.workers(master);
        send(master, libc::SIGHUP);
        self.wait_for_workers(master, &old);
        wait_until_exited(&old, "the old workers after a reload");
    }

    /// Starts a binary upgrade (`USR2`): the master renames its pid file `nginx.pid.oldbin` and
    /// runs the binary again, which inherits the listening sockets. Returns the new master once
    /// it and its workers run, beside the old ones.
    pub fn start_upgrade(&mut self) -> u32 {
        let old = self.master();
        send(old, libc::SIGUSR2);
        assert_eq!(self.wait_for_pid_file("nginx.pid.oldbin", None), old);
        let new = self.wait_for_pid_file("nginx.pid", Some(old));
        self.masters.push(new);
        self.wait_for_workers(new, &[]);
        new
    }

    /// Ends a binary upgrade: the old master stops gracefully (`QUIT`). Returns once it and its
    /// workers have exited.
    pub fn finish_upgrade(&self, old: u32) {
        // The new master is a child of the old one too.
        let workers: Vec<u32> = self
            .workers(old)
            .into_iter()
            .filter(|pid| !self.masters.contains(pid))
            .collect();
        send(old, libc::SIGQUIT);
        wait_until_exited(&workers, "the old workers after QUIT");
        wait_until_exited(&[old], "the old master after QUIT");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// The pid in the pid file `name` once it holds a running process other than `not`.
    fn wait_for_pid_file(&self, name: &str, not: Option<u32>) -> u32 {
        let deadline = Instant::now() + patience();
        loop {
            let pid = std::fs::read_to_string(self.dir.join(name))
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
                .filter(|&pid| Some(pid) != not && alive(pid));
            if let Some(pid) = pid {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no new nginx master in {name} within {:?}:\n{}",
                patience(),
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `master` runs all its workers, none of them in `old`.
    fn wait_for_workers(&self, master: u32, old: &[u32]) {
        let deadline = Instant::now() + patience();
        loop {
            let new = children(master)
                .into_iter()
                .filter(|pid| !old.contains(pid))
                .count();
            if new == self.workers as usize {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx master {master} has {new} new worker(s) of {} within {:?}:\n{}",
                self.workers,
                patience(),
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NginxService {
    fn drop(&mut self) {
        // Masters this test started, still running the configuration in its directory (never
        // another process that reused a pid).
        let config = self.dir.join("nginx.conf").display().to_string();
        let in_pid_files = ["nginx.pid", "nginx.pid.oldbin"].map(|name| {
            std::fs::read_to_string(self.dir.join(name))
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
        });
        let mut ours: Vec<u32> = self
            .masters
            .iter()
            .copied()
            .chain(in_pid_files.into_iter().flatten())
            .filter(|&pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&config))
            })
            .collect();
        ours.sort_unstable();
        ours.dedup();
        let workers: Vec<u32> = ours.iter().flat_map(|&master| children(master)).collect();
        for &master in &ours {
            send(master, libc::SIGTERM);
        }
        let deadline = Instant::now() + patience();
        while ours.iter().chain(&workers).any(|&pid| alive(pid)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        for &pid in ours.iter().chain(&workers) {
            if alive(pid) {
                send(pid, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The state letter and parent of process `pid`, from `/proc/<pid>/stat` (the command name
/// before them may hold spaces and parentheses).
fn state_and_parent(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.to_owned();
    Some((state, fields.next()?.parse().ok()?))
}

/// Whether `pid` runs (exists and is not a zombie: a daemon's exited processes may wait for a
/// reaper that never comes).
pub fn alive(pid: u32) -> bool {
    state_and_parent(pid).is_some_and(|(state, _)| state != "Z" && state != "X")
}

/// The running children of `parent`.
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            state_and_parent(pid).is_some_and(|(state, ppid)| ppid == parent && state != "Z")
        })
        .collect()
}

fn wait_until_exited(pids: &[u32], what: &str) {
    let deadline = Instant::now() + patience();
    while pids.iter().any(|&pid| alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "{what} ({pids:?}) still run after {:?}",
            patience()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn send(pid: u32, signal: i32) {
    let pid = i32::try_from(pid).expect("pid fits in pid_t");
    // SAFETY: signalling an nginx process this test started.
    unsafe { libc::kill(pid, signal) };
}
