//! Where things are: read from the environment once, with defaults that work
//! on a developer machine.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tracehop_spanfeed::kept::Limits;

/// The span feed's and the kept store's limits from the environment, the
/// defaults where unset.
pub fn limits_from_env() -> anyhow::Result<Limits> {
    let defaults = Limits::default();
    let number = |name: &str, default: i64| -> anyhow::Result<i64> {
        match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => value
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("{name} must be a positive number")),
            _ => Ok(default),
        }
    };
    Ok(Limits {
        feed_bytes: number("TRACEHOP_SPAN_FEED_BYTES", defaults.feed_bytes)?,
        feed_max_age: defaults.feed_max_age,
        kept_bytes: number("TRACEHOP_KEPT_BYTES", defaults.kept_bytes)?,
        kept_max_age: Duration::from_secs(
            3600 * number("TRACEHOP_KEPT_MAX_AGE_HOURS", (defaults.kept_max_age.as_secs() / 3600) as i64)? as u64,
        ),
    })
}

/// A positive whole number from the environment, or `default`.
fn number_or(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{name} must be a positive number")),
        _ => Ok(default),
    }
}

use tracehop_launcher::Launcher;
use tracehop_launcher::nats_server::{self, OwnServer};
use tracehop_messaging::access::{NatsCredentials, NatsUser, Seed};
use tracehop_messaging::topology::StreamReplicas;

/// The command's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `NATS_URL`; unset: the system's own server ([`Settings::own_nats`])
    /// where `nats-server` is on the PATH, else `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// The system's own NATS server, which `up` starts and `down` stops:
    /// when `NATS_URL` is not set and `nats-server` is on the PATH. Its
    /// port is `TRACEHOP_NATS_PORT` (4223), its `GOMEMLIMIT`
    /// `TRACEHOP_NATS_MEMORY_LIMIT` (1.5 times the span feed).
    pub own_nats: Option<OwnServer>,
    /// `TRACEHOP_NATS_KEYS`: the folder of NATS keys (`<user>.nk`); the own
    /// server's keys when unset and that server is used.
    pub nats_keys: Option<PathBuf>,
    /// `NATS_NKEY`: the command's own nkey seed, instead of the keys folder.
    pub nats_nkey: Option<Seed>,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `TRACEHOP_GATEWAY`: the gateway's `host:port`.
    pub gateway_addr: String,
    /// `TRACEHOP_HOME`: pid files, logs and mail of a system started by `up`.
    pub home: PathBuf,
    /// Whether `SMTP_URL` is set: notification then mails over SMTP, not
    /// into [`Settings::mail_dir`]. The URL itself is notification's to read.
    pub smtp: bool,
    /// `TRACEHOP_SPAN_FEED_BYTES`, `TRACEHOP_KEPT_BYTES`,
    /// `TRACEHOP_KEPT_MAX_AGE_HOURS`: what the span feed (memory) and the
    /// kept-traces store (disk) may hold; `up` and `prepare` apply them.
    pub limits: Limits,
    /// `TRACEHOP_STREAM_REPLICAS` (1; 3 on a cluster): on how many NATS
    /// servers `up` and `prepare` put each stream and bucket.
    pub stream_replicas: StreamReplicas,
    /// `TRACEHOP_CONSOLE_TOKEN`: the token `tracehop console` requires
    /// (`--token` wins).
    pub console_token: Option<String>,
}

impl Settings {
    /// Reads the settings; a limit that does not parse is an error naming it.
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str, default: &str| {
            std::env::var(name).ok().filter(|value| !value.trim().is_empty()).unwrap_or_else(|| default.to_string())
        };
        let home = PathBuf::from(var("TRACEHOP_HOME", ".tracehop"));
        let home = std::path::absolute(&home).unwrap_or(home);
        let limits = limits_from_env()?;
        let nats_url = std::env::var("NATS_URL").ok().filter(|value| !value.trim().is_empty());
        let own_nats = match nats_url {
            Some(_) => None,
            None if nats_server::find_on_path(nats_server::PROGRAM).is_some() => Some(OwnServer {
                dir: home.join("nats"),
                run_dir: home.join("run"),
                port: number_or("TRACEHOP_NATS_PORT", u64::from(nats_server::DEFAULT_PORT))?
                    .try_into()
                    .context("TRACEHOP_NATS_PORT must be a port number")?,
                memory_limit: number_or(
                    "TRACEHOP_NATS_MEMORY_LIMIT",
                    nats_server::default_memory_limit(limits.feed_bytes as u64),
                )?,
            }),
            None => None,
        };
        let nats_keys = std::env::var_os("TRACEHOP_NATS_KEYS")
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
            .or_else(|| own_nats.as_ref().map(OwnServer::keys_dir));
        Ok(Self {
            nats_url: nats_url.unwrap_or_else(|| match &own_nats {
                Some(own) => own.url(),
                None => "nats://127.0.0.1:4222".to_string(),
            }),
            own_nats,
            nats_keys,
            nats_nkey: std::env::var("NATS_NKEY").ok().filter(|value| !value.trim().is_empty()).map(Seed),
            database_url: var("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tracehop"),
            gateway_addr: var("TRACEHOP_GATEWAY", "127.0.0.1:8080"),
            home,
            smtp: std::env::var("SMTP_URL").is_ok_and(|url| !url.trim().is_empty()),
            limits,
            stream_replicas: match std::env::var(StreamReplicas::VARIABLE) {
                Ok(value) if !value.trim().is_empty() => value.parse()?,
                _ => StreamReplicas::default(),
            },
            console_token: std::env::var("TRACEHOP_CONSOLE_TOKEN").ok().filter(|value| !value.trim().is_empty()),
        })
    }

    /// The command's NATS credentials.
    pub fn nats_credentials(&self) -> anyhow::Result<NatsCredentials> {
        Ok(NatsCredentials::load(NatsUser::Command, self.nats_keys.as_deref(), self.nats_nkey.as_ref())?)
    }

    /// `http://<gateway_addr>`.
    pub fn gateway_url(&self) -> String {
        format!("http://{}", self.gateway_addr)
    }

    /// Pid files and logs.
    pub fn run_dir(&self) -> PathBuf {
        self.home.join("run")
    }

    /// The launcher for a system run from these settings: where the
    /// executables are, and the environment every service gets.
    pub fn launcher(&self) -> anyhow::Result<Launcher> {
        let launcher = Launcher::new(tracehop_launcher::default_bin_dir()?, self.run_dir());
        let launcher = match &self.nats_keys {
            Some(keys) => launcher.with_env("TRACEHOP_NATS_KEYS", keys.to_string_lossy()),
            None => launcher,
        };
        let passwords = self.database_passwords_dir();
        Ok(launcher
            .with_database_roles(&self.database_url, |service| {
                tracehop_launcher::database_password(&passwords, service)
            })?
            .with_env("NATS_URL", &self.nats_url)
            .with_env("GATEWAY_ADDR", &self.gateway_addr)
            .with_env("NOTIFICATION_MAIL_DIR", self.mail_dir().to_string_lossy()))
    }

    /// The passwords of the services' database roles, made by `up`.
    pub fn database_passwords_dir(&self) -> PathBuf {
        self.home.join("db")
    }

    /// Where notification writes `.eml` files when no SMTP server is set.
    pub fn mail_dir(&self) -> PathBuf {
        self.home.join("mail")
    }
}
