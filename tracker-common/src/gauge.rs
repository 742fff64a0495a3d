//! Live gauges: how many connection lives run now at each listening port, and how many of them
//! are busy, and the most that ran (or were busy) at once in the current report interval, kept by the kernel with atomic operations so
//! that the peak is exact in the order the kernel saw the opens, whatever the ring loses.
//!
//! The per-CPU [`EndpointTotals`](crate::EndpointTotals) cannot give a peak: a maximum of a
//! count spread over CPUs is not the maximum of its parts. So each open also adds one to a
//! count shared by all CPUs and raises the interval's peak to the new value with a
//! compare-and-swap; each end takes one off.
//!
//! Intervals are told apart by an epoch the daemon bumps at each report ([`GAUGE_EPOCH_MAP`]):
//! the peak is stored with the epoch it belongs to ([`Peak`]), so the daemon never writes a
//! value the programs update (its writes and their atomics would race) and a program that
//! read the epoch just before a bump cannot overwrite the next interval's peak.

/// Name of the array of [`LiveGauges`] by gauge slot, shared by all CPUs.
pub const LIVE_GAUGES_MAP: &str = "LIVE_GAUGES";
/// Capacity of [`LIVE_GAUGES_MAP`] and [`GAUGE_SLOTS_MAP`]: listening ports times namespaces
/// and families.
pub const LIVE_GAUGES_MAX_ENTRIES: u32 = 4096;
/// Name of the map that gives each [`GaugeKey`] its slot (`u32`) in [`LIVE_GAUGES_MAP`]. The
/// state change program gives it once, when the key's first endpoint gets its totals slot
/// (see `ENDPOINT_SLOTS_MAP`), and records it for that endpoint in [`ENDPOINT_GAUGES_MAP`]:
/// a count moves the gauges of a connection by its endpoint's slot, with array accesses only,
/// where a lookup hashed on the key cost about as much as the rest of the program.
pub const GAUGE_SLOTS_MAP: &str = "GAUGE_SLOTS";
/// Name of the array, by endpoint slot, of that endpoint's gauge slot plus one (0: none yet,
/// or none could be given: its moves are then missed and counted so).
pub const ENDPOINT_GAUGES_MAP: &str = "ENDPOINT_GAUGES";
/// Name of the one-entry array holding the current report epoch (`u64`, only its low
/// 32 bits count), written by the daemon at each report.
pub const GAUGE_EPOCH_MAP: &str = "GAUGE_EPOCH";

/// Where lives are counted: the local port of server-side connections in one network
/// namespace and address family (a socket's family is its listener's: an IPv4 client of a
/// dual-stack listener is an `AF_INET6` socket). One listener per key is the usual case; where
/// several share one (listeners on one port but different addresses), the daemon cannot
/// split the count and keeps its own peak for them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct GaugeKey {
    pub netns: u32,
    pub family: u16,
    /// Host byte order.
    pub port: u16,
}

/// One way of counting lives: how many run now and the interval's peak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Gauge {
    /// Lives running now, as a wrapping two's-complement count: the close of a connection the
    /// kernel never saw open (one the daemon adopted at start-up) takes it below the truth,
    /// possibly below zero; the daemon adds back what it counts itself.
    pub now: u64,
    /// The interval's peak of `now`, packed with its epoch (see [`Peak`]).
    pub peak: u64,
}

/// The two lives the daemon may report (see `EndpointTotals`): from the handshake's end, and
/// from the server's accept (connections whose accept cannot be seen count from the
/// handshake in both). Both are kept so that the count never depends on which accept hook the
/// daemon managed to attach; the daemon reads the one it reports. Beside them, the busy
/// connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct LiveGauges {
    pub by_handshake: Gauge,
    pub by_accept: Gauge,
    /// Connections in a turn whose server has not sent anything in it yet (see
    /// `EndpointTotals::busy_now`): up at a request's first payload, down at the first send of
    /// its answer, or at its end if it was never answered.
    pub busy: Gauge,
}

/// A peak and the epoch it belongs to, packed into one `u64` (epoch high, value low) so one
/// compare-and-swap updates both. The peak is signed (see [`Gauge::now`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peak {
    pub epoch: u32,
    pub value: i32,
}

impl Peak {
    pub const fn pack(self) -> u64 {
        ((self.epoch as u64) << 32) | (self.value as u32 as u64)
    }

    pub const fn unpack(packed: u64) -> Self {
        Self {
            epoch: (packed >> 32) as u32,
            value: packed as u32 as i32,
        }
    }

    /// What a program that saw the count reach `value` in `epoch` stores over `stored` (a
    /// packed peak), or `None` to leave it: the peak stays when it is as high already; a peak
    /// of an earlier epoch is replaced; one of the next epoch (the daemon bumped the epoch
    /// after this program read it) is left alone, so a late program never spoils the next
    /// interval. Any other epoch is an earlier one, however long ago (epochs wrap).
    pub const fn raised(stored: u64, epoch: u32, value: i32) -> Option<u64> {
        let current = Self::unpack(stored);
        let replace = if current.epoch == epoch {
            value > current.value
        } else {
            current.epoch != epoch.wrapping_add(1)
        };
        if replace {
            Some(Self { epoch, value }.pack())
        } else {
            None
        }
    }

    /// The peak `stored` holds for `epoch`, if any program raised it in that epoch.
    pub const fn of_epoch(stored: u64, epoch: u32) -> Option<i32> {
        let current = Self::unpack(stored);
        if current.epoch == epoch {
            Some(current.value)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_epoch_and_signed_value() {
        for (epoch, value) in [(0, 0), (1, 5), (u32::MAX, -3), (7, i32::MAX), (9, i32::MIN)] {
            let peak = Peak { epoch, value };
            assert_eq!(Peak::unpack(peak.pack()), peak);
        }
    }

    #[test]
    fn a_peak_rises_only_within_its_epoch_and_never_goes_back_an_epoch() {
        let stored = Peak {
            epoch: 4,
            value: 10,
        }
        .pack();
        assert_eq!(Peak::raised(stored, 4, 9), None);
        assert_eq!(Peak::raised(stored, 4, 10), None);
        assert_eq!(
            Peak::raised(stored, 4, 11),
            Some(
                Peak {
                    epoch: 4,
                    value: 11
                }
                .pack()
            )
        );
        // A new interval starts from whatever the count is, even lower.
        assert_eq!(
            Peak::raised(stored, 5, 2),
            Some(Peak { epoch: 5, value: 2 }.pack())
        );
        // A program that read the epoch before the bump leaves the new interval alone.
        assert_eq!(Peak::raised(stored, 3, 50), None);
        // An entry last raised long ago, or never (zeroed), is replaced.
        assert_eq!(
            Peak::raised(Peak { epoch: 1, value: 8 }.pack(), 9000, 1),
            Some(
                Peak {
                    epoch: 9000,
                    value: 1
                }
                .pack()
            )
        );
        assert_eq!(
            Peak::raised(0, 9000, 1),
            Some(
                Peak {
                    epoch: 9000,
                    value: 1
                }
                .pack()
            )
        );
        // Epochs wrap.
        let wrapped = Peak {
            epoch: u32::MAX,
            value: 1,
        }
        .pack();
        assert_eq!(
            Peak::raised(wrapped, 0, 1),
            Some(Peak { epoch: 0, value: 1 }.pack())
        );
        assert_eq!(
            Peak::raised(Peak { epoch: 0, value: 1 }.pack(), u32::MAX, 9),
            None
        );
    }

    #[test]
    fn the_peak_of_an_epoch_is_found_only_there() {
        let stored = Peak {
            epoch: 2,
            value: -1,
        }
        .pack();
        assert_eq!(Peak::of_epoch(stored, 2), Some(-1));
        assert_eq!(Peak::of_epoch(stored, 1), None);
        assert_eq!(Peak::of_epoch(0, 0), Some(0));
        assert_eq!(Peak::of_epoch(0, 1), None);
    }
}
