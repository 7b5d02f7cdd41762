//! What context propagation costs per hop: the producer injects the W3C
//! context into a NATS `HeaderMap`, the consumer extracts it. `tracehop
//! bench` measures the same pair in its report; this is the criterion
//! version, with its statistics, for work on the carriers themselves.

use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use tracehop_messaging::headers;

fn inject_extract(c: &mut Criterion) {
    tracehop_telemetry::install_propagator();
    let context = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("a valid trace id"),
        SpanId::from_hex("00f067aa0ba902b7").expect("a valid span id"),
        TraceFlags::SAMPLED,
        true,
        TraceState::from_key_value([("vendor", "value")]).expect("a valid tracestate"),
    ));
    c.bench_function("inject + extract over NATS headers", |b| {
        b.iter(|| {
            let mut carrier = async_nats::HeaderMap::new();
            headers::inject(std::hint::black_box(&context), &mut carrier);
            headers::extract(Some(&carrier))
        })
    });
}

criterion_group!(benches, inject_extract);
criterion_main!(benches);
