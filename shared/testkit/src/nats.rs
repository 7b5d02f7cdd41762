//! A private `nats-server` per test.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tempfile::TempDir;

/// A `nats-server -js` on 127.0.0.1, with its store in a temporary folder.
pub struct NatsServer {
    port: u16,
    store: TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a free port and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        let store = tempfile::Builder::new().prefix("tracehop-nats-").tempdir()?;
        let mut server = Self { port: crate::free_port(), store, child: None };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new("nats-server");
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"]).arg(self.store.path());
        if supports_sync_always() {
            // Acknowledged means on disk, as in the configuration the project
            // ships (deploy/nats-server.conf).
            let config = self.store.path().join("sync.conf");
            std::fs::write(&config, "jetstream { sync_interval: always }\n")?;
            command.arg("-c").arg(config);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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

/// Whether the `nats-server` on the PATH knows `sync_interval: always`
/// (2.10 and later); 2.9 acknowledges before its periodic fsync.
pub fn supports_sync_always() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let Ok(output) = Command::new("nats-server").arg("--version").output() else { return false };
        let text = String::from_utf8_lossy(&output.stdout);
        let version = text.rsplit('v').next().unwrap_or_default().trim();
        let mut parts = version.split('.').map(|part| part.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (2, 10)
    })
}
