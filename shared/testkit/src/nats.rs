//! Private `nats-server`s per test, with the system's own configuration:
//! the same users and permissions as `tracehop up` runs (generated from the
//! catalog), keys of their own, nobody anonymous. [`NatsServer`] is one
//! server; [`crate::NatsCluster`] is three. Both start their processes
//! through [`ServerProcess`], and [`TestNats`] is what a
//! [`crate::TestSystem`] needs of either.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tempfile::TempDir;
use tracehop_launcher::nats_server::{self, ServerConfig};
use tracehop_messaging::Service;
use tracehop_messaging::access::{NatsCredentials, NatsUser};
use tracehop_messaging::topology::StreamReplicas;

pub use tracehop_launcher::nats_server::supports_sync_always;

/// The NATS a test runs the system on: one server or a cluster.
pub trait TestNats: Send + Sync + 'static {
    /// `NATS_URL` for the services and the command: one address, or a
    /// cluster's comma-separated list.
    fn url(&self) -> String;

    /// The folder of every user's seed: `TRACEHOP_NATS_KEYS`.
    fn keys_dir(&self) -> PathBuf;

    /// The lines of the servers' logs that report a permission violation.
    fn violations(&self) -> Vec<String>;

    /// `TRACEHOP_STREAM_REPLICAS` that suits it: 1 for one server, the
    /// cluster's size for a cluster.
    fn stream_replicas(&self) -> StreamReplicas;

    /// The credentials of `user` on it.
    fn credentials(&self, user: NatsUser) -> NatsCredentials {
        NatsCredentials::load(user, Some(&self.keys_dir()), None).expect("the test server's keys are readable")
    }

    /// A client connected as `user`.
    fn connect_as(&self, user: NatsUser) -> impl Future<Output = anyhow::Result<async_nats::Client>> + Send {
        let (url, credentials) = (self.url(), self.credentials(user));
        async move { Ok(tracehop_messaging::connect(&url, user, &credentials).await?) }
    }

    /// A client connected as the command (the operator's tool).
    fn connect_command(&self) -> impl Future<Output = anyhow::Result<async_nats::Client>> + Send {
        self.connect_as(NatsUser::Command)
    }

    /// A client connected as `service`.
    fn connect_service(&self, service: Service) -> impl Future<Output = anyhow::Result<async_nats::Client>> + Send {
        self.connect_as(NatsUser::Service(service))
    }
}

/// Where a test server's configuration comes from.
pub(crate) enum Configuration {
    /// Generated as `tracehop up` does, into the server's folder.
    Generated(ServerConfig),
    /// A file of the caller's (a shipped one, rewritten for the test), the
    /// client port it sets, and variables it reads from the environment.
    /// Only the check of `deploy/` uses it.
    #[cfg_attr(not(test), allow(dead_code))]
    File { path: PathBuf, port: u16, env: Vec<(String, String)> },
}

/// One `nats-server` process of a test: its configuration, the folder its
/// log (and generated configuration) go in, the keys it reads. Restarting
/// it keeps its ports and store.
pub(crate) struct ServerProcess {
    config: Configuration,
    dir: PathBuf,
    keys_dir: PathBuf,
    child: Option<Child>,
}

impl ServerProcess {
    pub(crate) fn new(config: Configuration, dir: PathBuf, keys_dir: PathBuf) -> Self {
        Self { config, dir, keys_dir, child: None }
    }

    /// Writes the configuration, starts the server and waits until it
    /// accepts connections.
    pub(crate) async fn spawn(&mut self) -> anyhow::Result<()> {
        let (config, env) = match &self.config {
            Configuration::Generated(config) => (config.write(&self.dir)?, Vec::new()),
            Configuration::File { path, env, .. } => (path.clone(), env.clone()),
        };
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let child = nats_server::command(&config, &self.keys_dir, None)?
            .envs(env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("failed to start nats-server (is it on the PATH?)")?;
        self.child = Some(child);
        let (port, timeout) = (self.port(), Duration::from_secs(10));
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                bail!("nats-server exited at start ({status}); its log:\n{}", self.log_tail(20));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("nats-server did not listen on port {port} within {timeout:?}; its log:\n{}", self.log_tail(20))
    }

    pub(crate) fn port(&self) -> u16 {
        match &self.config {
            Configuration::Generated(config) => config.port,
            Configuration::File { port, .. } => *port,
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub(crate) fn violations(&self) -> Vec<String> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains("Violation"))
            .map(str::to_string)
            .collect()
    }

    /// SIGKILL, and reaped.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `nats-server` with JetStream on 127.0.0.1, with its store, keys and
/// log in a temporary folder.
pub struct NatsServer {
    // Declared before `dir`: the process dies before its folder goes.
    process: ServerProcess,
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server on a free port and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("tracehop-nats-").tempdir()?;
        let keys_dir = dir.path().join("keys");
        nats_server::ensure_keys(&keys_dir)?;
        let config = ServerConfig::new(crate::free_port(), dir.path().join("store"));
        let mut process = ServerProcess::new(Configuration::Generated(config), dir.path().to_path_buf(), keys_dir);
        process.spawn().await?;
        Ok(Self { process, dir })
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.process.port())
    }

    /// The folder of every user's seed: `TRACEHOP_NATS_KEYS` for the
    /// services and the command.
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// The server's log (permission violations are logged there).
    pub fn log_path(&self) -> PathBuf {
        self.process.log_path()
    }

    /// The lines of the server's log that report a permission violation.
    pub fn violations(&self) -> Vec<String> {
        self.process.violations()
    }

    /// The credentials of `user` on this server.
    pub fn credentials(&self, user: NatsUser) -> NatsCredentials {
        TestNats::credentials(self, user)
    }

    /// A client connected as `user`.
    pub async fn connect_as(&self, user: NatsUser) -> anyhow::Result<async_nats::Client> {
        TestNats::connect_as(self, user).await
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
        self.process.kill();
        self.process.spawn().await
    }

    /// Kills the server.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

impl TestNats for NatsServer {
    fn url(&self) -> String {
        NatsServer::url(self)
    }

    fn keys_dir(&self) -> PathBuf {
        NatsServer::keys_dir(self)
    }

    fn violations(&self) -> Vec<String> {
        NatsServer::violations(self)
    }

    fn stream_replicas(&self) -> StreamReplicas {
        StreamReplicas::ONE
    }
}
