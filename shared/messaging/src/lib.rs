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
//!
//! [`server_addrs`] reads `NATS_URL`, one server or a comma-separated list
//! (a cluster), for every connection of the system: the services' through
//! [`connect`], the command's and the tests'.

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
/// and endless reconnects (a NATS restart must not kill a service). `url`
/// is one server or a comma-separated list ([`server_addrs`]); the client
/// picks among them and moves to another when its server dies. The first
/// connection of a process is the [`spans::Endpoint`] its spans name.
pub async fn connect(
    url: &str,
    user: access::NatsUser,
    credentials: &access::NatsCredentials,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let servers = server_addrs(url)
        .map_err(|error| async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::ServerParse, error))?;
    spans::set_endpoint(spans::Endpoint::of(url, &format!("tracehop-{user}")));
    access::connect_options(user, credentials)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(servers)
        .await
}

/// A list of NATS servers that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerAddrsError {
    #[error("no NATS server given")]
    Empty,
    #[error("NATS server {position} of {count} is empty (two commas in a row, or one at an end?)")]
    EmptyEntry { position: usize, count: usize },
    #[error("NATS server {position} of {count}, {entry:?}, is not a NATS address: {reason}")]
    Invalid {
        position: usize,
        count: usize,
        /// The entry as given, its password (if any) replaced by `***`.
        entry: String,
        reason: String,
    },
}

/// The servers of `NATS_URL`: one address or a comma-separated list, the
/// convention of the NATS clients and tools (`nats://a:4222,nats://b:4222`;
/// spaces around an entry are ignored, a missing scheme is `nats://`, a
/// missing port 4222). async-nats reads a `&str` as one address only, so
/// every connection of the system parses through here. An empty entry or
/// one that is not an address is an error that names it by position (its
/// password hidden), rather than a connection that tries fewer servers
/// than the operator listed.
pub fn server_addrs(list: &str) -> Result<Vec<async_nats::ServerAddr>, ServerAddrsError> {
    if list.trim().is_empty() {
        return Err(ServerAddrsError::Empty);
    }
    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
    let count = entries.len();
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let position = index + 1;
            if entry.is_empty() {
                return Err(ServerAddrsError::EmptyEntry { position, count });
            }
            let invalid =
                |reason: String| ServerAddrsError::Invalid { position, count, entry: hide_password(entry), reason };
            let server = entry.parse::<async_nats::ServerAddr>().map_err(|error| invalid(error.to_string()))?;
            if server.host().is_empty() {
                return Err(invalid("it names no host".to_string()));
            }
            Ok(server)
        })
        .collect()
}

/// `nats://user:secret@host` → `nats://user:***@host`, for messages.
fn hide_password(entry: &str) -> String {
    let start = entry.find("://").map_or(0, |scheme| scheme + 3);
    match entry[start..].rfind('@').map(|at| start + at) {
        Some(at) => match entry[start..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &entry[..start], &entry[at..]),
            None => entry.to_string(),
        },
        None => entry.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &str) -> Vec<(String, u16)> {
        server_addrs(list).unwrap().iter().map(|s| (s.host().to_string(), s.port())).collect()
    }

    #[test]
    fn one_server_or_a_comma_separated_list() {
        assert_eq!(hosts("nats://127.0.0.1:4223"), [("127.0.0.1".to_string(), 4223)]);
        assert_eq!(
            hosts("nats://n1:4222, nats://n2:4223 ,n3"),
            [("n1".to_string(), 4222), ("n2".to_string(), 4223), ("n3".to_string(), 4222)]
        );
        let with_user = server_addrs("nats://u:p@a:1,tls://b:2").unwrap();
        assert_eq!(with_user[0].username(), Some("u"));
        assert_eq!(with_user[1].port(), 2);
    }

    #[test]
    fn a_bad_entry_is_named_by_its_position() {
        assert_eq!(server_addrs(" "), Err(ServerAddrsError::Empty));
        assert_eq!(server_addrs("nats://a:1,,nats://b:2"), Err(ServerAddrsError::EmptyEntry { position: 2, count: 3 }));
        assert_eq!(server_addrs("nats://a:1,"), Err(ServerAddrsError::EmptyEntry { position: 2, count: 2 }));
        let error = server_addrs("nats://a:1,http://b:2").unwrap_err();
        assert!(
            matches!(&error, ServerAddrsError::Invalid { position: 2, count: 2, entry, .. } if entry == "http://b:2")
        );
        assert!(error.to_string().contains("NATS server 2 of 2, \"http://b:2\""), "{error}");
        assert!(matches!(server_addrs("nats://a:99999"), Err(ServerAddrsError::Invalid { position: 1, .. })));
    }

    #[test]
    fn a_bad_entry_never_shows_its_password() {
        let error = server_addrs("nats://a:1,nats://me:hunter2@b:notaport").unwrap_err().to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(error.contains("nats://me:***@b:notaport"), "{error}");
    }
}
