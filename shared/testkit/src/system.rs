//! The whole system for one test: its own NATS server (or cluster), its own
//! database, every service as its own process.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use tempfile::TempDir;
use tracehop_launcher::{Launcher, SERVICES, StopMode};

use crate::{NatsCluster, NatsServer, TestDatabase, TestNats};

/// Every service running against a private NATS server (or a cluster:
/// `TestSystem<NatsCluster>`) and database.
pub struct TestSystem<N: TestNats = NatsServer> {
    /// The NATS under test: a [`NatsServer`] or a [`NatsCluster`].
    pub nats_server: N,
    pub db: TestDatabase,
    /// A client of the test's NATS server, connected as the command (the
    /// operator's tool); [`NatsServer::connect_as`] plays another user.
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    /// JetStream as the order service (its own key), for tests that forge
    /// or replay order events: nobody else may publish them.
    pub order_js: jetstream::Context,
    /// `http://127.0.0.1:<port>` of the gateway.
    pub gateway_url: String,
    /// Where notification writes its `.eml` files.
    pub mail_dir: PathBuf,
    pub launcher: Launcher,
    run_dir: TempDir,
    children: Vec<(String, Child)>,
}

impl TestSystem {
    /// Starts everything with the default settings and waits until every
    /// service answers.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Like [`TestSystem::start`], with extra environment variables for
    /// every service (`PAYMENT_LATENCY_MS`, ...).
    pub async fn start_with(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_on(TestDatabase::create().await?, env).await
    }

    /// Like [`TestSystem::start_with`], on a database of the caller's (on a
    /// private PostgreSQL server that the test restarts, say).
    pub async fn start_on(db: TestDatabase, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_on_nats(NatsServer::start().await?, db, env, 1).await
    }

    /// Like [`TestSystem::start_with`], with `instances` copies of each
    /// service that may run several (`tracehop up --instances`); the
    /// processes are named as [`tracehop_launcher::Instance`] says
    /// (`order`, `order-2`).
    pub async fn start_instances(instances: u16, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_on_nats(NatsServer::start().await?, TestDatabase::create().await?, env, instances).await
    }
}

impl TestSystem<NatsCluster> {
    /// Like [`TestSystem::start_instances`], on a NATS cluster of the
    /// caller's: every service and the command are given all its nodes, and
    /// streams and buckets are replicated on all three
    /// (`TRACEHOP_STREAM_REPLICAS=3`).
    pub async fn start_on_cluster(cluster: NatsCluster, instances: u16, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_on_nats(cluster, TestDatabase::create().await?, env, instances).await
    }
}

impl<N: TestNats> TestSystem<N> {
    /// The system on the NATS `nats_server` and the database `db`, with
    /// extra environment variables for every service and `instances`
    /// copies of each that may run several. Streams and buckets get the
    /// replica count that suits that NATS, which the services also find in
    /// `TRACEHOP_STREAM_REPLICAS`.
    pub async fn start_on_nats(
        nats_server: N,
        db: TestDatabase,
        env: &[(&str, &str)],
        instances: u16,
    ) -> anyhow::Result<Self> {
        let replicas = nats_server.stream_replicas();
        let nats = nats_server.connect_command().await?;
        let order_js = jetstream::new(nats_server.connect_service(tracehop_messaging::Service::Order).await?);
        let limits = tracehop_spanfeed::kept::Limits::default();
        tracehop_launcher::prepare(&nats, &db.url(), &limits, replicas, |_| None).await?;
        let run_dir = tempfile::Builder::new().prefix("tracehop-run-").tempdir()?;
        let mail_dir = run_dir.path().join("mail");
        let gateway_addr = format!("127.0.0.1:{}", crate::free_port());
        let mut launcher = Launcher::new(tracehop_launcher::default_bin_dir()?, run_dir.path().to_path_buf())
            .with_env("NATS_URL", nats_server.url())
            .with_env(tracehop_messaging::topology::StreamReplicas::VARIABLE, replicas.to_string())
            .with_env("TRACEHOP_NATS_KEYS", nats_server.keys_dir().to_string_lossy())
            .with_env("GATEWAY_ADDR", &gateway_addr)
            .with_env("NOTIFICATION_MAIL_DIR", mail_dir.to_string_lossy())
            .with_env("OTEL_EXPORTER_OTLP_ENDPOINT", "")
            .with_env("RUST_LOG", "info");
        // Each service connects as its own database role.
        launcher = launcher.with_database_roles(&db.url(), |_| None)?.with_instances(instances)?;
        for (name, value) in env {
            launcher = launcher.with_env(*name, *value);
        }
        launcher.check_binaries()?;
        let mut system = Self {
            nats_server,
            db,
            js: jetstream::new(nats.clone()),
            order_js,
            nats,
            gateway_url: format!("http://{gateway_addr}"),
            mail_dir,
            launcher,
            run_dir,
            children: Vec::new(),
        };
        for process in system.launcher.processes() {
            system.start_service(&process.name())?;
        }
        system.wait_ready(&SERVICES).await?;
        Ok(system)
    }

    /// Starts one process (again): a service's first copy by its name,
    /// another as `order-2`.
    pub fn start_service(&mut self, service: &str) -> anyhow::Result<()> {
        let child = self.launcher.start(service)?;
        self.children.push((service.to_string(), child));
        Ok(())
    }

    /// Kills one process (a service's first copy by its name, another as
    /// `order-2`) with SIGKILL, as a crash would, and reaps it:
    /// a killed process is gone at once, so the wait is for the kernel only.
    pub fn kill_service(&mut self, service: &str) -> anyhow::Result<()> {
        let Some(pid) = self.launcher.kill_now(service) else { anyhow::bail!("{service} is not running") };
        for (_, child) in self.children.iter_mut().filter(|(_, child)| child.id() == pid) {
            let _ = child.wait();
        }
        self.reap();
        Ok(())
    }

    /// Stops one service with SIGTERM and waits for it to drain.
    pub async fn stop_service(&mut self, service: &str) -> anyhow::Result<()> {
        self.launcher.stop(service, StopMode::Graceful(Duration::from_secs(15))).await?;
        self.reap();
        Ok(())
    }

    /// Waits until `services` answer.
    pub async fn wait_ready(&self, services: &[&str]) -> anyhow::Result<()> {
        let gateway_addr = self.gateway_url.trim_start_matches("http://").to_string();
        tracehop_launcher::wait_ready(&self.nats, services, &gateway_addr, Duration::from_secs(60))
            .await
            .with_context(|| format!("the system did not get ready; logs:\n{}", self.logs()))
    }

    /// Every service's log, for a failing test's message.
    pub fn logs(&self) -> String {
        let violations = self.nats_server.violations();
        let nats = format!("\n--- nats-server: permission violations ---\n{}", violations.join("\n"));
        self.launcher
            .processes()
            .iter()
            .map(|process| {
                let service = process.name();
                let log = std::fs::read_to_string(self.launcher.log_path(&service)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {service} ---\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
            + &nats
    }

    /// The environment a `tracehop` command needs to reach this system as
    /// the operator: its NATS server and the command's key.
    pub fn command_env(&self) -> [(&'static str, String); 2] {
        [
            ("NATS_URL", self.nats_server.url()),
            ("TRACEHOP_NATS_KEYS", self.nats_server.keys_dir().to_string_lossy().into_owned()),
        ]
    }

    /// The folder with pid files and logs.
    pub fn run_dir(&self) -> &std::path::Path {
        self.run_dir.path()
    }

    fn reap(&mut self) {
        self.children.retain_mut(|(_, child)| !matches!(child.try_wait(), Ok(Some(_))));
    }
}

impl<N: TestNats> Drop for TestSystem<N> {
    fn drop(&mut self) {
        // Every test of the whole system runs under the shipped permissions:
        // anything they refused is a defect, even when the test passed.
        let violations = self.nats_server.violations();
        if !violations.is_empty() && !std::thread::panicking() {
            for (_, child) in &mut self.children {
                let _ = child.kill();
                let _ = child.wait();
            }
            panic!("nats-server refused what a service or the command did:\n{}", violations.join("\n"));
        }
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
