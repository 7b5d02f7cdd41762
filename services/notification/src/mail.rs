//! What a notification says, whom it goes to, and how it leaves.
//!
//! Rendering is pure and never includes the recipient, so a mail's text can
//! be shown or tested without personal data. Send failures are described
//! by [`SendError`], whose text leaves out everything a mail server said:
//! a server's reply may quote the recipient.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use tracehop_proto::v1::{OrderEvent, OrderStatus};
use uuid::Uuid;

use crate::config::SmtpServer;

/// Which mail an event calls for, as stored in `notification.emails.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Confirmation,
    Failure,
}

impl Kind {
    /// The kind for an event's status; `None` for a status that is neither
    /// confirmed nor failed.
    pub fn of(status: i32) -> Option<Self> {
        match OrderStatus::try_from(status) {
            Ok(OrderStatus::Confirmed) => Some(Kind::Confirmation),
            Ok(OrderStatus::Failed) => Some(Kind::Failure),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Confirmation => "confirmation",
            Kind::Failure => "failure",
        }
    }
}

/// A mail's subject and plain-text body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub body: String,
}

/// Cents as an amount with two decimals, e.g. `178.00`.
pub fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    format!("{sign}{}.{:02}", cents / 100, cents % 100)
}

/// The subject and body of the `kind` mail for `event`: the order id and,
/// for a confirmation, the items and total, for a failure, the reason.
/// The recipient's address is deliberately not part of it.
pub fn render(kind: Kind, event: &OrderEvent) -> Rendered {
    let order_id = &event.order_id;
    let mut body = String::new();
    let subject = match kind {
        Kind::Confirmation => {
            body.push_str("Thank you for your order. It is confirmed.\n\n");
            let _ = writeln!(body, "Order: {order_id}\n");
            for item in &event.items {
                let line_cents = item.unit_price_cents.saturating_mul(i64::from(item.quantity));
                let _ = writeln!(
                    body,
                    "  {} x {} at {} = {}",
                    item.quantity,
                    item.sku,
                    format_cents(item.unit_price_cents),
                    format_cents(line_cents),
                );
            }
            if !event.items.is_empty() {
                body.push('\n');
            }
            let _ = writeln!(body, "Total: {}", format_cents(event.total_cents));
            format!("Your order {order_id} is confirmed")
        }
        Kind::Failure => {
            body.push_str("We are sorry: your order could not be completed.\n\n");
            let _ = writeln!(body, "Order: {order_id}");
            let reason = match event.failure_reason.trim() {
                "" => "no reason was given",
                reason => reason,
            };
            let _ = writeln!(body, "Reason: {reason}");
            format!("Your order {order_id} could not be completed")
        }
    };
    body.push_str("\n-- \ntracehop\n");
    Rendered { subject, body }
}

/// Whom an event's mail goes to. Deliberately without `Debug`, so that the
/// address cannot end up in a log line by way of `{:?}`.
pub enum Recipient {
    /// The customer gave no address.
    Missing,
    /// The address does not parse; it is not kept.
    Malformed,
    Valid(Address),
}

impl Recipient {
    /// Parses the event's `email` field.
    pub fn parse(email: &str) -> Self {
        match email.trim() {
            "" => Recipient::Missing,
            email => match email.parse::<Address>() {
                Ok(address) => Recipient::Valid(address),
                Err(_) => Recipient::Malformed,
            },
        }
    }
}

/// Builds the mail. Its Message-ID derives from the event id, so that in
/// the rare case of a resend (see [`crate::notify`]) both copies carry the
/// same id and a mail client can tell that they are one.
pub fn build(from: &Mailbox, to: Address, event_id: Uuid, rendered: Rendered) -> Result<Message, lettre::error::Error> {
    Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to))
        .subject(rendered.subject)
        .message_id(Some(format!("<{event_id}@tracehop.invalid>")))
        .header(ContentType::TEXT_PLAIN)
        .body(rendered.body)
}

/// How mail leaves this service.
#[derive(Clone)]
pub enum Mailer {
    /// Plain SMTP to one server, each send bounded by `deadline`.
    Smtp { transport: AsyncSmtpTransport<Tokio1Executor>, server: SmtpServer, deadline: Duration },
    /// One `.eml` file per mail in a directory, named after the event: a
    /// mail sent again (after a crash between sending and recording it)
    /// replaces the first one instead of adding a second.
    File(std::path::PathBuf),
}

/// A failed send, described without anything the server said.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SendError(String);

impl Mailer {
    /// A mailer that speaks plain SMTP (no TLS, no credentials) to
    /// `server`, giving up on a send after `deadline`. lettre's own timeout
    /// covers only the TCP connect of its async transport, not the wait for
    /// the server's replies: the deadline is enforced around the whole send.
    pub fn smtp(server: &SmtpServer, deadline: Duration) -> Self {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server.host.clone())
            .port(server.port)
            .timeout(Some(deadline))
            .build();
        Mailer::Smtp { transport, server: server.clone(), deadline }
    }

    /// A mailer that writes into `dir`, creating it if needed.
    pub async fn file(dir: &Path) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(dir).await?;
        Ok(Mailer::File(dir.to_path_buf()))
    }

    /// `smtp` or `file`, for spans and logs.
    pub fn transport_name(&self) -> &'static str {
        match self {
            Mailer::Smtp { .. } => "smtp",
            Mailer::File(_) => "file",
        }
    }

    /// Sends one mail, in a CLIENT span of its own: the mail server is a
    /// remote call that no library traces for us.
    #[tracing::instrument(
        name = "send email",
        skip_all,
        fields(
            otel.kind = "client",
            notification.transport = self.transport_name(),
            server.address = tracing::field::Empty,
            server.port = tracing::field::Empty,
        ),
        err
    )]
    pub async fn send(&self, message: Message, event_id: Uuid) -> Result<(), SendError> {
        match self {
            Mailer::Smtp { transport, server, deadline } => {
                let span = tracing::Span::current();
                span.record("server.address", server.host.as_str());
                span.record("server.port", i64::from(server.port));
                // Dropping the send on the deadline closes its connection.
                match tokio::time::timeout(*deadline, transport.send(message)).await {
                    Ok(sent) => sent.map(drop).map_err(|error| SendError(describe_smtp(&error))),
                    Err(_) => Err(SendError(format!(
                        "smtp send failed: no answer within the deadline of {} ms",
                        deadline.as_millis()
                    ))),
                }
            }
            Mailer::File(dir) => {
                // Written aside, then renamed: a reader never sees half a mail.
                let path = dir.join(format!("{event_id}.eml"));
                let partial = dir.join(format!(".{event_id}.eml.partial"));
                let written = async {
                    tokio::fs::write(&partial, message.formatted()).await?;
                    tokio::fs::rename(&partial, &path).await
                };
                written.await.map_err(|error| SendError(format!("failed to write the mail file ({})", error.kind())))
            }
        }
    }
}

fn io_kind(error: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = error.source();
    }
    None
}

/// What went wrong, from the error's kind and reply code only: the text of
/// a server's reply (which may quote the recipient) is left out.
fn describe_smtp(error: &lettre::transport::smtp::Error) -> String {
    if error.is_timeout() {
        return "smtp send failed: timed out".to_string();
    }
    let what = if error.is_permanent() {
        "permanent error"
    } else if error.is_transient() {
        "transient error"
    } else if error.is_response() {
        "unreadable response"
    } else if error.is_client() {
        "client error"
    } else if error.is_transport_shutdown() {
        "transport shut down"
    } else {
        "connection or network error"
    };
    match (error.status(), io_kind(error)) {
        (Some(code), _) => format!("smtp send failed: {what} (reply code {code})"),
        (None, Some(kind)) => format!("smtp send failed: {what} ({kind})"),
        (None, None) => format!("smtp send failed: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use tracehop_proto::v1::PricedItem;

    use super::*;

    const EMAIL: &str = "jane.doe@example.com";

    fn event(status: OrderStatus) -> OrderEvent {
        OrderEvent {
            event_id: "0192f7e6-5b3a-7c1d-8e2f-3a4b5c6d7e8f".to_string(),
            order_id: "0192f7e6-0000-7000-8000-000000000001".to_string(),
            customer_id: "cust-1".to_string(),
            status: status as i32,
            items: vec![
                PricedItem { sku: "KB-001".to_string(), quantity: 2, unit_price_cents: 8_900 },
                PricedItem { sku: "CB-004".to_string(), quantity: 1, unit_price_cents: 900 },
            ],
            total_cents: 18_700,
            failure_reason: String::new(),
            email: EMAIL.to_string(),
            occurred_at_unix_ms: 1_790_000_000_000,
        }
    }

    #[test]
    fn formats_cents_with_two_decimals() {
        assert_eq!(format_cents(0), "0.00");
        assert_eq!(format_cents(5), "0.05");
        assert_eq!(format_cents(18_700), "187.00");
        assert_eq!(format_cents(-1_234), "-12.34");
        assert_eq!(format_cents(i64::MIN), "-92233720368547758.08");
    }

    #[test]
    fn a_confirmation_lists_the_order_items_and_total() {
        let event = event(OrderStatus::Confirmed);
        let mail = render(Kind::Confirmation, &event);
        assert!(mail.subject.contains(&event.order_id));
        assert!(mail.subject.contains("confirmed"));
        assert!(mail.body.contains(&event.order_id));
        assert!(mail.body.contains("2 x KB-001 at 89.00 = 178.00"));
        assert!(mail.body.contains("1 x CB-004 at 9.00 = 9.00"));
        assert!(mail.body.contains("Total: 187.00"));
    }

    #[test]
    fn a_failure_gives_the_reason() {
        let mut event = event(OrderStatus::Failed);
        event.failure_reason = "payment declined".to_string();
        let mail = render(Kind::Failure, &event);
        assert!(mail.subject.contains(&event.order_id));
        assert!(mail.body.contains(&event.order_id));
        assert!(mail.body.contains("Reason: payment declined"));
        event.failure_reason = "  ".to_string();
        assert!(render(Kind::Failure, &event).body.contains("Reason: no reason was given"));
    }

    #[test]
    fn rendering_never_includes_the_recipient() {
        for (kind, status) in [(Kind::Confirmation, OrderStatus::Confirmed), (Kind::Failure, OrderStatus::Failed)] {
            let mail = render(kind, &event(status));
            assert!(!mail.subject.contains(EMAIL), "{kind:?} subject has the address");
            assert!(!mail.body.contains(EMAIL), "{kind:?} body has the address");
            assert!(!format!("{mail:?}").contains(EMAIL));
        }
    }

    #[test]
    fn kinds_follow_the_status() {
        assert_eq!(Kind::of(OrderStatus::Confirmed as i32), Some(Kind::Confirmation));
        assert_eq!(Kind::of(OrderStatus::Failed as i32), Some(Kind::Failure));
        assert_eq!(Kind::of(OrderStatus::Pending as i32), None);
        assert_eq!(Kind::of(OrderStatus::Unspecified as i32), None);
        assert_eq!(Kind::of(42), None);
    }

    #[test]
    fn recipients_parse_or_are_skipped() {
        assert!(matches!(Recipient::parse(""), Recipient::Missing));
        assert!(matches!(Recipient::parse("   "), Recipient::Missing));
        assert!(matches!(Recipient::parse("not an address"), Recipient::Malformed));
        assert!(matches!(Recipient::parse("jane@"), Recipient::Malformed));
        assert!(matches!(Recipient::parse("Jane <jane@example.com>"), Recipient::Malformed));
        match Recipient::parse(" jane@example.com ") {
            Recipient::Valid(address) => assert_eq!(address.to_string(), "jane@example.com"),
            _ => panic!("a valid address was refused"),
        }
    }

    #[test]
    fn the_message_id_derives_from_the_event_id() {
        let event = event(OrderStatus::Confirmed);
        let event_id = Uuid::parse_str(&event.event_id).unwrap();
        let from: Mailbox = "tracehop <orders@tracehop.invalid>".parse().unwrap();
        let message = build(&from, EMAIL.parse().unwrap(), event_id, render(Kind::Confirmation, &event)).unwrap();
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert!(raw.contains(&format!("Message-ID: <{event_id}@tracehop.invalid>")), "{raw}");
    }

    #[tokio::test]
    async fn the_file_mailer_writes_an_eml_file() {
        let root = tempfile::tempdir().unwrap();
        // A directory that does not exist yet: the mailer creates it.
        let dir = root.path().join("mail");
        let mailer = Mailer::file(&dir).await.unwrap();
        let event = event(OrderStatus::Confirmed);
        let from: Mailbox = "tracehop <orders@tracehop.invalid>".parse().unwrap();
        let message = build(&from, EMAIL.parse().unwrap(), Uuid::new_v4(), render(Kind::Confirmation, &event)).unwrap();
        let event_id = Uuid::new_v4();
        mailer.send(message.clone(), event_id).await.unwrap();
        // Sent again for the same event: still one file.
        mailer.send(message, event_id).await.unwrap();
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|entry| entry.unwrap().path()).collect();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].file_stem().and_then(|s| s.to_str()), Some(event_id.to_string().as_str()));
        assert_eq!(files[0].extension().and_then(|e| e.to_str()), Some("eml"));
        let raw = std::fs::read_to_string(&files[0]).unwrap();
        assert!(raw.contains(&event.order_id));
    }
}
