//! The handlers.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracehop_messaging::{request, request_reply};
use tracehop_proto::subjects;
use tracehop_proto::v1::{
    AnalyticsSummaryReply, AnalyticsSummaryRequest, GetOrderReply, GetOrderRequest, PlaceOrderReply,
};
use tracehop_proto::validate::FieldError;
use tracehop_telemetry::current_trace_id;

use crate::AppState;
use crate::api::{OrderView, parse_order};
use crate::error::ApiError;

/// Longest `Idempotency-Key` header accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// `POST /v1/orders`. With an `Idempotency-Key` header, a retry gets the
/// first answer back and concurrent duplicates create one order.
pub async fn place_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::InvalidRequest(FieldError { field: "body".into(), message: "could not be read".into() })
        }
    })?;
    let mut order_request = parse_order(&body)?;
    if let Some(key) = headers.get("idempotency-key") {
        order_request.idempotency_key = key
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|key| !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_LEN)
            .ok_or_else(|| FieldError {
                field: "Idempotency-Key".into(),
                message: format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
            })?
            .to_string();
    }
    let reply: PlaceOrderReply =
        request_reply(&state.nats, subjects::ORDER_PLACE, &order_request, state.order_timeout).await?;
    let order = reply.order.map(OrderView::from);
    match (reply.error, order) {
        (None, Some(order)) => {
            let mut body = json!(order);
            body["trace_id"] = json!(current_trace_id());
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        (Some(error), order) => Err(ApiError::Service { error, order }),
        (None, None) => Err(ApiError::Service {
            error: tracehop_proto::v1::Error::new(tracehop_proto::v1::ErrorCode::Internal, "no order in the reply"),
            order: None,
        }),
    }
}

/// `GET /v1/orders/{order_id}`.
pub async fn get_order(State(state): State<AppState>, Path(order_id): Path<String>) -> Result<Response, ApiError> {
    if uuid::Uuid::parse_str(&order_id).is_err() {
        return Err(ApiError::InvalidRequest(FieldError { field: "order_id".into(), message: "is not a UUID".into() }));
    }
    let reply: GetOrderReply =
        request(&state.nats, subjects::ORDER_GET, &GetOrderRequest { order_id }, state.read_timeout).await?;
    let order = reply.order.map(OrderView::from).ok_or_else(|| ApiError::NotFound("order not found".into()))?;
    let mut body = json!(order);
    body["trace_id"] = json!(current_trace_id());
    Ok(Json(body).into_response())
}

/// `GET /v1/analytics/summary`.
pub async fn analytics_summary(State(state): State<AppState>) -> Result<Response, ApiError> {
    let reply: AnalyticsSummaryReply =
        request(&state.nats, subjects::ANALYTICS_SUMMARY, &AnalyticsSummaryRequest {}, state.read_timeout).await?;
    Ok(Json(json!({
        "orders_confirmed": reply.orders_confirmed,
        "orders_failed": reply.orders_failed,
        "revenue_cents": reply.revenue_cents,
        "events_recorded": reply.events_recorded,
        "trace_id": current_trace_id(),
    }))
    .into_response())
}

/// `GET /healthz`: 200 while NATS is connected, 503 otherwise.
pub async fn health(State(state): State<AppState>) -> Response {
    let connected = state.nats.connection_state() == async_nats::connection::State::Connected;
    let status = if connected { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "status": if connected { "ok" } else { "degraded" }, "nats": connected }))).into_response()
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// A known path with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
