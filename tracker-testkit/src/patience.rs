//! How long a wait may take on this machine before whoever waits gives up.

use std::io::Write as _;
use std::thread;
use std::time::{Duration, Instant};

/// How long any single wait may take on the host before the test fails. Generous: CI
/// machines are busy.
const PATIENCE_ON_HOST: Duration = Duration::from_secs(30);

/// How many times slower than the host this machine runs the tests, from
/// `TRACKER_TEST_SLOWDOWN` (set by `cargo xtask test` in its VMs, which emulate every
/// instruction), else 1. It stretches how long the tests wait, never what they assert.
pub fn slowdown() -> u32 {
    match std::env::var("TRACKER_TEST_SLOWDOWN") {
        Ok(value) => value
            .parse()
            .ok()
            .filter(|&factor| factor >= 1)
            .unwrap_or_else(|| {
                panic!("TRACKER_TEST_SLOWDOWN={value:?} is not a whole number >= 1")
            }),
        Err(_) => 1,
    }
}

/// How long any single wait may take before the test fails.
pub fn patience() -> Duration {
    PATIENCE_ON_HOST * slowdown()
}

/// Polls `ready` until it holds; an error naming `what` if it does not within [`patience`].
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<(), TimedOut> {
    let deadline = Instant::now() + patience();
    while !ready() {
        if Instant::now() > deadline {
            return Err(TimedOut {
                what: what.to_owned(),
                waited: patience(),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A condition [`wait_until`] waited for in vain.
#[derive(Debug)]
pub struct TimedOut {
    what: String,
    waited: Duration,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}",
            self.waited, self.what
        )
    }
}

impl std::error::Error for TimedOut {}

/// Says in the test run's output what a test could not do on this kernel, and why. Written to
/// stderr directly: the test harness hides `eprintln!` output of a passing test.
pub fn note_for_this_kernel(note: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "{}: on this kernel: {note}",
        thread::current().name().unwrap_or("test")
    );
}
