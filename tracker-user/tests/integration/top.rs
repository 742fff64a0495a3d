//! `tracker top` in a real terminal: tmux runs it in a detached session, the test reads the
//! screen with `capture-pane` and types into it with `send-keys`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{connect_many, patience};

/// Pause between two looks at the screen: short, since each look only costs a tmux command.
const POLL: Duration = Duration::from_millis(50);

/// A detached tmux session on a tmux server of its own (`-L`), killed when dropped. A private
/// server keeps the test away from any tmux the developer runs, and from its global options.
struct TmuxSession {
    name: String,
    /// Where the command's stderr goes: tmux drops what a command writes just before it exits
    /// (such as tracker's one-line error), so failures would otherwise come without a cause.
    stderr: PathBuf,
}

impl TmuxSession {
    /// Starts `command` in a new `width`×`height` session that keeps its pane when the command
    /// exits, so the exit status can be read afterwards.
    fn start(name: String, width: u16, height: u16, command: &[&str]) -> Self {
        let stderr = std::env::temp_dir().join(format!("{name}.stderr"));
        let session = Self { name, stderr };
        let (width, height) = (width.to_string(), height.to_string());
        let stderr = session
            .stderr
            .to_str()
            .expect("a UTF-8 temporary directory");
        let mut args = vec![
            "new-session",
            "-d",
            "-s",
            &session.name,
            "-x",
            &width,
            "-y",
            &height,
        ];
        // tmux runs several arguments as a command line without a shell; this shell only sends
        // stderr to the file (its path as $0) and then becomes the command.
        args.extend(["sh", "-c", r#"exec "$@" 2>"$0""#, stderr]);
        args.extend(command);
        // Same command queue as new-session: the option is set before tmux can notice the
        // command exiting, however quickly it fails.
        args.extend([
            ";",
            "set-option",
            "-t",
            &session.name,
            "remain-on-exit",
            "on",
        ]);
        let output = session.tmux(&args);
        assert!(
            output.status.success(),
            "tmux new-session failed (is tmux installed? `cargo xtask test` installs it): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        session
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.name])
            .args(args)
            .output()
            .expect("running tmux")
    }

    /// The visible screen, or why it cannot be read (the session is gone).
    fn screen(&self) -> String {
        let output = self.tmux(&["capture-pane", "-p", "-t", &self.name]);
        if output.status.success() {
            String::from_utf8_lossy(&output.stdout).into_owned()
        } else {
            format!(
                "(no screen: {})",
                String::from_utf8_lossy(&output.stderr).trim()
            )
        }
    }

    /// How the pane's command ended (`exit 0`, `signal 9`), once tmux knows.
    fn exit(&self) -> Option<String> {
        let output = self.tmux(&[
            "list-panes",
            "-t",
            &self.name,
            "-F",
            "#{pane_dead}/#{pane_dead_status}/#{pane_dead_signal}",
        ]);
        assert!(
            output.status.success(),
            "the tmux session ended, so how tracker exited is lost: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout);
        // tmux may mark the pane dead (its terminal closed) a moment before it reaps the
        // process: until then neither the status nor the signal is known.
        match text.trim().split('/').collect::<Vec<_>>()[..] {
            ["1", status, _] if !status.is_empty() => Some(format!("exit {status}")),
            ["1", _, signal] if !signal.is_empty() => Some(format!("signal {signal}")),
            _ => None,
        }
    }

    /// The pid of the pane's command (the shell execs into it, so it is tracker's).
    fn pane_pid(&self) -> u32 {
        let output = self.tmux(&["list-panes", "-t", &self.name, "-F", "#{pane_pid}"]);
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("tmux gives the pane's pid")
    }

    /// What the command wrote to stderr so far.
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Polls the screen until `found` picks something out of it; fails with the last screen.
    fn wait_for<T>(&self, what: &str, found: impl Fn(&str) -> Option<T>) -> T {
        let patience = patience();
        let deadline = Instant::now() + patience;
        loop {
            // Exit first, screen second: a screen read after the exit shows all that tracker
            // wrote, its error message included.
            let exit = self.exit();
            let screen = self.screen();
            if let Some(value) = found(&screen) {
                return value;
            }
            if let Some(exit) = exit {
                panic!(
                    "tracker ended ({exit}) before the screen showed {what}; stderr:\n{}\nscreen:\n{screen}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the screen did not show {what} within {patience:?}; stderr:\n{}\nlast screen:\n{screen}",
                self.stderr()
            );
            thread::sleep(POLL);
        }
    }
}

impl Drop for TmuxSession {
    fn drop(&mut self) {
        // The server runs only this session: killing it ends the session and the tracker.
        let _ = self.tmux(&["kill-server"]);
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// Where in the kernel each thread of `pid` waits, for failures: a tracker that left the screen
/// but does not exit is usually still detaching its probes as it exits (waiting for an RCU grace
/// period), not stuck in the view.
fn kernel_wait(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("pid {pid} is gone");
    };
    let threads: Vec<String> = tasks
        .flatten()
        .map(|task| {
            let read = |file: &str| std::fs::read_to_string(task.path().join(file));
            let stat = read("stat").unwrap_or_default();
            // The state follows the command name, which is in parentheses and may hold spaces.
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.get(..1))
                .unwrap_or("?");
            let wchan = read("wchan").unwrap_or_default();
            format!("{} {state} in {wchan}", task.file_name().to_string_lossy())
        })
        .collect();
    format!("pid {pid} threads: {}", threads.join(", "))
}

/// The figure in `column` on the row of `listener`, read at the heading's position: headings
/// and figures are right-aligned, so both end at the same place. The screen has no other way
/// to split a row: a process name may contain spaces.
fn figure(screen: &str, listener: &str, column: &str) -> Option<String> {
    let lines: Vec<&str> = screen.lines().collect();
    let header = lines.iter().find(|line| line.starts_with("LISTENER"))?;
    let row = lines
        .iter()
        .find(|line| line.split_whitespace().next() == Some(listener))?;
    let header: Vec<char> = header.chars().collect();
    let row: Vec<char> = row.chars().collect();
    let end = header
        .windows(column.len())
        .position(|window| window.iter().copied().eq(column.chars()))?
        + column.chars().count();
    let before: String = row.get(..end.min(row.len()))?.iter().collect();
    before.split_whitespace().last().map(str::to_owned)
}

#[test]
fn top_shows_live_connections_and_quits_on_q() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let name = addr.to_string();
    let port = addr.port().to_string();
    let session = TmuxSession::start(
        format!("tracker-top-{}-{port}", std::process::id()),
        160,
        40,
        &[
            env!("CARGO_BIN_EXE_tracker"),
            "top",
            "--interval",
            "0.5",
            "--port",
            &port,
        ],
    );

    // A row for the listener means a report came, so the probes are attached and the
    // connections below are seen.
    session.wait_for("the listener's row", |screen| figure(screen, &name, "CURR"));
    let conns = connect_many(&listener, addr, 3);
    let screen = session.wait_for("CURR 3", |screen| {
        (figure(screen, &name, "CURR").as_deref() == Some("3")).then(|| screen.to_owned())
    });
    // The interval shown is the measured one: on a busy machine it may round to 0.6 s.
    let title = screen.lines().next().unwrap_or_default();
    assert!(
        title.starts_with("tracker top — 1 listener — interval 0.")
            && title.ends_with("s — q quits"),
        "{screen}"
    );
    let header = screen
        .lines()
        .find(|line| line.starts_with("LISTENER"))
        .unwrap();
    for heading in [
        "LISTENER", "PROCESS", "OWNER", "CURR", "PEAK", "SESS", "BUSY", "CONN-S", "BUSY-S",
        "OPENED", "CLOSED", "ERRS",
    ] {
        assert!(header.contains(heading), "no {heading} in:\n{screen}");
    }
    // Three open, and never more: at its peak now, which the marker says.
    assert_eq!(
        figure(&screen, &name, "PEAK").as_deref(),
        Some("3▲"),
        "{screen}"
    );

    let pid = session.pane_pid();
    session.tmux(&["send-keys", "-t", &session.name, "q"]);
    let patience = patience();
    let deadline = Instant::now() + patience;
    let exit = loop {
        if let Some(exit) = session.exit() {
            break exit;
        }
        // tmux may be slow to reap its pane's process on a loaded machine; a zombie has
        // exited, and its exit status is already readable from /proc.
        if let Some(exit) = zombie_exit(pid) {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "tracker top did not quit on q within {patience:?} ({}); stderr:\n{}\nlast screen:\n{}",
            kernel_wait(pid),
            session.stderr(),
            session.screen()
        );
        thread::sleep(POLL);
    };
    assert_eq!(
        exit,
        "exit 0",
        "stderr:\n{}\nlast screen:\n{}",
        session.stderr(),
        session.screen()
    );
    drop(conns);
}

/// "exit N" for a process that has exited but is not reaped yet (state Z), from the
/// `exit_code` field of `/proc/<pid>/stat` (a wait status); None otherwise.
fn zombie_exit(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() != Some(&"Z") {
        return None;
    }
    // Field 52 of the whole line; 50 after the state, which is the first after the name.
    let status: i32 = fields.get(49)?.parse().ok()?;
    (status & 0x7f == 0).then(|| format!("exit {}", (status >> 8) & 0xff))
}
