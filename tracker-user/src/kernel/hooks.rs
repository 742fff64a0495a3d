//! Which kernel hook serves each capability, chosen by trying.
//!
//! Every capability lists its candidate hooks best first: fentry/fexit (one program run per
//! firing through a BPF trampoline, arguments as the function's BTF types them), then
//! kprobe/kretprobe (a breakpoint per firing; a return needs an entry half that stashes the
//! arguments), then raw tracepoints (the tracepoint's C arguments), then classic tracepoints
//! (the kernel formats a perf record of every field first). The first candidate that loads
//! and attaches serves the capability; never a kernel version check, since distributions
//! backport hooks and compile others out (kprobes are absent and fentry refused on some
//! hardened kernels, `sock:sock_*_length` exist only from 6.6).
//!
//! * Lifecycle, required: `sock:inet_sock_set_state` (4.16+), raw where the kernel's BTF
//!   gives the socket layout, else classic. No function hook sees listen(), the server-side
//!   SYN_RECV → ESTABLISHED step and every CLOSE from one attach point.
//! * Turns (busy time, and sessions through the same programs): fexit on `tcp_recvmsg` and
//!   `tcp_sendmsg`, else kprobes (a read's bytes from `tcp_cleanup_rbuf`, never from a
//!   kretprobe whose pool blocked readers would hold; see the eBPF program), else the
//!   `sock:sock_recv_length` / `sock:sock_send_length` tracepoints (6.6+). Where `tcp_recvmsg`'s parameter list
//!   changed (5.19 dropped `nonblock`, 6.16 `addr_len`), the candidate matching the kernel's
//!   BTF is used.
//! * Accept: fentry on `security_sock_graft` (the accepted socket joining its file, once its
//!   handshake is fully processed), else fexit on `inet_csk_accept`, else a kprobe on
//!   `security_sock_graft`, else a kretprobe on `inet_csk_accept` (no tracepoint marks it).
//! * Close (the server's own close): fentry on `tcp_close`, else kprobe.
//!
//! A capability without a usable candidate is one short warning saying what the operator
//! loses, and its figures are reported as unavailable; why each candidate was refused is
//! logged at debug level. `--hooks` restricts the choice to one kind, for tests
//! of each fallback and for comparing their cost; a forced kind the kernel refuses is an
//! error, not a silent fallback.

use anyhow::{Context as _, anyhow, bail};
use aya::programs::{FEntry, FExit, KProbe, RawTracePoint, TracePoint};
use aya::{Btf, Ebpf};

use crate::kernel::btf::KernelLayout;
use crate::kernel::tracefs::{Tracefs, check_format};
use table::HOOKS;

/// What the daemon can measure, each served by one hook (or by none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Listeners and connections opening and closing. Required.
    Lifecycle,
    /// Request/response turns (busy time) and the payload read for sessions.
    Turns,
    /// The moment the server accepts a connection.
    Accept,
    /// The moment the server closes a connection.
    Close,
}

impl Capability {
    pub const ALL: [Self; 4] = [Self::Lifecycle, Self::Turns, Self::Accept, Self::Close];

    /// The name used in logs, JSON (`hooks`) and Prometheus (`capability` label).
    pub fn name(self) -> &'static str {
        match self {
            Self::Lifecycle => "lifecycle",
            Self::Turns => "turns",
            Self::Accept => "accept",
            Self::Close => "close",
        }
    }

    /// What the operator loses without it, for the warning.
    fn consequence(self) -> &'static str {
        match self {
            Self::Lifecycle => "tracker cannot run",
            Self::Turns => "busy time and sessions are null",
            Self::Accept => "`accepted` is null and connections' lives start at the handshake",
            Self::Close => "`server_closed` is null",
        }
    }
}

/// The hook serving each capability (None: unavailable on this kernel), as a label such as
/// `fexit tcp_recvmsg/tcp_sendmsg`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookChoice {
    hooks: [Option<&'static str>; 4],
    /// Left unattached as the operator asked (`--connections-only`), not for want of a hook.
    declined: [bool; 4],
}

impl HookChoice {
    pub fn get(&self, capability: Capability) -> Option<&'static str> {
        self.hooks[capability as usize]
    }

    pub fn set(&mut self, capability: Capability, label: Option<&'static str>) {
        self.hooks[capability as usize] = label;
    }

    /// Leaves `capability` unserved because the operator asked so.
    pub fn decline(&mut self, capability: Capability) {
        self.hooks[capability as usize] = None;
        self.declined[capability as usize] = true;
    }

    /// Whether `capability` is served.
    pub fn has(&self, capability: Capability) -> bool {
        self.get(capability).is_some()
    }

    /// Every capability with its hook.
    pub fn iter(&self) -> impl Iterator<Item = (Capability, Option<&'static str>)> + '_ {
        Capability::ALL
            .into_iter()
            .map(|capability| (capability, self.get(capability)))
    }

    /// Where connections' lives start: at the server's accept where the accept hook sees each
    /// accepted connection after its handshake's last step (`security_sock_graft`, under the
    /// socket's lock), else at the handshake's end. The fallback on `inet_csk_accept` can run
    /// before that step has tracked the connection, and would miss the start of its life.
    pub fn life_start(&self) -> LifeStart {
        match self.get(Capability::Accept) {
            Some(label) if label.ends_with("security_sock_graft") => LifeStart::Accept,
            _ => LifeStart::Handshake,
        }
    }

    /// `lifecycle: raw tracepoint inet_sock_set_state, turns: ..., accept: unavailable`
    /// (`off as asked` for a declined capability).
    pub fn describe(&self) -> String {
        self.iter()
            .map(|(capability, label)| {
                let hook = match label {
                    Some(label) => label,
                    None if self.declined[capability as usize] => "off as asked",
                    None => "unavailable",
                };
                format!("{}: {hook}", capability.name())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Where a connection's life, as reported, starts. It always ends at the server's close (or a
/// reset, if that comes first); the accept queue before it and the closing phase after it are
/// reported beside it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LifeStart {
    /// At the handshake's end: the connection's time in the accept queue is part of its life.
    #[default]
    Handshake,
    /// At the server's `accept()`, as the server itself counts.
    Accept,
}

impl LifeStart {
    /// Its name in reports (`life_from`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::Accept => "accept",
        }
    }
}

/// A kind of hook, for `--hooks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookKind {
    /// fentry/fexit (BPF trampolines).
    Fentry,
    /// kprobe/kretprobe.
    Kprobe,
    /// Raw tracepoints, else classic ones.
    Tracepoint,
}

impl HookKind {
    fn name(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        }
    }
}

mod table;

/// One program to load and attach.
enum Attach {
    Raw {
        tracepoint: &'static str,
        program: &'static str,
    },
    /// Checked against the tracepoint's format file: `fields` are (name, offset, size).
    Classic {
        category: &'static str,
        name: &'static str,
        program: &'static str,
        fields: &'static [(&'static str, usize, usize)],
    },
    Fentry {
        function: &'static str,
        program: &'static str,
    },
    Fexit {
        function: &'static str,
        program: &'static str,
    },
    Kprobe {
        function: &'static str,
        program: &'static str,
    },
    Kretprobe {
        function: &'static str,
        program: &'static str,
    },
}

impl Attach {
    fn program(&self) -> &'static str {
        match *self {
            Self::Raw { program, .. }
            | Self::Classic { program, .. }
            | Self::Fentry { program, .. }
            | Self::Fexit { program, .. }
            | Self::Kprobe { program, .. }
            | Self::Kretprobe { program, .. } => program,
        }
    }
}

/// One way to serve a capability: every program in `attach` or none.
struct Candidate {
    kind: HookKind,
    /// Raw tracepoints are skipped with `--classic-tracepoints`.
    raw: bool,
    label: &'static str,
    /// Functions whose parameter count (from the kernel's BTF) must be one of these.
    params: &'static [(&'static str, &'static [usize])],
    /// The programs read socket fields at offsets from the kernel's BTF.
    needs_sock_layout: bool,
    attach: &'static [Attach],
}

struct CapabilityHooks {
    capability: Capability,
    candidates: &'static [Candidate],
}

/// What attaching needs besides the programs.
pub struct AttachSettings<'a> {
    pub layout: &'a KernelLayout,
    /// Skip raw tracepoints (`--classic-tracepoints`).
    pub classic_tracepoints: bool,
    /// Only this kind of hook for the capabilities that have one (`--hooks`).
    pub forced: Option<HookKind>,
    /// Capabilities the operator asked to do without (`--connections-only`): left unattached,
    /// reported as unavailable, said once at start-up.
    pub declined: &'a [Capability],
}

/// Attaches every capability to its best usable hook. Fails if the lifecycle cannot be
/// served, or a capability cannot be served by a forced kind it has candidates of; warns
/// once per other capability left unavailable.
pub fn attach_all(
    ebpf: &mut Ebpf,
    tracefs: &mut Option<Tracefs>,
    settings: &AttachSettings<'_>,
) -> anyhow::Result<HookChoice> {
    let mut btf = None;
    let mut choice = HookChoice::default();
    for hooks in HOOKS {
        let capability = hooks.capability;
        if settings.declined.contains(&capability) {
            choice.decline(capability);
            log::info!(
                "{} not attached, as asked: {}",
                capability.name(),
                capability.consequence()
            );
            continue;
        }
        let forced = settings
            .forced
            .filter(|_| capability != Capability::Lifecycle);
        let candidates: Vec<&Candidate> = hooks
            .candidates
            .iter()
            .filter(|candidate| forced.is_none_or(|kind| candidate.kind == kind))
            .filter(|candidate| !(candidate.raw && settings.classic_tracepoints))
            .collect();
        let mut refusals = Vec::new();
        for candidate in &candidates {
            match try_candidate(ebpf, tracefs, &mut btf, settings.layout, candidate) {
                Ok(()) => {
                    choice.set(capability, Some(candidate.label));
                    break;
                }
                Err(error) => {
                    log::debug!(
                        "{}: {} not used: {error:#}",
                        capability.name(),
                        candidate.label
                    );
                    refusals.push(format!("{}: {error:#}", candidate.label));
                }
            }
        }
        if choice.has(capability) {
            continue;
        }
        let missing = if refusals.is_empty() {
            "no candidate hook".to_owned()
        } else {
            refusals.join("; ")
        };
        match forced {
            _ if capability == Capability::Lifecycle => {
                bail!("no usable hook for {}: {missing}", capability.name())
            }
            Some(kind) if !candidates.is_empty() => bail!(
                "--hooks {}: this kernel cannot serve {} that way: {missing}",
                kind.name(),
                capability.name()
            ),
            // The refused candidates' errors are long and name system calls: they were
            // logged at debug level above, one line each.
            Some(kind) => log::warn!(
                "{} unavailable (no {} hook for it): {}",
                capability.name(),
                kind.name(),
                capability.consequence()
            ),
            None => log::warn!(
                "{} unavailable on this kernel: {}; RUST_LOG=debug shows why",
                capability.name(),
                capability.consequence()
            ),
        }
    }
    Ok(choice)
}

/// Loads and attaches every program of `candidate`, or leaves none of them loaded.
fn try_candidate(
    ebpf: &mut Ebpf,
    tracefs: &mut Option<Tracefs>,
    btf: &mut Option<Btf>,
    layout: &KernelLayout,
    candidate: &Candidate,
) -> anyhow::Result<()> {
    for &(function, wanted) in candidate.params {
        match layout.params.count(function) {
            Some(count) if wanted.contains(&count) => {}
            Some(count) => bail!("{function} takes {count} parameters here, not {wanted:?}"),
            None => bail!("{function} is not described in the kernel's BTF"),
        }
    }
    if candidate.needs_sock_layout && layout.sock.is_none() {
        bail!("no socket layout in the kernel's BTF");
    }
    let mut loaded = Vec::new();
    for attach in candidate.attach {
        let result = attach_one(ebpf, tracefs, btf, attach);
        // Loaded even if the attach failed: unloaded below with the others.
        loaded.push(attach.program());
        if let Err(error) = result {
            for program in loaded {
                unload(ebpf, program);
            }
            return Err(error);
        }
    }
    Ok(())
}

fn attach_one(
    ebpf: &mut Ebpf,
    tracefs: &mut Option<Tracefs>,
    btf: &mut Option<Btf>,
    attach: &Attach,
) -> anyhow::Result<()> {
    let program_name = attach.program();
    let program = ebpf
        .program_mut(program_name)
        .ok_or_else(|| anyhow!("program {program_name} missing from the eBPF object"))?;
    let loading = || format!("loading program {program_name} (verifier or BPF support)");
    match *attach {
        Attach::Raw { tracepoint, .. } => {
            let program: &mut RawTracePoint = program.try_into()?;
            program
                .load()
                .map_err(|e| anyhow!(e))
                .with_context(loading)?;
            program
                .attach(tracepoint)
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("attaching raw tracepoint {tracepoint}"))?;
        }
        Attach::Classic {
            category,
            name,
            fields,
            ..
        } => {
            let tracefs = match tracefs {
                Some(tracefs) => tracefs,
                None => tracefs.insert(Tracefs::find_or_mount()?),
            };
            attach_classic(
                program.try_into()?,
                tracefs,
                (category, name),
                fields,
                &loading,
            )?;
        }
        Attach::Fentry { function, .. } => {
            let btf = kernel_btf(btf)?;
            let program: &mut FEntry = program.try_into()?;
            program
                .load(function, btf)
                .map_err(|e| anyhow!(e))
                .with_context(loading)?;
            program
                .attach()
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("attaching fentry to {function}"))?;
        }
        Attach::Fexit { function, .. } => {
            let btf = kernel_btf(btf)?;
            let program: &mut FExit = program.try_into()?;
            program
                .load(function, btf)
                .map_err(|e| anyhow!(e))
                .with_context(loading)?;
            program
                .attach()
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("attaching fexit to {function}"))?;
        }
        Attach::Kprobe { function, .. } | Attach::Kretprobe { function, .. } => {
            let program: &mut KProbe = program.try_into()?;
            program
                .load()
                .map_err(|e| anyhow!(e))
                .with_context(loading)?;
            program
                .attach(function, 0)
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("attaching kprobe to {function}"))?;
        }
    }
    Ok(())
}

/// Loads and attaches a classic tracepoint program to `category:name`, once the kernel's
/// record layout is checked against the `fields` the program reads; `loading` names the load
/// in its error.
fn attach_classic(
    program: &mut TracePoint,
    tracefs: &Tracefs,
    (category, name): (&str, &str),
    fields: &[(&str, usize, usize)],
    loading: &dyn Fn() -> String,
) -> anyhow::Result<()> {
    let format = tracefs.format(category, name)?;
    check_format(&format, fields).map_err(|mismatch| {
        anyhow!("{category}:{name} has a layout this build does not know: {mismatch}")
    })?;
    program
        .load()
        .map_err(|e| anyhow!(e))
        .with_context(loading)?;
    program
        .attach(category, name)
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("attaching to {category}:{name}"))?;
    Ok(())
}

/// The kernel's BTF as aya reads it (fentry/fexit programs are loaded against it), parsed
/// once and only if a function hook is tried.
fn kernel_btf(btf: &mut Option<Btf>) -> anyhow::Result<&Btf> {
    if btf.is_none() {
        *btf = Some(
            Btf::from_sys_fs()
                .map_err(|e| anyhow!(e))
                .context("reading the kernel's BTF")?,
        );
    }
    Ok(btf.as_ref().expect("set above"))
}

/// Unloads `program_name` (and detaches it), so a candidate not used leaves nothing behind.
fn unload(ebpf: &mut Ebpf, program_name: &str) {
    use aya::programs::Program;
    let Some(program) = ebpf.program_mut(program_name) else {
        return;
    };
    // Not loaded is the only failure, and then there is nothing to undo.
    let _ = match program {
        Program::RawTracePoint(program) => program.unload(),
        Program::TracePoint(program) => program.unload(),
        Program::FEntry(program) => program.unload(),
        Program::FExit(program) => program.unload(),
        Program::KProbe(program) => program.unload(),
        _ => Ok(()),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capability_has_candidates_in_order_of_preference() {
        let rank = |kind: HookKind| match kind {
            HookKind::Fentry => 0,
            HookKind::Kprobe => 1,
            HookKind::Tracepoint => 2,
        };
        let mut seen = Vec::new();
        for hooks in HOOKS {
            seen.push(hooks.capability);
            assert!(!hooks.candidates.is_empty());
            let ranks: Vec<_> = hooks
                .candidates
                .iter()
                .map(|candidate| (rank(candidate.kind), !candidate.raw))
                .collect();
            let mut sorted = ranks.clone();
            sorted.sort();
            assert_eq!(ranks, sorted, "{:?} out of order", hooks.capability);
        }
        assert_eq!(seen, Capability::ALL);
    }

    #[test]
    fn hook_choice_describes_every_capability() {
        let mut choice = HookChoice::default();
        choice.set(Capability::Turns, Some("fexit tcp_recvmsg/tcp_sendmsg"));
        assert!(choice.has(Capability::Turns));
        assert!(!choice.has(Capability::Accept));
        assert_eq!(
            choice.describe(),
            "lifecycle: unavailable, turns: fexit tcp_recvmsg/tcp_sendmsg, \
             accept: unavailable, close: unavailable"
        );
    }

    #[test]
    fn a_declined_capability_is_unserved_and_said_to_be_off_as_asked() {
        let mut choice = HookChoice::default();
        choice.set(
            Capability::Lifecycle,
            Some("raw tracepoint inet_sock_set_state"),
        );
        choice.decline(Capability::Turns);
        assert!(!choice.has(Capability::Turns));
        assert_eq!(
            choice.describe(),
            "lifecycle: raw tracepoint inet_sock_set_state, turns: off as asked, \
             accept: unavailable, close: unavailable"
        );
    }
}
