//! Network namespaces: listeners with the same address in different namespaces are different
//! listeners, and a server inside a namespace reached from another over a veth pair counts
//! under its own namespace's listener.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::thread;
use std::time::Instant;

use crate::prometheus::{scrape_until, series_value};
use crate::support::{Daemon, free_port, patience};

/// Network namespaces made with `ip netns`, deleted when dropped.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn create(names: &[String]) -> Self {
        let namespaces = Self(names.to_vec());
        for name in names {
            ip(&["netns", "add", name]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
        }
        namespaces
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("running ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// Inode number of a named namespace.
fn netns_inode(name: &str) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/run/netns/{name}"))
        .unwrap()
        .ino()
}

/// Runs `work` on a thread that has entered namespace `name` (sockets it creates live there).
fn in_namespace<T: Send + 'static>(name: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/run/netns/{name}")).expect("opening the namespace");
    thread::spawn(move || {
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "setns"
        );
        work()
    })
    .join()
    .expect("namespace thread")
}

#[test]
fn same_address_in_two_namespaces_is_two_listeners_and_veth_traffic_counts_where_it_lands() {
    let tag = std::process::id() % 100_000;
    let (a, b) = (format!("trk-a-{tag}"), format!("trk-b-{tag}"));
    let _namespaces = Namespaces::create(&[a.clone(), b.clone()]);
    // A veth pair between the two namespaces, on addresses of our own.
    let (veth_a, veth_b) = (format!("ta{tag}"), format!("tb{tag}"));
    ip(&[
        "link", "add", &veth_a, "netns", &a, "type", "veth", "peer", "name", &veth_b, "netns", &b,
    ]);
    ip(&["-n", &a, "addr", "add", "10.213.0.1/24", "dev", &veth_a]);
    ip(&["-n", &b, "addr", "add", "10.213.0.2/24", "dev", &veth_b]);
    ip(&["-n", &a, "link", "set", &veth_a, "up"]);
    ip(&["-n", &b, "link", "set", &veth_b, "up"]);

    let port = free_port("127.0.0.1");
    let mut daemon = Daemon::start(&["--interval", "0.5", "--port", &port.to_string()]);

    // 127.0.0.1:port in the daemon's namespace and in namespace a; 10.213.0.1:port in a.
    let root_listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (loop_a, veth_listener) = in_namespace(&a, move || {
        (
            TcpListener::bind(("127.0.0.1", port)).unwrap(),
            TcpListener::bind(("10.213.0.1", port)).unwrap(),
        )
    });
    let root_client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Two clients inside a on its loopback, one from b over the veth pair.
    let a_clients = in_namespace(&a, move || {
        [
            TcpStream::connect(("127.0.0.1", port)).unwrap(),
            TcpStream::connect(("127.0.0.1", port)).unwrap(),
        ]
    });
    let veth_target: SocketAddr = format!("10.213.0.1:{port}").parse().unwrap();
    let b_client = in_namespace(&b, move || TcpStream::connect(veth_target).unwrap());
    // Accepted, so that they count where lives start at the accept.
    let accept = |listener: &TcpListener| listener.accept().unwrap().0;
    let servers = [
        accept(&root_listener),
        accept(&loop_a),
        accept(&loop_a),
        accept(&veth_listener),
    ];

    let inode_a = netns_inode(&a);
    let root_name = format!("127.0.0.1:{port}");
    let a_name = format!("netns:{inode_a}/127.0.0.1:{port}");
    let veth_name = format!("netns:{inode_a}/10.213.0.1:{port}");
    let root = daemon.reports_until(&root_name, |report| report["curr"] == 1);
    assert_eq!(root.last().unwrap()["netns"], serde_json::Value::Null);
    let in_a = daemon.reports_until(&a_name, |report| report["curr"] == 2);
    assert_eq!(in_a.last().unwrap()["netns"], inode_a);
    let over_veth = daemon.reports_until(&veth_name, |report| report["curr"] == 1);
    for report in root.iter().chain(&in_a).chain(&over_veth) {
        assert_eq!(report["errs"], 0, "{report}");
    }
    drop((
        servers,
        root_client,
        a_clients,
        b_client,
        root_listener,
        loop_a,
        veth_listener,
    ));
}

#[test]
fn same_address_in_two_namespaces_is_two_sets_of_prometheus_series() {
    let tag = std::process::id() % 100_000;
    let name = format!("trk-p-{tag}");
    let _namespace = Namespaces::create(std::slice::from_ref(&name));
    let port = free_port("127.0.0.1");
    let metrics_port = free_port("127.0.0.1");
    let _daemon = Daemon::start(&[
        "--interval",
        "0.5",
        "--port",
        &port.to_string(),
        "--prometheus",
        &format!("127.0.0.1:{metrics_port}"),
    ]);

    // One client on 127.0.0.1:port here, two on the same address in the namespace.
    let root_listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let root_client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let in_namespace_sockets = in_namespace(&name, move || {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let clients = [
            TcpStream::connect(("127.0.0.1", port)).unwrap(),
            TcpStream::connect(("127.0.0.1", port)).unwrap(),
        ];
        let servers = [listener.accept().unwrap().0, listener.accept().unwrap().0];
        (listener, clients, servers)
    });
    let root_server = root_listener.accept().unwrap().0;

    let root_name = format!("127.0.0.1:{port}");
    let namespaced_name = format!("netns:{}/127.0.0.1:{port}", netns_inode(&name));
    let scrape = scrape_until(metrics_port, |body| {
        series_value(body, "tracker_connections", &root_name).as_deref() == Some("1")
            && series_value(body, "tracker_connections", &namespaced_name).as_deref() == Some("2")
    });
    for (listener, opened) in [(&root_name, "1"), (&namespaced_name, "2")] {
        assert_eq!(
            series_value(&scrape, "tracker_connections_opened_total", listener).as_deref(),
            Some(opened),
            "{listener}:\n{scrape}"
        );
        assert_eq!(
            series_value(&scrape, "tracker_listener_up", listener).as_deref(),
            Some("1"),
            "{listener}:\n{scrape}"
        );
    }
    drop((
        root_client,
        root_server,
        root_listener,
        in_namespace_sockets,
    ));
}

/// The daemon samples accept queues from its own namespace's table: a listener elsewhere has
/// no known queue, which is null rather than a made-up 0, while the same state here is
/// counted.
#[test]
fn a_listener_in_another_namespace_has_an_unknown_accept_queue() {
    const WAITING: usize = 2;
    let tag = std::process::id() % 100_000;
    let name = format!("trk-q-{tag}");
    let _namespace = Namespaces::create(std::slice::from_ref(&name));
    let port = free_port("127.0.0.1");
    let mut daemon = Daemon::start(&["--interval", "0.5", "--port", &port.to_string()]);

    // Two connections waiting, never accepted, on 127.0.0.1:port here and in the namespace.
    let root_listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let root_clients: Vec<TcpStream> = (0..WAITING)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let in_namespace_sockets = in_namespace(&name, move || {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let clients: Vec<TcpStream> = (0..WAITING)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        (listener, clients)
    });

    let root_name = format!("127.0.0.1:{port}");
    let namespaced_name = format!("netns:{}/127.0.0.1:{port}", netns_inode(&name));
    let root = daemon.reports_until(&root_name, |report| report["accept_queue"] == WAITING);
    assert!(root.last().unwrap()["accept_backlog"].is_u64(), "{root:?}");
    // Where lives start at the handshake the waiting connections open; where they start at the
    // accept (an accept hook serves) they never do, and two reports of the listener suffice.
    let deadline = Instant::now() + patience();
    let mut namespaced = Vec::new();
    loop {
        let report = daemon.next_report(&namespaced_name);
        let lives_from_accept = report["life_from"] == "accept";
        namespaced.push(report);
        if crate::support::sum(&namespaced, "opened") >= WAITING as f64
            || (lives_from_accept && namespaced.len() >= 2)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the namespaced listener's waiting connections did not open within {:?}: {namespaced:#?}",
            patience()
        );
    }
    for report in &namespaced {
        for field in ["accept_queue", "accept_queue_peak", "accept_backlog"] {
            assert_eq!(report[field], serde_json::Value::Null, "{field}: {report}");
        }
    }
    drop((root_clients, root_listener, in_namespace_sockets));
}
