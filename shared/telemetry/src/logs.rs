//! Log lines over OTLP, and the span each line belongs to.
//!
//! A line logged with an explicit parent (`tracing::warn!(parent: &span,
//! ..)`) belongs to that span, not to whatever span is current where it was
//! logged. The OpenTelemetry log bridge takes the trace and span ids from
//! the current OpenTelemetry context; [`ExplicitParent`] makes the explicit
//! parent's context current while the bridge handles such a line.
//! [`span_of`] is the same rule for the log file's format.
//!
//! [`Scrubbed`] keeps secrets out of the records sent over OTLP, as
//! [`crate::redact::RedactingWriter`] keeps them out of the log file.

use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use std::sync::OnceLock;

use tracing::dispatcher::WeakDispatch;
use tracing::span::Id;
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The span an event belongs to: its explicit parent when it has one, else
/// `current` (the current span), none for an event outside any span.
pub fn span_of(event: &Event<'_>, current: impl FnOnce() -> Option<Id>) -> Option<Id> {
    match event.parent() {
        Some(parent) => Some(parent.clone()),
        None if event.is_contextual() => current(),
        None => None,
    }
}

/// The process's subscriber. Inside the handling of an event the current
/// dispatcher reads as none (tracing refuses to re-enter it), so a span's
/// OpenTelemetry context is looked up through this one.
static DISPATCH: OnceLock<WeakDispatch> = OnceLock::new();

/// Remembers the process's subscriber for [`span_context`]; the first one
/// remembered stays.
pub fn remember(dispatch: &Dispatch) {
    let _ = DISPATCH.set(dispatch.downgrade());
}

/// The OpenTelemetry context of span `id`.
fn otel_context(id: &Id) -> Option<opentelemetry::Context> {
    let dispatch = DISPATCH.get()?.upgrade()?;
    tracing_opentelemetry::get_otel_context(id, &dispatch)
}

/// The span context (trace and span ids) of span `id`, when it is valid.
pub fn span_context(id: &Id) -> Option<SpanContext> {
    let span_context = otel_context(id)?.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// Wraps a layer that reads the current OpenTelemetry context (the log
/// bridge) so that an event with an explicit parent is handled in that
/// parent's context.
pub struct ExplicitParent<L> {
    inner: L,
}

impl<L> ExplicitParent<L> {
    pub fn new(inner: L) -> Self {
        Self { inner }
    }
}

impl<S, L> Layer<S> for ExplicitParent<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if let Some(parent) = event.parent()
            && let Some(context) = otel_context(parent)
        {
            let _attached = context.attach();
            self.inner.on_event(event, ctx);
            return;
        }
        self.inner.on_event(event, ctx);
    }

    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        remember(dispatch);
        self.inner.on_register_dispatch(dispatch);
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.event_enabled(event, ctx)
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.enabled(metadata, ctx)
    }

    fn register_callsite(&self, metadata: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        self.inner.register_callsite(metadata)
    }
}

/// Wraps the OTLP log bridge so that no card number, CVV or e-mail address
/// leaves in a log record: an event whose message or fields hold one is not
/// handed to the bridge but emitted here, scrubbed by [`crate::redact`],
/// with the same level, target and span; every other event goes through as
/// it is.
pub struct Scrubbed<L> {
    inner: L,
    logger: opentelemetry_sdk::logs::SdkLogger,
}

impl<L> Scrubbed<L> {
    pub fn new(inner: L, provider: &opentelemetry_sdk::logs::SdkLoggerProvider) -> Self {
        use opentelemetry::logs::LoggerProvider as _;
        Self { inner, logger: provider.logger("tracehop") }
    }
}

/// An event's fields as text, scrubbed, and whether scrubbing changed any.
#[derive(Default)]
struct ScrubbedFields {
    message: String,
    fields: Vec<(&'static str, String)>,
    held_secret: bool,
}

impl tracing::field::Visit for ScrubbedFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let scrubbed = crate::redact::redact_value(field.name(), value);
        self.held_secret |= scrubbed != value;
        if field.name() == "message" {
            self.message = scrubbed.into_owned();
        } else {
            self.fields.push((field.name(), scrubbed.into_owned()));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

fn severity(level: &tracing::Level) -> opentelemetry::logs::Severity {
    use opentelemetry::logs::Severity;
    match *level {
        tracing::Level::ERROR => Severity::Error,
        tracing::Level::WARN => Severity::Warn,
        tracing::Level::INFO => Severity::Info,
        tracing::Level::DEBUG => Severity::Debug,
        tracing::Level::TRACE => Severity::Trace,
    }
}

impl<S, L> Layer<S> for Scrubbed<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _};
        let mut fields = ScrubbedFields::default();
        event.record(&mut fields);
        if !fields.held_secret {
            self.inner.on_event(event, ctx);
            return;
        }
        let metadata = event.metadata();
        let mut record = self.logger.create_log_record();
        record.set_severity_number(severity(metadata.level()));
        record.set_severity_text(metadata.level().as_str());
        record.set_target(metadata.target().to_string());
        record.set_body(AnyValue::from(fields.message));
        for (name, value) in fields.fields {
            record.add_attribute(opentelemetry::Key::from_static_str(name), AnyValue::from(value));
        }
        // The span the line belongs to: [`ExplicitParent`], outside this
        // layer, has made an explicit parent's context current.
        let context = opentelemetry::Context::current();
        let span_context = context.span().span_context().clone();
        if span_context.is_valid() {
            record.set_trace_context(span_context.trace_id(), span_context.span_id(), Some(span_context.trace_flags()));
        }
        self.logger.emit(record);
    }

    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        self.inner.on_register_dispatch(dispatch);
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.event_enabled(event, ctx)
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.enabled(metadata, ctx)
    }

    fn register_callsite(&self, metadata: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        self.inner.register_callsite(metadata)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanId, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Notes the span id of the OpenTelemetry context that is current when
    /// it sees an event, as the OTLP log bridge reads it.
    struct CurrentSpanIds(Arc<Mutex<Vec<SpanId>>>);

    impl<S: Subscriber> Layer<S> for CurrentSpanIds {
        fn on_event(&self, _event: &Event<'_>, _ctx: Context<'_, S>) {
            let id = opentelemetry::Context::current().span().span_context().span_id();
            self.0.lock().unwrap().push(id);
        }
    }

    #[test]
    fn a_line_with_an_explicit_parent_carries_that_parents_ids() {
        let provider = SdkTracerProvider::builder().build();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(ExplicitParent::new(CurrentSpanIds(seen.clone())));
        tracing::subscriber::with_default(subscriber, || {
            let ambient = tracing::info_span!("ambient");
            let owner = tracing::info_span!("owner");
            let _entered = ambient.enter();
            tracing::info!(parent: &owner, "about the owner");
            tracing::info!("about the ambient span");
            let owner_id = owner.context().span().span_context().span_id();
            let ambient_id = ambient.context().span().span_context().span_id();
            assert_ne!(owner_id, ambient_id);
            assert_eq!(*seen.lock().unwrap(), vec![owner_id, ambient_id]);
        });
    }

    #[test]
    fn no_secret_leaves_in_a_log_record_and_other_lines_pass_unchanged() {
        use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
        use opentelemetry_sdk::logs::{InMemoryLogExporter, SdkLoggerProvider};

        let exporter = InMemoryLogExporter::default();
        let provider = SdkLoggerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let subscriber =
            tracing_subscriber::registry().with(Scrubbed::new(OpenTelemetryTracingBridge::new(&provider), &provider));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                customer.email = "pat@example.com",
                card = "4242 4242 4242 4242",
                "mail to pat@example.com bounced"
            );
            tracing::info!(order.id = "o-1", "an ordinary line");
        });
        let records = exporter.get_emitted_logs().unwrap();
        assert_eq!(records.len(), 2, "{records:?}");
        let text = format!("{records:?}");
        for secret in ["pat@example.com", "4242 4242 4242 4242"] {
            assert!(!text.contains(secret), "{secret} left in a log record: {text}");
        }
        let scrubbed = &records[0].record;
        assert_eq!(scrubbed.severity_number(), Some(opentelemetry::logs::Severity::Warn));
        assert!(format!("{:?}", scrubbed.body()).contains("bounced"), "{:?}", scrubbed.body());
        assert!(scrubbed.attributes_iter().any(|(key, _)| key.as_str() == "card"));
        // The ordinary line went through the bridge as it was.
        assert!(format!("{:?}", records[1].record.body()).contains("an ordinary line"));
        assert!(
            records[1]
                .record
                .attributes_iter()
                .any(|(key, value)| key.as_str() == "order.id" && format!("{value:?}").contains("o-1"))
        );
    }
}
