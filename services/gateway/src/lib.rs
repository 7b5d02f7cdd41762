//! The gateway: the only HTTP service. It turns the public JSON API into NATS
//! requests to the order and analytics services, and starts (or continues)
//! the trace of every request.
//!
//! - `POST /v1/orders`: place an order; 201 with the order once payment is
//!   decided, or a JSON error (400, 402, 409, 413, 415, 502, 503).
//! - `GET /v1/orders/{id}`: one order.
//! - `GET /v1/analytics/summary`: orders, revenue and failures so far.
//! - `GET /healthz`: 200 while NATS is connected.
//!
//! Every response carries a W3C `traceresponse` header and JSON bodies carry
//! the `trace_id`. An incoming `traceparent` continues its trace; a malformed
//! or duplicated one is ignored and a new trace starts. Several `tracestate`
//! headers are combined, and an invalid one dropped, as the W3C Trace
//! Context specification says; a client's `baggage` is dropped unless its
//! keys are allowed (`GATEWAY_BAGGAGE_ALLOW`).
//!
//! Modules: [`config`], [`api`] (JSON shapes and their parsing), [`error`]
//! (one HTTP status per error kind), [`http_trace`] (the HTTP server span),
//! [`routes`] (the handlers), [`protect`] (rate limit per client, body
//! deadline, security headers, around it all).

pub mod api;
pub mod config;
pub mod error;
pub mod http_trace;
pub mod protect;
pub mod routes;

pub use config::Config;

use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tracehop_messaging::w3c::BaggagePolicy;
use tracehop_service::Runtime;

/// `service.name` of this service.
pub const SERVICE: &str = tracehop_messaging::Service::Gateway.name();

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub nats: async_nats::Client,
    /// How long the gateway waits for the order service to decide.
    pub order_timeout: Duration,
    /// How long it waits for a read (an order, the summary).
    pub read_timeout: Duration,
    /// Which of a client's `baggage` members pass the edge.
    pub baggage: BaggagePolicy,
}

/// The HTTP application, without a socket: tests drive it with `oneshot`.
pub fn app(state: AppState) -> Router {
    // The deadline is applied inside the HTTP span, so that a request that
    // runs out of time still gets a JSON 504 with its `traceresponse`.
    let deadline = state.order_timeout + Duration::from_secs(5);
    let baggage = std::sync::Arc::new(state.baggage.clone());
    Router::new()
        .route("/v1/orders", post(routes::place_order))
        .route("/v1/orders/{order_id}", get(routes::get_order))
        .route("/v1/analytics/summary", get(routes::analytics_summary))
        .route("/healthz", get(routes::health))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn(move |request, next| {
            http_trace::trace_request(request, next, deadline, baggage.clone())
        }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves HTTP on `config.addr` until shutdown, letting requests in flight
/// finish.
pub async fn run(config: Config, runtime: Runtime) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.addr)
        .await
        .with_context(|| format!("failed to listen on {}", config.addr))?;
    tracing::info!(address = %listener.local_addr()?, "gateway listening");
    let state = AppState {
        nats: runtime.nats.clone(),
        order_timeout: config.order_timeout,
        read_timeout: config.read_timeout,
        baggage: config.baggage.clone(),
    };
    let app = protect::protect(app(state), &config.protection);
    // The peer's address keys the rate limit and is `client.address` on the
    // HTTP span.
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(runtime.shutdown.cancelled_owned())
        .await
        .context("the HTTP server failed")
}
