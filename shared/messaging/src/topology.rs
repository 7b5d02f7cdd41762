//! The streams and durable consumers the system expects. `tracehop up` and
//! the tests create them all before any service starts, so that events wait
//! for a consumer that is down instead of being missed.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::consume::ConsumerSpec;
use tracehop_proto::subjects;

/// The stream of order events (`orders.confirmed`, `orders.failed`).
pub const ORDERS_STREAM: &str = "ORDERS";
/// How long the ORDERS stream remembers message ids for de-duplication.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// ORDERS: file storage (business events must survive a restart), limits
/// retention (every consumer reads at its own pace; replay needs history).
pub fn orders_stream_config() -> stream::Config {
    stream::Config {
        name: ORDERS_STREAM.to_string(),
        description: Some("tracehop order events".to_string()),
        subjects: vec!["orders.>".to_string()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: Duration::from_secs(7 * 24 * 3600),
        // Direct gets let the sentinel read the oldest unprocessed event of a
        // consumer without creating consumers of its own.
        allow_direct: true,
        ..Default::default()
    }
}

/// The stream of messages that consumers gave up on, with their reasons.
pub const DEAD_LETTER_STREAM: &str = "DEADLETTER";

/// The subject a consumer's dead letters go to.
pub fn dead_letter_subject(consumer: &str) -> String {
    format!("deadletter.{consumer}")
}

/// DEADLETTER: file storage, kept a month: a dead letter waits for a fix and
/// a redrive.
pub fn dead_letter_stream_config() -> stream::Config {
    stream::Config {
        name: DEAD_LETTER_STREAM.to_string(),
        description: Some("tracehop dead letters: original headers and payload, plus the reason".to_string()),
        subjects: vec!["deadletter.>".to_string()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: Duration::from_secs(30 * 24 * 3600),
        allow_direct: true,
        ..Default::default()
    }
}

/// Loyalty accrues points for confirmed orders only.
pub fn loyalty_consumer() -> ConsumerSpec {
    ConsumerSpec::new(ORDERS_STREAM, "loyalty", vec![subjects::ORDER_CONFIRMED.to_string()])
}

/// Notification mails the customer about every decided order.
pub fn notification_consumer() -> ConsumerSpec {
    ConsumerSpec::new(ORDERS_STREAM, "notification", vec!["orders.>".to_string()])
}

/// Analytics records every order event.
pub fn analytics_consumer() -> ConsumerSpec {
    ConsumerSpec::new(ORDERS_STREAM, "analytics", vec!["orders.>".to_string()])
}

/// Payment voids or refunds the charge of every failed order, so that a
/// charge whose outcome was unknown when the order failed is settled.
pub fn payment_consumer() -> ConsumerSpec {
    ConsumerSpec::new(ORDERS_STREAM, "payment", vec![subjects::ORDER_FAILED.to_string()])
}

/// Every consumer that must process the order events.
pub fn expected_consumers() -> Vec<ConsumerSpec> {
    vec![loyalty_consumer(), notification_consumer(), analytics_consumer(), payment_consumer()]
}

/// Creates or updates the ORDERS stream.
pub async fn ensure_orders_stream(js: &jetstream::Context) -> Result<(), jetstream::context::CreateStreamError> {
    js.create_or_update_stream(orders_stream_config()).await.map(|_| ())
}

/// Creates the ORDERS and DEADLETTER streams and every expected durable
/// consumer.
pub async fn ensure_all(js: &jetstream::Context) -> Result<(), TopologyError> {
    ensure_orders_stream(js)
        .await
        .map_err(|e| TopologyError(format!("failed to create stream {ORDERS_STREAM}: {e}")))?;
    js.create_or_update_stream(dead_letter_stream_config())
        .await
        .map_err(|e| TopologyError(format!("failed to create stream {DEAD_LETTER_STREAM}: {e}")))?;
    for spec in expected_consumers() {
        spec.ensure(js).await?;
    }
    Ok(())
}

/// A stream or consumer could not be created.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TopologyError(pub String);
