//! All NATS traffic of tracehop goes through this crate: it makes the spans,
//! and it alone reads and writes message headers, so that no service ever
//! touches `traceparent` by hand.
//!
//! - [`headers`]: W3C context (`traceparent`, `tracestate`, `baggage`) in and
//!   out of NATS headers, plus the message id and payload type headers.
//! - [`request`]: [`request()`], a traced NATS request (CLIENT span) with a
//!   timeout and a typed reply.
//! - [`serve`]: [`Responder`], traced responders (a SERVER span per request)
//!   that drain on shutdown.
//! - [`publish`]: [`publish::publish_event`], a traced JetStream publish
//!   (PRODUCER span) that waits for the stream's ack.
//! - [`consume`]: [`consume::run_consumer`], a traced durable consumer
//!   (CONSUMER span per delivery, parented by and linked to the producer).
//! - [`topology`]: the one catalog: every service (its binary, subjects,
//!   durable consumers, replayability, instances) and the streams.
//! - [`health`]: [`health::judge`], the one judgement of a consumer's health
//!   from JetStream's state over time, used by the sentinel and `status`.
//! - [`lease`]: leader leases in a key-value bucket, for a service whose
//!   copies elect one to act ([`topology::Instances::Leader`]).
//! - [`dead_letters`]: what a consumer's dead letters are (count, reasons)
//!   and how they are discarded.
//! - [`replay`]: [`replay::serve`], a consumer's service replaying the stream
//!   (or redriving its dead letters) through its own handler, in CONSUMER
//!   spans marked as replays; [`replay::call`] asks for one.
//! - [`access`]: who may do what on NATS: a user per service and the
//!   command, their permissions derived from the catalog, their credentials.
//! - [`spans`]: the attribute names used on messaging spans, and the
//!   [`spans::Endpoint`] (`server.address`, `server.port`,
//!   `messaging.client.id`) they all carry.
//! - [`w3c`]: W3C Trace Context and Baggage from outside, parsed to the
//!   letter of the specifications.

pub mod access;
pub mod consume;
pub mod dead_letters;
pub mod headers;
pub mod health;
pub mod lease;
pub mod publish;
pub mod replay;
pub mod request;
pub mod serve;
pub mod spans;
pub mod topology;
pub mod w3c;

pub use consume::{
    BoxError, DeadLetter, Delivery, Failure, ProcessError, run_consumer, run_consumer_pausable, store_dead_letter,
};
pub use publish::{PendingPublish, PublishError, publish_event, send_event};
pub use replay::{Outcome, Projection, ProjectionError, ResetError, run_projection, run_projection_pausable};
pub use request::{RequestError, probe, request, request_reply};
pub use serve::{Responder, Withhold, serve};
pub use topology::{ConsumerSpec, Service};

pub use async_nats;

use std::time::Duration;

/// Connects to NATS as `user` with settings every service shares: a name
/// that shows in the server's connection list, the user's own reply inbox,
/// and endless reconnects (a NATS restart must not kill a service). The
/// first connection of a process is the [`spans::Endpoint`] its spans name.
pub async fn connect(
    url: &str,
    user: access::NatsUser,
    credentials: &access::NatsCredentials,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    spans::set_endpoint(spans::Endpoint::of(url, &format!("tracehop-{user}")));
    access::connect_options(user, credentials)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(url)
        .await
}
