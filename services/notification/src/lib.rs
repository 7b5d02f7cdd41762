//! The notification service: a durable consumer of every order event
//! (`orders.confirmed`, `orders.failed`) that e-mails the customer, in the
//! `notification` schema.
//!
//! Mail goes through an SMTP server when `SMTP_URL` is set (plain SMTP, no
//! TLS: a local relay or a test catcher), and otherwise into `.eml` files
//! under `NOTIFICATION_MAIL_DIR`. An event without a usable recipient is
//! recorded as `skipped`. The recipient is personal data: it is used to
//! address the mail and for nothing else, never kept, logged or traced.
//!
//! Up to `NOTIFICATION_CONCURRENCY` events are handled at once, and every
//! SMTP send has a deadline (`NOTIFICATION_SMTP_TIMEOUT_MS`) shorter than
//! the consumer's ack wait: a relay that stalls fails its attempts (retried,
//! then dead-lettered) and holds up only the mails it stalls.
//!
//! Each event is mailed once: its id is inserted into `notification.emails`
//! before sending, in a transaction committed only after the send, so a
//! redelivery finds the row and sends nothing (see [`notify`] for the one
//! case that can still send twice).
//!
//! It also answers `svc.notification.replay` (`tracehop replay --consumer
//! notification`): the stream's events again through the same handler
//! (sending only the mails that are missing), or a redrive of dead letters
//! after a fix. A rebuild is refused: see [`replay`].
//!
//! Modules: [`config`] (environment), [`mail`] (rendering, recipients and
//! the transports), [`notify`] (the event handler and its SQL), [`replay`]
//! (the handler as a replayable projection).

pub mod config;
pub mod mail;
pub mod notify;
pub mod replay;

pub use config::{Config, SmtpServer};

use anyhow::Context as _;
use tracehop_messaging::{Responder, async_nats, run_projection, topology};
use tracehop_service::Runtime;

/// `service.name` of this service.
pub const SERVICE: &str = tracehop_messaging::Service::Notification.name();

/// Processes order events and answers replay requests until shutdown; the
/// event in hand is finished first, a replay stops at the next event.
pub async fn run(config: Config, runtime: Runtime) -> anyhow::Result<()> {
    let mailer = match &config.smtp {
        Some(server) => mail::Mailer::smtp(server, config.smtp_timeout),
        None => mail::Mailer::file(&config.mail_dir)
            .await
            .with_context(|| format!("failed to create the mail directory {}", config.mail_dir.display()))?,
    };
    tracing::info!(
        notification.transport = mailer.transport_name(),
        notification.concurrency = config.concurrency,
        "mailer ready"
    );
    let pool = tracehop_db::connect(&config.base.database_url, config.max_connections)
        .await
        .context("failed to connect to the database")?;
    let notifier = notify::Notifier::new(pool.clone(), mailer, config.from);
    let js = async_nats::jetstream::new(runtime.nats.clone());
    let responder = Responder::new(runtime.nats, SERVICE, runtime.shutdown.clone());
    let consumer = topology::notification_consumer().with_max_in_flight(config.concurrency);
    let result = run_projection(&responder, js, consumer, notifier, runtime.shutdown)
        .await
        .context("the notification projection failed");
    pool.close().await;
    result.map(|_| ())
}
