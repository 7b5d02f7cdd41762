//! A private PostgreSQL server per test, for tests that restart or crash it.
//!
//! Every method is a plain blocking function: `start` takes about a second
//! (most of it `initdb`), the others a fraction of one. A `#[tokio::test]`
//! may call them directly when nothing else of its own has to make progress
//! meanwhile (services run as their own processes and are not held up); a
//! test with concurrent tasks of its own calls them through
//! `tokio::task::spawn_blocking`.
//!
//! Linux only: [`PostgresCluster::kill`] finds the server's processes in
//! `/proc`.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, User};
use tempfile::TempDir;

/// Where the binaries are taken from, if set: a folder holding `initdb`
/// and `pg_ctl`. Otherwise the highest version under `/usr/lib/postgresql`.
const BIN_DIR_VARIABLE: &str = "TRACEHOP_TEST_PG_BIN";

/// How long `pg_ctl` waits for a start or a stop.
const PG_CTL_TIMEOUT_SECONDS: &str = "60";

/// A PostgreSQL server of its own on 127.0.0.1, with its data in a temporary
/// folder; stopped and removed on drop.
///
/// The `postgres` superuser logs in without a password (`trust`). The
/// server runs with `fsync=off`, `synchronous_commit=off` and
/// `full_page_writes=off`, which makes it fast and changes nothing about
/// [`PostgresCluster::restart`] or [`PostgresCluster::stop`]. It does matter
/// to [`PostgresCluster::kill`]: see there, and
/// [`PostgresCluster::start_with`] to change a setting.
///
/// As root, the binaries run as the `postgres` OS user (`initdb` refuses to
/// run as root) and the temporary folder, under `/tmp`, is handed to that
/// user.
pub struct PostgresCluster {
    port: u16,
    bin_dir: PathBuf,
    /// The `postgres` user's ids when we are root, else `None` (run as us).
    run_as: Option<(Uid, Gid)>,
    /// `-c name=value` settings after the defaults; later ones win.
    settings: Vec<(String, String)>,
    running: bool,
    /// Holds `data/`, the Unix socket and `postgres.log`.
    dir: TempDir,
}

impl PostgresCluster {
    /// Creates a cluster (`initdb`) and starts it on a free port; returns
    /// when it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Like [`PostgresCluster::start`], with server settings (`-c
    /// name=value`) applied after the defaults, so they can also override
    /// them: `&[("synchronous_commit", "on")]`. They hold for every later
    /// start too.
    pub fn start_with(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let bin_dir = bin_dir()?;
        let run_as = postgres_user()?;
        // /tmp rather than $TMPDIR: the `postgres` user must be able to reach
        // it, and the socket's path must stay short (about 100 bytes at most).
        let dir = tempfile::Builder::new().prefix("tracehop-pg-").tempdir_in("/tmp")?;
        if let Some((uid, gid)) = run_as {
            nix::unistd::chown(dir.path(), Some(uid), Some(gid))
                .with_context(|| format!("failed to hand {} to the postgres user", dir.path().display()))?;
        }
        let mut cluster = Self {
            port: 0,
            bin_dir,
            run_as,
            settings: settings.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
            running: false,
            dir,
        };
        let data_dir = cluster.data_dir();
        let mut initdb = cluster.command("initdb");
        initdb.arg("-D").arg(&data_dir);
        initdb.args(["-U", "postgres", "--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C"]);
        cluster.run(initdb, "initdb")?;
        // The port was free a moment ago; if another process took it since,
        // try another one.
        let mut attempt = 1;
        loop {
            cluster.port = crate::free_port();
            match cluster.start_again() {
                Ok(()) => return Ok(cluster),
                Err(_) if attempt < 3 && cluster.log_tail(20).contains("could not bind") => attempt += 1,
                Err(error) => return Err(error),
            }
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("{}/{database}", self.server_url())
    }

    /// `postgres://postgres@127.0.0.1:<port>`, what `TRACEHOP_TEST_POSTGRES`
    /// holds for [`crate::TestDatabase`].
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// The server's TCP port on 127.0.0.1; it keeps it across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data folder (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log file, appended to by every start.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The last `lines` lines of the server's log, for a failing test's
    /// message.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Whether the server was started and not stopped or killed since.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// `pg_ctl restart -m fast`: ends the sessions, checkpoints, stops and
    /// starts again on the same port; returns when it accepts connections.
    /// Starts it if it was not running.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if !self.running {
            return self.start_again();
        }
        self.running = false;
        let mut pg_ctl = self.pg_ctl();
        pg_ctl.arg("-o").arg(self.server_options()).arg("-l").arg(self.log_path());
        pg_ctl.args(["-m", "fast", "-w", "-t", PG_CTL_TIMEOUT_SECONDS, "restart"]);
        self.run(pg_ctl, "pg_ctl restart")?;
        self.running = true;
        self.wait_for_port()
    }

    /// `pg_ctl stop -m fast`: ends the sessions, checkpoints and stops.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.stop_with_mode("fast")
    }

    /// Kills the server as a crash would: every process of it with SIGKILL
    /// (the postmaster first), without a checkpoint. Returns once they are
    /// all gone; [`PostgresCluster::start_again`] then recovers from the WAL.
    ///
    /// With the default `synchronous_commit=off`, a commit returns before
    /// its WAL is written, so transactions committed in the last moments
    /// before the kill (up to three `wal_writer_delay`s, 600 ms) are lost, as
    /// they would be on a real server with that setting: one committed a
    /// few milliseconds before the kill was lost 20 times out of 20 when
    /// this was tried. If every acknowledged commit must survive, start with
    /// `&[("synchronous_commit", "on")]` (about free here, as `fsync` is off:
    /// a commit costs one `write`), `SET synchronous_commit = on` in the
    /// session, or run `CHECKPOINT` (as a statement of its own) before the
    /// kill.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        let postmaster = self.postmaster_pid()?;
        // Stopped, the postmaster cannot fork while we list its children.
        // Each child is a session of its own, so no process group holds
        // them all.
        kill(postmaster, Signal::SIGSTOP).with_context(|| format!("failed to stop the postmaster {postmaster}"))?;
        let children = children_of(postmaster);
        kill(postmaster, Signal::SIGKILL).with_context(|| format!("failed to kill the postmaster {postmaster}"))?;
        for &child in &children {
            let _ = kill(child, Signal::SIGKILL);
        }
        self.running = false;
        // A new postmaster refuses to start while an old process still holds
        // the shared memory.
        let deadline = Instant::now() + Duration::from_secs(10);
        for pid in std::iter::once(postmaster).chain(children) {
            while !is_gone(pid) {
                if Instant::now() > deadline {
                    bail!("PostgreSQL process {pid} did not die within 10 s of SIGKILL");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // The lock files name the dead postmaster. Until something reaps it
        // (its parent is init, which here may take seconds), it is a zombie
        // that a new postmaster takes for a live one; and its PID may be
        // reused later. They are stale either way, as after a reboot.
        let socket_lock = self.dir.path().join(format!(".s.PGSQL.{}.lock", self.port));
        for lock in [self.data_dir().join("postmaster.pid"), socket_lock] {
            match std::fs::remove_file(&lock) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(error).with_context(|| format!("failed to remove {}", lock.display()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Starts the server again on the same port after
    /// [`PostgresCluster::kill`] (running crash recovery) or
    /// [`PostgresCluster::stop`]; returns when it accepts connections. Does
    /// nothing if it is running.
    ///
    /// While it was down, another process may have taken the port; the
    /// start then fails.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.running {
            return Ok(());
        }
        let mut pg_ctl = self.pg_ctl();
        pg_ctl.arg("-o").arg(self.server_options()).arg("-l").arg(self.log_path());
        pg_ctl.args(["-w", "-t", PG_CTL_TIMEOUT_SECONDS, "start"]);
        self.run(pg_ctl, "pg_ctl start")?;
        self.running = true;
        self.wait_for_port()
    }

    fn stop_with_mode(&mut self, mode: &str) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        let mut pg_ctl = self.pg_ctl();
        pg_ctl.args(["-m", mode, "-w", "-t", PG_CTL_TIMEOUT_SECONDS, "stop"]);
        self.run(pg_ctl, "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    /// The postmaster's options, as `pg_ctl -o` hands them to `/bin/sh`.
    fn server_options(&self) -> String {
        let socket_dir = self.dir.path().to_string_lossy().into_owned();
        let mut words = vec!["-p".to_string(), self.port.to_string(), "-k".to_string(), socket_dir];
        let defaults = [
            ("listen_addresses", "127.0.0.1"),
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
        ];
        let settings = defaults.iter().map(|(name, value)| (*name, *value));
        let settings = settings.chain(self.settings.iter().map(|(name, value)| (name.as_str(), value.as_str())));
        for (name, value) in settings {
            words.push("-c".to_string());
            words.push(format!("{name}={value}"));
        }
        words.iter().map(|word| shell_quote(word)).collect::<Vec<_>>().join(" ")
    }

    fn pg_ctl(&self) -> Command {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("-D").arg(self.data_dir());
        pg_ctl
    }

    /// One of the binaries, as the `postgres` user if we are root.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        // The test's working folder may be closed to the `postgres` user.
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            // std drops the supplementary groups too.
            command.uid(uid.as_raw()).gid(gid.as_raw());
        }
        command
    }

    /// Runs `command` to its end; its output and the log's tail make the
    /// error. `pg_ctl -l` points the server's own output at the log file, so
    /// the pipes close when `pg_ctl` exits.
    fn run(&self, mut command: Command, what: &str) -> anyhow::Result<()> {
        let output =
            command.output().with_context(|| format!("failed to run {what} from {}", self.bin_dir.display()))?;
        if !output.status.success() {
            bail!(
                "{what} failed ({}):\n{}{}\n--- postgres.log ---\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                self.log_tail(30)
            );
        }
        Ok(())
    }

    fn postmaster_pid(&self) -> anyhow::Result<Pid> {
        let path = self.data_dir().join("postmaster.pid");
        let contents = std::fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
        let pid: i32 = contents
            .lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .with_context(|| format!("no PID on the first line of {}", path.display()))?;
        Ok(Pid::from_raw(pid))
    }

    /// `pg_ctl -w` waits until the server says it is ready; this also makes
    /// sure its TCP port answers.
    fn wait_for_port(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("PostgreSQL did not listen on port {} within 10 s; log:\n{}", self.port, self.log_tail(30))
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        // Immediate: nothing needs to be kept. Then the folder goes with
        // `dir`.
        if self.running && self.stop_with_mode("immediate").is_err() {
            let _ = self.kill();
        }
    }
}

/// `$TRACEHOP_TEST_PG_BIN`, or `/usr/lib/postgresql/<highest version>/bin`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_VARIABLE) {
        return Ok(PathBuf::from(dir));
    }
    let root = Path::new("/usr/lib/postgresql");
    let entries = std::fs::read_dir(root)
        .with_context(|| format!("no PostgreSQL under {} (set {BIN_DIR_VARIABLE})", root.display()))?;
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version: Vec<u32> =
                entry.file_name().to_str()?.split('.').map(|part| part.parse().ok()).collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .with_context(|| format!("no <version>/bin/initdb under {} (set {BIN_DIR_VARIABLE})", root.display()))
}

/// The `postgres` user's ids if we are root, as `initdb` will not run as
/// root.
fn postgres_user() -> anyhow::Result<Option<(Uid, Gid)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = User::from_name("postgres")
        .context("failed to look up the postgres user")?
        .context("running as root, and there is no postgres user to run PostgreSQL as")?;
    Ok(Some((user.uid, user.gid)))
}

/// The processes whose parent is `parent`, from `/proc`.
fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(_, ppid)| ppid == parent.as_raw()))
        .map(Pid::from_raw)
        .collect()
}

/// Whether `pid` has exited: gone from `/proc`, or a zombie (its memory,
/// the shared memory included, is released by then).
fn is_gone(pid: Pid) -> bool {
    proc_stat(pid.as_raw()).is_none_or(|(state, _)| matches!(state, 'Z' | 'X'))
}

/// The state and parent PID from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "<pid> (<name>) <state> <ppid> ...": the name may hold anything.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// `word` in single quotes for `/bin/sh`.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use sqlx::{Connection as _, PgConnection};

    use super::*;

    async fn connect(cluster: &PostgresCluster) -> PgConnection {
        PgConnection::connect(&cluster.url("postgres")).await.expect("connect to the cluster")
    }

    async fn count(cluster: &PostgresCluster) -> i64 {
        let mut connection = connect(cluster).await;
        sqlx::query_scalar("SELECT count(*) FROM survivors").fetch_one(&mut connection).await.expect("count")
    }

    async fn synchronous_commit(connection: &mut PgConnection) -> String {
        sqlx::query_scalar("SHOW synchronous_commit").fetch_one(connection).await.expect("show")
    }

    #[tokio::test]
    async fn rows_survive_a_restart_and_a_stop() {
        let started = Instant::now();
        let mut cluster = PostgresCluster::start().expect("start");
        eprintln!("initdb + start: {:?}", started.elapsed());
        let port = cluster.port();

        let mut connection = connect(&cluster).await;
        sqlx::raw_sql("CREATE TABLE survivors (id int PRIMARY KEY); INSERT INTO survivors VALUES (1)")
            .execute(&mut connection)
            .await
            .expect("create and insert");

        // A fast shutdown ends the session and checkpoints: the row is on
        // disk whatever synchronous_commit says.
        let restarted = Instant::now();
        cluster.restart().expect("restart");
        eprintln!("restart: {:?}", restarted.elapsed());
        assert_eq!(cluster.port(), port);
        assert!(sqlx::query("SELECT 1").execute(&mut connection).await.is_err(), "the old session survived");
        assert_eq!(count(&cluster).await, 1);

        cluster.stop().expect("stop");
        assert!(!cluster.is_running());
        assert!(PgConnection::connect(&cluster.url("postgres")).await.is_err(), "connected to a stopped server");
        cluster.start_again().expect("start again");
        assert_eq!(count(&cluster).await, 1);
    }

    #[tokio::test]
    async fn rows_survive_a_kill() {
        let mut cluster = PostgresCluster::start().expect("start");
        let mut connection = connect(&cluster).await;
        // The server runs with synchronous_commit=off, under which a commit
        // may return before its WAL is written, and a kill right after it
        // may lose it. This session asks for the WAL to be written (not
        // synced: fsync is off, and a killed process loses nothing the
        // kernel already has) before COMMIT returns.
        sqlx::raw_sql(
            "SET synchronous_commit = on; CREATE TABLE survivors (id int PRIMARY KEY); \
             INSERT INTO survivors VALUES (1)",
        )
        .execute(&mut connection)
        .await
        .expect("create and insert");

        let postmaster = cluster.postmaster_pid().expect("postmaster pid");
        let killed = Instant::now();
        cluster.kill().expect("kill");
        eprintln!("kill: {:?}", killed.elapsed());
        assert!(is_gone(postmaster));
        assert!(PgConnection::connect(&cluster.url("postgres")).await.is_err(), "connected to a killed server");

        let recovered = Instant::now();
        cluster.start_again().expect("start again");
        eprintln!("start again with crash recovery: {:?}", recovered.elapsed());
        assert!(
            cluster.log_tail(50).contains("not properly shut down"),
            "no crash recovery:\n{}",
            cluster.log_tail(50)
        );
        assert_eq!(count(&cluster).await, 1);
    }

    #[tokio::test]
    async fn two_clusters_run_at_once_and_vanish_on_drop() {
        let started = Instant::now();
        let (first, second) = std::thread::scope(|scope| {
            let first = scope.spawn(PostgresCluster::start);
            let second = scope.spawn(|| PostgresCluster::start_with(&[("synchronous_commit", "on")]));
            (first.join().unwrap().expect("first"), second.join().unwrap().expect("second"))
        });
        eprintln!("two clusters side by side: {:?}", started.elapsed());
        assert_ne!(first.port(), second.port());

        let mut a = connect(&first).await;
        let mut b = connect(&second).await;
        sqlx::raw_sql("CREATE TABLE only_here (id int)").execute(&mut a).await.expect("create");
        let in_second: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('only_here')::text").fetch_one(&mut b).await.expect("look");
        assert_eq!(in_second, None);
        assert_eq!(synchronous_commit(&mut a).await, "off");
        assert_eq!(synchronous_commit(&mut b).await, "on");

        let data_dir = first.data_dir();
        let postmaster = first.postmaster_pid().expect("postmaster pid");
        drop(a);
        drop(first);
        assert!(!data_dir.exists(), "{} is left", data_dir.display());
        // `pg_ctl stop -w` returns once the postmaster removed its PID file,
        // a moment before it exits.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_gone(postmaster) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(is_gone(postmaster), "the postmaster {postmaster} is left");
        sqlx::query("SELECT 1").execute(&mut b).await.expect("the second cluster went with the first");
    }

    #[tokio::test]
    async fn the_migrations_run_on_it() {
        let cluster = PostgresCluster::start().expect("start");
        let url = cluster.url("tracehop");
        tracehop_db::migrate(&url).await.expect("migrate");
    }

    #[test]
    fn settings_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
