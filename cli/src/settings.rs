//! Where things are: read from the environment once, with defaults that work
//! on a developer machine.

use std::path::PathBuf;

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
}

impl Settings {
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            std::env::var(name).ok().filter(|value| !value.trim().is_empty()).unwrap_or_else(|| default.to_string())
        };
        let home = PathBuf::from(var("TRACEHOP_HOME", ".tracehop"));
        let home = std::path::absolute(&home).unwrap_or(home);
        Self {
            nats_url: var("NATS_URL", "nats://127.0.0.1:4222"),
            database_url: var("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tracehop"),
            gateway_addr: var("TRACEHOP_GATEWAY", "127.0.0.1:8080"),
            home,
            smtp: std::env::var("SMTP_URL").is_ok_and(|url| !url.trim().is_empty()),
        }
    }

    /// `http://<gateway_addr>`.
    pub fn gateway_url(&self) -> String {
        format!("http://{}", self.gateway_addr)
    }

    /// Pid files and logs.
    pub fn run_dir(&self) -> PathBuf {
        self.home.join("run")
    }

    /// Where notification writes `.eml` files when no SMTP server is set.
    pub fn mail_dir(&self) -> PathBuf {
        self.home.join("mail")
    }
}
