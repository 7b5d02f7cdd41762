//! [`OtlpReceiver`]: a real OTLP/HTTP receiver on 127.0.0.1 for tests. It
//! accepts `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`, as
//! a collector does, and keeps every request it was sent.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

/// The receiver; it stops with the test's runtime.
pub struct OtlpReceiver {
    port: u16,
    received: Received,
}

impl OtlpReceiver {
    /// Listens on a free port. Must be called inside a tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let received = Received::default();
        let app = Router::new().route("/v1/traces", post(traces)).with_state(received.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { port, received })
    }

    /// `http://127.0.0.1:<port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.received.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn traces(State(received): State<Received>, body: Bytes) -> StatusCode {
    match ExportTraceServiceRequest::decode(body.as_ref()) {
        Ok(request) => {
            received.lock().unwrap_or_else(|p| p.into_inner()).push(request);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}
