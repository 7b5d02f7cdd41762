//! Attribute names and values on messaging spans, after the OpenTelemetry
//! messaging conventions. Where the conventions name nothing for NATS, the
//! attribute lives under `messaging.nats.`.
//!
//! [`Endpoint`] is the one source of `server.address`, `server.port` and
//! `messaging.client.id`: set by [`crate::connect`] from the URL the
//! process connected to, read by every span and metric of this crate.

use std::sync::OnceLock;

/// `messaging.system` for every span of this crate.
pub const SYSTEM: &str = "nats";
/// The delivery count of a JetStream message (1 on first delivery).
pub const DELIVERY_COUNT: &str = "messaging.nats.message.delivery_count";
/// The stream sequence of a JetStream message.
pub const STREAM_SEQUENCE: &str = "messaging.nats.stream.sequence";
/// The payload's protobuf type.
pub const PAYLOAD_TYPE: &str = "messaging.nats.message.payload_type";

/// `messaging.operation.type` values (the conventions' list).
pub mod operation_type {
    /// A message handed to the broker: a request, a publish, a dead letter.
    pub const SEND: &str = "send";
    /// A message handled: a request answered, an event consumed.
    pub const PROCESS: &str = "process";
}

/// The NATS server this process talks to, and who it is to that server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `server.address`: the host of the URL, as given (no DNS look-up).
    pub address: String,
    /// `server.port`.
    pub port: u16,
    /// `messaging.client.id`: the connection's name and the process id,
    /// unique among the clients of one machine.
    pub client_id: String,
}

static ENDPOINT: OnceLock<Endpoint> = OnceLock::new();

impl Endpoint {
    /// The endpoint of `url` (the first server of a comma-separated list)
    /// for a connection named `name`.
    pub fn of(url: &str, name: &str) -> Self {
        let first = url.split(',').next().unwrap_or(url).trim();
        let (address, port) = match first.parse::<async_nats::ServerAddr>() {
            Ok(server) => (server.host().to_string(), server.port()),
            Err(_) => (first.to_string(), 4222),
        };
        Self { address, port, client_id: format!("{name}@{}", std::process::id()) }
    }
}

/// Remembers the process's endpoint; the first connection made wins (a
/// service makes one).
pub(crate) fn set_endpoint(endpoint: Endpoint) {
    let _ = ENDPOINT.set(endpoint);
}

/// The process's endpoint; `unknown:0` before any connection.
pub fn endpoint() -> &'static Endpoint {
    static UNKNOWN: OnceLock<Endpoint> = OnceLock::new();
    ENDPOINT.get().unwrap_or_else(|| {
        UNKNOWN.get_or_init(|| Endpoint { address: "unknown".to_string(), port: 0, client_id: "unknown".to_string() })
    })
}

/// One operation of this crate for the duration metrics.
pub(crate) fn operation<'a>(
    operation_name: &'a str,
    operation_type: &'a str,
    destination: &'a str,
    consumer_group: Option<&'a str>,
    error_type: Option<&'a str>,
) -> tracehop_telemetry::metrics::MessagingOperation<'a> {
    let endpoint = endpoint();
    tracehop_telemetry::metrics::MessagingOperation {
        operation_name,
        operation_type,
        destination,
        consumer_group,
        server_address: &endpoint.address,
        server_port: endpoint.port,
        error_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_the_first_url_as_given() {
        let endpoint = Endpoint::of("nats://nats.internal:4333,nats://other:4222", "tracehop-order");
        assert_eq!((endpoint.address.as_str(), endpoint.port), ("nats.internal", 4333));
        assert!(endpoint.client_id.starts_with("tracehop-order@"));
        assert_eq!(Endpoint::of("127.0.0.1", "x").port, 4222);
    }
}
