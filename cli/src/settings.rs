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

use tracehop_launcher::Launcher;

/// The command's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `NATS_URL`.
    pub nats_url: String,
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
}

impl Settings {
    /// Reads the settings; a limit that does not parse is an error naming it.
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str, default: &str| {
            std::env::var(name).ok().filter(|value| !value.trim().is_empty()).unwrap_or_else(|| default.to_string())
        };
        let home = PathBuf::from(var("TRACEHOP_HOME", ".tracehop"));
        let home = std::path::absolute(&home).unwrap_or(home);
        Ok(Self {
            nats_url: var("NATS_URL", "nats://127.0.0.1:4222"),
            database_url: var("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tracehop"),
            gateway_addr: var("TRACEHOP_GATEWAY", "127.0.0.1:8080"),
            home,
            smtp: std::env::var("SMTP_URL").is_ok_and(|url| !url.trim().is_empty()),
            limits: limits_from_env()?,
        })
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
        Ok(Launcher::new(tracehop_launcher::default_bin_dir()?, self.run_dir())
            .with_env("NATS_URL", &self.nats_url)
            .with_env("DATABASE_URL", &self.database_url)
            .with_env("GATEWAY_ADDR", &self.gateway_addr)
            .with_env("NOTIFICATION_MAIL_DIR", self.mail_dir().to_string_lossy()))
    }

    /// Where notification writes `.eml` files when no SMTP server is set.
    pub fn mail_dir(&self) -> PathBuf {
        self.home.join("mail")
    }
}
