//! [`OtlpReceiver`]: a real OTLP/HTTP receiver on 127.0.0.1 for tests. It
//! accepts `POST /v1/traces`, `/v1/metrics` and `/v1/logs` with the
//! protobuf export requests, as a collector does, and keeps every request
//! it was sent.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric};
use prost::Message;

/// What the receiver was sent, by signal.
#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    logs: Vec<ExportLogsServiceRequest>,
}

type Shared = Arc<Mutex<Received>>;

/// The receiver; it stops with the test's runtime.
pub struct OtlpReceiver {
    port: u16,
    received: Shared,
}

impl OtlpReceiver {
    /// Listens on a free port. Must be called inside a tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let received = Shared::default();
        let app = Router::new()
            .route("/v1/traces", post(|state, body| accept(state, body, |r: &mut Received| &mut r.traces)))
            .route("/v1/metrics", post(|state, body| accept(state, body, |r: &mut Received| &mut r.metrics)))
            .route("/v1/logs", post(|state, body| accept(state, body, |r: &mut Received| &mut r.logs)))
            .with_state(received.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { port, received })
    }

    /// `http://127.0.0.1:<port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every trace export request received so far.
    pub fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.lock().traces.clone()
    }

    /// Every metrics export request received so far.
    pub fn metric_requests(&self) -> Vec<ExportMetricsServiceRequest> {
        self.lock().metrics.clone()
    }

    /// Every logs export request received so far.
    pub fn log_requests(&self) -> Vec<ExportLogsServiceRequest> {
        self.lock().logs.clone()
    }

    /// Every metric received so far, with the `service.name` of the process
    /// that sent it.
    pub fn metrics(&self) -> Vec<(String, Metric)> {
        let mut all = Vec::new();
        for request in self.lock().metrics.iter() {
            for resource_metrics in &request.resource_metrics {
                let service = resource_metrics
                    .resource
                    .as_ref()
                    .and_then(|resource| string_attribute(&resource.attributes, "service.name"))
                    .unwrap_or_default();
                for scope_metrics in &resource_metrics.scope_metrics {
                    for metric in &scope_metrics.metrics {
                        all.push((service.clone(), metric.clone()));
                    }
                }
            }
        }
        all
    }
}

/// The string value of attribute `key`, if it has one.
pub fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| match &kv.value {
        Some(AnyValue { value: Some(any_value::Value::StringValue(value)) }) => Some(value.clone()),
        _ => None,
    })
}

/// The attribute sets of a metric's data points (histogram, sum or gauge).
pub fn data_point_attributes(metric: &Metric) -> Vec<Vec<KeyValue>> {
    match &metric.data {
        Some(metric::Data::Histogram(h)) => h.data_points.iter().map(|p| p.attributes.clone()).collect(),
        Some(metric::Data::Sum(s)) => s.data_points.iter().map(|p| p.attributes.clone()).collect(),
        Some(metric::Data::Gauge(g)) => g.data_points.iter().map(|p| p.attributes.clone()).collect(),
        _ => Vec::new(),
    }
}

async fn accept<M: Message + Default>(
    State(received): State<Shared>,
    body: Bytes,
    signal: fn(&mut Received) -> &mut Vec<M>,
) -> StatusCode {
    match M::decode(body.as_ref()) {
        Ok(request) => {
            signal(&mut received.lock().unwrap_or_else(|p| p.into_inner())).push(request);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}
