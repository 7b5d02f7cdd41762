//! Where things are: read from the environment once, with defaults that work
//! on a developer machine.

use std::path::PathBuf;

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
