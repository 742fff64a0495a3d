//! Owners follow the processes that hold a listener's sockets.

use std::collections::BTreeMap;

use super::{addr, up};
use crate::observer::{Observer, Owner, OwnersCheck};
use crate::tracker_id::TrackerId;

fn owner(pid: u32) -> Owner {
    Owner {
        pid,
        comm: "nginx".into(),
        cmdline: format!("nginx: process {pid}"),
    }
}

fn owner_pids(observer: &Observer) -> Vec<u32> {
    observer.listener_owner_pids().into_iter().collect()
}

#[test]
fn exited_owners_are_replaced_by_the_holders_found_or_dropped() {
    let mut observer = Observer::new(None);
    // The process that called listen() (pid 7), which then exits.
    let _ = observer.apply(&up(1, "127.0.0.1:8443"));
    observer.add_scanned_listener(addr("127.0.0.1:9443"), &[owner(20), owner(21)]);
    let settled = OwnersCheck {
        listening: true,
        ..OwnersCheck::default()
    };
    assert_eq!(observer.owners_check(|_| true), settled);
    let pid_7_exited = observer.owners_check(|pid| pid != 7);
    assert!(pid_7_exited.exited && pid_7_exited.ownerless);

    // Its master (30) and workers (31, 32) hold the socket now; on the other listener, worker
    // 21 exited and no holder was found.
    let holders = BTreeMap::from([(
        TrackerId::listen(0, addr("127.0.0.1:8443")),
        vec![owner(30), owner(31), owner(32)],
    )]);
    let alive = |pid: u32| pid != 7 && pid != 21;
    observer.refresh_owners(&holders, alive);
    assert_eq!(owner_pids(&observer), vec![20, 30, 31, 32]);
    assert_eq!(observer.owners_check(alive), settled);
    let report = observer.report(1);
    assert_eq!(report[0].owners, vec![owner(30), owner(31), owner(32)]);

    // A holder list that is empty (the socket was not found) leaves the running owners.
    let empty = BTreeMap::from([(TrackerId::listen(0, addr("127.0.0.1:8443")), vec![])]);
    observer.refresh_owners(&empty, |pid| pid != 31);
    assert_eq!(owner_pids(&observer), vec![20, 30, 32]);
}
