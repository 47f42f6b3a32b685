//! A real `nats-server` for tests (feature `testing`): JetStream on a free loopback port with
//! its own store dir, killed when dropped. Used by this crate's NATS tests and by the
//! end-to-end tests of `fjord serve --queue nats://...`.
//!
//! Needs `nats-server` (2.9 or later) on the PATH, in /usr/sbin, or named by `NATS_SERVER`;
//! missing, the test fails (never skips).

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A nats-server with JetStream on 127.0.0.1; killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    /// `-c` file, if started with a configuration.
    config: Option<PathBuf>,
}

impl NatsServer {
    /// A server that lets anyone connect (nats-server's default).
    pub fn start() -> NatsServer {
        Self::start_with_config(None)
    }

    /// A server that only lets `user` with `password` connect (an `authorization` block in
    /// its configuration file, as the README sets nats-server up).
    pub fn start_with_auth(user: &str, password: &str) -> NatsServer {
        let q = |s: &str| serde_json::to_string(s).unwrap();
        Self::start_with_config(Some(&format!(
            "authorization {{\n  user: {}\n  password: {}\n}}\n",
            q(user),
            q(password)
        )))
    }

    /// A server with this configuration file text (port, address and JetStream store are set
    /// on the command line, which overrides the file).
    pub fn start_with_config(config: Option<&str>) -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = config.map(|text| {
            let path = dir.path().join("nats-server.conf");
            std::fs::write(&path, text).unwrap();
            path
        });
        let mut server = NatsServer {
            child: None,
            dir,
            port,
            config,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// [`url`](Self::url) with credentials: `user:password` or a token.
    pub fn url_with(&self, userinfo: &str) -> String {
        format!("nats://{userinfo}@127.0.0.1:{}", self.port)
    }

    /// A queue key file (32 random bytes) made once per server, for every fjord process of a
    /// test that shares this server's queue (`--queue-key`).
    pub fn queue_key_file(&self) -> PathBuf {
        let path = self.dir.path().join("queue.key");
        crate::QueueKey::load_or_create(&path).unwrap();
        path
    }

    fn spawn(&mut self) {
        let store = self.dir.path().join("store");
        let log = std::fs::File::create(self.log_path()).unwrap();
        let mut command = Command::new(nats_server_binary());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let mut child = command
            .arg("-js")
            .arg("-sd")
            .arg(&store)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nats-server ({e}): the NATS queue tests need it (apt-get \
                     install nats-server, or set NATS_SERVER=/path/to/nats-server)"
                )
            });
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "nats-server exited ({status}) before accepting connections:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server does not accept connections:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Kills the server with SIGKILL (no chance to flush anything) and starts it again on the
    /// same store and port.
    pub fn crash_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `NATS_SERVER`, else `nats-server` on the PATH, else Debian's /usr/sbin/nats-server. Missing,
/// the test fails (never skips): these tests are the only check of the NATS backend.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file());
    on_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "nats-server not found: the NATS queue tests need it (apt-get install \
                 nats-server, or set NATS_SERVER=/path/to/nats-server)"
            )
        })
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}
