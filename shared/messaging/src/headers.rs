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
        let value = self.0.get(key)?.as_str();
        (value.len() <= MAX_VALUE_LEN).then_some(value)
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
        Some(headers) => opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract_with_context(&Context::new(), &HeaderExtractor(headers))
        }),
        None => Context::new(),
    }
}

/// A header's value, if present.
pub fn get<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|value| value.as_str())
}

/// The W3C `traceparent` of a span context, e.g. for storing it with an
/// outbox row; `None` for an invalid context.
pub fn traceparent_of(context: &Context) -> Option<String> {
    let mut headers = HeaderMap::new();
    inject(context, &mut headers);
    headers.get("traceparent").map(|value| value.as_str().to_string())
}

/// The context described by a stored `traceparent` (and `tracestate`).
pub fn context_from_traceparent(traceparent: &str, tracestate: Option<&str>) -> Context {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(traceparent) {
        headers.insert("traceparent", value);
    }
    if let Some(Ok(value)) = tracestate.map(HeaderValue::from_str) {
        headers.insert("tracestate", value);
    }
    extract(Some(&headers))
}
