//! Ends of the closing phases the kernel hands on to time-wait sockets (see
//! `tracker_common::handover`): the state change program records a connection whose full
//! socket left FIN_WAIT2 for a time-wait socket still waiting for the client's FIN, and at each
//! report the daemon looks those time-wait sockets up in the kernel's table (`sock_diag`).
//! One still in FIN_WAIT2 is still closing. One in TIME_WAIT got the client's FIN, which reset
//! its timer to `TCP_TIMEWAIT_LEN`: the FIN came that long before its expiry. One gone timed
//! out (`tcp_fin_timeout`), about when its timer said, or was reset by the client; one never
//! seen was aborted at the hand-over (no time-wait socket could be made). Each end is counted
//! once, by the daemon, which then removes the record.

use std::io;

use rustc_hash::{FxHashMap, FxHashSet};
use tracker_common::handover::HandedOver;
use tracker_common::{ConnKey, Endpoint};

use crate::host::tcp_table::{SockDiag, TIME_WAIT, TimeWaitSocket};
use crate::model::Nanos;

/// `TCP_TIMEWAIT_LEN`: a time-wait socket that gets the client's FIN expires this long after
/// it (fixed in the kernel: `include/net/tcp.h`).
pub const TIME_WAIT_LEN: Nanos = 60_000_000_000;

/// Above this many records, one dump of the kernel's FIN_WAIT2 sockets costs less than a
/// look-up per record; only those it does not list are then looked up one by one.
const DUMP_ABOVE: usize = 32;

/// What the kernel's table showed of a handed-over connection's time-wait socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighting {
    /// Still waiting for the client's FIN; its timer fires in `expires` nanoseconds.
    FinWait2 { expires: Nanos },
    /// The client's FIN came; its timer fires in `expires` nanoseconds.
    TimeWait { expires: Nanos },
    /// No time-wait socket has those endpoints.
    Gone,
}

/// When a time-wait socket was last seen in FIN_WAIT2, and when its timer was due then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub at: Nanos,
    pub expires_at: Nanos,
}

/// When the closing phase of a connection handed over at `handed_at` ended, given what the
/// kernel's table shows at `now` and when it was last seen still closing (`seen`); None while
/// it goes on. Never before the hand-over or the last sighting, never after `now`.
pub fn closing_end(
    handed_at: Nanos,
    seen: Option<Seen>,
    sighting: Sighting,
    now: Nanos,
) -> Option<Nanos> {
    let not_before = seen.map_or(handed_at, |seen| seen.at.max(handed_at));
    let end = match sighting {
        Sighting::FinWait2 { .. } => return None,
        Sighting::TimeWait { expires } => now.saturating_sub(TIME_WAIT_LEN.saturating_sub(expires)),
        // Timed out at its expiry (or reset by the client before it: at most the interval
        // since it was last seen). Never seen: aborted at the hand-over.
        Sighting::Gone => seen.map_or(handed_at, |seen| seen.expires_at),
    };
    Some(end.clamp(not_before, now.max(not_before)))
}

/// The records the daemon follows between reports.
#[derive(Debug, Default)]
pub struct HandoverWatch {
    seen: FxHashMap<ConnKey, Seen>,
}

impl HandoverWatch {
    /// Looks up the time-wait socket of each record in `handed` and returns those whose
    /// closing phase has ended, with their endpoint and end; `now` gives the instant the
    /// table was read at.
    pub fn ended(
        &mut self,
        diag: &mut SockDiag,
        handed: &[(ConnKey, HandedOver)],
        now: impl Fn() -> Nanos,
    ) -> io::Result<Vec<(ConnKey, Endpoint, Nanos)>> {
        let listed = if handed.len() > DUMP_ABOVE {
            let mut families: Vec<u8> = handed.iter().map(|(key, _)| key.family as u8).collect();
            families.sort_unstable();
            families.dedup();
            let mut listed = FxHashMap::default();
            for family in families {
                for socket in diag.time_wait_in_fin_wait2(family)? {
                    listed.insert(socket.key, socket);
                }
            }
            Some(listed)
        } else {
            None
        };
        let mut sightings = Vec::with_capacity(handed.len());
        for (key, record) in handed {
            let socket = match listed.as_ref().and_then(|listed| listed.get(key)) {
                Some(&socket) => Some(socket),
                None => diag.time_wait_of(key)?,
            };
            sightings.push((*key, *record, sighting_of(socket)));
        }
        let now = now();
        let mut ended = Vec::new();
        for (key, record, sighting) in sightings {
            let seen = self.seen.get(&key).copied();
            match closing_end(record.at_ns, seen, sighting, now) {
                Some(end) => {
                    self.seen.remove(&key);
                    ended.push((key, record.endpoint, end));
                }
                None => {
                    if let Sighting::FinWait2 { expires } = sighting {
                        self.seen.insert(
                            key,
                            Seen {
                                at: now,
                                expires_at: now.saturating_add(expires),
                            },
                        );
                    }
                }
            }
        }
        // Only the daemon removes records, and it forgot their sightings above; sightings of
        // records the kernel no longer lists (removed by hand) go once they outnumber them.
        if self.seen.len() > handed.len() {
            let listed: FxHashSet<&ConnKey> = handed.iter().map(|(key, _)| key).collect();
            self.seen.retain(|key, _| listed.contains(key));
        }
        Ok(ended)
    }
}

fn sighting_of(socket: Option<TimeWaitSocket>) -> Sighting {
    match socket {
        None => Sighting::Gone,
        Some(socket) => {
            let expires = Nanos::from(socket.expires_ms) * 1_000_000;
            if socket.state == TIME_WAIT {
                Sighting::TimeWait { expires }
            } else {
                Sighting::FinWait2 { expires }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Nanos = 1_000_000_000;

    #[test]
    fn a_time_wait_socket_in_fin_wait2_is_still_closing() {
        let expires = 50 * SECOND;
        assert_eq!(
            closing_end(
                10 * SECOND,
                None,
                Sighting::FinWait2 { expires },
                20 * SECOND
            ),
            None
        );
    }

    #[test]
    fn the_client_fin_is_when_the_time_wait_timer_was_reset() {
        // Handed over at 10 s; at 20 s its timer has 57 s left of the 60 s the FIN set: the
        // FIN came at 17 s.
        let seen = Seen {
            at: 15 * SECOND,
            expires_at: 65 * SECOND,
        };
        let sighting = Sighting::TimeWait {
            expires: 57 * SECOND,
        };
        assert_eq!(
            closing_end(10 * SECOND, Some(seen), sighting, 20 * SECOND),
            Some(17 * SECOND)
        );
        // Never before it was last seen waiting, nor before the hand-over (a timer read a
        // jiffy late, or reset again by a retransmitted FIN).
        let late = Sighting::TimeWait {
            expires: 59_999 * SECOND / 1000,
        };
        assert_eq!(
            closing_end(
                10 * SECOND,
                Some(seen),
                Sighting::TimeWait {
                    expires: 50 * SECOND
                },
                20 * SECOND
            ),
            Some(15 * SECOND)
        );
        assert_eq!(
            closing_end(10 * SECOND, None, late, 60 * SECOND),
            Some(60 * SECOND - SECOND / 1000)
        );
        assert_eq!(
            closing_end(
                10 * SECOND,
                None,
                Sighting::TimeWait { expires: 0 },
                30 * SECOND
            ),
            Some(10 * SECOND)
        );
    }

    #[test]
    fn a_time_wait_socket_gone_ended_at_its_last_seen_expiry_or_the_hand_over() {
        let seen = Seen {
            at: 15 * SECOND,
            expires_at: 18 * SECOND,
        };
        // Timed out at 18 s, found gone at 20 s.
        assert_eq!(
            closing_end(10 * SECOND, Some(seen), Sighting::Gone, 20 * SECOND),
            Some(18 * SECOND)
        );
        // Gone before its timer was due (a reset from the client): by now at the latest.
        let long = Seen {
            expires_at: 75 * SECOND,
            ..seen
        };
        assert_eq!(
            closing_end(10 * SECOND, Some(long), Sighting::Gone, 20 * SECOND),
            Some(20 * SECOND)
        );
        // Never seen: no time-wait socket was made, the kernel aborted it at the hand-over.
        assert_eq!(
            closing_end(10 * SECOND, None, Sighting::Gone, 20 * SECOND),
            Some(10 * SECOND)
        );
    }
}
