//! Micro-benchmarks of the daemon's hot path: what each kernel event costs in the model and in
//! the observer that maps events onto it, and what a periodic report costs with a large
//! population of open connections.
//!
//! Throughput is given in elements so that criterion prints events (or connections) per second,
//! the figure to compare with the kernel's event rate under load.
//!
//! Run with `cargo bench -p tracker-user --bench model`; the settings below keep the whole run
//! well under two minutes on a two-core machine.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tracker::event::{Event, SockId};
use tracker::model::{ConnState, Nanos, Tracker};
use tracker::observer::{Applied, Observer};

/// Connections opened and closed per measured iteration of the lifecycle benchmarks. Large
/// enough that the tracker's map holds a realistic crowd while events arrive, small enough that
/// one iteration stays far below a sample's time budget.
const BATCH: usize = 1_000;

/// Open connections in the snapshot benchmark: the population a busy proxy host may carry.
const OPEN_FOR_SNAPSHOT: usize = 100_000;

/// Spacing of event timestamps: the values only need to increase, a microsecond is plausible.
const STEP: Nanos = 1_000;

/// The listener all benchmarked connections arrive on.
const LISTENER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 8080);

/// `count` distinct client addresses, spread over source IPs the way a load generator's are, so
/// the hash map sees varied keys rather than one IP with sequential ports.
fn client_addrs(count: usize) -> Vec<SocketAddr> {
    (0..count)
        .map(|n| {
            // 50_000 ports per source IP stays inside the u16 range and the ephemeral range.
            let ip = u32::from(Ipv4Addr::new(10, 0, 0, 1)) + (n / 50_000) as u32;
            let port = 10_000 + (n % 50_000) as u16;
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)
        })
        .collect()
}

/// New → Active → Idle → Closed for a batch of connections on one `Tracker<SocketAddr>`.
fn connection_lifecycle(c: &mut Criterion) {
    let keys = client_addrs(BATCH);
    let mut group = c.benchmark_group("model");
    group.throughput(Throughput::Elements((BATCH * 4) as u64));
    group.bench_function("connection_lifecycle", |b| {
        // One tracker for the whole run: every batch closes what it opened, so the map is
        // empty again after each iteration but keeps its capacity, as in the daemon's steady
        // state. The clock keeps running across iterations so timestamps only ever increase.
        let mut tracker = Tracker::<SocketAddr>::new(LISTENER.to_string());
        let mut now: Nanos = 0;
        b.iter(|| {
            // Phase by phase rather than connection by connection, so the whole batch is
            // open at once and the map holds a thousand entries while it is looked up.
            for state in [
                ConnState::New,
                ConnState::Active,
                ConnState::Idle,
                ConnState::Closed,
            ] {
                for &key in &keys {
                    now += STEP;
                    black_box(tracker.conn_state(black_box(key), now, state));
                }
            }
        });
        assert!(tracker.is_empty(), "every benchmarked connection closes");
    });
    group.finish();
}

/// The events of one batch through the observer: open, one request/response turn, close with
/// the turn's end, starting at `start`. Socket ids and remote addresses are reused across
/// batches, which is fine because each batch closes everything it opened (the kernel reuses
/// socket memory the same way).
fn observer_batch(remotes: &[SocketAddr], start: Nanos) -> Vec<Event> {
    let sock = |n: usize| 0xffff_0000_0000 + (n as SockId) * 64;
    let mut at = start;
    let mut tick = || {
        at += STEP;
        at
    };
    let mut events = Vec::with_capacity(remotes.len() * 3);
    for (n, &remote) in remotes.iter().enumerate() {
        events.push(Event::ConnOpen {
            netns: 0,
            sock: sock(n),
            local: LISTENER,
            remote,
            at: tick(),
            untracked: false,
        });
    }
    for n in 0..remotes.len() {
        events.push(Event::Turn {
            sock: sock(n),
            at: tick(),
            previous_end: None,
            protocol: Some(tracker_common::proto::Protocol::Http1),
            upgraded: false,
            tls_followed: false,
        });
    }
    for n in 0..remotes.len() {
        let turn_end = tick();
        events.push(Event::ConnClose {
            netns: 0,
            sock: sock(n),
            endpoints: None,
            at: tick(),
            turn_end: Some(turn_end),
        });
    }
    events
}

/// What the daemon does per kernel event: `Observer::apply` for open, turn and close.
fn observer_open_close(c: &mut Criterion) {
    let remotes = client_addrs(BATCH);
    let mut group = c.benchmark_group("observer");
    group.throughput(Throughput::Elements((BATCH * 3) as u64));
    group.bench_function("open_close", |b| {
        let mut observer = Observer::new(None);
        let up = Event::ListenerUp {
            netns: 0,
            sock: 1,
            addr: LISTENER,
            pid: 1,
            comm: "bench".into(),
            cgroup_id: 0,
            cgroup: None,
        };
        assert_eq!(observer.apply(&up), Applied::Done);
        let mut start: Nanos = 0;
        // Timed by hand: building the events and the periodic report are not the per-event
        // cost being measured, but the report must run between batches, because the observer
        // logs every closed connection until the next report and would otherwise grow without
        // bound over millions of iterations.
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            for _ in 0..iters {
                let events = observer_batch(&remotes, start);
                let began = Instant::now();
                for event in &events {
                    // The daemon branches on the result too; a rescan here would mean the
                    // benchmark measured the wrong path.
                    let applied = observer.apply(black_box(event));
                    assert_eq!(applied, Applied::Done);
                }
                measured += began.elapsed();
                start += (events.len() as Nanos + BATCH as Nanos) * STEP;
                black_box(observer.report(start));
            }
            measured
        });
        assert_eq!(
            observer.connections(),
            0,
            "every benchmarked connection closes"
        );
    });
    group.finish();
}

/// A reset snapshot of a tracker holding many open connections: the O(n) walk each report does.
fn snapshot_100k_open(c: &mut Criterion) {
    let mut tracker = Tracker::<SocketAddr>::new(LISTENER.to_string());
    let mut now: Nanos = 0;
    for (n, key) in client_addrs(OPEN_FOR_SNAPSHOT).into_iter().enumerate() {
        now += STEP;
        tracker.conn_state(key, now, ConnState::New);
        // Every other connection busy, so both branches of the per-connection accounting run.
        if n % 2 == 0 {
            tracker.conn_state(key, now, ConnState::Active);
        }
    }
    assert_eq!(tracker.len(), OPEN_FOR_SNAPSHOT);

    let mut group = c.benchmark_group("model");
    group.throughput(Throughput::Elements(OPEN_FOR_SNAPSHOT as u64));
    group.bench_function("snapshot_100k_open", |b| {
        b.iter_batched(
            || {
                // A new interval end each time, as successive reports would have.
                now += 1_000_000_000;
                now
            },
            |at| tracker.snapshot(at, true),
            // The snapshot is returned so criterion drops it outside the timed region.
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// Shorter than criterion's defaults (3 s warm-up, 5 s measurement, 100 samples) so the three
/// benchmarks plus their analysis finish well within two minutes on two cores; the spread at
/// these settings is still a few percent.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = connection_lifecycle, observer_open_close, snapshot_100k_open
}
criterion_main!(benches);
