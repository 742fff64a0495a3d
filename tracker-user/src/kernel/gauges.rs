//! The daemon's side of the kernel's live gauges (`tracker_common::gauge`): at each report it
//! closes the interval's epoch, then reads every gauge, so that peaks stored with the closed
//! epoch are that interval's.

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use tracker_common::gauge::{
    GAUGE_EPOCH_MAP, GAUGE_SLOTS_MAP, GaugeKey, LIVE_GAUGES_MAP, LiveGauges,
};

/// The kernel's gauges as read at a report, right after the epoch they close.
#[derive(Debug, Clone, Default)]
pub struct GaugeReading {
    /// The epoch of the interval that ends here: peaks stored with it are this interval's.
    pub ended_epoch: u32,
    pub gauges: Vec<(GaugeKey, LiveGauges)>,
    /// False when the kernel missed a gauge update in the interval (its table was full, or
    /// other CPUs kept changing a peak): the interval's kernel peaks are then not used.
    pub complete: bool,
}

/// The gauge maps and the epoch the programs count peaks in.
pub struct KernelGauges {
    /// Each port's slot in `gauges`.
    slots: HashMap<MapData, GaugeKey, u32>,
    gauges: Array<MapData, LiveGauges>,
    epoch_map: Array<MapData, u64>,
    /// The epoch the programs count in now (the map starts at 0 at load).
    epoch: u32,
    /// Gauge updates the kernel had missed at the previous reading.
    missed: u64,
}

impl KernelGauges {
    /// Takes the gauge maps out of the loaded object.
    pub fn take_from(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let slots = ebpf
            .take_map(GAUGE_SLOTS_MAP)
            .ok_or_else(|| anyhow!("map {GAUGE_SLOTS_MAP} missing from the eBPF object"))?;
        let gauges = ebpf
            .take_map(LIVE_GAUGES_MAP)
            .ok_or_else(|| anyhow!("map {LIVE_GAUGES_MAP} missing from the eBPF object"))?;
        let epoch_map = ebpf
            .take_map(GAUGE_EPOCH_MAP)
            .ok_or_else(|| anyhow!("map {GAUGE_EPOCH_MAP} missing from the eBPF object"))?;
        Ok(Self {
            slots: HashMap::try_from(slots)?,
            gauges: Array::try_from(gauges)?,
            epoch_map: Array::try_from(epoch_map)?,
            epoch: 0,
            missed: 0,
        })
    }

    /// Ends the current epoch: programs count peaks in the next one from here. Returns the
    /// epoch that ended.
    pub fn end_epoch(&mut self) -> anyhow::Result<u32> {
        let ended = self.epoch;
        let next = ended.wrapping_add(1);
        self.epoch_map
            .set(0, u64::from(next), 0)
            .with_context(|| format!("writing {GAUGE_EPOCH_MAP}"))?;
        self.epoch = next;
        Ok(ended)
    }

    /// Reads the gauges after [`KernelGauges::end_epoch`] ended `ended_epoch`; `missed` is the
    /// kernel's count of gauge updates it could not make since load, read after the epoch
    /// ended.
    pub fn read(&mut self, ended_epoch: u32, missed: u64) -> anyhow::Result<GaugeReading> {
        let slots = self
            .slots
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("reading {GAUGE_SLOTS_MAP}"))?;
        let gauges = slots
            .into_iter()
            .map(|(key, slot)| Ok((key, self.gauges.get(&slot, 0)?)))
            .collect::<Result<Vec<_>, aya::maps::MapError>>()
            .with_context(|| format!("reading {LIVE_GAUGES_MAP}"))?;
        let complete = missed == self.missed;
        self.missed = missed;
        Ok(GaugeReading {
            ended_epoch,
            gauges,
            complete,
        })
    }
}
