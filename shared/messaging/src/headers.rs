//! W3C trace context in and out of NATS headers.
//!
//! Header look-ups in async-nats are case-sensitive and inserting an invalid
//! header name panics, so both directions go through this module only: names
//! from outside are parsed, never trusted.

use std::str::FromStr as _;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};

/// JetStream's de-duplication header; tracehop puts the event id there.
pub const MESSAGE_ID: &str = "Nats-Msg-Id";
/// The fully qualified protobuf type of the payload (`tracehop.v1.OrderEvent`).
pub const PAYLOAD_TYPE: &str = "Tracehop-Payload-Type";

/// On a dead letter: why the consumer gave up.
pub const DEAD_LETTER_REASON: &str = "Tracehop-Dead-Letter-Reason";
/// On a dead letter: the consumer that gave up.
pub const DEAD_LETTER_CONSUMER: &str = "Tracehop-Dead-Letter-Consumer";
/// On a dead letter: the subject the message was first published on.
pub const ORIGINAL_SUBJECT: &str = "Tracehop-Original-Subject";
/// On a dead letter: its sequence in the original stream.
pub const ORIGINAL_SEQUENCE: &str = "Tracehop-Original-Sequence";
/// On a dead letter: the original `Nats-Msg-Id`.
pub const ORIGINAL_MESSAGE_ID: &str = "Tracehop-Original-Msg-Id";
/// On a dead letter: how many times it was delivered.
pub const DELIVERY_COUNT: &str = "Tracehop-Delivery-Count";

/// Marks a readiness probe: a responder answers it at once, without a span
/// and without calling its handler.
pub const PROBE: &str = "Tracehop-Probe";

/// Longest header value taken from a message; longer ones are ignored, so a
/// hostile `tracestate` or `baggage` costs nothing.
const MAX_VALUE_LEN: usize = 8192;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_str(key), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Writes `context` into `headers` with the global propagator
/// (`traceparent`, `tracestate`, `baggage`).
pub fn inject(context: &Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(context, &mut HeaderInjector(headers));
    });
}

/// Reads the context a message carries. A missing or malformed `traceparent`
/// yields an empty context (a new trace starts), never the caller's current
/// context: one message's trace must not leak into the next.
pub fn extract(headers: Option<&HeaderMap>) -> Context {
    match headers {
        Some(headers) => extract_with(&HeaderExtractor(headers)),
        None => Context::new(),
    }
}

/// Reads W3C context from any carrier (the gateway's HTTP headers too), as
/// the Trace Context specification says: a `traceparent` that is not exactly
/// `version-traceid-parentid-flags` in lowercase hex of the right lengths is
/// ignored, and so is the `tracestate` that came with it.
pub fn extract_with(carrier: &dyn Extractor) -> Context {
    let strict = StrictTraceparent(carrier);
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract_with_context(&Context::new(), &strict)
    })
}

/// True when `value` is a well-formed W3C `traceparent`: version (not `ff`),
/// 32-digit trace id, 16-digit parent id and flags, in lowercase hex; version
/// `00` takes exactly four fields, later versions may append more.
pub fn is_valid_traceparent(value: &str) -> bool {
    let value = value.trim();
    let fields: Vec<&str> = value.split('-').collect();
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    fields.len() >= 4
        && hex(fields[0], 2)
        && fields[0] != "ff"
        && (fields[0] != "00" || fields.len() == 4)
        && hex(fields[1], 32)
        && hex(fields[2], 16)
        && hex(fields[3], 2)
}

struct StrictTraceparent<'a>(&'a dyn Extractor);

impl Extractor for StrictTraceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let valid = self.0.get("traceparent").is_some_and(is_valid_traceparent);
        match key {
            "traceparent" | "tracestate" if !valid => None,
            _ => self.0.get(key).filter(|value| value.len() <= MAX_VALUE_LEN),
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys()
    }
}

/// A header's value, if present.
pub fn get<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|value| value.as_str())
}

/// A span context in its W3C text form (`traceparent`, `tracestate`), for
/// keeping it beside data that is acted on later, such as an outbox row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl StoredContext {
    /// The W3C form of `context`; empty for an invalid context.
    pub fn of(context: &Context) -> Self {
        let mut headers = HeaderMap::new();
        inject(context, &mut headers);
        let value = |name: &str| headers.get(name).map(|v| v.as_str().to_string()).filter(|v| !v.is_empty());
        Self { traceparent: value("traceparent"), tracestate: value("tracestate") }
    }

    /// The context it describes; an empty context when it is missing or
    /// malformed.
    pub fn context(&self) -> Context {
        let mut headers = HeaderMap::new();
        if let Some(Ok(value)) = self.traceparent.as_deref().map(HeaderValue::from_str) {
            headers.insert("traceparent", value);
        }
        if let Some(Ok(value)) = self.tracestate.as_deref().map(HeaderValue::from_str) {
            headers.insert("tracestate", value);
        }
        extract(Some(&headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_well_formed_traceparents() {
        assert!(is_valid_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(is_valid_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"));
        for bad in [
            "",
            "garbage",
            "00-1-2-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e47360-00f067aa0ba902b7-01",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad:?} was accepted");
        }
    }
}
