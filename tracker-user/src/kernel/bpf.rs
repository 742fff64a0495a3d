//! Loading, configuring and attaching the eBPF programs, and reading what they send.
//!
//! Hook choice: see [`crate::kernel::hooks`], which tries each capability's candidate hooks (fentry/
//! fexit, kprobes, raw then classic tracepoints) best first. Payload (sessions) has no hook of
//! its own: the turn programs run inside the server's system call, whose buffer argument they
//! read from the task's saved user registers (`bpf_task_pt_regs`), for tracked connections
//! whose protocol is undecided or HTTP/2 only. Off with `--no-sessions`, or on an
//! architecture whose register layout this build does not know: sessions are then reported
//! as unknown.
//!
//! Everything attached here is owned by [`Probes`]; dropping it detaches all of it, also on
//! error paths, so the daemon never leaves a program attached behind it.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd as _;

use anyhow::{Context as _, anyhow};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::{Ebpf, EbpfLoader};
use tokio::io::unix::AsyncFd;
use tracker_common::{
    CONFIG_MAP, CONNECT_TARGETS_MAP, Config, ConnKey, ConnTrack, DEFAULT_RING_BYTES, DIRECTION_IN,
    DIRECTION_OUT, ENDPOINT_SLOTS_MAP, EVENTS_MAP, Endpoint, EndpointTotals, GAUGES_MISSED_SLOT,
    LOST_MAP, LOST_SLOT, PORTS_MAP, PREEXISTING_MAP, RegsLayout, SLOT_TOTALS_MAP,
    SYSCALL_BUFFERS_MAP, TOTALS_FULL_SLOT, TRACK_FULL_SLOT, TRACKED_MAP, buf_shape,
    slot_totals_entries,
};
use tracker_common::{
    HANDOVER_FULL_SLOT,
    handover::{HANDED_OVER_MAP, HandedOver},
};

use crate::kernel::gauges::GaugeReading;
use crate::kernel::gauges::KernelGauges;
use crate::kernel::hooks::{AttachSettings, Capability, HookChoice, HookKind, attach_all};
use crate::kernel::tracefs::Tracefs;

/// System calls whose buffer the socket programs may read, with how it is passed and in
/// which direction the bytes go (the second argument is the buffer, iovec array or msghdr;
/// the third its size or iovec count).
const SYSCALL_BUFFERS: &[(libc::c_long, u32, u32)] = &[
    (libc::SYS_read, buf_shape::FLAT, DIRECTION_IN),
    (libc::SYS_recvfrom, buf_shape::FLAT, DIRECTION_IN),
    (libc::SYS_readv, buf_shape::IOVEC, DIRECTION_IN),
    (libc::SYS_recvmsg, buf_shape::MSGHDR, DIRECTION_IN),
    (libc::SYS_write, buf_shape::FLAT, DIRECTION_OUT),
    (libc::SYS_sendto, buf_shape::FLAT, DIRECTION_OUT),
    (libc::SYS_writev, buf_shape::IOVEC, DIRECTION_OUT),
    (libc::SYS_sendmsg, buf_shape::MSGHDR, DIRECTION_OUT),
];

/// Where this architecture's `struct pt_regs` keeps the system call number and its second
/// and third arguments (fixed by the architecture's entry code).
#[cfg(target_arch = "x86_64")]
const SYSCALL_REGS: Option<RegsLayout> = Some(RegsLayout::X86_64);
#[cfg(target_arch = "aarch64")]
const SYSCALL_REGS: Option<RegsLayout> = Some(RegsLayout::AARCH64);
/// Other architectures: not known (and not tested) yet, so payload is not read.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYSCALL_REGS: Option<RegsLayout> = None;

/// Settings applied before the programs are attached.
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    /// Only these local ports produce events (None: all).
    pub ports: Option<BTreeSet<u16>>,
    /// Ring buffer size in bytes (None: the compiled-in default). A power of two multiple of
    /// the page size.
    pub ring_bytes: Option<u32>,
    /// Capacity of the kernel's table of tracked connections (None: the compiled-in
    /// `TRACKED_MAX_ENTRIES`). Small values make it overflow (for tests).
    pub tracked_entries: Option<u32>,
    /// Read payload to count sessions.
    pub sessions: bool,
    /// Destinations whose outbound connections are tracked (`--connect`).
    pub connect: Vec<SocketAddr>,
    /// Skip the raw tracepoint candidates (exercises the fallback).
    pub classic_tracepoints: bool,
    /// Attach no turns hook (`--connections-only`).
    pub connections_only: bool,
    /// Use only this kind of hook where a capability has one (`--hooks`).
    pub forced_hooks: Option<HookKind>,
    /// Have the kernel account the programs' run time (`BPF_ENABLE_STATS`, for as long as the
    /// probes live), so their own cost can be reported.
    pub run_time_stats: bool,
}

/// What one attached program cost, as the kernel accounted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramCost {
    pub program: String,
    pub runs: u64,
    pub run_time: std::time::Duration,
}

/// Loss counters summed over CPUs, since load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossCounters {
    /// Events dropped because the ring buffer was full.
    pub ring_full: u64,
    /// Accepted connections not tracked because the kernel-side table was full.
    pub table_full: u64,
    /// Opens and closes the kernel could not count because its table of endpoints was full.
    pub totals_full: u64,
    /// Live gauge updates the kernel could not make (see `tracker_common::gauge`).
    pub gauges_missed: u64,
    /// Closing phases handed on to a time-wait socket that the kernel could not record:
    /// they ended when the full socket did (see `tracker_common::handover`).
    pub handovers_missed: u64,
    /// Program runs the kernel skipped because the program was already running on that CPU
    /// (see [`crate::kernel::prog_info`]): events lost before they could reach the ring.
    pub skipped_runs: u64,
}

/// The loaded and attached programs and the maps the daemon reads.
pub struct Probes {
    /// Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
    /// The TLS library programs are loaded, ready to attach per library (see [`crate::kernel::tls`]).
    pub tls_loaded: bool,
    lost: PerCpuArray<MapData, u64>,
    tracked: HashMap<MapData, u64, ConnTrack>,
    preexisting: HashMap<MapData, ConnKey, u8>,
    endpoint_slots: HashMap<MapData, Endpoint, u32>,
    slot_totals: PerCpuArray<MapData, EndpointTotals>,
    handed_over: HashMap<MapData, ConnKey, HandedOver>,
    /// Where `sock.sk_flags` is, if the kernel's BTF says (see [`Probes::follow_time_wait`]).
    sock_flags_offset: Option<u32>,
    gauges: KernelGauges,
    config: Array<MapData, Config>,
    /// Whether `Config::preexisting` is set.
    following_adopted: bool,
    /// The hook serving each capability.
    pub hooks: HookChoice,
    /// Keeps the kernel's run-time accounting on while open (`--bpf-stats`).
    _run_time_stats: Option<std::os::fd::OwnedFd>,
    /// tracefs, found or mounted only if a classic tracepoint was needed (raw tracepoints do
    /// not need it); unmounted on drop if the daemon mounted it. Last, so it outlives the
    /// programs attached through it.
    _tracefs: Option<Tracefs>,
}

/// The ring buffer, separate from [`Probes`] so the event loop can await it while reading the
/// counters.
pub type EventRing = AsyncFd<RingBuf<MapData>>;

/// Messages the eBPF programs log (aya-log), forwarded to the daemon's `log` logger when
/// readable.
pub type KernelLog = AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>;

/// Loads the programs, applies `options`, and attaches every hook: the start-up sequence.
pub fn load_and_attach(
    options: &ProbeOptions,
) -> anyhow::Result<(Probes, EventRing, Option<KernelLog>)> {
    raise_memlock_limit();
    let run_time_stats = options
        .run_time_stats
        .then(|| {
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .map_err(|error| anyhow!(error))
                .context("enabling the kernel's BPF run-time statistics")
        })
        .transpose()?;
    let mut ebpf = load_object(options)?;
    // A probe that cannot run (no permission, say) leaves the verdict to the programs' load.
    if let Ok(false) = crate::kernel::bpf_atomics::compare_and_swap_supported() {
        anyhow::bail!(
            "this kernel's BPF has no compare-and-swap (Linux 5.12+), which the per-listener \
             connection gauges need"
        );
    }
    // Offsets of kernel structures, for the raw lifecycle program and namespaces.
    let layout = std::fs::read("/sys/kernel/btf/vmlinux")
        .map(|btf| crate::kernel::btf::kernel_layout(&btf))
        .unwrap_or_default();
    configure(&mut ebpf, options, &layout)?;
    let kernel_log = kernel_log(&mut ebpf)?;
    // TLS plaintext is read by uprobes attached later, per library, as owners are found.
    let tls_loaded = options.sessions && load_tls_programs(&mut ebpf);
    let mut tracefs = None;
    let declined: &[Capability] = if options.connections_only {
        &[Capability::Turns]
    } else {
        &[]
    };
    let hooks = attach_all(
        &mut ebpf,
        &mut tracefs,
        &AttachSettings {
            layout: &layout,
            classic_tracepoints: options.classic_tracepoints,
            forced: options.forced_hooks,
            declined,
        },
    )?;
    let ring = event_ring(&mut ebpf)?;
    let mut config: Array<MapData, Config> = take_map(&mut ebpf, CONFIG_MAP)?;
    if hooks.has(Capability::Close) {
        follow_shutdowns(&mut config)?;
    }
    let probes = Probes {
        tls_loaded,
        lost: take_map(&mut ebpf, LOST_MAP)?,
        tracked: take_map(&mut ebpf, TRACKED_MAP)?,
        preexisting: take_map(&mut ebpf, PREEXISTING_MAP)?,
        endpoint_slots: take_map(&mut ebpf, ENDPOINT_SLOTS_MAP)?,
        slot_totals: take_map(&mut ebpf, SLOT_TOTALS_MAP)?,
        handed_over: take_map(&mut ebpf, HANDED_OVER_MAP)?,
        gauges: KernelGauges::take_from(&mut ebpf)?,
        ebpf,
        sock_flags_offset: layout.sock_flags,
        config,
        following_adopted: false,
        hooks,
        _run_time_stats: run_time_stats,
        _tracefs: tracefs,
    };
    Ok((probes, ring, kernel_log))
}

/// The eBPF object, loaded with the sizes and log level `options` ask for; a refusal says
/// whether it was a matter of permission.
fn load_object(options: &ProbeOptions) -> anyhow::Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    if let Some(bytes) = options.ring_bytes {
        loader.map_max_entries(EVENTS_MAP, bytes);
    }
    if let Some(entries) = options.tracked_entries {
        loader.map_max_entries(TRACKED_MAP, entries);
    }
    // Allocated whole for every possible CPU: sized to the host (see `slot_totals_entries`).
    let cpus = aya::util::nr_cpus().map_err(|(path, error)| anyhow!(error).context(path))?;
    loader.map_max_entries(SLOT_TOTALS_MAP, slot_totals_entries(cpus));
    // The programs only format messages the daemon would print: the same level as RUST_LOG.
    let kernel_log_level = log::max_level() as u8;
    loader.override_global(aya_log::LEVEL, &kernel_log_level, false);
    loader
        .load(aya::include_bytes_aligned!(concat!(
            env!("OUT_DIR"),
            "/tracker-probes"
        )))
        .map_err(|error| {
            let error = anyhow!(error);
            let permission = error.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
            });
            if permission {
                error.context(
                    "loading the eBPF object: the kernel refused permission (a security module, \
                     lockdown, or kernel.unprivileged_bpf_disabled for this user)",
                )
            } else {
                error.context(
                    "loading the eBPF object (does this kernel support BPF ring buffers, 5.8+?)",
                )
            }
        })
}

/// The programs' own messages (aya-log), registered with the event loop; none if the object
/// logs nothing.
fn kernel_log(ebpf: &mut Ebpf) -> anyhow::Result<Option<KernelLog>> {
    match aya_log::EbpfLogger::init(ebpf) {
        // SAFETY: the logger owns its ring buffer's fd for as long as it lives, and the
        // `AsyncFd` owns the logger.
        Ok(logger) => Ok(Some(
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)
                .context("registering the eBPF log with the event loop")?,
        )),
        Err(error) => {
            log::debug!("no eBPF log: {error}");
            Ok(None)
        }
    }
}

/// Loads the TLS library programs; false, with a warning, where the kernel refuses them.
fn load_tls_programs(ebpf: &mut Ebpf) -> bool {
    match crate::kernel::tls::load_programs(ebpf) {
        Ok(()) => true,
        Err(error) => {
            log::warn!(
                "TLS plaintext cannot be followed on this kernel ({error:#}): sessions of TLS \
                 connections are unknown"
            );
            false
        }
    }
}

/// The events ring, registered with the event loop.
fn event_ring(ebpf: &mut Ebpf) -> anyhow::Result<EventRing> {
    let ring: RingBuf<MapData> = take_map(ebpf, EVENTS_MAP)?;
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged for as long as
    // the `RingBuf` lives, and the `AsyncFd` owns the `RingBuf`.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
        .context("registering the ring buffer with the event loop")
}

/// Map `name` out of the loaded object, as the daemon reads it.
fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

impl Probes {
    /// Reads the loss counters.
    pub fn losses(&self) -> anyhow::Result<LossCounters> {
        Ok(LossCounters {
            ring_full: self.lost_in(LOST_SLOT)?,
            table_full: self.lost_in(TRACK_FULL_SLOT)?,
            totals_full: self.lost_in(TOTALS_FULL_SLOT)?,
            gauges_missed: self.lost_in(GAUGES_MISSED_SLOT)?,
            handovers_missed: self.lost_in(HANDOVER_FULL_SLOT)?,
            skipped_runs: self.skipped_runs(),
        })
    }

    /// One loss counter, summed over CPUs.
    fn lost_in(&self, slot: u32) -> anyhow::Result<u64> {
        Ok(self
            .lost
            .get(&slot, 0)
            .with_context(|| format!("reading {LOST_MAP}[{slot}]"))?
            .iter()
            .sum())
    }

    /// Ends the report interval of the kernel's live gauges and reads them (see
    /// [`crate::kernel::gauges`]).
    pub fn end_gauge_interval(&mut self) -> anyhow::Result<GaugeReading> {
        let ended = self.gauges.end_epoch()?;
        let missed = self.lost_in(GAUGES_MISSED_SLOT)?;
        self.gauges.read(ended, missed)
    }

    /// Runs the kernel skipped, over every program; a program whose counter cannot be read
    /// counts none (the ring and table counters still stand).
    fn skipped_runs(&self) -> u64 {
        self.ebpf
            .programs()
            .filter_map(|(_, program)| program.fd().ok())
            .filter_map(|fd| crate::kernel::prog_info::recursion_misses(fd.as_fd()).ok())
            .sum()
    }

    /// The kernel's count of server-side connections opened and closed per local endpoint
    /// since load, with their stamp sums, summed over CPUs.
    /// An endpoint whose slot is past the end of the totals has none: its counts were lost,
    /// and counted so.
    pub fn endpoint_totals(&self) -> anyhow::Result<Vec<(Endpoint, EndpointTotals)>> {
        let mut found = Vec::new();
        for entry in self.endpoint_slots.iter() {
            let (endpoint, slot) =
                entry.with_context(|| format!("reading {ENDPOINT_SLOTS_MAP}"))?;
            if slot >= self.slot_totals.len() {
                continue;
            }
            let per_cpu = self
                .slot_totals
                .get(&slot, 0)
                .with_context(|| format!("reading slot {slot} of {SLOT_TOTALS_MAP}"))?;
            let totals = per_cpu
                .iter()
                .fold(EndpointTotals::default(), |sum, cpu| sum.plus(cpu));
            found.push((endpoint, totals));
        }
        Ok(found)
    }
}

impl Probes {
    /// Has the kernel hand closing phases on to time-wait sockets of the daemon's network
    /// namespace (`own_netns`, its inode) rather than end them when the full socket goes (see
    /// `tracker_common::handover`), for a daemon that looks those sockets up. False where
    /// the kernel's BTF does not say where `sk_flags` is.
    pub fn follow_time_wait(&mut self, own_netns: u32) -> anyhow::Result<bool> {
        let Some(offset) = self.sock_flags_offset else {
            return Ok(false);
        };
        let mut config = self
            .config
            .get(&0, 0)
            .context("reading the configuration map")?;
        config.sock_flags_offset = offset;
        // Without the namespace offsets every event names namespace 0.
        config.own_netns = if config.sock_net_offset == 0 {
            0
        } else {
            own_netns
        };
        self.config
            .set(0, config, 0)
            .context("writing the configuration map")?;
        Ok(true)
    }

    /// Connections whose closing phase a time-wait socket carries on, by endpoints.
    pub fn handed_over(&self) -> anyhow::Result<Vec<(ConnKey, HandedOver)>> {
        self.handed_over
            .iter()
            .map(|entry| entry.with_context(|| format!("reading {HANDED_OVER_MAP}")))
            .collect()
    }

    /// Removes a [`Probes::handed_over`] entry whose closing phase the daemon has ended.
    pub fn forget_handed_over(&mut self, key: &ConnKey) -> anyhow::Result<()> {
        match self.handed_over.remove(key) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(error) => {
                Err(anyhow!(error)).context(format!("removing a {HANDED_OVER_MAP} entry"))
            }
        }
    }

    /// Runs and run time of every loaded program since load. Zero unless the kernel accounts
    /// run time (`--bpf-stats`, or `sysctl kernel.bpf_stats_enabled=1`).
    pub fn program_costs(&self) -> Vec<ProgramCost> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some(ProgramCost {
                    program: name.to_owned(),
                    runs: info.run_count(),
                    run_time: info.run_time(),
                })
            })
            .collect()
    }

    /// Removes the connection opened (or accepted) at `opened_ns` on socket `sock` from the
    /// kernel's table of tracked connections: its entry if it was there (the kernel had not
    /// reported its close and now never will). A later connection on the same socket memory
    /// is left alone.
    pub fn forget_tracked(
        &mut self,
        sock: u64,
        opened_ns: u64,
    ) -> anyhow::Result<Option<ConnTrack>> {
        let same_connection =
            |track: &ConnTrack| opened_ns == track.opened_ns || opened_ns == track.accepted_ns;
        // One the server has closed is still being finished by the kernel, which counts its
        // close at CLOSE.
        let Some(track) = self
            .conn_track(sock)
            .filter(|track| same_connection(track) && track.server_closed_ns == 0)
        else {
            return Ok(None);
        };
        match self.tracked.remove(&sock) {
            Ok(()) => Ok(Some(track)),
            Err(aya::maps::MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(None)
            }
            Err(error) => {
                Err(anyhow::Error::new(error).context(format!("removing {TRACKED_MAP} entry")))
            }
        }
    }

    /// The kernel's turn state of a tracked connection (None: not tracked, or gone).
    pub fn conn_track(&self, sock: u64) -> Option<ConnTrack> {
        self.tracked.get(&sock, 0).ok()
    }

    /// Asks the kernel to report the close of connections the daemon adopted from the kernel's
    /// table (given as (local, remote)), whose open it never saw. The kernel looks closes up
    /// by endpoints from before the first is added, so none is missed.
    pub fn track_preexisting(
        &mut self,
        connections: &[(SocketAddr, SocketAddr)],
    ) -> anyhow::Result<()> {
        if connections.is_empty() {
            return Ok(());
        }
        self.set_following_adopted(true)?;
        for &(local, remote) in connections {
            self.preexisting
                .insert(ConnKey::new(local, remote), 0, 0)
                .with_context(|| format!("tracking the close of {remote} → {local}"))?;
        }
        Ok(())
    }

    /// The daemon has no adopted connection open any more: each one's close was reported by
    /// the kernel (which took its entry out first), taken back, or found by a comparison of
    /// tables. The kernel then stops looking closes up by endpoints for them, which every
    /// untracked socket on the host paid at its FIN and its CLOSE.
    pub fn stop_following_adopted(&mut self) -> anyhow::Result<()> {
        if self.following_adopted {
            self.set_following_adopted(false)?;
            log::debug!(
                "no adopted connection left open: closes of untracked sockets are no longer                  looked up by endpoints"
            );
        }
        Ok(())
    }

    fn set_following_adopted(&mut self, following: bool) -> anyhow::Result<()> {
        let mut config = self
            .config
            .get(&0, 0)
            .context("reading the configuration map")?;
        config.preexisting = u32::from(following);
        self.config
            .set(0, config, 0)
            .context("writing the configuration map")?;
        self.following_adopted = following;
        Ok(())
    }
}

impl Probes {
    /// Hooks the TLS libraries of `owners` (see [`crate::kernel::tls`]) and tells the socket programs
    /// whether any is hooked.
    pub fn sync_tls(
        &mut self,
        libraries: &mut crate::kernel::tls::TlsLibraries,
        owners: &BTreeSet<u32>,
    ) -> anyhow::Result<()> {
        if !self.tls_loaded {
            return Ok(());
        }
        let hooked = libraries.sync(&mut self.ebpf, owners);
        let mut config = self
            .config
            .get(&0, 0)
            .context("reading the configuration map")?;
        if config.tls != u32::from(hooked) {
            config.tls = u32::from(hooked);
            self.config
                .set(0, config, 0)
                .context("writing the configuration map")?;
        }
        Ok(())
    }

    /// Takes back the request to report the close of an adopted connection, if the kernel has
    /// not acted on it yet: true if taken back (the kernel will not report this close), false
    /// if the kernel already removed it and its close is on its way through the ring.
    pub fn stop_following_close(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> anyhow::Result<bool> {
        match self.preexisting.remove(&ConnKey::new(local, remote)) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(error) => {
                Err(anyhow!(error)).with_context(|| format!("forgetting {remote} → {local}"))
            }
        }
    }
}

/// Drains every record currently in the ring, passing each to `handle`. Returns how many.
pub fn drain(ring: &mut RingBuf<MapData>, mut handle: impl FnMut(&[u8])) -> usize {
    let mut count = 0;
    while let Some(record) = ring.next() {
        handle(&record);
        count += 1;
    }
    count
}

fn configure(
    ebpf: &mut Ebpf,
    options: &ProbeOptions,
    layout: &crate::kernel::btf::KernelLayout,
) -> anyhow::Result<()> {
    if let Some(ports) = &options.ports {
        let mut map: Array<_, u8> = Array::try_from(
            ebpf.map_mut(PORTS_MAP)
                .ok_or_else(|| anyhow!("map {PORTS_MAP} missing from the eBPF object"))?,
        )?;
        for &port in ports {
            map.set(u32::from(port), 1, 0)
                .with_context(|| format!("adding port {port} to {PORTS_MAP}"))?;
        }
    }
    if !options.connect.is_empty() {
        let mut map: HashMap<_, ConnKey, u8> =
            HashMap::try_from(ebpf.map_mut(CONNECT_TARGETS_MAP).ok_or_else(|| {
                anyhow!("map {CONNECT_TARGETS_MAP} missing from the eBPF object")
            })?)?;
        for &target in &options.connect {
            map.insert(ConnKey::destination(target), 0, 0)
                .with_context(|| format!("adding {target} to {CONNECT_TARGETS_MAP}"))?;
        }
    }
    let mut syscalls: Array<_, u32> = Array::try_from(
        ebpf.map_mut(SYSCALL_BUFFERS_MAP)
            .ok_or_else(|| anyhow!("map {SYSCALL_BUFFERS_MAP} missing from the eBPF object"))?,
    )?;
    for &(number, shape, direction) in SYSCALL_BUFFERS {
        syscalls
            .set(number as u32, shape | direction << 8, 0)
            .with_context(|| format!("describing system call {number} in {SYSCALL_BUFFERS_MAP}"))?;
    }
    let mut config: Array<_, Config> = Array::try_from(
        ebpf.map_mut(CONFIG_MAP)
            .ok_or_else(|| anyhow!("map {CONFIG_MAP} missing from the eBPF object"))?,
    )?;
    let ring_bytes = options.ring_bytes.unwrap_or(DEFAULT_RING_BYTES);
    // Where a socket's network namespace is, from the kernel's BTF, so that listeners of
    // different namespaces are told apart. Without BTF every event counts as the daemon's
    // own namespace.
    let netns = layout.netns;
    if netns.is_none() {
        log::warn!(
            "no usable kernel BTF at /sys/kernel/btf/vmlinux: listeners of other network \
             namespaces are counted as if they were in this one"
        );
    }
    let value = Config {
        filter_ports: u32::from(options.ports.is_some()),
        // Wake the daemon early enough that its timer never has to race a filling ring.
        wakeup_bytes: ring_bytes / 8,
        preexisting: 0,
        connect_targets: u32::from(!options.connect.is_empty()),
        sock_net_offset: netns.map_or(0, |offsets| offsets.sock_net),
        net_inum_offset: netns.map_or(0, |offsets| offsets.net_inum),
        payload: u32::from(options.sessions && SYSCALL_REGS.is_some()),
        // Set once a TLS library is hooked.
        tls: 0,
        // Set once the daemon knows it can read time-wait sockets.
        sock_flags_offset: 0,
        own_netns: 0,
        // Set once the close program is attached.
        close_hook: 0,
        sock: layout.sock.unwrap_or_default(),
        regs: SYSCALL_REGS.unwrap_or_default(),
    };
    if options.sessions && SYSCALL_REGS.is_none() {
        log::warn!(
            "payload is not read on this architecture (its system call registers are not \
             known to this build): sessions are reported as unknown"
        );
    }
    config
        .set(0, value, 0)
        .context("writing the configuration map")?;
    Ok(())
}

/// Tells the programs that the close program runs, so that a server's `shutdown()` leaves the
/// connection's life to its `close()`. Until then (the programs are attached first) a
/// shutdown ends it, as on kernels without a close hook.
fn follow_shutdowns(config: &mut Array<MapData, Config>) -> anyhow::Result<()> {
    let mut value = config.get(&0, 0).context("reading the configuration map")?;
    value.close_hook = 1;
    config
        .set(0, value, 0)
        .context("writing the configuration map")
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so the ring buffer fits.
/// Newer kernels use memory cgroups and ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not lift RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        );
    }
}
