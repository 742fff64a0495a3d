//! Servers written for the tests: a backend that answers slowly, and Python scripts (h2,
//! websockets, TLS) from Debian's packages.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

/// An HTTP/1.1 backend that holds every response for `delay` (one thread per connection,
/// one request per connection), so that requests proxied through it overlap. Runs until the
/// returned handle is dropped.
pub fn slow_backend(delay: Duration) -> SlowBackend {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the backend");
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    thread::spawn(move || {
        for stream in listener.incoming() {
            if stopped.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                thread::sleep(delay);
                let _ = std::io::Write::write_all(
                    &mut stream,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                );
            });
        }
    });
    SlowBackend { port, stop }
}

/// A running [`slow_backend`]; its accepting thread ends when this is dropped.
pub struct SlowBackend {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Drop for SlowBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// PATH finds first), linked against the system's OpenSSL.
pub const PYTHON: &str = "/usr/bin/python3";

/// A Python program started with `args`, killed when dropped.
pub struct Python {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Python {
    pub fn start(script: &str, args: &[&str]) -> Self {
        let mut child = Command::new(PYTHON)
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting Debian's python3 (`cargo xtask test` installs its packages)");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Self { child, stdout }
    }

    /// The next line it prints; fails the test if it exits first.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("reading the script's output");
        assert!(
            !line.is_empty(),
            "the script exited: {:?}",
            self.child.try_wait()
        );
        line.trim().to_owned()
    }

    /// A server's first line: the port it listens on.
    pub fn port(&mut self) -> u16 {
        let line = self.line();
        line.parse()
            .unwrap_or_else(|_| panic!("not a port: {line:?}"))
    }

    /// Closes its stdin.
    pub fn end_input(&mut self) {
        drop(self.child.stdin.take());
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
