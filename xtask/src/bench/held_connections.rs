//! Load for the memory benchmark: many established, idle TCP connections on loopback, held open
//! while the tracker's resident set size is sampled.
//!
//! Clients are bound to source addresses 127.0.0.2, 127.0.0.3, … before connecting, because a
//! port bound with port 0 is taken for every destination, so one source address only has the
//! ephemeral port range (28_232 ports by default) to give out. Only 12_000 are used per address:
//! the kernel's search for a free port scans one half of the range (ports of one parity) before
//! the other, and once that half is full every bind walks all 14k of it. At 20_000 per address,
//! growing to 100k connections took about 30 s instead of about one.
//!
//! Both ends of every connection are open descriptors, so N connections need 2N of them. Where
//! RLIMIT_NOFILE can be raised that far (root with CAP_SYS_RESOURCE) one process could hold
//! them all, but this project's machines (and so CI) run as root without CAP_SYS_RESOURCE, with a
//! hard limit of 20_000: at most ~10k connections per process. So the connections are held by
//! *holder* processes, forked from this one, each connecting and accepting as many as its
//! descriptor limit allows, then sleeping until told to exit. With a raisable limit a single
//! holder takes a whole `grow_to` step; otherwise 100k connections take about a dozen holders.
//!
//! A holder is forked without exec from a possibly multi-threaded process, so it may only make
//! async-signal-safe calls: it uses raw system calls and integer arithmetic, never allocates,
//! and never panics. It reports to its parent through a socket pair, and treats the end of
//! that socket pair (the parent dropping [`HeldConnections`], exiting or crashing) as the order
//! to exit, so no holder outlives the benchmark.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

/// Most client sockets bound to one source address: well inside the half of the default
/// ephemeral range (32768–60999) that the kernel searches first (see the module documentation),
/// with room left for whatever else binds on these addresses meanwhile.
const MAX_PER_SOURCE: usize = 12_000;

/// The listen backlog. std uses 128; the kernel caps the value at `net.core.somaxconn` (4096 by
/// default since Linux 5.4). Holders accept each connection right after making it, so the
/// queue stays short; the depth is cheap insurance for a holder that falls behind.
const BACKLOG: libc::c_int = 4096;

/// Descriptors a holder keeps for other things than connections: stdin/out/err, the listener,
/// its socket pair to the parent, with margin.
const HOLDER_SPARE_FDS: u64 = 64;

/// The first client source address; later ones follow it in 127.0.0.0/8.
const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// N established TCP connections on loopback, held open until dropped: a listener on
/// 127.0.0.1:<port> (port picked by the kernel), and N client sockets spread over source
/// addresses 127.0.0.2, 127.0.0.3, … (at most 12_000 per source address so the ephemeral port
/// range never runs out). Both ends of the connections are held by holder processes (see the
/// module documentation); dropping this closes them all and reaps the holders.
pub struct HeldConnections {
    listener: TcpListener,
    port: u16,
    per_source: usize,
    /// Connections per holder, when a test sets it; otherwise the descriptor limit decides.
    per_holder: Option<usize>,
    holders: Vec<Holder>,
}

impl HeldConnections {
    /// Binds the listener on 127.0.0.1 with a kernel-chosen port, SO_REUSEADDR and a backlog of
    /// 4096. Connections come with [`HeldConnections::grow_to`], which is also where
    /// RLIMIT_NOFILE is raised, as that is where N is known.
    pub fn listen() -> anyhow::Result<Self> {
        Self::with_limits(MAX_PER_SOURCE, None)
    }

    /// [`HeldConnections::listen`] with fewer connections per source address and, optionally,
    /// per holder process, so that a test can cover several of both with a few thousand
    /// connections.
    fn with_limits(per_source: usize, per_holder: Option<usize>) -> anyhow::Result<Self> {
        assert!(per_source > 0, "at least one connection per source address");
        assert!(per_holder != Some(0), "at least one connection per holder");
        let listener = bind_listener().context("could not listen on 127.0.0.1")?;
        let port = listener
            .local_addr()
            .context("could not read the listener's address")?
            .port();
        Ok(Self {
            listener,
            port,
            per_source,
            per_holder,
            holders: Vec::new(),
        })
    }

    /// The listener's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections established and accepted.
    pub fn len(&self) -> usize {
        self.holders.iter().map(|holder| holder.count).sum()
    }

    /// Opens connections until `total` are established and accepted; a no-op when as many are
    /// held already, so it can be called with growing targets (1_000, then 10_000, then
    /// 100_000).
    ///
    /// First tries to raise RLIMIT_NOFILE, soft and hard, to 2*total + 1024 so that one holder
    /// can take the whole step. Where the hard limit cannot be raised it raises the soft limit
    /// to the hard one and spreads the step over as many holders as that needs; the error is
    /// only for a limit too low to hold even one connection per holder.
    pub fn grow_to(&mut self, total: usize) -> anyhow::Result<()> {
        let held = self.len();
        if total <= held {
            return Ok(());
        }
        // Checked before any holder starts: holders cannot report a bad address cleanly.
        source_address(FIRST_SOURCE, (total - 1) / self.per_source)?;
        let per_holder = match self.per_holder {
            Some(per_holder) => per_holder,
            None => holder_capacity(total)?,
        };
        let plan = HolderPlan {
            listener: self.listener.as_raw_fd(),
            target: sockaddr_in(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port)),
            first_source: u32::from(FIRST_SOURCE),
            per_source: self.per_source,
            start: 0,
            end: 0,
        };
        let mut start = held;
        while start < total {
            let end = total.min(start.saturating_add(per_holder));
            let holder = Holder::spawn(&HolderPlan { start, end, ..plan })
                .with_context(|| format!("holding connections {start}..{end} of {total}"))?;
            self.holders.push(holder);
            start = end;
        }
        Ok(())
    }
}

impl Drop for HeldConnections {
    fn drop(&mut self) {
        // Closing our ends of the socket pairs is each holder's order to exit; reaping them all
        // afterwards lets them close their descriptors in parallel.
        let pids: Vec<libc::pid_t> = self.holders.drain(..).map(|holder| holder.pid).collect();
        for pid in pids {
            reap(pid);
        }
    }
}

/// Raises RLIMIT_NOFILE towards 2*total + 1024 and returns how many connections one holder can
/// take under the resulting limit (holders inherit it).
fn holder_capacity(total: usize) -> anyhow::Result<usize> {
    let needed = u64::try_from(total)?
        .checked_mul(2)
        .and_then(|fds| fds.checked_add(1024))
        .context("connection count too large")?;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if limit.rlim_cur < needed {
        let wanted = libc::rlimit {
            rlim_cur: needed,
            rlim_max: limit.rlim_max.max(needed),
        };
        // Without CAP_SYS_RESOURCE the hard limit stays, but the soft one can go up to it.
        let fallback = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: both are valid rlimits; the kernel only reads them.
        let raised = unsafe {
            libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0
                || libc::setrlimit(libc::RLIMIT_NOFILE, &fallback) == 0
        };
        if !raised {
            return Err(io::Error::last_os_error())
                .context("could not raise RLIMIT_NOFILE for the held connections");
        }
        // SAFETY: as above.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
        }
    }
    let per_holder = limit.rlim_cur.saturating_sub(HOLDER_SPARE_FDS) / 2;
    if per_holder == 0 {
        bail!(
            "the open-file limit ({} soft, {} hard) leaves no room for connections; raise it \
             (as root with CAP_SYS_RESOURCE, or `ulimit -n`)",
            limit.rlim_cur,
            limit.rlim_max
        );
    }
    Ok(usize::try_from(per_holder).unwrap_or(usize::MAX))
}

/// What a holder is to do: connect and accept connections `start..end`.
#[derive(Clone, Copy)]
struct HolderPlan {
    listener: RawFd,
    target: libc::sockaddr_in,
    first_source: u32,
    per_source: usize,
    start: usize,
    end: usize,
}

/// A holder's report: `[stage, connection index, errno]`, stage 0 meaning all held.
type Report = [u64; 3];

/// Steps of a holder, as numbered in its [`Report`].
const STAGES: [&str; 7] = [
    "done",
    "socket",
    "setsockopt(SO_LINGER)",
    "bind",
    "connect",
    "accept",
    "setrlimit",
];

/// A holder process.
struct Holder {
    pid: libc::pid_t,
    /// Our end of the socket pair: the holder exits when it closes.
    _lifeline: OwnedFd,
    count: usize,
}

impl Holder {
    /// Forks a holder for `plan` and waits until it holds all its connections.
    fn spawn(plan: &HolderPlan) -> anyhow::Result<Self> {
        let (ours, theirs) = socket_pair().context("socketpair")?;
        // SAFETY: the child only runs `hold`, which makes async-signal-safe calls only and
        // never returns (see the module documentation).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            hold(plan, theirs.as_raw_fd());
        }
        drop(theirs);
        // Generous: a holder connects and accepts well over 10k connections a second.
        let count = plan.end - plan.start;
        let timeout = Duration::from_secs(30) + Duration::from_millis(1) * u32::try_from(count)?;
        match read_report(&ours, timeout) {
            Ok([0, _, _]) => Ok(Self {
                pid,
                _lifeline: ours,
                count,
            }),
            outcome => {
                drop(ours);
                reap(pid);
                match outcome {
                    Ok([stage, index, errno]) => {
                        let stage = usize::try_from(stage)
                            .ok()
                            .and_then(|stage| STAGES.get(stage))
                            .unwrap_or(&"?");
                        let errno = i32::try_from(errno).unwrap_or(0);
                        Err(io::Error::from_raw_os_error(errno)).with_context(|| {
                            format!("{stage} failed for connection {index} in holder {pid}")
                        })
                    }
                    Err(error) => Err(error.context(format!("holder {pid}"))),
                }
            }
        }
    }
}

/// Waits for a holder's report on `socket`.
fn read_report(socket: &OwnedFd, timeout: Duration) -> anyhow::Result<Report> {
    let deadline = Instant::now() + timeout;
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no report within {}s", timeout.as_secs());
        }
        let millis = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, as the count says.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        if ready > 0 {
            break;
        }
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error).context("poll");
            }
        }
    }
    let mut report: Report = [0; 3];
    // SAFETY: `report` is writable for the length passed. The holder sends the report in one
    // write of a few bytes on a stream socket, which arrives whole.
    let read = unsafe {
        libc::read(
            socket.as_raw_fd(),
            report.as_mut_ptr().cast::<libc::c_void>(),
            size_of::<Report>(),
        )
    };
    if usize::try_from(read).ok() != Some(size_of::<Report>()) {
        bail!("exited before reporting");
    }
    Ok(report)
}

/// The body of a holder process; see [`HolderPlan`]. Only async-signal-safe system calls and
/// integer arithmetic that cannot overflow or panic, since this runs in a fork of a possibly
/// multi-threaded process (the functions it calls keep to that too).
fn hold(plan: &HolderPlan, parent: RawFd) -> ! {
    // SAFETY (whole body): raw system calls on descriptors this process owns, with pointers to
    // live locals of the right sizes.
    unsafe {
        keep_only(plan.listener, parent);
        raise_descriptor_limit(plan, parent);
        let mut index = plan.start;
        while index < plan.end {
            connect_and_accept(plan, parent, index);
            index += 1;
        }
        // Nothing else needs the listener; holding it would keep the port bound if the parent
        // exits first.
        libc::close(plan.listener);
        let done: Report = [0, plan.end as u64, 0];
        libc::write(
            parent,
            done.as_ptr().cast::<libc::c_void>(),
            size_of::<Report>(),
        );
        // Hold until the parent closes its end (or dies): then the read returns 0 or fails.
        let mut byte = 0u8;
        while libc::read(parent, (&raw mut byte).cast::<libc::c_void>(), 1) > 0 {}
        libc::_exit(0)
    }
}

/// Closes every inherited descriptor but `listener`, `parent` and the standard three: others
/// would keep other holders' socket pairs (and whatever else the parent had open) alive after
/// the parent closes them.
///
/// # Safety
///
/// In a fresh holder, which owns every descriptor it has.
unsafe fn keep_only(listener: RawFd, parent: RawFd) {
    let (low, high) = if listener < parent {
        (listener, parent)
    } else {
        (parent, listener)
    };
    // SAFETY: the caller's promise.
    unsafe {
        close_range(3, low - 1);
        close_range(low + 1, high - 1);
        close_range(high + 1, libc::c_int::MAX);
    }
}

/// The parent raised its soft limit (and the hard one, where it could); this only matters when
/// the parent's soft limit was lowered again since. Reports failure 6 and exits if it cannot.
///
/// # Safety
///
/// In a holder, whose `parent` descriptor is its report socket.
unsafe fn raise_descriptor_limit(plan: &HolderPlan, parent: RawFd) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls with a pointer to a live local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                report_and_exit(parent, 6, plan.start);
            }
        }
    }
}

/// Makes connection `index` of the plan from its source address and accepts it, so that this
/// process holds both ends; reports which step failed (1 to 5) and exits if one does.
///
/// # Safety
///
/// In a holder, whose `parent` descriptor is its report socket.
unsafe fn connect_and_accept(plan: &HolderPlan, parent: RawFd, index: usize) {
    // Abortive close for the client ends: when this process exits, each connection is reset
    // instead of leaving a TIME_WAIT entry that would hold its source port (and a slot in the
    // kernel's TIME_WAIT table) for a minute, making an immediate rerun fail.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // `index / per_source` is small (checked by the parent), so this cannot wrap.
    let group = (index / plan.per_source) as u32;
    let source = libc::sockaddr_in {
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: plan.first_source.wrapping_add(group).to_be(),
        },
        ..plan.target
    };
    // SAFETY: raw system calls on descriptors this process owns, with pointers to live locals
    // of the right sizes.
    unsafe {
        let client = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if client < 0 {
            report_and_exit(parent, 1, index);
        }
        if libc::setsockopt(
            client,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast::<libc::c_void>(),
            size_of::<libc::linger>() as libc::socklen_t,
        ) != 0
        {
            report_and_exit(parent, 2, index);
        }
        if libc::bind(
            client,
            (&raw const source).cast::<libc::sockaddr>(),
            SOCKADDR_IN_LEN,
        ) != 0
        {
            report_and_exit(parent, 3, index);
        }
        // No signal handlers here, so connect() is not interrupted: only a fatal signal could
        // stop it.
        if libc::connect(
            client,
            (&raw const plan.target).cast::<libc::sockaddr>(),
            SOCKADDR_IN_LEN,
        ) != 0
        {
            report_and_exit(parent, 4, index);
        }
        // The connection just made is queued on the listener; no other process connects to it
        // while this holder runs, since holders run one after another.
        if libc::accept4(
            plan.listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        ) < 0
        {
            report_and_exit(parent, 5, index);
        }
    }
}

/// Closes descriptors `first..=last`, if that range is not empty. The close_range system call
/// is used directly rather than through libc, which only has a wrapper from glibc 2.34 on.
///
/// # Safety
///
/// The caller must own every descriptor in the range (true in a fresh holder).
unsafe fn close_range(first: RawFd, last: RawFd) {
    if first <= last {
        // SAFETY: see the function's contract.
        unsafe {
            libc::syscall(libc::SYS_close_range, first, last, 0);
        }
    }
}

/// Sends `[stage, index, errno]` to the parent and exits.
///
/// # Safety
///
/// Only for a holder: `parent` must be its socket to the parent.
unsafe fn report_and_exit(parent: RawFd, stage: u64, index: usize) -> ! {
    // SAFETY: reading errno and writing a local array of the length passed.
    unsafe {
        let errno = *libc::__errno_location();
        let report: Report = [stage, index as u64, errno.unsigned_abs().into()];
        libc::write(
            parent,
            report.as_ptr().cast::<libc::c_void>(),
            size_of::<Report>(),
        );
        libc::_exit(1)
    }
}

/// Waits for a holder to exit, after closing its socket pair; kills it if it does not within a
/// few seconds (it would be stuck in a system call).
fn reap(pid: libc::pid_t) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut status = 0;
        // SAFETY: plain system call on our own child.
        let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if reaped != 0 {
            // The child's exit (reaped > 0), or it is not ours to wait for any more (< 0).
            return;
        }
        if Instant::now() >= deadline {
            // SAFETY: `pid` is our unreaped child, so the id cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A connected pair of Unix stream sockets, closed on exec.
fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    let result = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The `index`-th source address after `first`, staying inside 127.0.0.0/8 and short of its
/// broadcast address.
fn source_address(first: Ipv4Addr, index: usize) -> anyhow::Result<Ipv4Addr> {
    u32::try_from(index)
        .ok()
        .and_then(|index| u32::from(first).checked_add(index))
        .map(Ipv4Addr::from)
        .filter(|address| address.is_loopback() && *address != Ipv4Addr::new(127, 255, 255, 255))
        .ok_or_else(|| anyhow!("no loopback source address left for group {index}"))
}

fn sockaddr_in(address: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: address.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*address.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

const SOCKADDR_IN_LEN: libc::socklen_t = size_of::<libc::sockaddr_in>() as libc::socklen_t;

/// The listener on 127.0.0.1 with SO_REUSEADDR and a [`BACKLOG`]-deep accept queue, closed on
/// exec so that the tracker under test does not inherit it.
fn bind_listener() -> io::Result<TcpListener> {
    // SAFETY: plain system call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let on: libc::c_int = 1;
    let address = sockaddr_in(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
    // SAFETY: `on` and `address` are live values of the lengths passed, as SO_REUSEADDR and
    // bind() expect.
    let ok = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const on).cast::<libc::c_void>(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
            && libc::bind(
                fd,
                (&raw const address).cast::<libc::sockaddr>(),
                SOCKADDR_IN_LEN,
            ) == 0
            && libc::listen(fd, BACKLOG) == 0
    };
    if !ok {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(socket))
}

/// Resident set size of a process in bytes, from /proc/<pid>/status VmRSS.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        // Kernel threads and zombies have no VmRSS line.
        .with_context(|| format!("{path} has no VmRSS line (kernel thread or exited process?)"))?;
    let kib = line
        .trim()
        .strip_suffix("kB")
        .and_then(|number| number.trim().parse::<u64>().ok())
        .with_context(|| format!("unexpected VmRSS line in {path}: {line:?}"))?;
    kib.checked_mul(1024).context("VmRSS out of range")
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::TcpStream;

    use super::*;

    /// Client ends by source address, and the number of server ends, of the established TCP
    /// connections to 127.0.0.1:`port`.
    type Established = (BTreeMap<Ipv4Addr, usize>, usize);

    /// [`Established`] from one reading of /proc/net/tcp.
    fn established_once(port: u16) -> Established {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let parse = |field: &str| {
            let (ip, port) = field.split_once(':').unwrap();
            // The kernel prints the address as the hex of its in-memory (big-endian) u32.
            let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).unwrap().swap_bytes());
            (ip, u16::from_str_radix(port, 16).unwrap())
        };
        let listener = (Ipv4Addr::LOCALHOST, port);
        // The table is produced a page at a time, not as a snapshot: while other processes open
        // and close connections an entry can be listed twice, so count each one once.
        let mut seen = BTreeSet::new();
        let mut clients = BTreeMap::new();
        let mut servers = 0;
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // State 01 is ESTABLISHED.
            if fields[3] != "01" {
                continue;
            }
            let (local, remote) = (parse(fields[1]), parse(fields[2]));
            if !seen.insert((local, remote)) {
                continue;
            }
            // Whole addresses, not ports alone: a client's ephemeral port on 127.0.0.2 may
            // well have the listener's port number.
            if remote == listener {
                *clients.entry(local.0).or_insert(0) += 1;
            }
            if local == listener {
                servers += 1;
            }
        }
        (clients, servers)
    }

    /// Asserts that the connections to `port` become `expected`, reading the table again for a
    /// while: it can also miss entries that move while it is read, and closes take a moment.
    fn assert_established(port: u16, expected: &Established) {
        let mut found = established_once(port);
        for _ in 0..50 {
            if found == *expected {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
            found = established_once(port);
        }
        assert_eq!(found, *expected);
    }

    #[test]
    fn holds_connections_over_several_sources_and_holders() {
        // 700 per address and 600 per holder: 2_000 connections take three addresses and four
        // holders, in well under a second.
        let mut held = HeldConnections::with_limits(700, Some(600)).unwrap();
        let port = held.port();
        assert_ne!(port, 0);
        assert_eq!(held.len(), 0);

        held.grow_to(500).unwrap();
        assert_eq!(held.len(), 500);
        held.grow_to(2_000).unwrap();
        assert_eq!(held.len(), 2_000);
        assert_eq!(held.holders.len(), 4);
        // Growing to a smaller target keeps what is held.
        held.grow_to(1_000).unwrap();
        assert_eq!(held.len(), 2_000);

        let clients = BTreeMap::from([
            (Ipv4Addr::new(127, 0, 0, 2), 700),
            (Ipv4Addr::new(127, 0, 0, 3), 700),
            (Ipv4Addr::new(127, 0, 0, 4), 600),
        ]);
        assert_established(port, &(clients, 2_000));

        let pids: Vec<libc::pid_t> = held.holders.iter().map(|holder| holder.pid).collect();
        drop(held);
        for pid in pids {
            // SAFETY: signal 0 only checks whether the process exists.
            assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "holder {pid} reaped");
        }
        assert_established(port, &(BTreeMap::new(), 0));
        // The listener is gone with it.
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
    }

    #[test]
    fn a_failing_holder_is_reported_and_reaped() {
        let mut held = HeldConnections::with_limits(10, Some(100)).unwrap();
        // Aim the holders at a port nobody listens on: the first connect is refused.
        held.port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let error = format!("{:#}", held.grow_to(5).unwrap_err());
        assert!(
            error.contains("connect failed for connection 0") && error.contains("refused"),
            "{error}"
        );
        assert_eq!(held.len(), 0);
        assert!(held.holders.is_empty());
        // A connection count that overflows the descriptor arithmetic is refused cleanly.
        assert!(holder_capacity(usize::MAX).is_err());
    }

    #[test]
    fn source_addresses_stay_in_loopback() {
        assert_eq!(
            source_address(FIRST_SOURCE, 3).unwrap(),
            Ipv4Addr::new(127, 0, 0, 5)
        );
        assert_eq!(
            source_address(FIRST_SOURCE, 254).unwrap(),
            Ipv4Addr::new(127, 0, 1, 0)
        );
        assert!(source_address(Ipv4Addr::new(127, 255, 255, 254), 1).is_err());
        assert!(source_address(FIRST_SOURCE, usize::MAX).is_err());
    }

    #[test]
    fn rss_of_this_process_is_plausible() {
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(rss > 1 << 20, "{rss} bytes");
        assert!(rss_bytes(u32::MAX).is_err());
    }

    /// The scale the memory benchmark uses; run with
    /// `cargo test -p xtask --release -- --ignored --nocapture holds_100k`.
    #[test]
    #[ignore = "opens 100k connections (200k descriptors): a manual check, not for every CI run"]
    fn holds_100k_connections() {
        let mut held = HeldConnections::listen().unwrap();
        for total in [1_000, 10_000, 100_000] {
            let started = Instant::now();
            held.grow_to(total).unwrap();
            println!(
                "grow_to({total}): {:.2?}, {} holders",
                started.elapsed(),
                held.holders.len()
            );
            assert_eq!(held.len(), total);
        }
        let clients = (0..9)
            .map(|group| {
                let count = if group < 8 { MAX_PER_SOURCE } else { 4_000 };
                (source_address(FIRST_SOURCE, group).unwrap(), count)
            })
            .collect();
        assert_established(held.port(), &(clients, 100_000));
        let started = Instant::now();
        drop(held);
        println!("drop: {:.2?}", started.elapsed());
    }
}
