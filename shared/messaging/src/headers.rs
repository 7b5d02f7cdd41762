//! W3C trace context in and out of NATS headers.
//!
//! Every value written here passes through the telemetry crate's scrubber
//! ([`tracehop_telemetry::redact`]): a card number, CVV or e-mail address
//! in baggage (or anywhere else) never reaches a NATS header.
//!
//! Header look-ups in async-nats are case-sensitive and inserting an invalid
//! header name panics, so both directions go through this module only: names
//! from outside are parsed, never trusted.

use std::str::FromStr as _;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};

use crate::w3c;

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
        // The W3C propagator always writes `tracestate`, empty when there is
        // none; an empty header is noise on every message.
        if value.is_empty() {
            return;
        }
        let value = tracehop_telemetry::redact::redact(&value);
        if let (Ok(name), Ok(value)) = (HeaderName::from_str(key), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

/// Writes `context` into `headers` with the global propagator
/// (`traceparent`, `tracestate`, `baggage`).
pub fn inject(context: &Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(context, &mut HeaderInjector(headers));
    });
}

/// `headers` with every value scrubbed of card numbers, CVVs and e-mail
/// addresses (for a dead letter, which keeps a message's headers for a month).
pub fn scrubbed(headers: &HeaderMap) -> HeaderMap {
    let mut clean = HeaderMap::new();
    for (name, values) in headers.iter() {
        for value in values {
            let text = tracehop_telemetry::redact::redact(value.as_str());
            if let Ok(value) = HeaderValue::from_str(&text) {
                clean.append(name.clone(), value);
            }
        }
    }
    clean
}

/// Reads the context a message carries. A missing or malformed `traceparent`
/// yields an empty context (a new trace starts), never the caller's current
/// context: one message's trace must not leak into the next.
///
/// A NATS header may hold several values: two `traceparent`s are no
/// `traceparent` (the W3C rule the gateway applies to HTTP), and several
/// `tracestate`s are combined. Found by the fuzzer: the first of two used
/// to be continued.
pub fn extract(headers: Option<&HeaderMap>) -> Context {
    let Some(headers) = headers else { return Context::new() };
    let all = |name: &str| -> Vec<&str> {
        headers.get_all(name).map(|value| value.as_str()).filter(|value| value.len() <= MAX_VALUE_LEN).collect()
    };
    let traceparents = all("traceparent");
    // A value over the bound still counts as one: it must not let a second
    // one stand alone.
    if headers.get_all("traceparent").count() != traceparents.len() {
        return Context::new();
    }
    let traceparent = w3c::traceparent(&traceparents);
    let tracestate = traceparent.as_ref().and_then(|_| w3c::tracestate(&all("tracestate")));
    let baggage = headers.get("baggage").map(|value| value.as_str()).filter(|value| value.len() <= MAX_VALUE_LEN);
    extract_parsed(traceparent, tracestate, baggage.map(str::to_string))
}

/// Reads W3C context from any carrier of single-valued headers (a NATS
/// message), as the Trace Context specification says (see [`crate::w3c`]):
/// a malformed `traceparent` is ignored, and so is the `tracestate` that
/// came with it; a malformed `tracestate` alone is dropped.
pub fn extract_with(carrier: &dyn Extractor) -> Context {
    let one = |name: &str| carrier.get(name).filter(|value| value.len() <= MAX_VALUE_LEN);
    let traceparent = one("traceparent").and_then(|value| w3c::traceparent(&[value]));
    let tracestate = one("tracestate").and_then(|value| w3c::tracestate(&[value]));
    extract_parsed(traceparent, tracestate, one("baggage").map(str::to_string))
}

/// Reads W3C context that arrived from outside, where each header may come
/// several times (the gateway's HTTP request): every value of each header,
/// in order. The baggage is kept only as far as `baggage_policy` allows.
pub fn extract_edge(
    traceparents: &[&str],
    tracestates: &[&str],
    baggages: &[&str],
    baggage_policy: &w3c::BaggagePolicy,
) -> Context {
    // A hostile header costs nothing: the ones over the bound are not read.
    fn bounded<'a>(values: &[&'a str]) -> Vec<&'a str> {
        values.iter().copied().filter(|v| v.len() <= MAX_VALUE_LEN).collect()
    }
    let traceparent = w3c::traceparent(&bounded(traceparents));
    let tracestate = w3c::tracestate(&bounded(tracestates));
    extract_parsed(traceparent, tracestate, w3c::baggage(&bounded(baggages), baggage_policy))
}

/// True when `value` is one well-formed W3C `traceparent` (see
/// [`w3c::traceparent`]).
pub fn is_valid_traceparent(value: &str) -> bool {
    w3c::traceparent(&[value]).is_some()
}

/// Already checked W3C values, handed to the propagator.
struct Parsed {
    traceparent: Option<String>,
    tracestate: Option<String>,
    baggage: Option<String>,
}

impl Extractor for Parsed {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent.as_deref(),
            // A tracestate belongs to its traceparent.
            "tracestate" => self.traceparent.as_ref().and(self.tracestate.as_deref()),
            "baggage" => self.baggage.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate", "baggage"]
    }
}

fn extract_parsed(traceparent: Option<String>, tracestate: Option<String>, baggage: Option<String>) -> Context {
    let parsed = Parsed { traceparent, tracestate, baggage };
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract_with_context(&Context::new(), &parsed)
    })
}

/// A header's value, if present.
pub fn get<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|value| value.as_str())
}

/// A context in its W3C text form (`traceparent`, `tracestate`,
/// `baggage`), for keeping it beside data that is acted on later, such as
/// an outbox row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub baggage: Option<String>,
}

impl StoredContext {
    /// The W3C form of `context`; empty for an invalid context.
    pub fn of(context: &Context) -> Self {
        let mut headers = HeaderMap::new();
        inject(context, &mut headers);
        let value = |name: &str| headers.get(name).map(|v| v.as_str().to_string()).filter(|v| !v.is_empty());
        Self { traceparent: value("traceparent"), tracestate: value("tracestate"), baggage: value("baggage") }
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
        if let Some(Ok(value)) = self.baggage.as_deref().map(HeaderValue::from_str) {
            headers.insert("baggage", value);
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
