//! A writer for tests of the output threads: every write blocks until the test lets it
//! through.

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

/// Blocks every write until a pass arrives; keeps what it was given.
#[derive(Clone)]
pub struct Gate {
    passes: Arc<Mutex<Receiver<()>>>,
    pub written: Arc<Mutex<Vec<u8>>>,
    /// Writes begun so far, blocked or not.
    pub entered: Arc<AtomicUsize>,
}

impl Write for Gate {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        self.passes
            .lock()
            .unwrap()
            .recv()
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        self.written.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A gated writer, and the sender of its passes (one per write).
pub fn gate() -> (Gate, SyncSender<()>) {
    let (pass, passes) = sync_channel(1 << 16);
    let gate = Gate {
        passes: Arc::new(Mutex::new(passes)),
        written: Arc::default(),
        entered: Arc::default(),
    };
    (gate, pass)
}
