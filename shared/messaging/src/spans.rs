//! Attribute names and values on messaging spans, after the OpenTelemetry
//! messaging conventions. Where the conventions name nothing for NATS, the
//! attribute lives under `messaging.nats.`.

/// `messaging.system` for every span of this crate.
pub const SYSTEM: &str = "nats";
/// The delivery count of a JetStream message (1 on first delivery).
pub const DELIVERY_COUNT: &str = "messaging.nats.message.delivery_count";
/// The stream sequence of a JetStream message.
pub const STREAM_SEQUENCE: &str = "messaging.nats.stream.sequence";
/// The payload's protobuf type.
pub const PAYLOAD_TYPE: &str = "messaging.nats.message.payload_type";
