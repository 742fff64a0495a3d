//! Whether this process may load and attach the daemon's programs: judged by its effective
//! capabilities, not its user id, so that a service given the capabilities (and not root)
//! runs, and root stripped of them (a container's, or a `--bounding-set` one) is told why.

/// A capability the kernel checks: `CAP_BPF` to load tracing programs, `CAP_PERFMON` to
/// attach them; `CAP_SYS_ADMIN` stands in for either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Bpf,
    Perfmon,
}

impl Capability {
    fn name(self) -> &'static str {
        match self {
            Self::Bpf => "CAP_BPF",
            Self::Perfmon => "CAP_PERFMON",
        }
    }

    /// Bit numbers in the capability sets (`linux/capability.h`).
    fn bit(self) -> u32 {
        match self {
            Self::Bpf => 39,
            Self::Perfmon => 38,
        }
    }
}

const CAP_SYS_ADMIN: u32 = 21;

/// The capabilities missing from an effective set (`CapEff` of `/proc/self/status`).
pub fn missing(effective: u64) -> Vec<Capability> {
    let has = |bit: u32| effective & (1 << bit) != 0;
    [Capability::Bpf, Capability::Perfmon]
        .into_iter()
        .filter(|capability| !has(capability.bit()) && !has(CAP_SYS_ADMIN))
        .collect()
}

/// This process's effective capability set.
pub fn effective() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_effective(&status).ok_or_else(|| anyhow::anyhow!("no CapEff line in /proc/self/status"))
}

fn parse_effective(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// One line for the operator when capabilities are missing.
pub fn refusal(missing: &[Capability]) -> String {
    let names: Vec<&str> = missing.iter().map(|capability| capability.name()).collect();
    format!(
        "must run as root or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (missing {}): \
         it loads eBPF programs into the kernel (try sudo)",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\ttracker\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_effective(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_effective("Name:\ttracker\n"), None);
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon() {
        assert_eq!(missing(0), [Capability::Bpf, Capability::Perfmon]);
        assert_eq!(missing(1 << 39), [Capability::Perfmon]);
        assert!(missing(1 << 39 | 1 << 38).is_empty());
        assert!(missing(1 << CAP_SYS_ADMIN).is_empty());
    }

    #[test]
    fn the_refusal_names_what_is_missing() {
        assert!(refusal(&[Capability::Perfmon]).contains("(missing CAP_PERFMON)"));
    }
}
