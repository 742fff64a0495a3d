//! Busy time and busy connections from the kernel's turns.

use tracker_common::{ConnTrack, EndpointTotals};

use super::{SECOND, addr, endpoint, report_of, spans};
use crate::observer::{Observer, TurnLeftOpen};

/// Busy time comes from the kernel's turns, whatever events came: each turn to the server's
/// latest send in it, or to the report while it waits for one; a turn the kernel left open in
/// an entry the daemon removed ends where the daemon says.
#[test]
fn busy_time_is_the_kernels_with_the_turns_the_daemon_ended() {
    let ms = SECOND / 1000;
    let mut observer = Observer::new(None);
    observer.add_scanned_listener(addr("0.0.0.0:80"), &[]);
    observer.apply_kernel_totals(&[], 0);
    // A: request at 1 s, answered at 1.5 s, next request at 2 s, answered at 2.5 s.
    // B: request at 3 s, no answer yet. No event came for either.
    let totals = EndpointTotals {
        turns: spans(&[SECOND, 2 * SECOND, 3 * SECOND], &[1500 * ms]),
        answered: spans(&[1500 * ms, 2500 * ms], &[1500 * ms]),
        ..EndpointTotals::default()
    };
    observer.apply_kernel_totals(&[(endpoint(0, "127.0.0.1:80"), totals)], 4 * SECOND);
    let first = report_of(&mut observer, 4 * SECOND, "0.0.0.0:80");
    assert_eq!(first.snapshot.active_for_ns, 500 * ms + 500 * ms + SECOND);
    assert_eq!(first.snapshot.busy, 1, "B waits for its answer");
    assert_eq!(first.snapshot.busy_peak, 1, "never below busy now");
    // B's close is never seen by the kernel; the daemon removes its entry at 5 s.
    let turn = TurnLeftOpen::of(&in_turn(0), 5 * SECOND);
    observer.count_unseen_close(addr("0.0.0.0:80"), 5 * SECOND, turn);
    observer.apply_kernel_totals(&[(endpoint(0, "127.0.0.1:80"), totals)], 6 * SECOND);
    let second = report_of(&mut observer, 6 * SECOND, "0.0.0.0:80");
    assert_eq!(second.snapshot.active_for_ns, SECOND, "B until its close");
    assert_eq!(second.snapshot.busy, 0);
    observer.apply_kernel_totals(&[(endpoint(0, "127.0.0.1:80"), totals)], 7 * SECOND);
    let third = report_of(&mut observer, 7 * SECOND, "0.0.0.0:80");
    assert_eq!((third.snapshot.active_for_ns, third.snapshot.busy), (0, 0));
}

/// A removed entry's turn ends at the server's last send in it, or at the close if it never
/// answered; an entry outside a turn has none.
#[test]
fn a_removed_entry_ends_its_turn_where_the_kernel_would() {
    assert_eq!(TurnLeftOpen::of(&ConnTrack::default(), SECOND), None);
    assert_eq!(
        TurnLeftOpen::of(&in_turn(0), 2 * SECOND),
        Some(TurnLeftOpen {
            ends_at: 2 * SECOND,
            answered_at: None
        })
    );
    assert_eq!(
        TurnLeftOpen::of(&in_turn(SECOND), 2 * SECOND),
        Some(TurnLeftOpen {
            ends_at: SECOND,
            answered_at: Some(SECOND)
        })
    );
}

/// A tracked entry in a turn whose server last sent at `last_send_ns` (0: not yet).
fn in_turn(last_send_ns: u64) -> ConnTrack {
    ConnTrack {
        in_turn: 1,
        last_send_ns,
        ..ConnTrack::default()
    }
}
