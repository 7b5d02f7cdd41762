//! The log line format: the usual `tracing` line, prefixed with the service
//! name and, inside a span, the trace and span ids, so that a log line leads
//! straight to its trace. A line logged with an explicit `parent:` carries
//! that span's ids.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

/// Formats each event as `<time> <level> <service> trace_id=.. span_id=.. <target>: <fields>`.
pub struct TraceIdsFormat {
    service: &'static str,
    inner: format::Format<format::Full>,
}

impl TraceIdsFormat {
    /// A format that names `service` on every line.
    pub fn new(service: &'static str) -> Self {
        Self { service, inner: format::Format::default() }
    }
}

impl<S, N> FormatEvent<S, N> for TraceIdsFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(writer, "{} ", self.service)?;
        // The span the line belongs to: an explicit `parent:` wins over the
        // span that happens to be current.
        if let Some(span_context) = crate::logs::span_of(event, || ctx.lookup_current().map(|span| span.id()))
            .and_then(|id| crate::logs::span_context(&id))
        {
            write!(writer, "trace_id={} span_id={} ", span_context.trace_id(), span_context.span_id())?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}
