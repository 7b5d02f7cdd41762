//! The notification service's configuration, read from the environment.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use lettre::message::Mailbox;
use tracehop_service::{BaseConfig, env_millis, env_or};

/// The SMTP port when `SMTP_URL` names none.
pub const DEFAULT_SMTP_PORT: u16 = 25;

/// Notification settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub base: BaseConfig,
    /// `NOTIFICATION_DB_CONNECTIONS` (default: `concurrency` + 2): the pool
    /// size. Each event in hand holds a connection (its transaction stays
    /// open while its mail is sent), plus a few for replays.
    pub max_connections: u32,
    /// `NOTIFICATION_CONCURRENCY` (default 8): events handled at once, so
    /// that a mail that stalls holds up only itself. Per-event order does
    /// not matter to mail.
    pub concurrency: usize,
    /// `SMTP_URL` (`smtp://host[:port]`): send through this server, without
    /// TLS. Unset: write each mail as a file into `mail_dir` instead.
    pub smtp: Option<SmtpServer>,
    /// `NOTIFICATION_MAIL_DIR` (default `.tracehop/mail`): where mails go
    /// when there is no SMTP server; created at start.
    pub mail_dir: PathBuf,
    /// `NOTIFICATION_FROM`: the sender of every mail.
    pub from: Mailbox,
    /// `NOTIFICATION_SMTP_TIMEOUT_MS` (default 5000): the deadline of one
    /// whole send (connect, every command, the data and its answer),
    /// enforced around the transport. It must be shorter than the
    /// consumer's ack wait, so that a relay that accepts and never answers
    /// fails the attempt, and the retry and dead-letter machinery takes
    /// over, before the server redelivers an event still in hand.
    pub smtp_timeout: Duration,
}

impl Config {
    /// Reads the configuration; defaults work on a developer machine.
    pub fn from_env() -> anyhow::Result<Self> {
        // Read as a plain string and parsed here, so that an invalid value
        // is never echoed: an SMTP URL may carry a password.
        let smtp_url: String = env_or("SMTP_URL", String::new())?;
        let smtp = match smtp_url.trim() {
            "" => None,
            url => Some(url.parse().context("environment variable SMTP_URL is invalid")?),
        };
        let concurrency: usize = env_or("NOTIFICATION_CONCURRENCY", 8)?;
        if concurrency == 0 {
            anyhow::bail!("environment variable NOTIFICATION_CONCURRENCY must be at least 1");
        }
        let smtp_timeout = env_millis("NOTIFICATION_SMTP_TIMEOUT_MS", Duration::from_secs(5))?;
        let ack_wait = tracehop_messaging::topology::notification_consumer().ack_wait;
        if smtp_timeout.is_zero() || smtp_timeout >= ack_wait {
            anyhow::bail!(
                "environment variable NOTIFICATION_SMTP_TIMEOUT_MS must be above 0 and below the consumer's ack wait ({} ms)",
                ack_wait.as_millis()
            );
        }
        Ok(Self {
            base: BaseConfig::from_env()?,
            max_connections: env_or("NOTIFICATION_DB_CONNECTIONS", concurrency as u32 + 2)?,
            concurrency,
            smtp,
            mail_dir: env_or("NOTIFICATION_MAIL_DIR", PathBuf::from(".tracehop/mail"))?,
            from: env_or(
                "NOTIFICATION_FROM",
                "tracehop <orders@tracehop.invalid>".parse().context("the default sender is invalid")?,
            )?,
            smtp_timeout,
        })
    }
}

/// Where plain SMTP goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpServer {
    /// A name or an IP address (an IPv6 address without its brackets).
    pub host: String,
    pub port: u16,
}

impl fmt::Display for SmtpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "smtp://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "smtp://{}:{}", self.host, self.port)
        }
    }
}

/// Why an `SMTP_URL` was refused. The messages never quote the URL.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SmtpUrlError {
    #[error("expected smtp://host[:port] (smtps and other schemes are not supported: no TLS)")]
    Scheme,
    #[error("credentials are not supported")]
    Credentials,
    #[error("expected smtp://host[:port] with nothing after the port")]
    Trailing,
    #[error("the host is missing")]
    Host,
    #[error("the port is not a number from 1 to 65535")]
    Port,
}

impl FromStr for SmtpServer {
    type Err = SmtpUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let rest = url.strip_prefix("smtp://").ok_or(SmtpUrlError::Scheme)?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('@') {
            return Err(SmtpUrlError::Credentials);
        }
        if authority.contains(['/', '?', '#']) {
            return Err(SmtpUrlError::Trailing);
        }
        let (host, port) = match authority.strip_prefix('[') {
            // An IPv6 literal: [::1]:1025.
            Some(bracketed) => {
                let (host, after) = bracketed.split_once(']').ok_or(SmtpUrlError::Host)?;
                match after {
                    "" => (host, None),
                    _ => (host, Some(after.strip_prefix(':').ok_or(SmtpUrlError::Trailing)?)),
                }
            }
            None => match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            return Err(SmtpUrlError::Host);
        }
        let port = match port {
            None => DEFAULT_SMTP_PORT,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(SmtpUrlError::Port),
            },
        };
        Ok(Self { host: host.to_string(), port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(host: &str, port: u16) -> SmtpServer {
        SmtpServer { host: host.to_string(), port }
    }

    #[test]
    fn parses_host_and_port() {
        assert_eq!("smtp://127.0.0.1:1025".parse(), Ok(server("127.0.0.1", 1025)));
        assert_eq!("smtp://mail.example:2525/".parse(), Ok(server("mail.example", 2525)));
        assert_eq!("smtp://[::1]:1025".parse(), Ok(server("::1", 1025)));
    }

    #[test]
    fn defaults_the_port() {
        assert_eq!("smtp://localhost".parse(), Ok(server("localhost", DEFAULT_SMTP_PORT)));
        assert_eq!("smtp://[::1]".parse(), Ok(server("::1", DEFAULT_SMTP_PORT)));
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        assert_eq!("smtps://host:465".parse::<SmtpServer>(), Err(SmtpUrlError::Scheme));
        assert_eq!("127.0.0.1:1025".parse::<SmtpServer>(), Err(SmtpUrlError::Scheme));
        assert_eq!("smtp://user:secret@host".parse::<SmtpServer>(), Err(SmtpUrlError::Credentials));
        assert_eq!("smtp://host:1025?tls=required".parse::<SmtpServer>(), Err(SmtpUrlError::Trailing));
        assert_eq!("smtp://:1025".parse::<SmtpServer>(), Err(SmtpUrlError::Host));
        assert_eq!("smtp://host:0".parse::<SmtpServer>(), Err(SmtpUrlError::Port));
        assert_eq!("smtp://host:smtp".parse::<SmtpServer>(), Err(SmtpUrlError::Port));
        assert_eq!("smtp://::1:25".parse::<SmtpServer>(), Err(SmtpUrlError::Host));
    }

    #[test]
    fn errors_never_quote_the_url() {
        let error = "smtp://user:hunter2@host".parse::<SmtpServer>().unwrap_err();
        assert!(!error.to_string().contains("hunter2"));
    }

    #[test]
    fn displays_as_a_url_that_parses_back() {
        for url in ["smtp://127.0.0.1:1025", "smtp://[::1]:25"] {
            let parsed: SmtpServer = url.parse().unwrap();
            assert_eq!(parsed.to_string(), url);
        }
    }

    #[test]
    fn the_default_sender_parses() {
        let from: Mailbox = "tracehop <orders@tracehop.invalid>".parse().unwrap();
        assert_eq!(from.email.to_string(), "orders@tracehop.invalid");
    }
}
