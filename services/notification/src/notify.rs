//! The order-event handler: records the notification and sends it, in one
//! transaction.
//!
//! Delivery is effectively once, with one known gap. The row is inserted
//! first, the mail is sent while the transaction is open, and only then is
//! the transaction committed: a redelivery finds the row and sends nothing,
//! and a concurrent delivery of the same event (another instance) waits on
//! the row's key until the first commits or rolls back. But a crash, or a
//! failed commit, between a successful send and the commit rolls the row
//! back, and the redelivery sends the mail again. So the guarantee is at
//! least once, at most one extra copy per such failure; both copies carry
//! the same Message-ID (see [`crate::mail::build`]). Over SMTP, exactly once
//! would need the mail server to take part in the transaction, which SMTP
//! cannot; the file mailer names each file after the event, so there the
//! second copy replaces the first.

use lettre::message::Mailbox;
use sqlx::PgPool;
use tracehop_db::{describe_error, traced};
use tracehop_messaging::ProcessError;
use tracehop_proto::v1::OrderEvent;
use tracing::field::Empty;
use uuid::Uuid;

use crate::mail::{self, Kind, Mailer, Recipient, SendError};

/// Why an event was not handled. Messages are free of personal data: they
/// end up on spans.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The event can never be handled (a malformed id, an unknown status).
    #[error("{0}")]
    Invalid(String),
    /// A statement failed; its own span holds the details. The database's
    /// message is left out, as it may quote values.
    #[error("a database statement failed ({})", describe_error(.0))]
    Database(#[from] sqlx::Error),
    /// The mail did not go out; the transaction is rolled back.
    #[error("{0}")]
    Send(#[from] SendError),
}

impl From<NotifyError> for ProcessError {
    fn from(error: NotifyError) -> Self {
        match error {
            NotifyError::Invalid(reason) => ProcessError::Reject(reason.into()),
            // The database or the mail server may be back on the next
            // delivery.
            other => ProcessError::Retry(other.into()),
        }
    }
}

fn parse_uuid(field: &str, value: &str) -> Result<Uuid, NotifyError> {
    Uuid::parse_str(value).map_err(|_| NotifyError::Invalid(format!("{field} is not a UUID")))
}

/// What happened to an event's notification, as stored in
/// `notification.emails.status` (or `duplicate`, on spans only, when the
/// event had been handled before).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Sent,
    Skipped,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Skipped => "skipped",
        }
    }
}

/// The handler's shared state.
#[derive(Clone)]
pub struct Notifier {
    pool: PgPool,
    mailer: Mailer,
    from: Mailbox,
}

impl Notifier {
    pub fn new(pool: PgPool, mailer: Mailer, from: Mailbox) -> Self {
        Self { pool, mailer, from }
    }

    /// Records and sends the event's notification once; returns false,
    /// sending nothing, when the event had been handled before. The kind and
    /// the outcome go on the span: a skipped mail leaves no other trace.
    #[tracing::instrument(
        name = "notify customer",
        skip_all,
        fields(order.id = %event.order_id, notification.kind = Empty, notification.status = Empty),
    )]
    pub async fn notify(&self, event: &OrderEvent) -> Result<bool, NotifyError> {
        let span = tracing::Span::current();
        let event_id = parse_uuid("event_id", &event.event_id)?;
        let order_id = parse_uuid("order_id", &event.order_id)?;
        // The status decides, not the subject: it is part of the payload
        // that the event id dedupes, so a replay is judged the same way.
        let kind = Kind::of(event.status)
            .ok_or_else(|| NotifyError::Invalid(format!("status {} is neither confirmed nor failed", event.status)))?;
        span.record("notification.kind", kind.as_str());

        // Built before the transaction opens; a mail that cannot be built
        // never will be.
        let recipient = Recipient::parse(&event.email);
        let malformed = matches!(recipient, Recipient::Malformed);
        let message = match recipient {
            Recipient::Valid(to) => Some(
                mail::build(&self.from, to, event_id, mail::render(kind, event))
                    .map_err(|_| NotifyError::Invalid("failed to build the mail".to_string()))?,
            ),
            Recipient::Missing | Recipient::Malformed => None,
        };
        let outcome = if message.is_some() { Outcome::Sent } else { Outcome::Skipped };

        let mut tx = tracehop_db::begin(&self.pool).await?;
        let inserted = traced(
            "INSERT",
            "notification.emails",
            sqlx::query(
                "INSERT INTO notification.emails (event_id, order_id, kind, status)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(event_id)
            .bind(order_id)
            .bind(kind.as_str())
            .bind(outcome.as_str()),
            |query| query.execute(&mut *tx),
        )
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            // Handled before; dropping the transaction writes nothing.
            span.record("notification.status", "duplicate");
            return Ok(false);
        }
        if malformed {
            // Logged once per event, and without the address: it is personal
            // data, valid or not.
            tracing::warn!("recipient address is malformed, mail skipped");
        }
        if let Some(message) = message {
            // A failure drops the transaction, rolling the row back, so that
            // the redelivery tries again.
            self.mailer.send(message, event_id).await?;
        }
        // A crash or a failed commit from here on resends once: see the
        // module's documentation.
        tracehop_db::commit(tx).await?;
        span.record("notification.status", outcome.as_str());
        Ok(true)
    }
}
