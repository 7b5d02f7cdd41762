//! [`SpanRecord`]: one span as the `tracehop` command and the tests see it,
//! decoded from the OTLP messages on the feed.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{span, status};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The span's kind, as in OpenTelemetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Server,
    Client,
    Producer,
    Consumer,
    Internal,
}

/// The span's status, as in OpenTelemetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanStatus {
    Ok,
    Error,
    Unset,
}

/// A link from one span to another, possibly in another trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanLink {
    pub trace_id: String,
    pub span_id: String,
}

/// An event recorded on a span (an `exception`, a log line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanEvent {
    pub name: String,
    pub time_unix_nano: u64,
    pub attributes: Map<String, Value>,
}

/// One finished span.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    /// `None` for the root of a trace.
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    /// `service.name` of the resource that produced the span.
    pub service: String,
    /// `service.instance.id` of that resource: which process (a copy of
    /// the service, when several run) made the span.
    #[serde(default)]
    pub instance: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub status: SpanStatus,
    /// The status description; empty unless the status is an error.
    #[serde(default)]
    pub status_message: String,
    pub attributes: Map<String, Value>,
    pub links: Vec<SpanLink>,
    #[serde(default)]
    pub events: Vec<SpanEvent>,
}

impl SpanRecord {
    /// An attribute as a string, if it is one.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }

    /// How long the span took, in nanoseconds.
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }
}

/// Decodes one feed message (an OTLP `ExportTraceServiceRequest`).
pub fn decode_spans(payload: &[u8]) -> Result<Vec<SpanRecord>, prost::DecodeError> {
    let request = ExportTraceServiceRequest::decode(payload)?;
    let mut records = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = |key: &str| {
            resource_spans
                .resource
                .as_ref()
                .and_then(|resource| resource.attributes.iter().find(|kv| kv.key == key))
                .and_then(|kv| kv.value.as_ref())
                .map(any_to_string)
        };
        let service = resource("service.name").unwrap_or_else(|| "unknown".to_string());
        let instance = resource("service.instance.id").unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let (status, status_message) = match span.status {
                    Some(s) if s.code == status::StatusCode::Error as i32 => (SpanStatus::Error, s.message),
                    Some(s) if s.code == status::StatusCode::Ok as i32 => (SpanStatus::Ok, String::new()),
                    _ => (SpanStatus::Unset, String::new()),
                };
                records.push(SpanRecord {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty() && span.parent_span_id.iter().any(|b| *b != 0))
                        .then(|| hex(&span.parent_span_id)),
                    name: span.name,
                    kind: kind(span.kind),
                    service: service.clone(),
                    instance: instance.clone(),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    status,
                    status_message,
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|link| SpanLink { trace_id: hex(&link.trace_id), span_id: hex(&link.span_id) })
                        .collect(),
                    events: span
                        .events
                        .iter()
                        .map(|event| SpanEvent {
                            name: event.name.clone(),
                            time_unix_nano: event.time_unix_nano,
                            attributes: attributes(&event.attributes),
                        })
                        .collect(),
                });
            }
        }
    }
    Ok(records)
}

fn kind(value: i32) -> SpanKind {
    match span::SpanKind::try_from(value) {
        Ok(span::SpanKind::Server) => SpanKind::Server,
        Ok(span::SpanKind::Client) => SpanKind::Client,
        Ok(span::SpanKind::Producer) => SpanKind::Producer,
        Ok(span::SpanKind::Consumer) => SpanKind::Consumer,
        _ => SpanKind::Internal,
    }
}

fn attributes(kvs: &[KeyValue]) -> Map<String, Value> {
    kvs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(any_to_json).unwrap_or(Value::Null))).collect()
}

fn any_to_json(value: &AnyValue) -> Value {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(array)) => Value::Array(array.values.iter().map(any_to_json).collect()),
        Some(any_value::Value::KvlistValue(list)) => Value::Object(attributes(&list.values)),
        Some(any_value::Value::BytesValue(bytes)) => Value::String(hex(bytes)),
        _ => Value::Null,
    }
}

fn any_to_string(value: &AnyValue) -> String {
    match any_to_json(value) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}
