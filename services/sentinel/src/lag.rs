//! Consumer lag as metrics: for every expected consumer, what the sentinel
//! last read from JetStream, as gauges read whenever metrics are collected.
//!
//! | gauge | unit | what |
//! |---|---|---|
//! | `tracehop.consumer.pending` | `{message}` | events not yet delivered |
//! | `tracehop.consumer.ack_pending` | `{message}` | delivered, not yet acknowledged |
//! | `tracehop.consumer.oldest_unprocessed.age` | `s` | age of the oldest event not acknowledged (0 when none) |
//!
//! Each with `messaging.system`, `messaging.destination.name` (the stream)
//! and `messaging.consumer.group.name` (the durable). The conventions
//! define no consumer-lag metric for a broker like this one, hence the
//! `tracehop.` names.

use opentelemetry::KeyValue;
use opentelemetry::metrics::AsyncInstrument;
use tracehop_proto::v1::ConsumerHealth;

use crate::SharedView;

/// Registers the gauges on the global meter provider; they read `view`.
pub fn register(view: SharedView) {
    let meter = opentelemetry::global::meter_with_scope(tracehop_telemetry::scope());
    let gauge =
        |name: &'static str, unit: &'static str, description: &'static str, value: fn(&ConsumerHealth) -> f64| {
            let view = view.clone();
            meter
                .f64_observable_gauge(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |observer| observe(&view, observer, value))
                .build()
        };
    let _pending = gauge("tracehop.consumer.pending", "{message}", "Events not yet delivered to the consumer.", |c| {
        c.pending as f64
    });
    let _ack_pending = gauge(
        "tracehop.consumer.ack_pending",
        "{message}",
        "Events delivered to the consumer and not yet acknowledged.",
        |c| c.ack_pending as f64,
    );
    let _age = gauge(
        "tracehop.consumer.oldest_unprocessed.age",
        "s",
        "Age of the oldest event the consumer has not acknowledged.",
        |c| c.oldest_unprocessed_age_ms as f64 / 1000.0,
    );
}

fn observe(view: &SharedView, observer: &dyn AsyncInstrument<f64>, value: fn(&ConsumerHealth) -> f64) {
    // Collection runs on the metric reader's own thread; a view being
    // updated right now is read at the next collection.
    let Ok(view) = view.try_lock() else { return };
    for consumer in &view.consumers {
        observer.observe(
            value(consumer),
            &[
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.destination.name", consumer.stream.clone()),
                KeyValue::new("messaging.consumer.group.name", consumer.consumer.clone()),
            ],
        );
    }
}
