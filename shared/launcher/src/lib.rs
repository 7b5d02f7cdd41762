//! Starting and stopping the service processes: each service runs as its own
//! OS process (so that one can be killed for real), with its output in a log
//! file and its pid in a pid file under the run directory. `tracehop up`,
//! `down`, `kill`, `start` and the end-to-end tests all go through here.
//!
//! - [`SERVICES`]: every service's name, in start order, from the catalog
//!   ([`tracehop_messaging::topology::Service`]).
//! - [`Launcher`]: where the binaries are, where pid files and logs go, and
//!   the environment every service gets.
//! - [`prepare`]: what must exist before any service starts (the database,
//!   its migrations, the streams and durable consumers, the scenario and
//!   span-pipeline buckets).
//! - [`readiness`]: probes that tell when every service answers.
//! - [`nats_server`]: the system's own `nats-server`: keys, configuration
//!   (users and permissions from the catalog), process.

pub mod nats_server;
pub mod readiness;

pub use readiness::{probe, wait_ready};

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};
pub use tracehop_messaging::topology::{SERVICE_NAMES as SERVICES, Service, Store, StreamReplicas};

/// The executable of the service called `service`; a name outside the
/// catalog gets `tracehop-<name>`, which does not exist.
pub fn binary_name(service: &str) -> String {
    Service::from_name(service).map_or_else(|| format!("tracehop-{service}"), |s| s.binary().to_string())
}

/// The folder that holds the workspace's executables, judged from the
/// running one: `target/<profile>/` for a binary, and also for a test, which
/// runs from `target/<profile>/deps/`.
pub fn default_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("failed to find the running executable")?;
    let dir = exe.parent().context("the running executable has no folder")?;
    Ok(if dir.ends_with("deps") { dir.parent().unwrap_or(dir).to_path_buf() } else { dir.to_path_buf() })
}

/// How a service is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// SIGTERM: the service drains and flushes its telemetry; SIGKILL after
    /// the grace period.
    Graceful(Duration),
    /// SIGKILL at once: what a crash looks like.
    Kill,
}

/// Starts and stops service processes.
#[derive(Clone, Debug)]
pub struct Launcher {
    /// Where `tracehop-<service>` executables are.
    pub bin_dir: PathBuf,
    /// Where `<service>.pid` and `<service>.log` go.
    pub run_dir: PathBuf,
    /// Environment variables set for every service, on top of the caller's.
    pub env: Vec<(String, String)>,
    /// Environment variables of one service: (service, name, value), set
    /// after [`Launcher::env`] (its own `DATABASE_URL`, say).
    pub service_env: Vec<(String, String, String)>,
}

impl Launcher {
    pub fn new(bin_dir: PathBuf, run_dir: PathBuf) -> Self {
        Self { bin_dir, run_dir, env: Vec::new(), service_env: Vec::new() }
    }

    /// Adds an environment variable for `service` only.
    pub fn with_service_env(
        mut self,
        service: impl Into<String>,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.service_env.push((service.into(), name.into(), value.into()));
        self
    }

    /// Gives each service with a schema a `DATABASE_URL` of its own role on
    /// `owner_url`'s database ([`service_database_url`]), and the others
    /// none; `password` gives a role's password, when there is one.
    pub fn with_database_roles(
        mut self,
        owner_url: &str,
        password: impl Fn(Service) -> Option<String>,
    ) -> anyhow::Result<Self> {
        for service in Service::ALL {
            if let Some(url) = service_database_url(owner_url, service, password(service).as_deref())? {
                self = self.with_service_env(service.name(), "DATABASE_URL", url);
            }
        }
        Ok(self)
    }

    /// Adds an environment variable for every service.
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn log_path(&self, service: &str) -> PathBuf {
        self.run_dir.join(format!("{service}.log"))
    }

    fn pid_path(&self, service: &str) -> PathBuf {
        self.run_dir.join(format!("{service}.pid"))
    }

    /// Checks that every service's executable is there.
    pub fn check_binaries(&self) -> anyhow::Result<()> {
        let missing: Vec<String> = SERVICES
            .iter()
            .map(|service| binary_name(service))
            .filter(|name| !self.bin_dir.join(name).is_file())
            .collect();
        if !missing.is_empty() {
            bail!(
                "service executables not found in {}: {}; build them first with `cargo build --workspace`",
                self.bin_dir.display(),
                missing.join(", ")
            );
        }
        Ok(())
    }

    /// Starts `service` in a process group of its own (so that a Ctrl-C in
    /// the terminal does not reach it), appending its output to its log
    /// file, and records its pid. The returned child may be dropped: the
    /// process keeps running.
    pub fn start(&self, service: &str) -> anyhow::Result<Child> {
        if let Some(pid) = self.running_pid(service) {
            bail!("{service} is already running (pid {pid})");
        }
        fs::create_dir_all(&self.run_dir).with_context(|| format!("failed to create {}", self.run_dir.display()))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(service))
            .with_context(|| format!("failed to open the log of {service}"))?;
        let binary = self.bin_dir.join(binary_name(service));
        let child = Command::new(&binary)
            // A seed in the caller's environment is the caller's own: each
            // service reads its key from TRACEHOP_NATS_KEYS.
            .env_remove("NATS_NKEY")
            .env_remove("DATABASE_URL")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(
                self.service_env
                    .iter()
                    .filter(|(owner, _, _)| owner == service)
                    .map(|(_, k, v)| (k.as_str(), v.as_str())),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("failed to start {}", binary.display()))?;
        fs::write(self.pid_path(service), child.id().to_string())
            .with_context(|| format!("failed to write the pid file of {service}"))?;
        Ok(child)
    }

    /// The pid of `service` if its pid file names a live process that is
    /// that service (a pid reused by another program does not count).
    pub fn running_pid(&self, service: &str) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.pid_path(service)).ok()?.trim().parse().ok()?;
        is_service_process(pid, service).then_some(pid)
    }

    /// Sends SIGKILL to `service` and forgets its pid file, without waiting
    /// for it to be gone (the caller that started it reaps it); returns its
    /// pid, or none when it was not running.
    pub fn kill_now(&self, service: &str) -> Option<u32> {
        let pid = self.running_pid(service);
        if let Some(pid) = pid {
            let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = fs::remove_file(self.pid_path(service));
        pid
    }

    /// Stops `service` and waits until it is gone; returns false when it
    /// was not running.
    pub async fn stop(&self, service: &str, mode: StopMode) -> anyhow::Result<bool> {
        let Some(pid) = self.running_pid(service) else {
            let _ = fs::remove_file(self.pid_path(service));
            return Ok(false);
        };
        let target = Pid::from_raw(pid as i32);
        match mode {
            StopMode::Kill => {
                let _ = signal::kill(target, Signal::SIGKILL);
            }
            StopMode::Graceful(grace) => {
                let _ = signal::kill(target, Signal::SIGTERM);
                let deadline = Instant::now() + grace;
                while is_service_process(pid, service) && Instant::now() < deadline {
                    sleep(Duration::from_millis(50)).await;
                }
                if is_service_process(pid, service) {
                    let _ = signal::kill(target, Signal::SIGKILL);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_service_process(pid, service) && Instant::now() < deadline {
            sleep(Duration::from_millis(20)).await;
        }
        let _ = fs::remove_file(self.pid_path(service));
        Ok(true)
    }
}

/// True when `pid` is alive (not a zombie) and runs `tracehop-<service>`.
pub fn is_service_process(pid: u32, service: &str) -> bool {
    runs_program(pid, &binary_name(service))
}

/// True when `pid` is alive (not a zombie) and runs the executable named
/// `program`.
pub fn runs_program(pid: u32, program: &str) -> bool {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) else { return false };
    // The state follows the parenthesized command name: Z is a zombie.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    let Ok(cmdline) = fs::read(proc_dir.join("cmdline")) else { return false };
    let running = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    Path::new(std::str::from_utf8(running).unwrap_or_default())
        .file_name()
        .is_some_and(|name| name.to_string_lossy() == program)
}

/// The passwords of the services' database roles, one file each
/// (`<service>.password`, 0600) in `dir` (0700), made once.
pub fn ensure_database_passwords(dir: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("failed to create {}", dir.display()))?;
    for service in Service::ALL.into_iter().filter(|s| s.schema().is_some()) {
        let path = dir.join(format!("{service}.password"));
        if path.exists() {
            continue;
        }
        let password = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("failed to create {}", path.display()))?;
        writeln!(file, "{password}")?;
    }
    Ok(())
}

/// The password of `service`'s database role from `dir`, if it has one.
pub fn database_password(dir: &Path, service: Service) -> Option<String> {
    fs::read_to_string(dir.join(format!("{service}.password"))).ok().map(|p| p.trim().to_string())
}

/// The database role of every service with a schema, from the catalog.
pub fn database_roles() -> Vec<tracehop_db::roles::SchemaRole> {
    Service::ALL
        .into_iter()
        .filter_map(|service| {
            Some(tracehop_db::roles::SchemaRole {
                role: service.database_role()?,
                schema: service.schema()?,
                reads_lock_waits: service == Service::Inventory,
            })
        })
        .collect()
}

/// The `DATABASE_URL` of `service`'s own role on `owner_url`'s database;
/// none for a service without a schema.
pub fn service_database_url(
    owner_url: &str,
    service: Service,
    password: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let Some(role) = service.database_role() else { return Ok(None) };
    Ok(Some(tracehop_db::roles::service_url(owner_url, &role, password).context("DATABASE_URL is not a URL")?))
}

/// Creates each service's database role if missing and grants it its
/// schema in `database_url`'s (migrated) database; `password` gives a
/// role's password.
pub async fn ensure_database_roles(
    database_url: &str,
    password: impl Fn(Service) -> Option<String>,
) -> anyhow::Result<()> {
    tracehop_db::roles::ensure(database_url, &database_roles(), |role| {
        Service::ALL.into_iter().find(|s| s.database_role().as_deref() == Some(role.role.as_str())).and_then(&password)
    })
    .await
    .with_context(|| format!("failed to create the services' roles at {}", redact_url(database_url)))
}

/// Creates the database and applies migrations as its owner, gives each
/// service its role ([`database_roles`]; `password` gives a role's
/// password), then creates the span feed, the ORDERS stream and every
/// expected durable consumer, so that events wait for a consumer that has
/// not started yet, and the key-value buckets of the scenarios and of the
/// span pipelines' reports. Each store gets the replica count the catalog
/// gives it for `replicas` ([`Store::replicas`]; `TRACEHOP_STREAM_REPLICAS`,
/// 3 on a cluster), an existing one is brought to it.
pub async fn prepare(
    nats: &async_nats::Client,
    database_url: &str,
    limits: &tracehop_spanfeed::kept::Limits,
    replicas: StreamReplicas,
    password: impl Fn(Service) -> Option<String>,
) -> anyhow::Result<()> {
    tracehop_db::migrate(database_url)
        .await
        .with_context(|| format!("failed to migrate the database at {}", redact_url(database_url)))?;
    ensure_database_roles(database_url, password).await?;
    let js = async_nats::jetstream::new(nats.clone());
    tracehop_spanfeed::ensure_streams(
        &js,
        limits,
        Store::SpanFeed.replicas(replicas),
        Store::KeptTraces.replicas(replicas),
    )
    .await
    .context("failed to create the span feed and kept-traces streams")?;
    tracehop_messaging::topology::ensure_all(&js, replicas).await.context("failed to create streams and consumers")?;
    tracehop_scenarios::create_bucket(&js, Store::Scenarios.replicas(replicas))
        .await
        .context("failed to create the scenario switches")?;
    // Services create it too when it is missing, but one made here lets a
    // service do with the right to put its own reports.
    tracehop_telemetry::health::create_bucket(&js, Store::PipelineReports.replicas(replicas))
        .await
        .context("failed to create the span pipelines' bucket")?;
    Ok(())
}

/// A URL with its password, if any, replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
