//! A process's output, read line by line on a thread of its own.

use std::io::{BufRead as _, BufReader};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Instant;

use crate::patience::patience;

/// Lets a reader thread through while open; a closed gate holds it before its next read, so
/// that the writer's pipe fills.
#[derive(Default)]
pub struct ReadGate {
    closed: Mutex<bool>,
    changed: Condvar,
}

impl ReadGate {
    pub fn set(&self, open: bool) {
        *self.closed.lock().unwrap() = !open;
        self.changed.notify_all();
    }

    fn wait_until_open(&self) {
        let closed = self.closed.lock().unwrap();
        drop(self.changed.wait_while(closed, |closed| *closed).unwrap());
    }
}

/// The lines of `stream`, read on a thread until it ends (or the receiver is dropped); with a
/// `gate`, only while the gate is open.
pub fn forward_lines(
    stream: impl std::io::Read + Send + 'static,
    gate: Option<Arc<ReadGate>>,
) -> Receiver<String> {
    let (sender, receiver) = channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(stream).lines();
        loop {
            if let Some(gate) = &gate {
                gate.wait_until_open();
            }
            let Some(Ok(line)) = lines.next() else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Waits for a line containing `needle`; the lines seen if the stream ends first or
/// [`patience`] runs out.
pub fn wait_for_line(lines: &Receiver<String>, needle: &str) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + patience();
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Ok(()),
            Ok(line) => seen.push(line),
            Err(_) => return Err(seen),
        }
    }
}
