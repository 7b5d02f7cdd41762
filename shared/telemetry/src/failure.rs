//! How a span says what became of its operation, per the OpenTelemetry
//! conventions ("Recording errors"):
//!
//! - [`record_failure`]: the operation failed *here* (a timeout, a refused
//!   statement, a message that cannot be decoded): status ERROR, `error.type`
//!   and one `exception` event. Each failure is recorded this way once, on
//!   the span where it happened.
//! - [`mark_failed`]: the operation failed because of a failure recorded
//!   elsewhere (a CLIENT span whose call came back with an error, a SERVER
//!   span answering with a fault from below): status ERROR and `error.type`,
//!   no second `exception` event.
//! - [`record_outcome`]: what the answer was, as attributes
//!   ([`OUTCOME`], [`ERROR_CODE`]); an expected business answer (declined,
//!   out of stock) is an outcome, not an error, on the side that gives it.

use opentelemetry::KeyValue;
use opentelemetry::trace::{Status, TraceContextExt as _};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// `tracehop.outcome`: what became of an answered request or a handled
/// message, in one word ([`Outcome`]).
pub const OUTCOME: &str = "tracehop.outcome";
/// `tracehop.error.code`: the typed error code of the answer
/// (`payment_declined`, `out_of_stock`, `unavailable`), when there is one.
pub const ERROR_CODE: &str = "tracehop.error.code";

/// What became of an operation, as `tracehop.outcome` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done as asked.
    Ok,
    /// An expected business answer other than yes: declined, out of stock,
    /// invalid, not found, conflict. Not an error on the side that answers.
    Rejected,
    /// The operation itself failed (internal, unavailable, timeout).
    Failed,
}

impl Outcome {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        }
    }
}

/// The operation of `span` failed here. `error_type` is a short, stable name
/// (`timeout`, `rejected`); `message` is for people and must hold no secret
/// or personal datum.
pub fn record_failure(span: &tracing::Span, error_type: &str, message: &str) {
    mark_failed(span, error_type, message);
    span.add_event(
        "exception",
        vec![
            KeyValue::new("exception.type", error_type.to_string()),
            KeyValue::new("exception.message", message.to_string()),
        ],
    );
}

/// The operation of `span` failed because of a failure that was recorded
/// where it happened: status ERROR and `error.type`, no exception event.
pub fn mark_failed(span: &tracing::Span, error_type: &str, message: &str) {
    span.set_status(Status::error(message.to_string()));
    span.set_attribute("error.type", error_type.to_string());
}

/// Says on `span` what the answer was: `tracehop.outcome`, and the error
/// code when there is one. Sets no status: whether that answer is an error
/// for this span depends on its side (see [`mark_failed`]).
pub fn record_outcome(span: &tracing::Span, outcome: Outcome, error_code: Option<&str>) {
    span.set_attribute(OUTCOME, outcome.as_str());
    if let Some(code) = error_code {
        span.set_attribute(ERROR_CODE, code.to_string());
    }
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
