//! Loading, configuring and attaching the eBPF programs, and reading what they send.
//!
//! Hook choice. Every hook is listed in [`HOOKS`]: a purpose, then the candidate attach points
//! in order of preference; the first one this kernel has (and whose layout matches) is used.
//! On the machines we target kprobes are compiled out and fentry/fexit programs are refused, so
//! every candidate is a tracepoint:
//!
//! * Connection lifecycle: `sock:inet_sock_set_state` (4.16+). It sees listen(), the
//!   server-side SYN_RECV → ESTABLISHED step and every CLOSE, with decoded addresses, from one
//!   attach point. (`tcp:tcp_set_state`, its 4.15 predecessor, has a different layout and is
//!   not supported; `tcp:tcp_destroy_sock` alone would miss listens and opens.) Required.
//! * Turn boundaries (busy time): `sock:sock_recv_length` and `sock:sock_send_length` (6.6+).
//!   They fire after every socket read and write with the socket and byte count, on every
//!   path (read/recv/recvmsg/readv, write/send/sendmsg/writev, sendfile, io_uring), which
//!   per-syscall tracepoints would not cover. Optional: on older kernels the daemon warns and
//!   reports busy time as 0.
//! * Payload buffers (sessions): `syscalls:sys_enter_{read,recvfrom,readv,recvmsg,write,
//!   sendto,writev,sendmsg}`. The socket tracepoints above run inside these system calls, in
//!   the same thread, after the bytes reached (or before they left) the user buffer these
//!   tracepoints name; so the probes find the buffer by thread id and copy only what they
//!   need (16 bytes to detect the protocol, then 9-byte HTTP/2 frame headers). Optional, and
//!   skipped with `--no-sessions`: without them sessions are reported as unknown.
//!
//! Everything attached here is owned by [`Probes`]; dropping it detaches all of it, also on
//! error paths, so the daemon never leaves a program attached behind it.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, anyhow, bail};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use tokio::io::unix::AsyncFd;
use tracker_common::{
    AF_INET, AF_INET6, CONFIG_MAP, CONNECT_TARGETS_MAP, Config, ConnKey, ConnTrack,
    DEFAULT_RING_BYTES, EVENTS_MAP, LOST_MAP, LOST_SLOT, PORTS_MAP, PREEXISTING_MAP,
    PROG_INET_SOCK_SET_STATE, PROG_SOCK_RECV_LENGTH, PROG_SOCK_SEND_LENGTH, TRACK_FULL_SLOT,
    TRACKED_MAP, inet_sock_set_state, sock_length, syscall_args,
};

use crate::tracefs::{Tracefs, check_format};

/// A tracepoint one program can attach to, with the field layout the program reads from it.
struct TracepointCandidate {
    category: &'static str,
    name: &'static str,
    fields: &'static [(&'static str, usize, usize)],
}

/// Which figures a hook feeds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HookGroup {
    /// Connections: without these the daemon cannot work.
    Lifecycle,
    /// Busy time.
    Turns,
    /// Session detection from payload.
    Payload,
}

/// A `syscalls:sys_enter_<name>` hook marking the calling process as a server; it reads no
/// argument, so only the tracepoint's presence is checked.
macro_rules! server_hook {
    ($name:literal) => {
        Hook {
            group: HookGroup::Payload,
            purpose: concat!("servers calling ", $name, "()"),
            program: concat!("sys_enter_", $name),
            candidates: &[TracepointCandidate {
                category: "syscalls",
                name: concat!("sys_enter_", $name),
                fields: &[],
            }],
        }
    };
}

/// One purpose, served by one program, attached to the first usable candidate.
struct Hook {
    group: HookGroup,
    purpose: &'static str,
    program: &'static str,
    candidates: &'static [TracepointCandidate],
}

/// A `syscalls:sys_enter_<name>` hook remembering the user buffer (argument `buf` at
/// [`syscall_args::BUF`], its size or count `count` at [`syscall_args::COUNT`]).
macro_rules! buffer_hook {
    ($name:literal, $buf:literal, $count:literal) => {
        Hook {
            group: HookGroup::Payload,
            purpose: concat!("payload buffers of ", $name, "()"),
            program: concat!("sys_enter_", $name),
            candidates: &[TracepointCandidate {
                category: "syscalls",
                name: concat!("sys_enter_", $name),
                fields: &[
                    ($buf, syscall_args::BUF, 8),
                    ($count, syscall_args::COUNT, 8),
                ],
            }],
        }
    };
}

/// The hook table (see the module documentation for why each entry is what it is).
const HOOKS: &[Hook] = &[
    Hook {
        group: HookGroup::Lifecycle,
        purpose: "TCP connection lifecycle",
        program: PROG_INET_SOCK_SET_STATE,
        candidates: &[TracepointCandidate {
            category: "sock",
            name: "inet_sock_set_state",
            fields: &inet_sock_set_state::FIELDS,
        }],
    },
    Hook {
        group: HookGroup::Turns,
        purpose: "turn starts (busy time)",
        program: PROG_SOCK_RECV_LENGTH,
        candidates: &[TracepointCandidate {
            category: "sock",
            name: "sock_recv_length",
            fields: &sock_length::FIELDS,
        }],
    },
    Hook {
        group: HookGroup::Turns,
        purpose: "turn ends (busy time)",
        program: PROG_SOCK_SEND_LENGTH,
        candidates: &[TracepointCandidate {
            category: "sock",
            name: "sock_send_length",
            fields: &sock_length::FIELDS,
        }],
    },
    buffer_hook!("read", "buf", "count"),
    buffer_hook!("recvfrom", "ubuf", "size"),
    buffer_hook!("readv", "vec", "vlen"),
    buffer_hook!("recvmsg", "msg", "flags"),
    buffer_hook!("write", "buf", "count"),
    buffer_hook!("sendto", "buff", "len"),
    buffer_hook!("writev", "vec", "vlen"),
    buffer_hook!("sendmsg", "msg", "flags"),
    server_hook!("accept"),
    server_hook!("accept4"),
];

/// Settings applied before the programs are attached.
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    /// Only these local ports produce events (None: all).
    pub ports: Option<BTreeSet<u16>>,
    /// Ring buffer size in bytes (None: the compiled-in default). A power of two multiple of
    /// the page size.
    pub ring_bytes: Option<u32>,
    /// Read payload to count sessions (attaches the `sys_enter_*` hooks).
    pub sessions: bool,
    /// Destinations whose outbound connections are tracked (`--connect`).
    pub connect: Vec<SocketAddr>,
}

/// Loss counters summed over CPUs, since load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossCounters {
    /// Events dropped because the ring buffer was full.
    pub ring_full: u64,
    /// Accepted connections not tracked because the kernel-side table was full.
    pub table_full: u64,
}

/// The loaded and attached programs and the maps the daemon reads.
pub struct Probes {
    /// Owns the programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
    lost: PerCpuArray<MapData, u64>,
    tracked: HashMap<MapData, u64, ConnTrack>,
    preexisting: HashMap<MapData, ConnKey, u8>,
    config: Array<MapData, Config>,
    /// Where each hook was attached, for the start-up message.
    pub attached: Vec<String>,
}

/// The ring buffer, separate from [`Probes`] so the event loop can await it while reading the
/// counters.
pub type EventRing = AsyncFd<RingBuf<MapData>>;

/// Messages the eBPF programs log (aya-log), forwarded to the daemon's `log` logger when
/// readable.
pub type KernelLog = AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>;

/// Loads the programs, applies `options`, and attaches every hook.
pub fn load_and_attach(
    tracefs: &Tracefs,
    options: &ProbeOptions,
) -> anyhow::Result<(Probes, EventRing, Option<KernelLog>)> {
    raise_memlock_limit();
    let mut loader = EbpfLoader::new();
    if let Some(bytes) = options.ring_bytes {
        loader.map_max_entries(EVENTS_MAP, bytes);
    }
    // The programs only format messages the daemon would print: the same level as RUST_LOG.
    let kernel_log_level = log::max_level() as u8;
    loader.override_global(aya_log::LEVEL, &kernel_log_level, false);
    let mut ebpf = loader
        .load(aya::include_bytes_aligned!(concat!(
            env!("OUT_DIR"),
            "/tracker-probes"
        )))
        .map_err(|error| anyhow!(error))
        .context("loading the eBPF object (does this kernel support BPF ring buffers, 5.8+?)")?;

    configure(&mut ebpf, options)?;
    let kernel_log = match aya_log::EbpfLogger::init(&mut ebpf) {
        // SAFETY: the logger owns its ring buffer's fd for as long as it lives, and the
        // `AsyncFd` owns the logger.
        Ok(logger) => Some(
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)
                .context("registering the eBPF log with the event loop")?,
        ),
        Err(error) => {
            log::debug!("no eBPF log: {error}");
            None
        }
    };

    let mut attached = Vec::new();
    for hook in HOOKS {
        if hook.group == HookGroup::Payload && !options.sessions {
            continue;
        }
        match (attach_hook(&mut ebpf, tracefs, hook), hook.group) {
            (Ok(point), _) => attached.push(point),
            (Err(error), HookGroup::Lifecycle) => return Err(error),
            (Err(error), HookGroup::Turns) => {
                log::warn!("{error:#}: busy time is reported as 0");
            }
            (Err(error), HookGroup::Payload) => {
                log::warn!("{error:#}: sessions through this call are not seen");
            }
        }
    }

    let ring = RingBuf::try_from(
        ebpf.take_map(EVENTS_MAP)
            .ok_or_else(|| anyhow!("map {EVENTS_MAP} missing from the eBPF object"))?,
    )?;
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged for as long as
    // the `RingBuf` lives, and the `AsyncFd` owns the `RingBuf`.
    let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
        .context("registering the ring buffer with the event loop")?;
    let lost = PerCpuArray::try_from(
        ebpf.take_map(LOST_MAP)
            .ok_or_else(|| anyhow!("map {LOST_MAP} missing from the eBPF object"))?,
    )?;
    let tracked = HashMap::try_from(
        ebpf.take_map(TRACKED_MAP)
            .ok_or_else(|| anyhow!("map {TRACKED_MAP} missing from the eBPF object"))?,
    )?;
    let preexisting = HashMap::try_from(
        ebpf.take_map(PREEXISTING_MAP)
            .ok_or_else(|| anyhow!("map {PREEXISTING_MAP} missing from the eBPF object"))?,
    )?;
    let config = Array::try_from(
        ebpf.take_map(CONFIG_MAP)
            .ok_or_else(|| anyhow!("map {CONFIG_MAP} missing from the eBPF object"))?,
    )?;
    Ok((
        Probes {
            _ebpf: ebpf,
            lost,
            tracked,
            preexisting,
            config,
            attached,
        },
        ring,
        kernel_log,
    ))
}

impl Probes {
    /// Reads the loss counters.
    pub fn losses(&self) -> anyhow::Result<LossCounters> {
        let sum = |slot: u32| -> anyhow::Result<u64> {
            Ok(self
                .lost
                .get(&slot, 0)
                .with_context(|| format!("reading {LOST_MAP}[{slot}]"))?
                .iter()
                .sum())
        };
        Ok(LossCounters {
            ring_full: sum(LOST_SLOT)?,
            table_full: sum(TRACK_FULL_SLOT)?,
        })
    }
}

impl Probes {
    /// The kernel's turn state of a tracked connection (None: not tracked, or gone).
    pub fn conn_track(&self, sock: u64) -> Option<ConnTrack> {
        self.tracked.get(&sock, 0).ok()
    }

    /// Asks the kernel to report the close of connections the daemon adopted from the kernel's
    /// table (given as (local, remote)), whose open it never saw.
    pub fn track_preexisting(
        &mut self,
        connections: &[(SocketAddr, SocketAddr)],
    ) -> anyhow::Result<()> {
        if connections.is_empty() {
            return Ok(());
        }
        for &(local, remote) in connections {
            self.preexisting
                .insert(conn_key(local, remote), 0, 0)
                .with_context(|| format!("tracking the close of {remote} → {local}"))?;
        }
        let mut config = self
            .config
            .get(&0, 0)
            .context("reading the configuration map")?;
        if config.preexisting == 0 {
            config.preexisting = 1;
            self.config
                .set(0, config, 0)
                .context("writing the configuration map")?;
        }
        Ok(())
    }
}

/// The kernel's view of a connection's endpoints (as `sock:inet_sock_set_state` gives them).
/// IPv4-mapped IPv6 addresses stay IPv6: the socket is an AF_INET6 one.
fn conn_key(local: SocketAddr, remote: SocketAddr) -> ConnKey {
    let (family, local_addr, remote_addr) = match (local.ip(), remote.ip()) {
        (IpAddr::V4(local), IpAddr::V4(remote)) => {
            let mut local_bytes = [0u8; 16];
            let mut remote_bytes = [0u8; 16];
            local_bytes[..4].copy_from_slice(&local.octets());
            remote_bytes[..4].copy_from_slice(&remote.octets());
            (AF_INET, local_bytes, remote_bytes)
        }
        (local, remote) => (AF_INET6, v6_octets(local), v6_octets(remote)),
    };
    ConnKey {
        family,
        local_port: local.port(),
        remote_port: remote.port(),
        _pad: 0,
        local_addr,
        remote_addr,
    }
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
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

fn configure(ebpf: &mut Ebpf, options: &ProbeOptions) -> anyhow::Result<()> {
    if let Some(ports) = &options.ports {
        let mut map: HashMap<_, u16, u8> = HashMap::try_from(
            ebpf.map_mut(PORTS_MAP)
                .ok_or_else(|| anyhow!("map {PORTS_MAP} missing from the eBPF object"))?,
        )?;
        for &port in ports {
            map.insert(port, 0, 0)
                .with_context(|| format!("adding port {port} to {PORTS_MAP}"))?;
        }
    }
    if !options.connect.is_empty() {
        let mut map: HashMap<_, ConnKey, u8> =
            HashMap::try_from(ebpf.map_mut(CONNECT_TARGETS_MAP).ok_or_else(|| {
                anyhow!("map {CONNECT_TARGETS_MAP} missing from the eBPF object")
            })?)?;
        for &target in &options.connect {
            let mut key = conn_key(target, target);
            key.local_port = 0;
            key.local_addr = [0; 16];
            map.insert(key, 0, 0)
                .with_context(|| format!("adding {target} to {CONNECT_TARGETS_MAP}"))?;
        }
    }
    let mut config: Array<_, Config> = Array::try_from(
        ebpf.map_mut(CONFIG_MAP)
            .ok_or_else(|| anyhow!("map {CONFIG_MAP} missing from the eBPF object"))?,
    )?;
    let ring_bytes = options.ring_bytes.unwrap_or(DEFAULT_RING_BYTES);
    // Where a socket's network namespace is, from the kernel's BTF, so that listeners of
    // different namespaces are told apart. Without BTF every event counts as the daemon's
    // own namespace.
    let netns = std::fs::read("/sys/kernel/btf/vmlinux")
        .ok()
        .and_then(|btf| crate::btf::netns_offsets(&btf));
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
    };
    config
        .set(0, value, 0)
        .context("writing the configuration map")?;
    Ok(())
}

fn attach_hook(ebpf: &mut Ebpf, tracefs: &Tracefs, hook: &Hook) -> anyhow::Result<String> {
    let mut refusals = Vec::new();
    for candidate in hook.candidates {
        let format = match tracefs.format(candidate.category, candidate.name) {
            Ok(format) => format,
            Err(error) => {
                refusals.push(format!("{error:#}"));
                continue;
            }
        };
        if let Err(mismatch) = check_format(&format, candidate.fields) {
            refusals.push(format!(
                "tracepoint {}:{} has a layout this build does not know: {mismatch}",
                candidate.category, candidate.name
            ));
            continue;
        }
        let program: &mut TracePoint = ebpf
            .program_mut(hook.program)
            .ok_or_else(|| anyhow!("program {} missing from the eBPF object", hook.program))?
            .try_into()?;
        program
            .load()
            .map_err(|error| anyhow!(error))
            .with_context(|| {
                format!("loading program {} (verifier or BPF support)", hook.program)
            })?;
        program
            .attach(candidate.category, candidate.name)
            .map_err(|error| anyhow!(error))
            .with_context(|| format!("attaching to {}:{}", candidate.category, candidate.name))?;
        return Ok(format!("{}:{}", candidate.category, candidate.name));
    }
    bail!(
        "no usable hook for {}: {}",
        hook.purpose,
        refusals.join("; ")
    )
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
