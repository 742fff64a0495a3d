//! The daemon's log, written to stderr by a thread of its own: a stderr nobody reads (a stuck
//! pipe, a journal that stopped taking lines) costs log lines, dropped and counted, never the
//! collection of kernel events. Reports have their own thread for the same reason (see
//! `sink::output_thread`).

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Log records queued while the thread writes; beyond them, records are dropped.
const QUEUED_RECORDS: usize = 256;

/// The log's end of the pipe: takes each formatted record without waiting.
pub struct LogPipe {
    queue: SyncSender<Vec<u8>>,
    progress: Arc<Progress>,
    /// Records dropped since the last one queued: the next one queued says so first.
    dropped: u64,
}

/// The main thread's handle, to let the last records out at exit.
pub struct LogDrain {
    progress: Arc<Progress>,
}

#[derive(Default)]
struct Progress {
    /// Records queued and records written (or failed to write) so far.
    counts: Mutex<(u64, u64)>,
    written: Condvar,
}

/// Starts the thread that writes records to `out`.
pub fn spawn<W: Write + Send + 'static>(out: W) -> io::Result<(LogPipe, LogDrain)> {
    let (queue, records) = sync_channel(QUEUED_RECORDS);
    let progress = Arc::new(Progress::default());
    let writer_progress = Arc::clone(&progress);
    std::thread::Builder::new()
        .name("tracker-log".into())
        .spawn(move || write_records(out, &records, &writer_progress))?;
    Ok((
        LogPipe {
            queue,
            progress: Arc::clone(&progress),
            dropped: 0,
        },
        LogDrain { progress },
    ))
}

impl Write for LogPipe {
    /// One call per record (the logger formats a record whole, then writes it once).
    fn write(&mut self, record: &[u8]) -> io::Result<usize> {
        let mut text = Vec::with_capacity(record.len());
        if self.dropped > 0 {
            // Where the gap is, in the log itself.
            writeln!(
                text,
                "tracker: {} log line(s) dropped here: stderr was not read",
                self.dropped
            )?;
        }
        text.extend_from_slice(record);
        match self.queue.try_send(text) {
            Ok(()) => {
                self.dropped = 0;
                lock(&self.progress.counts).0 += 1;
            }
            Err(TrySendError::Full(_)) => self.dropped += 1,
            // The writer failed (stderr closed): nothing is left to write to.
            Err(TrySendError::Disconnected(_)) => {}
        }
        Ok(record.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LogDrain {
    /// Waits until every queued record is written, for at most `limit`: the last lines of a
    /// daemon that exits normally are not lost, and one whose stderr is stuck still exits.
    pub fn wait_written(&self, limit: Duration) {
        let counts = lock(&self.progress.counts);
        let _ = self
            .progress
            .written
            .wait_timeout_while(counts, limit, |(queued, written)| written < queued);
    }
}

fn write_records<W: Write>(mut out: W, records: &Receiver<Vec<u8>>, progress: &Progress) {
    for record in records {
        let result = out.write_all(&record).and_then(|()| out.flush());
        let mut counts = lock(&progress.counts);
        counts.1 += 1;
        progress.written.notify_all();
        drop(counts);
        if result.is_err() {
            // stderr is gone; the records still queued are dropped with the receiver.
            return;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `items` for a log line, `1, 2, 3` but past a few only the first ones and how many more:
/// a set of ports or of a server's workers can be long, and a log line is read at a glance.
pub fn few<T: std::fmt::Display>(items: impl ExactSizeIterator<Item = T>) -> String {
    const LISTED: usize = 4;
    let total = items.len();
    let listed: Vec<String> = items.take(LISTED).map(|item| item.to_string()).collect();
    let listed = listed.join(", ");
    if total > LISTED {
        format!("{listed} and {} more", total - LISTED)
    } else {
        listed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_writer::gate;

    #[test]
    fn records_beyond_the_queue_are_dropped_without_waiting_and_the_gap_is_logged() {
        let (writer, pass) = gate();
        let written = Arc::clone(&writer.written);
        let entered = Arc::clone(&writer.entered);
        let (mut pipe, drain) = spawn(writer).unwrap();
        let records = QUEUED_RECORDS + 10;
        // The first record, once the thread is blocked writing it, frees its place in the
        // queue; the test waits for that (a thread started late under load would otherwise
        // free a place among the later records and reset the count of dropped ones).
        pipe.write_all(b"record 0\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while entered.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the thread never wrote"
            );
            std::thread::yield_now();
        }
        for n in 1..records {
            pipe.write_all(format!("record {n}\n").as_bytes()).unwrap();
        }
        // The thread holds one record in its blocked write and the queue the next ones; the
        // rest were dropped.
        let dropped = pipe.dropped;
        assert_eq!(dropped, (records - 1 - QUEUED_RECORDS) as u64);
        for _ in 0..=records {
            pass.send(()).unwrap();
        }
        drain.wait_written(Duration::from_secs(30));
        pipe.write_all(b"last\n").unwrap();
        drain.wait_written(Duration::from_secs(30));
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let kept = records as u64 - dropped;
        assert!(
            text.ends_with(&format!(
                "record {}\ntracker: {dropped} log line(s) dropped here: stderr was not read\nlast\n",
                kept - 1
            )),
            "{}",
            &text[text.len().saturating_sub(300)..]
        );
        assert_eq!(text.lines().count() as u64, kept + 2);
    }

    #[test]
    fn few_lists_a_few_items_and_counts_the_rest() {
        assert_eq!(few([80, 443].iter()), "80, 443");
        assert_eq!(
            few((1..=7).collect::<Vec<_>>().iter()),
            "1, 2, 3, 4 and 3 more"
        );
    }
}
