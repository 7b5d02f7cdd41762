//! The duration histograms of the OpenTelemetry conventions, one per kind of
//! operation, so that rate, errors and duration per service come from any
//! metrics backend without reading a trace:
//!
//! | instrument | recorded by |
//! |---|---|
//! | `http.server.request.duration` | the gateway's HTTP server span |
//! | `messaging.client.operation.duration` | every NATS request, publish and dead letter sent |
//! | `messaging.process.duration` | every NATS request answered and message consumed |
//! | `db.client.operation.duration` | every SQL statement (`tracehop_db::traced`) |
//!
//! All in seconds, with the bucket boundaries the conventions advise, and
//! `error.type` only on failed operations (as on the spans). The
//! instruments come from the global meter provider that [`crate::init`]
//! installs; before that (or in a test without telemetry) they record
//! nothing.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use opentelemetry_semantic_conventions::attribute as attr;
use opentelemetry_semantic_conventions::metric as names;

/// The conventions' advised boundaries for operation durations, in seconds.
const DURATION_BOUNDARIES: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

struct Instruments {
    http_server: Histogram<f64>,
    messaging_client: Histogram<f64>,
    messaging_process: Histogram<f64>,
    db_client: Histogram<f64>,
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

fn instruments() -> &'static Instruments {
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter_with_scope(crate::scope());
        let histogram = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build()
        };
        Instruments {
            http_server: histogram(names::HTTP_SERVER_REQUEST_DURATION, "Duration of HTTP server requests."),
            messaging_client: histogram(
                names::MESSAGING_CLIENT_OPERATION_DURATION,
                "Duration of messaging operation initiated by a producer or consumer client.",
            ),
            messaging_process: histogram(names::MESSAGING_PROCESS_DURATION, "Duration of processing operation."),
            db_client: histogram(names::DB_CLIENT_OPERATION_DURATION, "Duration of database client operations."),
        }
    })
}

fn with_error(mut attributes: Vec<KeyValue>, error_type: Option<&str>) -> Vec<KeyValue> {
    if let Some(error_type) = error_type {
        attributes.push(KeyValue::new(attr::ERROR_TYPE, error_type.to_string()));
    }
    attributes
}

/// One HTTP request served: its method (`_OTHER` for an unknown one), route
/// (none when no route matched), status code, protocol version, and
/// `error.type` (the status code) on a 5xx.
pub struct HttpServerRequest<'a> {
    pub method: &'a str,
    pub route: Option<&'a str>,
    pub status_code: u16,
    pub protocol_version: &'a str,
    pub scheme: &'a str,
    pub error_type: Option<&'a str>,
}

/// Records one `http.server.request.duration`.
pub fn http_server_request(duration: Duration, request: &HttpServerRequest<'_>) {
    let mut attributes = vec![
        KeyValue::new(attr::HTTP_REQUEST_METHOD, request.method.to_string()),
        KeyValue::new(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(request.status_code)),
        KeyValue::new(attr::NETWORK_PROTOCOL_NAME, "http"),
        KeyValue::new(attr::NETWORK_PROTOCOL_VERSION, request.protocol_version.to_string()),
        KeyValue::new(attr::URL_SCHEME, request.scheme.to_string()),
    ];
    if let Some(route) = request.route {
        attributes.push(KeyValue::new(attr::HTTP_ROUTE, route.to_string()));
    }
    instruments().http_server.record(duration.as_secs_f64(), &with_error(attributes, request.error_type));
}

/// One messaging operation, as the messaging metrics describe it.
pub struct MessagingOperation<'a> {
    /// `messaging.operation.name` (`send`, `publish`, `process`).
    pub operation_name: &'a str,
    /// `messaging.operation.type` (`send`, `process`).
    pub operation_type: &'a str,
    /// `messaging.destination.name`: the subject.
    pub destination: &'a str,
    /// `messaging.consumer.group.name`: the durable consumer, if any.
    pub consumer_group: Option<&'a str>,
    /// `server.address` and `server.port` of the NATS server.
    pub server_address: &'a str,
    pub server_port: u16,
    /// `error.type` when the operation failed.
    pub error_type: Option<&'a str>,
}

impl MessagingOperation<'_> {
    fn attributes(&self) -> Vec<KeyValue> {
        let mut attributes = vec![
            KeyValue::new(attr::MESSAGING_SYSTEM, "nats"),
            KeyValue::new(attr::MESSAGING_OPERATION_NAME, self.operation_name.to_string()),
            KeyValue::new(attr::MESSAGING_OPERATION_TYPE, self.operation_type.to_string()),
            KeyValue::new(attr::MESSAGING_DESTINATION_NAME, self.destination.to_string()),
            KeyValue::new(attr::SERVER_ADDRESS, self.server_address.to_string()),
            KeyValue::new(attr::SERVER_PORT, i64::from(self.server_port)),
        ];
        if let Some(group) = self.consumer_group {
            attributes.push(KeyValue::new(attr::MESSAGING_CONSUMER_GROUP_NAME, group.to_string()));
        }
        with_error(attributes, self.error_type)
    }
}

/// Records one `messaging.client.operation.duration` (a send, a publish).
pub fn messaging_client_operation(duration: Duration, operation: &MessagingOperation<'_>) {
    instruments().messaging_client.record(duration.as_secs_f64(), &operation.attributes());
}

/// Records one `messaging.process.duration` (a request answered, a message
/// consumed).
pub fn messaging_process(duration: Duration, operation: &MessagingOperation<'_>) {
    instruments().messaging_process.record(duration.as_secs_f64(), &operation.attributes());
}

/// Records one `db.client.operation.duration` of a PostgreSQL statement.
pub fn db_client_operation(duration: Duration, operation: &str, collection: &str, error_type: Option<&str>) {
    let mut attributes = vec![
        KeyValue::new(attr::DB_SYSTEM_NAME, "postgresql"),
        KeyValue::new(attr::DB_OPERATION_NAME, operation.to_string()),
    ];
    // BEGIN and COMMIT act on no collection.
    if !collection.is_empty() {
        attributes.push(KeyValue::new(attr::DB_COLLECTION_NAME, collection.to_string()));
    }
    instruments().db_client.record(duration.as_secs_f64(), &with_error(attributes, error_type));
}

#[cfg(test)]
mod tests {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

    use super::*;

    /// What recording one duration costs, with the SDK aggregating as in a
    /// service (the exporter aimed at a closed port never runs: the
    /// interval is longer than the test). Run with `cargo test --release -p
    /// tracehop-telemetry -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check: run it by hand"]
    fn cost_of_recording_a_messaging_duration() {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_endpoint("http://127.0.0.1:9/v1/metrics")
            .build()
            .unwrap();
        let reader = PeriodicReader::builder(exporter).with_interval(Duration::from_secs(3600)).build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        let histogram = provider
            .meter_with_scope(crate::scope())
            .f64_histogram(names::MESSAGING_PROCESS_DURATION)
            .with_boundaries(DURATION_BOUNDARIES.to_vec())
            .build();
        let subjects = ["svc.order.place", "svc.inventory.reserve", "svc.payment.charge", "orders.confirmed"];
        let rounds = 1_000_000;
        let started = std::time::Instant::now();
        for i in 0..rounds {
            let operation = MessagingOperation {
                operation_name: "process",
                operation_type: "process",
                destination: subjects[i % subjects.len()],
                consumer_group: None,
                server_address: "127.0.0.1",
                server_port: 4222,
                error_type: None,
            };
            histogram.record(0.001 * (i % 100) as f64, &operation.attributes());
        }
        let per_record = started.elapsed() / rounds as u32;
        println!("messaging.process.duration: {per_record:?} per record ({rounds} records, 4 attribute sets)");
        let _ = provider.shutdown();
    }
}
