//! A private `nats-server` per test, with the system's own configuration:
//! the same users and permissions as `tracehop up` runs (generated from the
//! catalog), keys of its own, nobody anonymous.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tempfile::TempDir;
use tracehop_launcher::nats_server::{self, ServerConfig};
use tracehop_messaging::Service;
use tracehop_messaging::access::{NatsCredentials, NatsUser};

pub use tracehop_launcher::nats_server::supports_sync_always;

/// A `nats-server` with JetStream on 127.0.0.1, with its store, keys and
/// log in a temporary folder.
pub struct NatsServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a free port and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("tracehop-nats-").tempdir()?;
        nats_server::ensure_keys(&dir.path().join("keys"))?;
        let mut server = Self { port: crate::free_port(), dir, child: None };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let config = ServerConfig::new(self.port, self.dir.path().join("store")).write(self.dir.path())?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let child = nats_server::command(&config, &self.keys_dir(), None)?
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("failed to start nats-server (is it on the PATH?)")?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10)).await
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The folder of every user's seed: `TRACEHOP_NATS_KEYS` for the
    /// services and the command.
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// The server's log (permission violations are logged there).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// The lines of the server's log that report a permission violation.
    pub fn violations(&self) -> Vec<String> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains("Violation"))
            .map(str::to_string)
            .collect()
    }

    /// The credentials of `user` on this server.
    pub fn credentials(&self, user: NatsUser) -> NatsCredentials {
        NatsCredentials::load(user, Some(&self.keys_dir()), None).expect("the test server's keys are readable")
    }

    /// A client connected as `user`.
    pub async fn connect_as(&self, user: NatsUser) -> anyhow::Result<async_nats::Client> {
        Ok(tracehop_messaging::connect(&self.url(), user, &self.credentials(user)).await?)
    }

    /// A client connected as the command (the operator's tool).
    pub async fn connect_command(&self) -> anyhow::Result<async_nats::Client> {
        self.connect_as(NatsUser::Command).await
    }

    /// A client connected as `service`.
    pub async fn connect_service(&self, service: Service) -> anyhow::Result<async_nats::Client> {
        self.connect_as(NatsUser::Service(service)).await
    }

    /// Kills the server (SIGKILL) and starts it again on the same port with
    /// the same store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Kills the server.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("nats-server did not listen on port {port} within {timeout:?}")
}
