//! Child processes: signals, and stopping one without waiting forever.

use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::patience::patience;

/// Sends `signal` to `child`.
pub fn signal(child: &Child, signal: i32) {
    let pid = i32::try_from(child.id()).expect("pid fits in pid_t");
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, signal) };
}

/// Asks `child` to stop (SIGTERM), as service managers do, and waits for it; kills it if it
/// has not exited within [`patience`].
pub fn stop(child: &mut Child) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    signal(child, libc::SIGTERM);
    wait_with_deadline(child)
}

/// Waits for `child` to exit; kills it once [`patience`] has passed.
pub(crate) fn wait_with_deadline(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + patience();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child process") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("waiting for a killed child process");
        }
        thread::sleep(Duration::from_millis(20));
    }
}
