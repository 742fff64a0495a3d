//! The daemon on a kernel that cannot answer TCP `sock_diag` (the `tcp_diag` module not
//! loaded and not loadable): it warns, reads `/proc/net/tcp` instead, and loses only the
//! listen backlog.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::process::Command;

use tracker::host::tcp_table::{TableSource, TcpTable};

use crate::support::{Daemon, connect_many, max, note_for_this_kernel, sum};

const MODPROBE: &str = "/proc/sys/kernel/modprobe";

/// While alive, the kernel cannot load modules on demand and `tcp_diag` is unloaded; the
/// kernel's module loader is restored on drop, so later tests get `tcp_diag` back on demand.
struct ModulesUnloadable {
    modprobe: Option<String>,
    unloaded_tcp_diag: bool,
}

impl ModulesUnloadable {
    fn new() -> Self {
        // Without module support there is no loader to turn off.
        let modprobe = fs::read_to_string(MODPROBE).ok();
        if modprobe.is_some() {
            fs::write(MODPROBE, "/bin/false").expect("turning off on-demand module loading");
        }
        let mut guard = Self {
            modprobe,
            unloaded_tcp_diag: false,
        };
        let loaded = fs::read_to_string("/proc/modules").unwrap_or_default();
        if loaded.lines().any(|line| line.starts_with("tcp_diag ")) {
            let status = Command::new("rmmod")
                .arg("tcp_diag")
                .status()
                .expect("running rmmod");
            assert!(status.success(), "rmmod tcp_diag: {status}");
            guard.unloaded_tcp_diag = true;
        }
        guard
    }
}

impl Drop for ModulesUnloadable {
    fn drop(&mut self) {
        if let Some(modprobe) = &self.modprobe {
            fs::write(MODPROBE, modprobe.trim()).expect("restoring on-demand module loading");
        }
    }
}

#[test]
fn without_tcp_sock_diag_the_daemon_reads_proc_net_tcp_and_loses_only_the_backlog() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let name = addr.to_string();
    let port = addr.port().to_string();
    // Open before the daemon starts: only the kernel's table can tell the daemon about them.
    let mut conns = connect_many(&listener, addr, 3);
    let waiting = TcpStream::connect(addr).unwrap();

    let modules = ModulesUnloadable::new();
    let sock_diag_gone = TcpTable::open(TableSource::SockDiag).is_err();
    let mut daemon = if sock_diag_gone {
        let daemon = Daemon::start(&["--interval", "0.5", "--port", &port]);
        assert!(
            daemon.has_logged("reading /proc/net/tcp instead"),
            "no warning: {:?}",
            daemon.log()
        );
        daemon
    } else {
        assert!(
            !modules.unloaded_tcp_diag,
            "tcp_diag was unloaded and cannot be loaded again, yet sock_diag answers"
        );
        note_for_this_kernel(
            "tcp_diag is built into this kernel, so sock_diag cannot be taken away; the \
             daemon is made to read /proc/net/tcp instead (the fallback's warning is checked \
             on the VM kernels, which ship tcp_diag as a module)",
        );
        Daemon::start(&[
            "--interval",
            "0.5",
            "--port",
            &port,
            "--tcp-table",
            "proc-net",
        ])
    };
    assert!(
        daemon.has_logged("reading the TCP table from /proc/net/tcp"),
        "{:?}",
        daemon.log()
    );

    let first = daemon.next_report(&name);
    assert_eq!(first["curr"], 4, "adopted from the table: {first}");
    assert_eq!(
        first["pid"],
        std::process::id(),
        "owner from the table: {first}"
    );
    assert_eq!(first["accept_queue"], 1, "{first}");
    assert!(first["accept_backlog"].is_null(), "{first}");

    for conn in conns.drain(..2) {
        conn.close();
    }
    let reports = daemon.reports_until(&name, |report| report["curr"] == 2);
    assert_eq!(sum(&reports, "closed"), 2.0, "{reports:#?}");
    assert_eq!(max(&reports, "errs"), 0, "{reports:#?}");
    drop(modules);
    drop((conns, waiting));
}
