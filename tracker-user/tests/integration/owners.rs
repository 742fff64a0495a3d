//! The owners of a listener are the processes that hold it now, and TLS is followed through
//! them: nginx as its service runs it (daemon mode, several workers, TLS with HTTP/2 by ALPN)
//! started after the daemon, upgraded in place, and reloaded.

use std::cell::Cell;
use std::collections::BTreeSet;

use serde_json::Value;

use crate::nginx_service::{NginxService, alive};
use crate::support::{Daemon, free_port, run_client, sum};
use crate::tls::{Certificate, assert_followed, wait_for_tls};

const INTERVAL: &str = "0.5";
const WORKERS: u32 = 4;
/// Requests (each on a connection of its own) per phase of a test.
const REQUESTS: u64 = 3;

/// nginx in daemon mode terminating TLS with HTTP/2 on `port`, answering every request itself.
fn nginx_service(certificate: &Certificate, port: u16) -> NginxService {
    NginxService::start(
        &format!(
            "server {{ listen 127.0.0.1:{port} ssl http2;
                ssl_certificate {}; ssl_certificate_key {};
                location / {{ return 200 \"ok\\n\"; }} }}",
            certificate.cert(),
            certificate.key(),
        ),
        WORKERS,
        &[port],
    )
}

/// [`REQUESTS`] HTTP/2 requests over TLS, one `curl` (one connection) each, then the reports
/// until they have closed: every session counted, none unknown, the library named throughout.
fn requests_are_counted_exactly(daemon: &mut Daemon, port: u16, phase: &str) -> Vec<Value> {
    for _ in 0..REQUESTS {
        let version = run_client(
            "curl",
            &[
                "-sk",
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version}",
                &format!("https://127.0.0.1:{port}/"),
            ],
        );
        assert_eq!(version, "2", "{phase}: curl did not speak HTTP/2");
    }
    let closed = Cell::new(0);
    let reports = daemon.reports_until(&format!("127.0.0.1:{port}"), |report| {
        closed.set(closed.get() + report["closed"].as_u64().unwrap());
        closed.get() >= REQUESTS && report["curr"] == 0
    });
    assert_followed(daemon, &reports);
    assert_eq!(
        sum(&reports, "sessions"),
        REQUESTS as f64,
        "{phase}: {reports:#?}"
    );
    for report in &reports {
        assert!(
            report["tls_library"]
                .as_str()
                .is_some_and(|library| library.contains("libssl.so")),
            "{phase}: TLS library not followed: {report}"
        );
    }
    reports
}

fn owner_pids(report: &Value) -> BTreeSet<u32> {
    report["owners"]
        .as_array()
        .expect("owners is an array")
        .iter()
        .map(|owner| u32::try_from(owner["pid"].as_u64().expect("an owner's pid")).unwrap())
        .collect()
}

/// The processes of `nginx` that hold its listener now: the master and its workers.
fn holders(nginx: &NginxService) -> BTreeSet<u32> {
    let master = nginx.master();
    let mut pids: BTreeSet<u32> = nginx.workers(master).into_iter().collect();
    pids.insert(master);
    pids
}

/// Waits for a report of the listener on `port` whose owners are exactly `expected`.
fn wait_for_owners(daemon: &mut Daemon, port: u16, expected: &BTreeSet<u32>) {
    let reports = daemon.reports_until(&format!("127.0.0.1:{port}"), |report| {
        owner_pids(report) == *expected
    });
    let last = reports.last().expect("a report");
    assert!(
        owner_pids(last).iter().all(|&pid| alive(pid)),
        "owners that no longer run: {last}"
    );
}

/// nginx started as its service starts it, after the daemon: the process that called
/// `listen()` exits once it has forked the master, so the listener's owners must be found
/// again among the processes holding the socket for its TLS library to be followed.
#[test]
fn nginx_daemonised_after_the_daemon_has_its_tls_followed() {
    let certificate = Certificate::new("service");
    let port = free_port("127.0.0.1");
    let mut daemon = Daemon::start(&["--interval", INTERVAL, "--port", &port.to_string()]);
    let nginx = nginx_service(&certificate, port);
    assert!(!alive(nginx.launcher), "the launcher has exited");
    wait_for_owners(&mut daemon, port, &holders(&nginx));
    let _ = wait_for_tls(&mut daemon, port);

    let reports = requests_are_counted_exactly(&mut daemon, port, "after start");

    for report in &reports {
        assert_eq!(owner_pids(report), holders(&nginx), "{report}");
    }
    assert!(
        !daemon.has_logged("through a TLS library tracker does not hook"),
        "{}",
        daemon.log_until_now()
    );
}

/// nginx's binary upgrade under a running daemon: `USR2` starts a new master, which inherits
/// the listening socket and forks its workers beside the old ones, then `QUIT` stops the old
/// master and its workers. The TLS library stays followed throughout, through whichever
/// processes hold the socket.
#[test]
fn nginx_binary_upgrade_keeps_tls_followed() {
    let certificate = Certificate::new("upgrade");
    let port = free_port("127.0.0.1");
    let mut nginx = nginx_service(&certificate, port);
    let mut daemon = Daemon::start(&["--interval", INTERVAL, "--port", &port.to_string()]);
    let _ = wait_for_tls(&mut daemon, port);
    requests_are_counted_exactly(&mut daemon, port, "before the upgrade");

    let old = nginx.master();
    let new = nginx.start_upgrade();
    requests_are_counted_exactly(&mut daemon, port, "during the upgrade");

    nginx.finish_upgrade(old);
    assert_eq!(nginx.master(), new);
    wait_for_owners(&mut daemon, port, &holders(&nginx));
    requests_are_counted_exactly(&mut daemon, port, "after the upgrade");

    let log = daemon.log_until_now();
    assert!(!log.contains("no longer following TLS plaintext"), "{log}");
    assert!(
        !log.contains("through a TLS library tracker does not hook"),
        "{log}"
    );
}

/// nginx's reload (`HUP`): new workers replace the old ones, which exit; the owners follow.
#[test]
fn nginx_reload_replaces_the_owners_and_keeps_tls_followed() {
    let certificate = Certificate::new("reload");
    let port = free_port("127.0.0.1");
    let nginx = nginx_service(&certificate, port);
    let mut daemon = Daemon::start(&["--interval", INTERVAL, "--port", &port.to_string()]);
    let before = holders(&nginx);
    wait_for_owners(&mut daemon, port, &before);
    let _ = wait_for_tls(&mut daemon, port);

    nginx.reload();
    let after = holders(&nginx);
    assert_eq!(
        before.intersection(&after).count(),
        1,
        "only the master stays: {before:?} then {after:?}"
    );
    wait_for_owners(&mut daemon, port, &after);
    requests_are_counted_exactly(&mut daemon, port, "after the reload");
}
