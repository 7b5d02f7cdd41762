//! [`ApiError`]: every way a request can fail, each mapped to one HTTP
//! status and a JSON body `{"error": {"code", "message", "field"?}, "trace_id"}`.
//! An internal error never shows its details: they are in the trace.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracehop_messaging::RequestError;
use tracehop_proto::v1::{Error as WireError, ErrorCode};
use tracehop_proto::validate::FieldError;
use tracehop_telemetry::current_trace_id;

use crate::api::OrderView;

/// A failed request.
#[derive(Debug)]
pub enum ApiError {
    /// The body or a parameter breaks a rule (400).
    InvalidRequest(FieldError),
    /// The body is not `application/json` (415).
    UnsupportedMediaType,
    /// The body is over the limit (413).
    PayloadTooLarge,
    /// No such resource (404).
    NotFound(String),
    /// The path exists, the method does not (405).
    MethodNotAllowed,
    /// The request ran past the gateway's deadline (504).
    Timeout(std::time::Duration),
    /// A service answered with an error; `order` is the order it created and
    /// then failed, if any.
    Service { error: WireError, order: Option<OrderView> },
    /// A service did not answer.
    Unreachable(RequestError),
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> Self {
        ApiError::InvalidRequest(error)
    }
}

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::Remote(error) => ApiError::Service { error, order: None },
            // A service answered with something that is not its reply type:
            // a bug, not an outage.
            RequestError::BadReply { .. } => {
                ApiError::Service { error: WireError::new(ErrorCode::Internal, "internal error"), order: None }
            }
            other => ApiError::Unreachable(other),
        }
    }
}

/// The HTTP status of a service error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::OutOfStock | ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::PaymentDeclined => StatusCode::PAYMENT_REQUIRED,
        ErrorCode::PaymentFailed => StatusCode::BAD_GATEWAY,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal | ErrorCode::Unspecified => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let trace_id = current_trace_id();
        let (status, code, message, field, order) = match self {
            ApiError::InvalidRequest(error) => {
                (StatusCode::BAD_REQUEST, "invalid_request", error.message, Some(error.field), None)
            }
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be application/json".to_string(),
                None,
                None,
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body must be at most {} bytes", crate::MAX_BODY_BYTES),
                None,
                None,
            ),
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, "not_found", message, None, None),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not allowed on this path".to_string(),
                None,
                None,
            ),
            ApiError::Timeout(deadline) => (
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "no answer within {deadline:?}; the order may still complete: retry with the same Idempotency-Key"
                ),
                None,
                None,
            ),
            ApiError::Service { error, order } => {
                let code = error.kind();
                let status = status_of(code);
                let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
                    "internal error".to_string()
                } else {
                    error.message
                };
                (status, code.short_name(), message, None, order)
            }
            ApiError::Unreachable(error) => {
                tracing::warn!(error = %error, "a service did not answer");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "a service did not answer in time; try again".to_string(),
                    None,
                    None,
                )
            }
        };
        // The error code on the HTTP span, beside its status code.
        tracing_opentelemetry::OpenTelemetrySpanExt::set_attribute(
            &tracing::Span::current(),
            tracehop_telemetry::ERROR_CODE,
            code.to_string(),
        );
        let mut error = json!({ "code": code, "message": message });
        if let Some(field) = field {
            error["field"] = json!(field);
        }
        let mut body = json!({ "error": error, "trace_id": trace_id });
        if let Some(order) = order {
            body["order"] = json!(order);
        }
        (status, Json(body)).into_response()
    }
}
