//! The HTTP server span of every request, and the W3C `traceresponse`
//! header on every response.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use opentelemetry::trace::TraceContextExt as _;
use tracehop_messaging::headers::extract_edge;
use tracehop_messaging::w3c::BaggagePolicy;
use tracehop_telemetry::record_failure;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use std::sync::Arc;
use std::time::Duration;

use crate::error::ApiError;

/// Every value of header `name` (HTTP names are case-insensitive), in order;
/// a value that is not visible ASCII counts as one that cannot parse.
fn all<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers.get_all(name).iter().map(|value| value.to_str().unwrap_or("\u{0}")).collect()
}

/// The caller's W3C context, as the specifications say (see
/// `tracehop_messaging::w3c`).
fn incoming_context(headers: &HeaderMap, baggage: &BaggagePolicy) -> opentelemetry::Context {
    extract_edge(&all(headers, "traceparent"), &all(headers, "tracestate"), &all(headers, "baggage"), baggage)
}

/// Runs the request in a SERVER span `<METHOD> <route>` that continues the
/// caller's trace when its `traceparent` is well formed, and answers with the
/// `traceresponse` header; past `deadline` the answer is a JSON 504.
pub async fn trace_request(request: Request, next: Next, deadline: Duration, baggage: Arc<BaggagePolicy>) -> Response {
    let method = request.method().to_string();
    let route = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_string());
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format!("{method} {}", route.as_deref().unwrap_or("")).trim_end(),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route.as_deref().unwrap_or(""),
        url.path = %request.uri().path(),
        url.scheme = "http",
        network.protocol.version = ?request.version(),
        http.request.body.size = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok()),
        http.response.status_code = tracing::field::Empty,
    );
    let _ = span.set_parent(incoming_context(request.headers(), &baggage));

    let mut response = match tokio::time::timeout(deadline, next.run(request).instrument(span.clone())).await {
        Ok(response) => response,
        Err(_) => span.in_scope(|| ApiError::Timeout(deadline).into_response()),
    };

    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    // Per the HTTP conventions a server span fails on 5xx only: a 4xx is the
    // client's mistake, and is visible as the status code.
    if status.is_server_error() {
        record_failure(&span, status.as_str(), status.canonical_reason().unwrap_or("server error"));
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        let value = format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert("traceresponse", value);
        }
    }
    response
}
