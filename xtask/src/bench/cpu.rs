//! What the machine's CPUs did while a load ran, from `/proc/stat`: work done, and time the
//! hypervisor gave other guests.

use anyhow::{Context as _, anyhow};

/// The machine's CPU time so far, from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuTicks {
    /// user, nice, system, irq, softirq: work done.
    busy: u64,
    /// Time the hypervisor ran something else while this machine wanted its CPUs.
    steal: u64,
}

/// What the CPUs did over some period (see [`CpuTicks::since`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuUse {
    busy_ticks: u64,
    steal_ticks: u64,
}

impl CpuTicks {
    pub(crate) fn read() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat
            .lines()
            .next()
            .filter(|line| line.starts_with("cpu "))
            .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
        Self::parse(line)
    }

    /// `cpu  user nice system idle iowait irq softirq steal ...`
    fn parse(line: &str) -> anyhow::Result<Self> {
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading /proc/stat's cpu line {line:?}"))?;
        let field = |index: usize| fields.get(index).copied().unwrap_or(0);
        Ok(Self {
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            steal: field(7),
        })
    }

    pub(crate) fn since(&self, before: &Self) -> CpuUse {
        CpuUse {
            busy_ticks: self.busy.saturating_sub(before.busy),
            steal_ticks: self.steal.saturating_sub(before.steal),
        }
    }
}

impl CpuUse {
    /// Nanoseconds of work done.
    pub(crate) fn busy_ns(&self) -> f64 {
        // SAFETY: sysconf only reads a configuration value.
        let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.busy_ticks as f64 * 1e9 / ticks_per_s
    }

    /// Share of the time the CPUs were wanted that the hypervisor gave to others.
    pub(crate) fn steal_share(&self) -> f64 {
        let wanted = self.busy_ticks + self.steal_ticks;
        if wanted == 0 {
            0.0
        } else {
            self.steal_ticks as f64 / wanted as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_is_work_done_and_steal_is_apart() {
        let before = CpuTicks::parse("cpu  100 5 50 1000 7 3 2 40 0 0").unwrap();
        let after = CpuTicks::parse("cpu  160 5 70 1100 9 4 6 100 0 0").unwrap();
        let used = after.since(&before);
        // user 60 + system 20 + irq 1 + softirq 4; idle and iowait are not work.
        assert_eq!(used.busy_ticks, 85);
        assert_eq!(used.steal_ticks, 60);
        assert!((used.steal_share() - 60.0 / 145.0).abs() < 1e-9);
    }
}
