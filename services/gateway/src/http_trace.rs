//! The HTTP server span of every request, and the W3C `traceresponse`
//! header on every response.

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use opentelemetry::trace::TraceContextExt as _;
use tracehop_messaging::headers::extract_edge;
use tracehop_messaging::w3c::BaggagePolicy;
use tracehop_telemetry::{Outcome, mark_failed, record_outcome};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use std::net::SocketAddr;
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

/// The method as the HTTP conventions name it: one of the methods of RFC
/// 9110 and PATCH, or `_OTHER` (the original then goes in
/// `http.request.method_original`).
fn known_method(method: &http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "_OTHER",
    }
}

/// `network.protocol.version` as the conventions write it: `1.1`, `2`.
fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// `server.address` and `server.port` from the `Host` header, as the
/// client addressed this server.
fn host_of(headers: &HeaderMap) -> (Option<String>, Option<i64>) {
    let Some(authority) = headers
        .get(http::header::HOST)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<http::uri::Authority>().ok())
    else {
        return (None, None);
    };
    (Some(authority.host().to_string()), authority.port_u16().map(i64::from))
}

/// Runs the request in a SERVER span `<METHOD> <route>` that continues the
/// caller's trace when its `traceparent` is well formed, and answers with the
/// `traceresponse` header; past `deadline` the answer is a JSON 504.
///
/// The span follows the HTTP server conventions: ERROR on a 5xx only (a 4xx
/// is the client's, shown by its status code and `tracehop.outcome`), no
/// `http.route` when no route matched, `_OTHER` for an unknown method.
/// Each request is also one `http.server.request.duration`.
pub async fn trace_request(request: Request, next: Next, deadline: Duration, baggage: Arc<BaggagePolicy>) -> Response {
    let started = std::time::Instant::now();
    let method = known_method(request.method());
    let method_original = (method == "_OTHER").then(|| request.method().to_string());
    let route = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_string());
    let name_method = if method == "_OTHER" { "HTTP" } else { method };
    let name = match &route {
        Some(route) => format!("{name_method} {route}"),
        None => name_method.to_string(),
    };
    let version = protocol_version(request.version());
    let (server_address, server_port) = host_of(request.headers());
    let client_address = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip().to_string());
    let span = tracing::info_span!(
        "http.server",
        otel.name = %name,
        otel.kind = "server",
        http.request.method = method,
        http.request.method_original = method_original,
        http.route = route.as_deref(),
        url.path = %request.uri().path(),
        url.scheme = "http",
        network.protocol.name = "http",
        network.protocol.version = version,
        client.address = client_address,
        server.address = server_address,
        server.port = server_port,
        user_agent.original = request
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
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
    // Per the HTTP conventions a server span fails on 5xx only, with the
    // status code as `error.type`: a 4xx is the client's mistake, and is
    // visible as the status code and the outcome. The cause of a 5xx was
    // recorded where it happened (a timeout, a service's fault).
    let error_type = status.is_server_error().then(|| status.as_str().to_string());
    let outcome = if status.is_server_error() {
        Outcome::Failed
    } else if status.is_client_error() {
        Outcome::Rejected
    } else {
        Outcome::Ok
    };
    record_outcome(&span, outcome, None);
    if let Some(error_type) = &error_type {
        mark_failed(&span, error_type, status.canonical_reason().unwrap_or("server error"));
    }
    tracehop_telemetry::metrics::http_server_request(
        started.elapsed(),
        &tracehop_telemetry::metrics::HttpServerRequest {
            method,
            route: route.as_deref(),
            status_code: status.as_u16(),
            protocol_version: version,
            scheme: "http",
            error_type: error_type.as_deref(),
        },
    );
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
