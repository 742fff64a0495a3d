//! [`OutputThread`]: writes text on a thread of its own, so that a reader who stops reading
//! (a paused pager, a full pipe to a stuck log shipper) stalls that thread only.
//!
//! The daemon's one event-loop thread drains the kernel's ring, serves `/metrics` and keeps
//! the report clock. Were it to write stdout itself, a full pipe would block all three, the
//! ring would overflow and kernel events would be lost for as long as nobody read. Here the
//! event loop only ever *offers* text; when the thread is still busy with earlier text the
//! offer is declined and the caller keeps its report for later.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

/// What became of text offered to the output thread.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Queued; the thread writes it after what it is writing now.
    Taken,
    /// The thread is still writing earlier text and one more is already queued.
    Busy(String),
    /// The thread has stopped: its writer failed. [`OutputThread::finish`] says why.
    Stopped,
}

/// A thread that writes and flushes each text it is handed, in order.
pub struct OutputThread {
    queue: Option<SyncSender<String>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl OutputThread {
    pub fn spawn<W: Write + Send + 'static>(out: W) -> io::Result<Self> {
        // One text queued beside the one being written: a reader that is merely slow for a
        // moment costs nothing, and one that stopped holds back at most two reports.
        let (queue, texts) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("tracker-output".into())
            .spawn(move || write_all(out, &texts))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Hands `text` to the thread unless it is busy; never waits.
    pub fn offer(&mut self, text: String) -> Offer {
        let Some(queue) = &self.queue else {
            return Offer::Stopped;
        };
        match queue.try_send(text) {
            Ok(()) => Offer::Taken,
            Err(TrySendError::Full(text)) => Offer::Busy(text),
            Err(TrySendError::Disconnected(_)) => Offer::Stopped,
        }
    }

    /// Writes `last` after everything queued (waiting for the reader as long as it takes),
    /// then stops the thread: the first write error, if any.
    pub fn finish(&mut self, last: Option<String>) -> io::Result<()> {
        if let (Some(queue), Some(text)) = (&self.queue, last) {
            // A send fails only when the thread stopped on an error, returned below.
            let _ = queue.send(text);
        }
        self.queue = None;
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the output thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for OutputThread {
    fn drop(&mut self) {
        // Without `finish` (the daemon is failing): closing the queue lets the thread end once
        // it has written what it holds; nobody waits for a reader that may never come back.
        self.queue = None;
    }
}

fn write_all<W: Write>(mut out: W, texts: &Receiver<String>) -> io::Result<()> {
    for text in texts {
        out.write_all(text.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_writer::gate;
    use std::sync::Arc;

    #[test]
    fn a_blocked_writer_declines_offers_without_waiting_and_keeps_their_order() {
        let (gate, pass) = gate();
        let written = Arc::clone(&gate.written);
        let mut output = OutputThread::spawn(gate).unwrap();
        // The thread takes the first text into its blocked write and the queue holds one
        // more: whether the second offer still finds room depends on how far the thread got,
        // but the third never does, and no offer waits.
        let mut offers = Vec::new();
        for text in ["a", "b", "c"] {
            let offer = output.offer(text.to_owned());
            let busy = matches!(offer, Offer::Busy(_));
            offers.push(offer);
            if busy {
                break;
            }
        }
        let declined = offers.len() - 1;
        assert!(
            matches!(offers[declined], Offer::Busy(ref text) if text == ["a", "b", "c"][declined]),
            "{offers:?}"
        );
        assert!((1..=2).contains(&declined), "{offers:?}");
        for _ in 0..3 {
            pass.send(()).unwrap();
        }
        output.finish(Some("z".into())).unwrap();
        let taken: String = ["a", "b", "c"][..declined].concat();
        assert_eq!(
            String::from_utf8(written.lock().unwrap().clone()).unwrap(),
            format!("{taken}z")
        );
    }

    #[test]
    fn a_failed_writer_stops_the_thread_and_finish_returns_its_error() {
        let (gate, pass) = gate();
        let mut output = OutputThread::spawn(gate).unwrap();
        drop(pass);
        assert_eq!(output.offer("a".into()), Offer::Taken);
        let error = output.finish(Some("b".into())).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(output.offer("c".into()), Offer::Stopped);
    }
}
