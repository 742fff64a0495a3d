//! The daemon's event loop: attach, then apply kernel events to the [`Observer`] as they come
//! and print a report every interval, until the shutdown future resolves.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::time::{Instant, MissedTickBehavior};

use crate::event::Event;
use crate::host::procfs;
use crate::host::tcp_table::{HeldConnections, TableSource, TcpTable};
use crate::host::time_wait::HandoverWatch;
use crate::host::workload::Workloads;
use crate::kernel::bpf::{self, EventRing, KernelLog, LossCounters, ProbeOptions, Probes};
use crate::kernel::hooks::Capability;
use crate::kernel::tls::TlsLibraries;
use crate::model::Nanos;
use crate::observer::{Applied, Observer, TurnLeftOpen};
use crate::sink::{Flow, IntervalTotals, ReportBatch, ReportSink};
use crate::tracker_id::TrackerId;

/// How often the daemon collects events that the kernel queued without waking it. Short
/// enough that the ring (millions of bytes) cannot fill in between at any rate this host
/// reaches, long enough that the daemon sleeps almost all the time.
const COLLECT_EVERY: Duration = Duration::from_millis(20);

/// The accept queues are sampled every this many collection ticks (every 100 ms), for the
/// interval's peak.
const ACCEPT_QUEUE_SAMPLE_TICKS: u64 = 5;

/// Without a sign of trouble from the kernel (lost or undecodable events, connections it
/// could not track), the model is compared with the kernel's table at a report at most this
/// often. A dump walks the kernel's whole connection hash table, TIME_WAIT entries included
/// (hundreds of thousands on a host with connection churn), so doing it every second cost
/// more than all event handling on a busy server; events are exact unless lost, and a loss
/// triggers the comparison at the very next report.
const RECONCILE_EVERY: Duration = Duration::from_secs(10);

/// When no owner has exited, the processes holding the listening sockets are looked up again
/// at most this often, for those that started holding one meanwhile (a binary upgrade's new
/// master while the old one still runs). The look-up reads every process's open files: about
/// 130 ms for 2,000 processes of 23 files each, on two cores busy with other work.
const OWNERS_LOOKUP_EVERY: Duration = Duration::from_secs(60);

/// How often, at most, they are looked up while a listener has no running owner (a socket no
/// process holds any more, or one in another network namespace, whose table the daemon does
/// not read).
const OWNERLESS_LOOKUP_EVERY: Duration = Duration::from_secs(10);

/// What the daemon was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub interval: Duration,
    pub duration: Option<Duration>,
    /// Where the kernel's table of TCP sockets is read from.
    pub tcp_table: TableSource,
    /// What is loaded and attached, and how (ports, sessions, hooks, sizes).
    pub probes: ProbeOptions,
}

/// Runs until `shutdown` resolves or `options.duration` elapses, then prints a final report.
/// Everything attached is detached when this returns, on success and on error alike.
pub async fn run(
    options: Options,
    shutdown: impl Future<Output = ()>,
    sink: &mut dyn ReportSink,
) -> anyhow::Result<()> {
    let (probes, mut ring, mut kernel_log) = bpf::load_and_attach(&options.probes)?;
    // Loading parsed the kernel's BTF (megabytes of type names), the daemon's largest
    // allocation, now freed: give it back rather than keep it resident for the daemon's life.
    release_free_memory();

    let mut state = State::start(&options, probes)?;

    // The kernel wakes us only when the ring fills up past a threshold (see
    // `Config::wakeup_bytes`); otherwise events are collected in batches on this timer.
    let mut collect = tokio::time::interval(COLLECT_EVERY);
    collect.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The report clock and `--duration` count from one instant, so that a duration that is a
    // whole number of intervals ends on a tick rather than a fraction of a millisecond after it.
    let started = Instant::now();
    let mut ticker = tokio::time::interval_at(started + options.interval, options.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let end = options.duration.map(|duration| started + duration);
    let deadline = async {
        match end {
            Some(end) => tokio::time::sleep_until(end).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(shutdown, deadline);

    loop {
        tokio::select! {
            readable = ring.readable_mut() => {
                let mut guard = readable.context("waiting for kernel events")?;
                state.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = collect.tick() => {
                state.drain(ring.get_mut());
                state.collected += 1;
                if state.collected.is_multiple_of(ACCEPT_QUEUE_SAMPLE_TICKS) {
                    state.sample_accept_queues()?;
                }
            }
            _ = ticker.tick() => {
                // The tick at the end of `--duration` is the final report, not one more before
                // it: the deadline, due at the same instant, may be polled after it.
                if end.is_some_and(|end| Instant::now() >= end) {
                    break;
                }
                if state.report(&mut ring, sink)? == Flow::Stop {
                    state.log_totals();
                    return sink.finish();
                }
            }
            readable = kernel_log_readable(&mut kernel_log) => {
                let mut guard = readable.context("waiting for eBPF log messages")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            () = &mut shutdown => break,
            () = &mut deadline => break,
        }
    }
    state.report(&mut ring, sink)?;
    state.log_totals();
    sink.finish()
}

struct State {
    observer: Observer,
    probes: Probes,
    /// Loss counters as of the last report.
    losses: LossCounters,
    decode_errors: u64,
    last_report: Nanos,
    /// Kernel events handled since start (for cost-per-event figures).
    events: u64,
    /// The kernel's table of TCP sockets.
    table: TcpTable,
    /// ListenOverflows and ListenDrops as of the last report.
    listen_counters: (u64, u64),
    /// The observer's count of unattributed closes as of the last report.
    unattributed: u64,
    /// Collection timer ticks, to sample the accept queues every few of them.
    collected: u64,
    /// When the model was last compared with the kernel's table, and the trouble counters
    /// (losses, decode errors) as of then.
    last_reconcile: (Nanos, LossCounters, u64),
    /// The TLS libraries hooked for the listeners' owners.
    tls: TlsLibraries,
    /// When the holders of the listening sockets were last looked up.
    last_owner_lookup: Nanos,
    /// Closing phases the kernel handed on to time-wait sockets, followed to their end.
    handovers: HandoverWatch,
    /// The listeners' cgroups and who runs in them.
    workloads: Workloads,
}

impl State {
    /// The daemon's state once attached: the listeners and connections the kernel already
    /// has are known.
    fn start(options: &Options, probes: Probes) -> anyhow::Result<Self> {
        // Called after attaching: a listener opened in between is then seen by both the scan
        // and the programs, never by neither.
        let mut state = Self {
            observer: Observer::new(options.probes.ports.clone())
                .with_connect_targets(&options.probes.connect)
                .with_own_netns(procfs::own_netns().unwrap_or(0))
                .with_life_start(probes.hooks.life_start()),
            probes,
            losses: LossCounters::default(),
            decode_errors: 0,
            last_report: monotonic_now(),
            events: 0,
            table: TcpTable::open(options.tcp_table)?,
            listen_counters: procfs::listen_counters().unwrap_or_default(),
            unattributed: 0,
            collected: 0,
            last_reconcile: (monotonic_now(), LossCounters::default(), 0),
            tls: TlsLibraries::default(),
            last_owner_lookup: monotonic_now(),
            handovers: HandoverWatch::default(),
            workloads: Workloads::default(),
        };
        // Only `sock_diag` lists time-wait sockets with their timers; elsewhere the closing
        // phase ends when the full socket does.
        if state.table.sock_diag().is_some()
            && !state
                .probes
                .follow_time_wait(procfs::own_netns().unwrap_or(0))?
        {
            log::debug!(
                "sock.sk_flags not found in the kernel's BTF: closing phases end when the \
                 kernel hands a socket to a time-wait socket in FIN_WAIT2"
            );
        }
        state.rescan_listeners()?;
        state.adopt_existing_connections()?;
        state.sync_tls()?;
        // Two lines, each short enough to read; the hooks' line comes last, once the daemon
        // watches everything it will report on.
        log::info!(
            "watching {} listener(s){}; reading the TCP table from {}",
            state.observer.listener_addrs().count(),
            options
                .probes
                .ports
                .as_ref()
                .map_or_else(String::new, |ports| format!(
                    " on port(s) {}",
                    crate::log_pipe::few(ports.iter())
                )),
            state.table.source(),
        );
        log::info!("attached to {}", state.probes.hooks.describe());
        Ok(state)
    }

    /// Looks up which processes hold the listening sockets now when an owner has exited (the
    /// process that called `listen()` in a server that daemonises, the old workers of a
    /// reload, the old master of a binary upgrade: their sockets live on in other processes),
    /// or when the last look-up is old (see [`OWNERS_LOOKUP_EVERY`]).
    fn refresh_owners(&mut self) -> anyhow::Result<()> {
        let now = monotonic_now();
        let check = self.observer.owners_check(procfs::process_alive);
        let every = if check.ownerless {
            OWNERLESS_LOOKUP_EVERY
        } else {
            OWNERS_LOOKUP_EVERY
        };
        let due = now.saturating_sub(self.last_owner_lookup) >= every.as_nanos() as Nanos;
        let look_up = check.exited || (check.listening && due);
        if !look_up {
            return Ok(());
        }
        self.last_owner_lookup = now;
        let listeners = self
            .table
            .listeners()
            .context("reading the kernel's listening sockets")?;
        let holders = procfs::group_listeners(&listeners)
            .into_iter()
            .map(|(addr, (_, owners))| (TrackerId::listen(0, addr), owners))
            .collect();
        self.observer
            .refresh_owners(&holders, procfs::process_alive);
        Ok(())
    }

    /// Hooks the TLS libraries of the listeners' owners, and unhooks those no owner uses.
    fn sync_tls(&mut self) -> anyhow::Result<()> {
        let owners = self.observer.listener_owner_pids();
        self.probes.sync_tls(&mut self.tls, &owners)
    }

    /// What the run handled and, when the kernel accounted it, what each program cost.
    fn log_totals(&self) {
        log::info!("processed {} kernel events", self.events);
        for cost in self.probes.program_costs() {
            if cost.runs > 0 {
                log::info!(
                    "program {}: {} runs, {} ns in all, {} ns per run",
                    cost.program,
                    cost.runs,
                    cost.run_time.as_nanos(),
                    cost.run_time.as_nanos() / u128::from(cost.runs)
                );
            }
        }
    }

    fn drain(&mut self, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) {
        let count = bpf::drain(ring, |record| match Event::decode(record) {
            Ok(mut event) => {
                if let Event::ListenerUp {
                    pid,
                    comm,
                    cgroup_id,
                    cgroup,
                    ..
                } = &mut event
                {
                    // The kernel gave the calling thread's name; operators know processes by
                    // their main thread's (nginx, not a worker thread's name).
                    if let Some(process) = procfs::process_comm(*pid) {
                        *comm = process;
                    }
                    *cgroup = self.workloads.cgroup_of_listener(*cgroup_id, *pid);
                }
                if self.observer.apply(&event) == Applied::NeedsRescan {
                    if let Err(error) = self.rescan_listeners() {
                        log::warn!("rescanning listeners: {error:#}");
                    }
                    self.observer.apply_after_rescan(&event);
                }
            }
            Err(error) => {
                self.decode_errors += 1;
                log::warn!(
                    "undecodable kernel event ({error}); {} so far",
                    self.decode_errors
                );
            }
        });
        self.events += count as u64;
    }

    fn rescan_listeners(&mut self) -> anyhow::Result<()> {
        let listeners = self
            .table
            .listeners()
            .context("reading the kernel's listening sockets")?;
        for (addr, (sockets, owners)) in procfs::group_listeners(&listeners) {
            self.observer
                .add_scanned_listener_sockets(addr, sockets, &owners);
        }
        Ok(())
    }

    /// Connections that exist when the daemon starts: counted from now, their closes reported
    /// by the kernel like any other.
    fn adopt_existing_connections(&mut self) -> anyhow::Result<()> {
        let now = monotonic_now();
        let connections = self.kernel_connections()?;
        let adopted: Vec<_> = connections
            .into_iter()
            .filter(|&(local, remote)| self.observer.adopt(local, remote, now).is_some())
            .collect();
        if !adopted.is_empty() {
            log::info!(
                "{} connection(s) already open on watched listeners",
                adopted.len()
            );
        }
        self.follow_adopted(&adopted)
    }

    fn kernel_connections(
        &mut self,
    ) -> anyhow::Result<Vec<(std::net::SocketAddr, std::net::SocketAddr)>> {
        // A connection the server shut down is still its own where its life ends at `close()`.
        let held = if self.probes.hooks.has(Capability::Close) {
            HeldConnections::OpenOrShutDown
        } else {
            HeldConnections::Open
        };
        Ok(self
            .table
            .connections(held)
            .context("reading the kernel's connections")?
            .into_iter()
            .map(|socket| (socket.local, socket.remote))
            .collect())
    }

    /// Makes the model match the kernel's table, in favour of the kernel, when the kernel
    /// reported trouble since the last time or [`RECONCILE_EVERY`] has passed. A difference
    /// must show in two dumps with the ring drained in between, so that events still in flight
    /// are not mistaken for lost ones.
    fn reconcile(&mut self, ring: &mut EventRing) -> anyhow::Result<()> {
        self.drain(ring.get_mut());
        let now = monotonic_now();
        let losses = self.probes.losses()?;
        let (last_time, last_losses, last_decode_errors) = self.last_reconcile;
        let trouble = losses != last_losses || self.decode_errors != last_decode_errors;
        let due = now.saturating_sub(last_time) >= RECONCILE_EVERY.as_nanos() as Nanos;
        if !trouble && !due {
            return Ok(());
        }
        self.last_reconcile = (now, losses, self.decode_errors);
        let kernel = self.kernel_connections()?;
        let first = self.observer.discrepancies(&kernel);
        drop(kernel);
        // The dump of a busy host's connections is large and short-lived: give the memory
        // back rather than keep it resident until the next report.
        release_free_memory();
        if first.is_empty() {
            return Ok(());
        }
        self.drain(ring.get_mut());
        let kernel = self.kernel_connections()?;
        let second = self.observer.discrepancies(&kernel);
        let confirmed = first.confirmed_by(&second);
        if confirmed.is_empty() {
            return Ok(());
        }
        log::info!(
            "reconciled with the kernel: {} connection(s) closed, {} adopted",
            confirmed.model_only.len(),
            confirmed.kernel_only.len()
        );
        let seen_open = self.observer.sockets_of(&confirmed.model_only);
        let adopted = self.observer.correct(&confirmed, monotonic_now());
        // A connection gone from the kernel's table whose socket is still in the kernel's
        // table of tracked connections never ran the close program (the kernel skipped it):
        // its entry would stay for good and its close would go uncounted. Whoever removes the
        // entry counts the close.
        for (listener, sock, opened_at) in seen_open {
            if let Some(track) = self.probes.forget_tracked(sock, opened_at)? {
                let now = monotonic_now();
                let turn = TurnLeftOpen::of(&track, now);
                self.observer.count_unseen_close(listener, now, turn);
            }
        }
        self.follow_adopted(&adopted)
    }

    /// Asks the kernel to report the close of connections adopted from its table. One that
    /// closed between the dump and that request would never be reported: a dump after the
    /// request finds those, and the daemon closes them itself, unless the kernel got there
    /// first (its close is then in the ring).
    fn follow_adopted(&mut self, adopted: &[(SocketAddr, SocketAddr)]) -> anyhow::Result<()> {
        self.probes.track_preexisting(adopted)?;
        if adopted.is_empty() {
            return Ok(());
        }
        let kernel: HashSet<(SocketAddr, SocketAddr)> =
            self.kernel_connections()?.into_iter().collect();
        for &(local, remote) in adopted {
            if !kernel.contains(&(local, remote))
                && self.probes.stop_following_close(local, remote)?
            {
                self.observer.close_adopted(local, remote, monotonic_now());
            }
        }
        Ok(())
    }

    /// Samples every listener's accept queue.
    fn sample_accept_queues(&mut self) -> anyhow::Result<()> {
        let samples: Vec<_> = self
            .table
            .listeners()
            .context("reading the kernel's listening sockets")?
            .into_iter()
            .map(|socket| (socket.local, socket.recv_queue, socket.backlog))
            .collect();
        self.observer.sample_accept_queues(&samples);
        Ok(())
    }

    /// Ends the closing phases of the connections whose time-wait socket has left FIN_WAIT2
    /// (see [`crate::host::time_wait`]), before the kernel's totals are read.
    fn end_handed_over_closings(&mut self) -> anyhow::Result<()> {
        let Some(diag) = self.table.sock_diag() else {
            return Ok(());
        };
        let handed = self.probes.handed_over()?;
        if handed.is_empty() {
            return Ok(());
        }
        let ended = self
            .handovers
            .ended(diag, &handed, monotonic_now)
            .context("looking up time-wait sockets")?;
        for (key, endpoint, at) in ended {
            self.observer.end_handed_over_closing(endpoint, at);
            self.probes.forget_handed_over(&key)?;
        }
        Ok(())
    }

    /// Makes one report and hands it to the sink.
    fn report(&mut self, ring: &mut EventRing, sink: &mut dyn ReportSink) -> anyhow::Result<Flow> {
        // Everything the kernel sent before this instant belongs in this report, corrected
        // against the kernel's own table.
        self.reconcile(ring)?;
        if !self.observer.has_adopted_open() {
            self.probes.stop_following_adopted()?;
        }
        self.sample_accept_queues()?;
        self.end_handed_over_closings()?;
        let now = monotonic_now();
        // Connections whose server has answered and that wait for the next request are idle
        // now; the kernel will only say so when that request (or the close) comes.
        for sock in self.observer.busy_sockets() {
            if let Some(track) = self.probes.conn_track(sock)
                && track.last_send_ns != 0
            {
                self.observer.provisional_idle(sock, track.last_send_ns);
            }
        }
        let totals = self.interval_totals(now)?;
        let kernel_totals = self.probes.endpoint_totals()?;
        self.observer.apply_kernel_totals(&kernel_totals, now);
        let gauges = self.probes.end_gauge_interval()?;
        self.observer.apply_live_gauges(&gauges);
        self.refresh_owners()?;
        self.sync_tls()?;
        let mut reports = self.observer.report(now);
        for report in &mut reports {
            report.tls_library = report
                .owners
                .iter()
                .find_map(|owner| self.tls.library_of(owner.pid))
                .map(str::to_owned);
            if report.tls.opaque && report.tls_library.is_none() {
                self.tls.warn_opaque(&report.id, &report.owners);
            }
        }
        self.observer
            .describe_workloads(&mut reports, &mut self.workloads);
        // Owners known from listen() events carry no command line yet.
        for owner in reports
            .iter_mut()
            .flat_map(|report| report.owners.iter_mut())
        {
            if owner.cmdline.is_empty() {
                owner.cmdline = procfs::process_cmdline(owner.pid).unwrap_or_default();
            }
        }
        log::debug!(
            "report: {} tracker(s), {} connection(s) open, {} kernel event(s) handled so far",
            reports.len(),
            self.observer.connections(),
            self.events
        );
        sink.publish(&ReportBatch {
            reports: &reports,
            totals,
            per_interval: true,
        })
    }

    /// The daemon-wide figures of the interval that ends at `now`, which starts the next one.
    fn interval_totals(&mut self, now: Nanos) -> anyhow::Result<IntervalTotals> {
        let losses = self.probes.losses()?;
        let listen_counters = procfs::listen_counters().unwrap_or(self.listen_counters);
        let unattributed = self.observer.stats().unattributed;
        let totals = IntervalTotals {
            unix_time_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |elapsed| elapsed.as_secs_f64()),
            interval_s: now.saturating_sub(self.last_report) as f64 / 1e9,
            lost_events: (losses.ring_full - self.losses.ring_full)
                + (losses.skipped_runs - self.losses.skipped_runs),
            untracked_connections: losses.table_full - self.losses.table_full,
            listen_overflows: listen_counters.0.saturating_sub(self.listen_counters.0),
            listen_drops: listen_counters.1.saturating_sub(self.listen_counters.1),
            unattributed_closes: unattributed.saturating_sub(self.unattributed),
            hooks: self.probes.hooks,
        };
        let ring_full = losses.ring_full - self.losses.ring_full;
        if ring_full > 0 {
            log::warn!(
                "{ring_full} kernel events lost in the last interval (ring buffer full): \
                 reconciling with the kernel's table"
            );
        }
        let skipped = losses.skipped_runs - self.losses.skipped_runs;
        if skipped > 0 {
            log::warn!(
                "{skipped} program runs skipped by the kernel in the last interval (a program \
                 fired again on a CPU where it was running): reconciling with the kernel's table"
            );
        }
        if losses.totals_full > self.losses.totals_full {
            log::warn!(
                "{} connection opens or closes not counted in the last interval (the kernel's \
                 table of local endpoints is full): opened and closed may be short",
                losses.totals_full - self.losses.totals_full
            );
        }
        if losses.gauges_missed > self.losses.gauges_missed {
            log::warn!(
                "{} live gauge updates missed by the kernel in the last interval (gauge table \
                 full, or contention): that interval's peaks are the model's",
                losses.gauges_missed - self.losses.gauges_missed
            );
        }
        if losses.handovers_missed > self.losses.handovers_missed {
            log::warn!(
                "{} connections closed by their server left FIN_WAIT2 for a time-wait socket \
                 the kernel could not record (its table is full) in the last interval: their \
                 closing phase ended there",
                losses.handovers_missed - self.losses.handovers_missed
            );
        }
        if totals.untracked_connections > 0 {
            log::warn!(
                "{} connections not tracked in the last interval (kernel table full)",
                totals.untracked_connections
            );
        }
        self.losses = losses;
        self.listen_counters = listen_counters;
        self.unattributed = unattributed;
        self.last_report = now;
        Ok(totals)
    }
}

/// Waits until the eBPF log has messages; never, when there is no eBPF log.
async fn kernel_log_readable(
    log: &mut Option<KernelLog>,
) -> std::io::Result<
    tokio::io::unix::AsyncFdReadyMutGuard<'_, aya_log::EbpfLogger<&'static dyn log::Log>>,
> {
    match log {
        Some(log) => log.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// Returns freed heap memory to the kernel (glibc keeps it otherwise, and the resident size
/// would reflect the largest transient allocation rather than what the daemon holds).
fn release_free_memory() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns()` stamps events with.
pub fn monotonic_now() -> Nanos {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
