//! The system's own `nats-server`: its keys, its configuration and its
//! process. `tracehop up` starts it (when `NATS_URL` is not set and
//! `nats-server` is on the PATH), the tests start one per test with the same
//! configuration, `tracehop down` stops it last.
//!
//! - [`ensure_keys`]: an nkey per [`NatsUser`], generated once into the keys
//!   folder (0700), each seed in a file of its own (0600). The server gets
//!   only the public keys, through its environment.
//! - [`ServerConfig`]: port, JetStream store, fsync policy and, for a node
//!   of a cluster, its name and routes ([`ClusterNode`]);
//!   [`ServerConfig::write`] writes `nats-server.conf`, which includes the
//!   generated users and permissions ([`access::accounts_config`], the text
//!   of `deploy/nats-accounts.conf`).
//! - [`OwnServer`]: starts, finds and stops the process, with its pid file
//!   and log beside the services'.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};
use tracehop_messaging::access::{self, NatsUser};

/// The program started as the system's NATS server.
pub const PROGRAM: &str = "nats-server";

/// The port of the system's own server unless `TRACEHOP_NATS_PORT` says
/// otherwise: beside, not on, the usual 4222 of a shared server.
pub const DEFAULT_PORT: u16 = 4223;

/// The default `GOMEMLIMIT` for a server holding a span feed of
/// `feed_bytes`: 1.5 times the feed. Go's collector otherwise lets the heap
/// grow to twice what is live (measured: 834 MB resident for a full 256 MiB
/// feed); with the limit it collects before the heap passes it. The limit
/// bounds Go's own memory; what the process holds besides (its code, about
/// what it holds idle) comes on top, so that the server stays within 1.5
/// times the feed plus its idle size (BENCHMARKS.md: with 16 MiB more in
/// the limit it went 1% over). It is a soft limit: a server that needs more
/// live memory gets it, and collects often.
pub fn default_memory_limit(feed_bytes: u64) -> u64 {
    feed_bytes + feed_bytes / 2
}

/// Whether `path` exists and is a program: `nats-server` on the PATH.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

/// The version of the `nats-server` on the PATH, as (major, minor, patch).
pub fn server_version() -> Option<(u32, u32, u32)> {
    static VERSION: std::sync::OnceLock<Option<(u32, u32, u32)>> = std::sync::OnceLock::new();
    *VERSION.get_or_init(|| {
        let output = Command::new(PROGRAM).arg("--version").output().ok()?;
        parse_version(&String::from_utf8_lossy(&output.stdout))
    })
}

/// `nats-server: v2.9.10` → (2, 9, 10).
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let version = text.trim().rsplit('v').next()?.trim();
    let mut parts = version.split(['.', '-', '+']).map(|part| part.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// Whether the `nats-server` on the PATH knows `sync_interval: always`
/// (2.10 and later); 2.9 refuses a configuration that sets it.
pub fn supports_sync_always() -> bool {
    server_version().is_some_and(|(major, minor, _)| (major, minor) >= (2, 10))
}

/// Creates the keys folder (0700) and a seed for every user that has none
/// (0600 each); existing keys are kept, so a restart keeps its users.
pub fn ensure_keys(dir: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("failed to create {}", dir.display()))?;
    for user in NatsUser::all() {
        let path = dir.join(user.seed_file_name());
        if path.exists() {
            continue;
        }
        let seed = nkeys::KeyPair::new_user().seed().context("failed to make an nkey")?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("failed to create {}", path.display()))?;
        writeln!(file, "{seed}").with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(())
}

/// `TRACEHOP_NKEY_<USER>=<public key>` for every user, read from the seeds
/// in `dir`: the environment the server's configuration expects.
pub fn public_key_env(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    NatsUser::all()
        .into_iter()
        .map(|user| {
            let path = dir.join(user.seed_file_name());
            let seed = fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
            let pair = nkeys::KeyPair::from_seed(seed.trim())
                .with_context(|| format!("{} does not hold an nkey seed", path.display()))?;
            Ok((user.public_key_variable(), pair.public_key()))
        })
        .collect()
}

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub port: u16,
    /// JetStream's store: each node of a cluster has its own.
    pub store_dir: PathBuf,
    /// `sync_interval: always`: acknowledged writes are on disk. Only where
    /// the server supports it ([`supports_sync_always`]).
    pub sync_always: bool,
    /// This server as a node of a cluster; `None` for a single server.
    pub cluster: Option<ClusterNode>,
}

/// What makes a server a node of a JetStream cluster: a name of its own
/// (stream info names a stream's leader by it), the cluster's name, where
/// it listens for routes and the routes to the other nodes. nats-server
/// 2.9 and 2.15 take the same block; a route to the node itself is ignored,
/// so every node may list them all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    /// `server_name`, unique in the cluster (JetStream requires it).
    pub server_name: String,
    /// `cluster.name`, the same on every node.
    pub cluster_name: String,
    /// `cluster.listen`: the route port, on 127.0.0.1.
    pub route_port: u16,
    /// `cluster.routes`: `nats-route://host:port` of the other nodes.
    pub routes: Vec<String>,
}

/// The name of a cluster tracehop configures.
pub const CLUSTER_NAME: &str = "tracehop";

impl ServerConfig {
    /// A server on `port` with its store in `store_dir`, fsyncing every
    /// write where the server on the PATH can.
    pub fn new(port: u16, store_dir: PathBuf) -> Self {
        Self { port, store_dir, sync_always: supports_sync_always(), cluster: None }
    }

    /// The same server as a node of a cluster.
    pub fn in_cluster(self, node: ClusterNode) -> Self {
        Self { cluster: Some(node), ..self }
    }

    /// The configuration's text; it includes `accounts.conf` beside it.
    pub fn text(&self) -> String {
        let sync = if self.sync_always {
            "  # Acknowledged means on disk: see deploy/nats-server.conf for why and what it costs.\n  sync_interval: always\n"
        } else {
            "  # This nats-server predates `sync_interval` (2.10): it fsyncs on its own timer.\n"
        };
        let (what, server_name, cluster) = match &self.cluster {
            None => ("the system's own NATS server", "tracehop", String::new()),
            Some(node) => (
                "a node of a NATS cluster",
                node.server_name.as_str(),
                format!(
                    "cluster {{\n  name: {name}\n  listen: 127.0.0.1:{route_port}\n  routes: [\n{routes}  ]\n}}\n",
                    name = node.cluster_name,
                    route_port = node.route_port,
                    routes = node.routes.iter().map(|route| format!("    {route}\n")).collect::<String>(),
                ),
            ),
        };
        format!(
            "# Written by tracehop: {what}.\n\
             server_name: {server_name}\n\
             listen: 127.0.0.1:{port}\n\
             jetstream {{\n  store_dir: {store:?}\n{sync}}}\n\
             {cluster}\
             include ./accounts.conf\n",
            port = self.port,
            store = self.store_dir.display().to_string(),
        )
    }

    /// Writes `nats-server.conf` and `accounts.conf` into `dir`; returns the
    /// former's path.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        fs::write(dir.join("accounts.conf"), access::accounts_config()).context("failed to write accounts.conf")?;
        let path = dir.join("nats-server.conf");
        fs::write(&path, self.text()).context("failed to write nats-server.conf")?;
        Ok(path)
    }
}

/// The `nats-server` command for `config_path`, with the users' public keys
/// and `GOMEMLIMIT` in its environment.
pub fn command(config_path: &Path, keys_dir: &Path, memory_limit: Option<u64>) -> anyhow::Result<Command> {
    let mut command = Command::new(PROGRAM);
    command.arg("-c").arg(config_path).envs(public_key_env(keys_dir)?).stdin(Stdio::null());
    if let Some(limit) = memory_limit {
        command.env("GOMEMLIMIT", limit.to_string());
    }
    Ok(command)
}

/// The system's own server under a home folder: `<home>/nats/` holds the
/// configuration, `keys/` and `store/`; its pid file and log go in the run
/// folder with the services'.
#[derive(Clone, Debug)]
pub struct OwnServer {
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    pub port: u16,
    /// `GOMEMLIMIT` in bytes.
    pub memory_limit: u64,
}

impl OwnServer {
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.run_dir.join("nats-server.log")
    }

    fn pid_path(&self) -> PathBuf {
        self.run_dir.join("nats-server.pid")
    }

    /// The pid of the running server, if its pid file names a live
    /// `nats-server`.
    pub fn running_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.pid_path()).ok()?.trim().parse().ok()?;
        crate::runs_program(pid, PROGRAM).then_some(pid)
    }

    /// Starts the server unless it runs, and waits until it listens.
    /// Returns the pid and whether it was started now.
    pub async fn start(&self) -> anyhow::Result<(u32, bool)> {
        if let Some(pid) = self.running_pid() {
            return Ok((pid, false));
        }
        // Something else on the port would answer the readiness check below
        // while our server fails to bind.
        if std::net::TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            bail!(
                "port {} is taken by another program; set TRACEHOP_NATS_PORT to a free one (or NATS_URL to use a \
                 server of your own)",
                self.port
            );
        }
        ensure_keys(&self.keys_dir())?;
        let config = ServerConfig::new(self.port, self.dir.join("store")).write(&self.dir)?;
        fs::create_dir_all(&self.run_dir).with_context(|| format!("failed to create {}", self.run_dir.display()))?;
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let mut child: Child = command(&config, &self.keys_dir(), Some(self.memory_limit))?
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("failed to start nats-server")?;
        let pid = child.id();
        fs::write(self.pid_path(), pid.to_string()).context("failed to write nats-server's pid file")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("nats-server exited at start ({status}); see {}", self.log_path().display());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok((pid, true));
            }
            sleep(Duration::from_millis(20)).await;
        }
        bail!("nats-server did not listen on port {} within 10 s; see {}", self.port, self.log_path().display())
    }

    /// Stops the server (SIGTERM, SIGKILL after `grace`); false when it was
    /// not running.
    pub async fn stop(&self, grace: Duration) -> bool {
        let Some(pid) = self.running_pid() else {
            let _ = fs::remove_file(self.pid_path());
            return false;
        };
        let target = Pid::from_raw(pid as i32);
        let _ = signal::kill(target, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while crate::runs_program(pid, PROGRAM) && Instant::now() < deadline {
            sleep(Duration::from_millis(50)).await;
        }
        if crate::runs_program(pid, PROGRAM) {
            let _ = signal::kill(target, Signal::SIGKILL);
        }
        let _ = fs::remove_file(self.pid_path());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("nats-server: v2.9.10\n"), Some((2, 9, 10)));
        assert_eq!(parse_version("nats-server: v2.12.1-RC.2"), Some((2, 12, 1)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn a_single_server_has_no_cluster_block() {
        let config = ServerConfig { sync_always: true, ..ServerConfig::new(4223, PathBuf::from("/s")) };
        assert_eq!(
            config.text(),
            "# Written by tracehop: the system's own NATS server.\nserver_name: tracehop\nlisten: 127.0.0.1:4223\n\
             jetstream {\n  store_dir: \"/s\"\n  # Acknowledged means on disk: see deploy/nats-server.conf for why \
             and what it costs.\n  sync_interval: always\n}\ninclude ./accounts.conf\n"
        );
    }

    #[test]
    fn a_cluster_node_names_itself_and_its_routes() {
        let node = ClusterNode {
            server_name: "tracehop-2".to_string(),
            cluster_name: CLUSTER_NAME.to_string(),
            route_port: 6223,
            routes: vec!["nats-route://127.0.0.1:6222".to_string(), "nats-route://127.0.0.1:6224".to_string()],
        };
        let text = ServerConfig::new(4224, PathBuf::from("/s2")).in_cluster(node).text();
        assert!(text.contains("server_name: tracehop-2\nlisten: 127.0.0.1:4224\n"), "{text}");
        assert!(
            text.contains(
                "cluster {\n  name: tracehop\n  listen: 127.0.0.1:6223\n  routes: [\n    \
                 nats-route://127.0.0.1:6222\n    nats-route://127.0.0.1:6224\n  ]\n}\ninclude ./accounts.conf\n"
            ),
            "{text}"
        );
        assert!(text.contains("store_dir: \"/s2\""), "{text}");
    }

    #[test]
    fn the_memory_limit_is_one_and_a_half_feeds() {
        assert_eq!(default_memory_limit(256 << 20), 384 * 1024 * 1024);
    }

    #[test]
    fn keys_are_private_and_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        ensure_keys(&keys).unwrap();
        let first = public_key_env(&keys).unwrap();
        ensure_keys(&keys).unwrap();
        assert_eq!(public_key_env(&keys).unwrap(), first, "keys changed on a second run");
        assert_eq!(fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o700);
        for user in NatsUser::all() {
            let mode = fs::metadata(keys.join(user.seed_file_name())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{user}");
        }
    }
}
