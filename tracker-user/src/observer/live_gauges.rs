//! The interval's peaks of connections and of busy connections from the kernel's live gauges
//! (see `tracker_common::gauge`): exact in the order the kernel saw opens, closes, requests
//! and answers, whatever events were lost. The model's peak (from events) falls short under
//! loss; its busy peak also counts a connection busy until its next request, since it learns
//! when a turn ended only then.
//!
//! A gauge counts the lives at one (namespace, family, port). It is a listener's count where
//! that listener is the only one there, the usual case; where listeners on one port differ
//! only by address, the gauge cannot be split and their peaks stay the model's. The kernel
//! never saw the opens of connections that predate the daemon, nor the closes the daemon
//! found itself: the listener's [`DaemonCounts`](super::kernel_totals::DaemonCounts) hold
//! those, and are added to the gauge.

use std::net::{IpAddr, SocketAddr};

use rustc_hash::FxHashMap;
use tracker_common::{
    AF_INET, AF_INET6,
    gauge::{Gauge, GaugeKey, Peak},
};

use super::kernel_totals::GaugePeaks;
use super::{GaugeReading, LifeStart, Observer};
use crate::tracker_id::{Role, TrackerId};

/// What each gauge counted when the previous interval ended: a peak is at least that.
#[derive(Debug, Default)]
pub(super) struct GaugeStarts(FxHashMap<GaugeKey, GaugeStart>);

/// A port's lives and busy connections when the previous interval ended.
#[derive(Debug, Default, Clone, Copy)]
struct GaugeStart {
    lives: i64,
    busy: i64,
}

impl Observer {
    /// Takes each listener's peak for the interval ending now from `reading`, for
    /// [`Observer::report`].
    pub fn apply_live_gauges(&mut self, reading: &GaugeReading) {
        for listener in self.listeners.values_mut() {
            listener.ledger.gauge_peaks = None;
        }
        let mut starts = std::mem::take(&mut self.gauge_starts);
        for &(key, gauges) in &reading.gauges {
            let lives = match self.life_start {
                LifeStart::Handshake => gauges.by_handshake,
                LifeStart::Accept => gauges.by_accept,
            };
            let now = GaugeStart {
                lives: lives.now as i64,
                busy: gauges.busy.now as i64,
            };
            // A gauge first seen now was created in this interval, from zero.
            let start = starts.0.insert(key, now).unwrap_or_default();
            if !reading.complete {
                continue;
            }
            if let Some(id) = self.only_listener_at(key)
                && let Some(listener) = self.listeners.get_mut(&id)
            {
                listener.ledger.gauge_peaks = Some(GaugePeaks {
                    lives: interval_peak(lives, start.lives, reading),
                    busy: interval_peak(gauges.busy, start.busy, reading),
                });
            }
        }
        self.gauge_starts = starts;
    }

    /// The one listener `key` counts for, if there is exactly one.
    fn only_listener_at(&self, key: GaugeKey) -> Option<TrackerId> {
        let netns = self.netns_key(key.netns);
        let mut found = self.listeners.keys().filter(|id| {
            id.role == Role::Listen
                && id.netns == netns
                && id.addr.port() == key.port
                && family_of(id.addr) == key.family
        });
        let only = *found.next()?;
        found.next().is_none().then_some(only)
    }
}

/// The peak `gauge` reached in the interval `reading` ends, which began at `start`.
fn interval_peak(gauge: Gauge, start: i64, reading: &GaugeReading) -> i64 {
    Peak::of_epoch(gauge.peak, reading.ended_epoch).map_or(start, |peak| start.max(i64::from(peak)))
}

fn family_of(addr: SocketAddr) -> u16 {
    match addr.ip() {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::event::Event;
    use crate::model::Nanos;
    use tracker_common::gauge::LiveGauges;

    const SECOND: Nanos = 1_000_000_000;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn up(observer: &mut Observer, sock: u64, listener: &str) {
        let _ = observer.apply(&Event::ListenerUp {
            netns: 0,
            sock,
            addr: addr(listener),
            pid: 7,
            comm: "srv".into(),
            cgroup_id: 0,
            cgroup: None,
        });
    }

    fn open(observer: &mut Observer, sock: u64, local: &str, remote: &str) {
        let _ = observer.apply(&Event::ConnOpen {
            netns: 0,
            sock,
            local: addr(local),
            remote: addr(remote),
            at: SECOND,
            untracked: false,
        });
    }

    /// A gauge at port `port` (IPv4, the daemon's namespace) counting `now`, whose peak was
    /// raised to `peak` in `epoch`.
    fn gauge(port: u16, now: u64, epoch: u32, peak: i32) -> (GaugeKey, LiveGauges) {
        let gauge = Gauge {
            now,
            peak: Peak { epoch, value: peak }.pack(),
        };
        let key = GaugeKey {
            netns: 0,
            family: AF_INET,
            port,
        };
        (
            key,
            LiveGauges {
                by_handshake: gauge,
                by_accept: Gauge::default(),
                busy: Gauge::default(),
            },
        )
    }

    fn reading(ended_epoch: u32, gauges: Vec<(GaugeKey, LiveGauges)>) -> GaugeReading {
        GaugeReading {
            ended_epoch,
            gauges,
            complete: true,
        }
    }

    /// The peak of `listener` in a report at `now`, after `reading`.
    fn peak_after(observer: &mut Observer, reading: &GaugeReading, listener: &str) -> usize {
        observer.apply_kernel_totals(&[], 2 * SECOND);
        observer.apply_live_gauges(reading);
        observer
            .report(2 * SECOND)
            .into_iter()
            .find(|report| report.id.addr == addr(listener))
            .expect("a report for the listener")
            .snapshot
            .peak
    }

    #[test]
    fn the_peak_is_the_gauges_where_one_listener_owns_it() {
        let mut observer = Observer::new(None);
        up(&mut observer, 1, "0.0.0.0:80");
        open(&mut observer, 10, "127.0.0.1:80", "127.0.0.1:5000");
        // The model saw one open; the kernel counted five at once (events were lost).
        let peak = peak_after(
            &mut observer,
            &reading(0, vec![gauge(80, 1, 0, 5)]),
            "0.0.0.0:80",
        );
        assert_eq!(peak, 5);
        // Next interval: no new high, so the peak is what was open when it began.
        let peak = peak_after(
            &mut observer,
            &reading(1, vec![gauge(80, 1, 0, 5)]),
            "0.0.0.0:80",
        );
        assert_eq!(peak, 1);
    }

    #[test]
    fn a_gauge_two_listeners_share_leaves_their_peaks_to_the_model() {
        let mut observer = Observer::new(None);
        up(&mut observer, 1, "127.0.0.1:80");
        up(&mut observer, 2, "127.0.0.2:80");
        open(&mut observer, 10, "127.0.0.1:80", "127.0.0.1:5000");
        let peak = peak_after(
            &mut observer,
            &reading(0, vec![gauge(80, 1, 0, 5)]),
            "127.0.0.1:80",
        );
        assert_eq!(peak, 1);
    }

    #[test]
    fn an_interval_with_a_missed_gauge_update_keeps_the_models_peak() {
        let mut observer = Observer::new(None);
        up(&mut observer, 1, "127.0.0.1:80");
        open(&mut observer, 10, "127.0.0.1:80", "127.0.0.1:5000");
        let missed = GaugeReading {
            complete: false,
            ..reading(0, vec![gauge(80, 1, 0, 5)])
        };
        assert_eq!(peak_after(&mut observer, &missed, "127.0.0.1:80"), 1);
    }

    #[test]
    fn connections_only_the_daemon_counts_are_added_and_the_peak_covers_curr() {
        let mut observer = Observer::new(None);
        observer.add_scanned_listener(addr("127.0.0.1:80"), &[]);
        // Two connections predate the daemon: the kernel never counted their opens.
        for port in [5000, 5001] {
            let remote = addr(&format!("127.0.0.1:{port}"));
            assert!(
                observer
                    .adopt(addr("127.0.0.1:80"), remote, SECOND)
                    .is_some()
            );
        }
        let peak = peak_after(
            &mut observer,
            &reading(0, vec![gauge(80, 3, 0, 3)]),
            "127.0.0.1:80",
        );
        assert_eq!(peak, 5);
    }

    #[test]
    fn a_gauge_below_what_the_model_holds_open_never_gives_a_peak_below_curr() {
        // Its reading raced a close, or a connection the kernel never saw open closed.
        let mut observer = Observer::new(None);
        up(&mut observer, 1, "127.0.0.1:80");
        open(&mut observer, 10, "127.0.0.1:80", "127.0.0.1:5000");
        let peak = peak_after(
            &mut observer,
            &reading(0, vec![gauge(80, u64::MAX, 0, -1)]),
            "127.0.0.1:80",
        );
        assert_eq!(peak, 1);
    }

    #[test]
    fn the_busy_peak_is_the_gauges_less_the_turns_the_daemon_ended() {
        let mut observer = Observer::new(None);
        up(&mut observer, 1, "0.0.0.0:80");
        open(&mut observer, 10, "127.0.0.1:80", "127.0.0.1:5000");
        let busy_gauge = |now: u64, epoch: u32, peak: i32| {
            let (key, mut gauges) = gauge(80, 1, epoch, 1);
            gauges.busy = Gauge {
                now,
                peak: Peak { epoch, value: peak }.pack(),
            };
            (key, gauges)
        };
        let busy_peak = |observer: &mut Observer, reading: &GaugeReading| {
            observer.apply_kernel_totals(&[], 2 * SECOND);
            observer.apply_live_gauges(reading);
            observer
                .report(2 * SECOND)
                .into_iter()
                .find(|report| report.id.addr == addr("0.0.0.0:80"))
                .expect("a report for the listener")
                .snapshot
                .busy_peak
        };
        // Four were busy at once; one still is when the interval ends.
        assert_eq!(
            busy_peak(&mut observer, &reading(0, vec![busy_gauge(1, 0, 4)])),
            4
        );
        // No new high: the peak is what was busy when the interval began.
        assert_eq!(
            busy_peak(&mut observer, &reading(1, vec![busy_gauge(1, 0, 4)])),
            1
        );
        // The daemon ends that turn (its close was never seen): the gauge still counts it.
        let turn = crate::observer::TurnLeftOpen {
            ends_at: 2 * SECOND,
            answered_at: None,
        };
        observer.count_unseen_close(addr("0.0.0.0:80"), 2 * SECOND, Some(turn));
        assert_eq!(
            busy_peak(&mut observer, &reading(2, vec![busy_gauge(1, 2, 2)])),
            1
        );
    }
}
