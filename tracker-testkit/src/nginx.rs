//! A real nginx (Debian's nginx-light, installed by `cargo xtask test` and `cargo xtask
//! bench`) on loopback.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::patience::patience;
use crate::process::stop;

/// An nginx configuration with its files in `dir`, `workers` worker processes, the main
/// context's `directives` (such as `daemon off;`) and the `server { ... }` blocks in `servers`.
/// Its limits are far above what any test or bench run opens, so that nginx is never what
/// refuses a connection or ends a keep-alive one.
pub fn nginx_config(dir: &Path, workers: u32, directives: &str, servers: &str) -> String {
    format!(
        "user root;
worker_processes {workers};
{directives}
error_log {dir}/error.log;
pid {dir}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  http2_max_concurrent_streams 256;
  {servers}
}}
",
        dir = dir.display()
    )
}

/// nginx in the foreground with one master and one worker, stopped when dropped.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    /// Whether its directory is a temporary one of its own, removed with it.
    owns_dir: bool,
}

impl Nginx {
    /// Starts nginx with the `server { ... }` blocks in `servers`, with its files in a
    /// temporary directory, and waits until every port in `ports` accepts connections; fails
    /// the test with nginx's error log if it does not.
    pub fn start(servers: &str, ports: &[u16]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tracker-nginx-{}-{}",
            std::process::id(),
            ports.first().copied().unwrap_or(0)
        ));
        let mut nginx =
            Self::start_in(&dir, servers, ports).unwrap_or_else(|error| panic!("{error}"));
        nginx.owns_dir = true;
        nginx
    }

    /// [`Nginx::start`] with its files in `dir`, which it leaves there.
    pub fn start_in(dir: &Path, servers: &str, ports: &[u16]) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let config_path = dir.join("nginx.conf");
        std::fs::write(&config_path, nginx_config(dir, 1, "daemon off;", servers))?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&config_path)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| {
                std::io::Error::other(format!(
                    "starting nginx (is nginx-light installed? `cargo xtask test` installs it): {error}"
                ))
            })?;
        let mut nginx = Self {
            child,
            dir: dir.to_owned(),
            owns_dir: false,
        };
        for &port in ports {
            nginx.wait_for_port(port)?;
        }
        Ok(nginx)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_for_port(&mut self, port: u16) -> std::io::Result<()> {
        let deadline = Instant::now() + patience();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = || std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(std::io::Error::other(format!(
                    "nginx exited ({status}) before listening on {port}:\n{}",
                    log()
                )));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "nginx did not listen on {port} within {:?}:\n{}",
                    patience(),
                    log()
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop(&mut self.child);
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
