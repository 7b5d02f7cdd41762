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

/// `error` and its sources as one line, `outer: inner: ...`, each source
/// once: an error whose message already shows its source's does not repeat
/// it. For span statuses, log fields and dead-letter reasons, which are
/// read as one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let text = source.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = source.source();
    }
    line
}

/// Milliseconds since the Unix epoch, the unit of every `*_unix_ms` field
/// on the wire; 0 on a clock before 1970.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner detail")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("shown: {0}")]
    struct Shown(#[source] Inner);

    #[test]
    fn a_chain_is_one_line_with_each_source_once() {
        assert_eq!(error_chain(&Outer(Inner)), "outer: inner detail");
        assert_eq!(error_chain(&Shown(Inner)), "shown: inner detail");
    }
}
