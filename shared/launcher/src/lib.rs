//! Starting and stopping the service processes: each service runs as its own
//! OS process (so that one can be killed for real), with its output in a log
//! file and its pid in a pid file under the run directory. `tracehop up`,
//! `down`, `kill`, `start` and the end-to-end tests all go through here.
//!
//! - [`SERVICES`]: every service's name, in start order, from the catalog
//!   ([`tracehop_messaging::topology::Service`]).
//! - [`Launcher`]: where the binaries are, where pid files and logs go, the
//!   environment every service gets, and how many copies of each run
//!   ([`Instance`]: `order` is a service's first copy, `order-2` its second).
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
pub use tracehop_messaging::topology::{Instances, SERVICE_NAMES as SERVICES, Service, Store, StreamReplicas};

/// The executable of the process called `name` (a service or one of its
/// copies, [`Instance`]); a name outside the catalog gets
/// `tracehop-<name>`, which does not exist.
pub fn binary_name(name: &str) -> String {
    Instance::parse(name).map_or_else(|| format!("tracehop-{name}"), |i| i.service.binary().to_string())
}

/// One process of a service: its first copy is called by the service's
/// name (`order`), so that a system of one copy each reads as before; the
/// others `<service>-<n>` (`order-2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instance {
    pub service: Service,
    /// 1 for the first copy.
    pub number: u16,
}

impl Instance {
    /// The first copy of `service`.
    pub fn first(service: Service) -> Self {
        Self { service, number: 1 }
    }

    /// `order` for the first copy, `order-2` for the second.
    pub fn name(&self) -> String {
        match self.number {
            1 => self.service.name().to_string(),
            n => format!("{}-{n}", self.service.name()),
        }
    }

    /// The instance called `name`: a service's name is its first copy.
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(service) = Service::from_name(name) {
            return Some(Self::first(service));
        }
        let (service, number) = name.rsplit_once('-')?;
        let number: u16 = number.parse().ok().filter(|n| *n >= 2)?;
        Some(Self { service: Service::from_name(service)?, number })
    }
}

impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Most copies of a service `tracehop up --instances` starts.
pub const MAX_INSTANCES: u16 = 8;

/// The file in the run folder that remembers how many copies `up` started.
const INSTANCES_FILE: &str = "instances";

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
    /// after [`Launcher::env`] (its own `DATABASE_URL`, say), for each of
    /// its copies.
    pub service_env: Vec<(String, String, String)>,
    /// Copies of each service that may run several ([`Service::instances`]);
    /// the gateway runs once whatever this says.
    pub instances: u16,
}

impl Launcher {
    /// A launcher of one copy of each service, or of as many as the last
    /// `up` in `run_dir` started ([`Launcher::remember_instances`]).
    pub fn new(bin_dir: PathBuf, run_dir: PathBuf) -> Self {
        let instances = fs::read_to_string(run_dir.join(INSTANCES_FILE))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .filter(|n| (1..=MAX_INSTANCES).contains(n))
            .unwrap_or(1);
        Self { bin_dir, run_dir, env: Vec::new(), service_env: Vec::new(), instances }
    }

    /// The same launcher, starting `instances` copies of each service that
    /// may run several (1 to [`MAX_INSTANCES`]).
    pub fn with_instances(mut self, instances: u16) -> anyhow::Result<Self> {
        if !(1..=MAX_INSTANCES).contains(&instances) {
            bail!("the number of instances must be 1 to {MAX_INSTANCES}, got {instances}");
        }
        self.instances = instances;
        Ok(self)
    }

    /// Records the instance count in the run folder, so that `start`,
    /// `status` and `down` know the copies `up` started.
    pub fn remember_instances(&self) -> anyhow::Result<()> {
        fs::create_dir_all(&self.run_dir).with_context(|| format!("failed to create {}", self.run_dir.display()))?;
        fs::write(self.run_dir.join(INSTANCES_FILE), self.instances.to_string())
            .context("failed to record the instance count")
    }

    /// The copies of `service` this launcher runs.
    pub fn instances_of(&self, service: Service) -> Vec<Instance> {
        let count = match service.instances() {
            Instances::Single => 1,
            Instances::Many | Instances::Leader | Instances::Partitioned => self.instances,
        };
        (1..=count).map(|number| Instance { service, number }).collect()
    }

    /// Every process of the system, in start order: each service's copies
    /// together, services as in [`SERVICES`].
    pub fn processes(&self) -> Vec<Instance> {
        Service::ALL.into_iter().flat_map(|service| self.instances_of(service)).collect()
    }

    /// The processes `name` stands for: every copy of a service for a
    /// service's name, one copy for a copy's (`order-2`); an error that
    /// lists the valid names otherwise.
    pub fn resolve(&self, name: &str) -> anyhow::Result<Vec<Instance>> {
        if let Ok(service) = name.parse::<Service>() {
            return Ok(self.instances_of(service));
        }
        match Instance::parse(name) {
            Some(instance) => Ok(vec![instance]),
            None => Err(name.parse::<Service>().expect_err("not a service").into()),
        }
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

    /// Starts the process `service` (a service or a copy of one,
    /// [`Instance`]) in a process group of its own (so that a Ctrl-C in
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
        let instance = Instance::parse(service).with_context(|| format!("{service} is no service of the catalog"))?;
        let owner = instance.service.name();
        let count = self.instances_of(instance.service).len();
        let mut copies: Vec<(String, String)> =
            vec![("TRACEHOP_INSTANCE".into(), instance.name()), ("TRACEHOP_INSTANCES".into(), count.to_string())];
        if instance.service.instances() == Instances::Partitioned {
            // Each copy decides its share of the span feed's partitions.
            copies.push(("KEEPER_INSTANCE".into(), (instance.number - 1).to_string()));
            copies.push(("KEEPER_INSTANCES".into(), count.to_string()));
        }
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
                    .filter(|(service, _, _)| service == owner)
                    .map(|(_, k, v)| (k.as_str(), v.as_str())),
            )
            .envs(copies)
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

    /// Every process with a live pid file in the run folder, in start
    /// order, whatever the instance count is now.
    pub fn running(&self) -> Vec<(Instance, u32)> {
        let Ok(entries) = fs::read_dir(&self.run_dir) else { return Vec::new() };
        let mut running: Vec<(Instance, u32)> = entries
            .filter_map(|entry| {
                let file = entry.ok()?.file_name().into_string().ok()?;
                let instance = Instance::parse(file.strip_suffix(".pid")?)?;
                Some((instance, self.running_pid(&instance.name())?))
            })
            .collect();
        running
            .sort_by_key(|(instance, _)| (Service::ALL.iter().position(|s| *s == instance.service), instance.number));
        running
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
/// span pipelines' reports and of the leader leases. Each store gets the
/// replica count the catalog gives it for `replicas` ([`Store::replicas`];
/// `TRACEHOP_STREAM_REPLICAS`, 3 on a cluster), an existing one is brought
/// to it.
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
    // The services create it too when it is missing (with one copy); made
    // here, it has its replicas from the start.
    js.create_or_update_stream(tracehop_messaging::lease::bucket_stream_config(Store::Leases.replicas(replicas)))
        .await
        .context("failed to create the leader leases' bucket")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_named_after_its_service_and_number() {
        let second = Instance { service: Service::Order, number: 2 };
        assert_eq!(Instance::first(Service::Order).name(), "order");
        assert_eq!(second.name(), "order-2");
        assert_eq!(Instance::parse("order-2"), Some(second));
        assert_eq!(Instance::parse("order"), Some(Instance::first(Service::Order)));
        for name in ["order-1", "order-0", "order-x", "orders-2", "-2", "order-", ""] {
            assert_eq!(Instance::parse(name), None, "{name}");
        }
        assert_eq!(binary_name("sentinel-3"), "tracehop-sentinel");
    }

    #[test]
    fn the_gateway_runs_once_and_every_other_service_as_often_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = Launcher::new(dir.path().into(), dir.path().join("run")).with_instances(3).unwrap();
        let processes = launcher.processes();
        assert_eq!(processes.len(), 3 * (Service::ALL.len() - 1) + 1);
        assert_eq!(launcher.instances_of(Service::Gateway), [Instance::first(Service::Gateway)]);
        assert_eq!(launcher.resolve("keeper").unwrap().len(), 3);
        assert_eq!(launcher.resolve("keeper-3").unwrap(), [Instance { service: Service::Keeper, number: 3 }]);
        assert!(launcher.resolve("kepeer").unwrap_err().to_string().contains("valid services"));
        assert!(launcher.clone().with_instances(0).is_err());
        assert!(launcher.clone().with_instances(MAX_INSTANCES + 1).is_err());

        // `up` remembers the count for `start`, `status` and `down`.
        launcher.remember_instances().unwrap();
        assert_eq!(Launcher::new(dir.path().into(), dir.path().join("run")).instances, 3);
    }
}
