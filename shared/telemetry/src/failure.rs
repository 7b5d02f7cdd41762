//! Marking a span as failed, per the OpenTelemetry conventions: status ERROR,
//! an `error.type` attribute and an `exception` event. Every failure in
//! tracehop goes through [`record_failure`], so all of them look alike in a
//! trace.

use opentelemetry::KeyValue;
use opentelemetry::trace::{Status, TraceContextExt as _};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Ends `span`'s story as a failure. `error_type` is a short, stable name
/// (`payment_declined`, `timeout`); `message` is for people and must hold no
/// secret or personal datum.
pub fn record_failure(span: &tracing::Span, error_type: &str, message: &str) {
    span.set_status(Status::error(message.to_string()));
    span.set_attribute("error.type", error_type.to_string());
    span.add_event(
        "exception",
        vec![
            KeyValue::new("exception.type", error_type.to_string()),
            KeyValue::new("exception.message", message.to_string()),
        ],
    );
}

/// The trace id of `span` as 32 hex digits; all zeros when it is not sampled
/// into OpenTelemetry (no subscriber, or telemetry not initialized).
pub fn trace_id_of(span: &tracing::Span) -> String {
    span.context().span().span_context().trace_id().to_string()
}

/// The trace id of the current span.
pub fn current_trace_id() -> String {
    trace_id_of(&tracing::Span::current())
}
