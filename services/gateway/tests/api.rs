//! The gateway's public HTTP API, driven through `app(AppState)` with
//! `oneshot` (no socket) against a real `nats-server` per test.
//!
//! Every test but the ones that need a service to answer also watches
//! order's subjects (as order's own NATS user; the gateway's permissions
//! allow it nothing but order's and analytics' reads) from a second
//! connection, so that a request the gateway turns down is proven never to
//! reach a service.
//! Telemetry is installed once per test binary: without it there is no trace
//! id to check.
//!
//! Sections: harness, request validation (400), body limits and content type
//! (413, 415), routing (404, 405, `order_id`, the 504 deadline), health,
//! answers of the order service (201, 402, 500, 503), W3C trace context.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracehop_gateway::{AppState, MAX_BODY_BYTES, app};
use tracehop_messaging::w3c::BaggagePolicy;
use tracehop_messaging::{Responder, Service};
use tracehop_proto::subjects;
use tracehop_proto::v1::{
    Error as WireError, ErrorCode, Order, OrderStatus, PlaceOrderReply, PlaceOrderRequest, PricedItem,
};
use tracehop_telemetry::{Telemetry, TelemetryConfig};
use tracehop_testkit::NatsServer;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A caller's trace, as in the W3C Trace Context examples.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A card number that must never come back in a response.
const CARD_NUMBER: &str = "4242424242424242";

/// How long "nothing reached a service" is watched for.
const QUIET: Duration = Duration::from_millis(200);

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Installs the process-wide subscriber once: `init` fails when called twice.
/// Logs are off because they go to stdout around libtest's capture; the
/// tests check responses, not log lines.
fn install_telemetry() {
    TELEMETRY.get_or_init(|| {
        let config = TelemetryConfig { log_filter: "off".to_string(), ..TelemetryConfig::new("gateway-test", "0") };
        tracehop_telemetry::init(&config, None).expect("failed to install telemetry")
    });
}

/// The gateway on its own `nats-server`.
struct Gateway {
    app: Router,
    /// Every message sent to order; `None` when the test needs NATS to say
    /// that nobody answers, which any subscriber would prevent.
    watch: Option<futures::stream::SelectAll<async_nats::Subscriber>>,
    /// The connection `watch` lives on, kept open for the test's length.
    _watcher: Option<async_nats::Client>,
    /// The gateway's own connection, for starting fake services on.
    nats: async_nats::Client,
    /// Dropped last: it kills the server.
    server: NatsServer,
}

impl Gateway {
    /// The gateway, with `svc.>` watched. Nobody answers there, so a request
    /// that leaks through fails after a short order timeout.
    async fn start() -> Self {
        Self::build(true, Duration::from_secs(1)).await
    }

    /// The gateway with nothing subscribed anywhere.
    async fn unwatched() -> Self {
        Self::build(false, Duration::from_secs(5)).await
    }

    async fn build(watched: bool, order_timeout: Duration) -> Self {
        install_telemetry();
        let server = NatsServer::start().await.expect("failed to start nats-server");
        let nats = server.connect_service(Service::Gateway).await.expect("failed to connect the gateway to NATS");
        let (watch, watcher) = if watched {
            // Order's own user watches what reaches order; the gateway may
            // send nothing else (the server's permissions say so).
            let watcher = server.connect_service(Service::Order).await.expect("failed to connect the watcher");
            let place = watcher.subscribe(subjects::ORDER_PLACE).await.expect("failed to subscribe");
            let mut get = watcher.subscribe(subjects::ORDER_GET).await.expect("failed to subscribe");
            // `flush` only empties the socket buffer. The server handles a
            // connection's commands in order, so an answer to a request sent
            // after the SUBs means it holds them (a JetStream API request is
            // one order may make); then a marker from the gateway comes
            // through, and from then on so does every request it sends.
            let _ = jetstream::new(watcher.clone()).get_stream("SPANS").await;
            nats.publish(subjects::ORDER_GET, "marker".into()).await.expect("failed to publish the marker");
            let marker = tokio::time::timeout(Duration::from_secs(5), get.next())
                .await
                .expect("the watch did not start within 5 s")
                .expect("the watch subscription ended");
            assert_eq!(marker.payload.as_ref(), b"marker");
            (Some(futures::stream::select_all([place, get])), Some(watcher))
        } else {
            (None, None)
        };
        let state = AppState {
            nats: nats.clone(),
            order_timeout,
            read_timeout: order_timeout.min(Duration::from_secs(2)),
            baggage: BaggagePolicy { allowed_keys: vec!["tenant".to_string()], max_bytes: 64 },
        };
        Self { app: app(state), watch, _watcher: watcher, nats, server }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("failed to read the body");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, headers, body, text }
    }

    /// Fails when any message reached `svc.>` within [`QUIET`].
    async fn assert_nothing_sent(&mut self, case: &str) {
        let watch = self.watch.as_mut().expect("this gateway is not watched");
        if let Ok(Some(message)) = tokio::time::timeout(QUIET, watch.next()).await {
            panic!("{case}: a request reached {} although the gateway turned it down", message.subject);
        }
    }

    /// Waits for the next message on `svc.>`.
    async fn next_sent(&mut self) -> async_nats::Message {
        let watch = self.watch.as_mut().expect("this gateway is not watched");
        tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("no request reached svc.> within 5 s")
            .expect("the watch subscription ended")
    }

    /// Starts a fake order service on `svc.order.place` that answers every
    /// request with `reply`, and reports each request with the trace id its
    /// handler ran in. It stops when the returned token is cancelled.
    async fn fake_order_service(
        &self,
        reply: PlaceOrderReply,
    ) -> (CancellationToken, mpsc::UnboundedReceiver<(PlaceOrderRequest, String)>) {
        let shutdown = CancellationToken::new();
        let (seen, requests) = mpsc::unbounded_channel();
        let order = self.server.connect_service(Service::Order).await.expect("failed to connect as order");
        let responder = Responder::new(order, "order", shutdown.clone());
        tokio::spawn(async move {
            responder
                .serve(subjects::ORDER_PLACE, (reply, seen), |(reply, seen), request: PlaceOrderRequest| async move {
                    let _ = seen.send((request, tracehop_telemetry::current_trace_id()));
                    Ok::<_, WireError>(reply)
                })
                .await
                .expect("the fake order service failed to subscribe");
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !tracehop_messaging::probe(&self.nats, subjects::ORDER_PLACE, Duration::from_millis(200)).await {
            assert!(Instant::now() < deadline, "the fake order service did not start");
        }
        (shutdown, requests)
    }
}

/// A response, read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    /// `Null` when the body is not JSON.
    body: Value,
    text: String,
}

impl Reply {
    /// The trace and span ids of `traceresponse`, after checking that it is
    /// `00-<32 hex>-<16 hex>-<2 hex>` in lowercase with non-zero ids.
    fn traceresponse(&self) -> (String, String) {
        let value = self
            .headers
            .get("traceresponse")
            .unwrap_or_else(|| panic!("no traceresponse header on a {} ({})", self.status, self.text))
            .to_str()
            .expect("traceresponse is not ASCII");
        let fields: Vec<&str> = value.split('-').collect();
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        assert!(
            fields.len() == 4
                && fields[0] == "00"
                && hex(fields[1], 32)
                && hex(fields[2], 16)
                && hex(fields[3], 2)
                && fields[1].bytes().any(|b| b != b'0')
                && fields[2].bytes().any(|b| b != b'0'),
            "malformed traceresponse {value:?}"
        );
        (fields[1].to_string(), fields[2].to_string())
    }

    /// The trace id, after checking that the header and the body agree.
    fn trace_id(&self) -> String {
        let (trace_id, _) = self.traceresponse();
        assert_eq!(self.body["trace_id"], trace_id.as_str(), "body and traceresponse disagree: {}", self.text);
        trace_id
    }

    /// Checks the whole error shape `{"error":{"code","message","field"?},"trace_id"}`
    /// and returns the message.
    fn assert_error(&self, case: &str, status: StatusCode, code: &str, field: Option<&str>) -> String {
        assert_eq!(self.status, status, "{case}: {}", self.text);
        let object =
            self.body.as_object().unwrap_or_else(|| panic!("{case}: the body is not a JSON object: {}", self.text));
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["error", "trace_id"], "{case}: {}", self.text);
        let error = self.body["error"].as_object().unwrap_or_else(|| panic!("{case}: no error object: {}", self.text));
        assert!(
            error.keys().all(|key| matches!(key.as_str(), "code" | "message" | "field")),
            "{case}: unexpected keys in {}",
            self.text
        );
        assert_eq!(self.body["error"]["code"], code, "{case}: {}", self.text);
        assert_eq!(self.body["error"]["field"].as_str(), field, "{case}: {}", self.text);
        let message = self.body["error"]["message"].as_str().unwrap_or_default().to_string();
        assert!(!message.is_empty(), "{case}: no message: {}", self.text);
        self.trace_id();
        message
    }

    /// A 400 `invalid_request` naming `field`.
    fn assert_invalid(&self, case: &str, field: &str) -> String {
        self.assert_error(case, StatusCode::BAD_REQUEST, "invalid_request", Some(field))
    }
}

/// An order the gateway accepts.
fn good_order() -> Value {
    json!({
        "customer_id": "alice",
        "items": [{ "sku": "KB-001", "quantity": 2 }],
        "card": { "number": CARD_NUMBER, "expiry": "12/30", "cvv": "123" },
        "email": "alice@example.com",
    })
}

/// [`good_order`] changed by `change`.
fn order_with(change: impl FnOnce(&mut Value)) -> String {
    let mut order = good_order();
    change(&mut order);
    order.to_string()
}

fn remove(value: &mut Value, key: &str) {
    value.as_object_mut().expect("an object").remove(key);
}

fn push_item(order: &mut Value, item: Value) {
    order["items"].as_array_mut().expect("an item list").push(item);
}

fn post_order(body: impl Into<Body>) -> Request<Body> {
    Request::post("/v1/orders").header(header::CONTENT_TYPE, "application/json").body(body.into()).unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn with_header(mut request: Request<Body>, name: &'static str, value: HeaderValue) -> Request<Body> {
    request.headers_mut().append(name, value);
    request
}

fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("a valid header value")
}

/// Sends each `(case, body)` and checks it is a 400 naming `field` that
/// reached no service.
async fn assert_all_invalid(gateway: &mut Gateway, cases: Vec<(&str, String, &str)>) {
    for (case, body, field) in cases {
        let reply = gateway.send(post_order(body)).await;
        reply.assert_invalid(case, field);
        gateway.assert_nothing_sent(case).await;
    }
}

// ---------------------------------------------------------------------------
// Request validation: 400 naming the field, nothing sent
// ---------------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_is_400_naming_the_body() {
    let mut gateway = Gateway::start().await;
    let cases = vec![
        ("not json", "{not json".to_string(), "body"),
        ("truncated", r#"{"customer_id":"alice","items":["#.to_string(), "body"),
        ("empty body", String::new(), "body"),
        ("only whitespace", "  \n ".to_string(), "body"),
        ("an array", "[]".to_string(), "body"),
    ];
    assert_all_invalid(&mut gateway, cases).await;
}

#[tokio::test]
async fn data_after_the_json_document_is_400_naming_the_body() {
    // A body is one JSON document: what follows it is not silently dropped.
    let mut gateway = Gateway::start().await;
    let order = good_order().to_string();
    let cases = vec![
        ("trailing garbage", format!("{order} x"), "body"),
        ("two documents", format!("{order}{order}"), "body"),
        ("trailing comma", format!("{order},"), "body"),
    ];
    assert_all_invalid(&mut gateway, cases).await;
}

#[tokio::test]
async fn a_missing_field_is_400_naming_it() {
    let mut gateway = Gateway::start().await;
    let cases = vec![
        ("customer_id", order_with(|o| remove(o, "customer_id")), "customer_id"),
        ("items", order_with(|o| remove(o, "items")), "items"),
        ("card", order_with(|o| remove(o, "card")), "card"),
        ("items[0].quantity", order_with(|o| remove(&mut o["items"][0], "quantity")), "items[0].quantity"),
        ("items[0].sku", order_with(|o| remove(&mut o["items"][0], "sku")), "items[0].sku"),
        ("card.number", order_with(|o| remove(&mut o["card"], "number")), "card.number"),
    ];
    assert_all_invalid(&mut gateway, cases).await;
}

#[tokio::test]
async fn a_wrong_type_is_400_naming_the_field() {
    let mut gateway = Gateway::start().await;
    let cases = vec![
        ("quantity as a word", order_with(|o| o["items"][0]["quantity"] = json!("two")), "items[0].quantity"),
        ("quantity as null", order_with(|o| o["items"][0]["quantity"] = Value::Null), "items[0].quantity"),
        ("customer_id as a number", order_with(|o| o["customer_id"] = json!(7)), "customer_id"),
        ("items as an object", order_with(|o| o["items"] = json!({})), "items"),
        ("card as a string", order_with(|o| o["card"] = json!("visa")), "card"),
        ("second sku as a number", order_with(|o| push_item(o, json!({"sku": 5, "quantity": 1}))), "items[1].sku"),
    ];
    assert_all_invalid(&mut gateway, cases).await;
}

#[tokio::test]
async fn an_unknown_field_is_400_naming_it() {
    let mut gateway = Gateway::start().await;
    let cases = vec![
        ("top level", order_with(|o| o["coupon"] = json!("FREE")), "coupon"),
        ("in an item", order_with(|o| o["items"][0]["colour"] = json!("red")), "items[0].colour"),
        ("in the card", order_with(|o| o["card"]["pin"] = json!("1234")), "card.pin"),
    ];
    assert_all_invalid(&mut gateway, cases).await;
}

#[tokio::test]
async fn an_empty_item_list_is_400_naming_items() {
    let mut gateway = Gateway::start().await;
    let cases = vec![("empty items", order_with(|o| o["items"] = json!([])), "items")];
    assert_all_invalid(&mut gateway, cases).await;
}

#[tokio::test]
async fn zero_negative_and_absurd_quantities_are_400() {
    let mut gateway = Gateway::start().await;
    let quantity = |q: Value| order_with(|o| o["items"][0]["quantity"] = q);
    let cases = vec![
        ("zero", quantity(json!(0)), "items[0].quantity"),
        ("negative", quantity(json!(-1)), "items[0].quantity"),
        ("i64 minimum", quantity(json!(i64::MIN)), "items[0].quantity"),
        ("just over the maximum", quantity(json!(1001)), "items[0].quantity"),
        ("a million", quantity(json!(1_000_000)), "items[0].quantity"),
        ("2^40", quantity(json!(1_u64 << 40)), "items[0].quantity"),
        ("u32 wrap-around to 1", quantity(json!((1_u64 << 32) + 1)), "items[0].quantity"),
        ("u64 maximum", quantity(json!(u64::MAX)), "items[0].quantity"),
        ("1e6 as a float", quantity(json!(0)).replace(r#""quantity":0"#, r#""quantity":1e6"#), "items[0].quantity"),
        ("fractional", quantity(json!(1.5)), "items[0].quantity"),
        ("second item", order_with(|o| push_item(o, json!({"sku": "MS-002", "quantity": 0}))), "items[1].quantity"),
    ];
    assert_all_invalid(&mut gateway, cases).await;
}

#[tokio::test]
async fn a_duplicate_sku_is_400_naming_the_second() {
    let mut gateway = Gateway::start().await;
    let cases = vec![(
        "KB-001 twice",
        order_with(|o| o["items"] = json!([{"sku": "KB-001", "quantity": 1}, {"sku": "KB-001", "quantity": 2}])),
        "items[1].sku",
    )];
    assert_all_invalid(&mut gateway, cases).await;
}

#[tokio::test]
async fn a_card_number_typed_into_two_skus_is_never_echoed() {
    // A 16-digit number is a well-formed SKU, so only the duplicate check
    // stops this order; its message must not repeat the value.
    let mut gateway = Gateway::start().await;
    let body = order_with(|o| {
        o["items"] = json!([{"sku": CARD_NUMBER, "quantity": 1}, {"sku": CARD_NUMBER, "quantity": 1}]);
        o["card"]["number"] = json!("5555555555554444");
    });
    let reply = gateway.send(post_order(body)).await;
    let message = reply.assert_invalid("duplicate card-number SKU", "items[1].sku");
    assert!(!message.contains(CARD_NUMBER), "the message echoes the number: {message}");
    gateway.assert_nothing_sent("duplicate card-number SKU").await;
}

#[tokio::test]
async fn a_malformed_sku_is_400_naming_it() {
    let mut gateway = Gateway::start().await;
    let sku = |s: &str| order_with(|o| o["items"][0]["sku"] = json!(s));
    let cases = vec![
        ("lower case", sku("kb-001"), "items[0].sku"),
        ("empty", sku(""), "items[0].sku"),
        ("space", sku("KB 001"), "items[0].sku"),
        ("too long", sku(&"A".repeat(33)), "items[0].sku"),
        ("not ascii", sku("KB-ÖÖ1"), "items[0].sku"),
    ];
    assert_all_invalid(&mut gateway, cases).await;
}

#[tokio::test]
async fn a_malformed_card_number_is_400_and_never_echoed() {
    let mut gateway = Gateway::start().await;
    for (case, number) in
        [("letters", "4242abcd42424242"), ("too short", "42424"), ("too long", "42424242424242424242"), ("empty", "")]
    {
        let reply = gateway.send(post_order(order_with(|o| o["card"]["number"] = json!(number)))).await;
        let message = reply.assert_invalid(case, "card.number");
        if !number.is_empty() {
            assert!(!message.contains(number), "{case}: the message echoes the number: {message}");
            assert!(!reply.text.contains(number), "{case}: the body echoes the number: {}", reply.text);
        }
        gateway.assert_nothing_sent(case).await;
    }
}

#[tokio::test]
async fn an_invalid_email_is_400_and_never_echoed() {
    let mut gateway = Gateway::start().await;
    for (case, email) in [
        ("no at sign", "alice.example.com"),
        ("no domain dot", "alice@localhost"),
        ("space", "alice smith@example.com"),
        ("too long", &format!("{}@example.com", "a".repeat(250))),
    ] {
        let reply = gateway.send(post_order(order_with(|o| o["email"] = json!(email)))).await;
        let message = reply.assert_invalid(case, "email");
        assert!(!message.contains(email), "{case}: the message echoes the address: {message}");
        assert!(!reply.text.contains(email), "{case}: the body echoes the address: {}", reply.text);
        gateway.assert_nothing_sent(case).await;
    }
}

#[tokio::test]
async fn a_card_number_given_as_a_json_number_is_400_and_never_echoed() {
    let mut gateway = Gateway::start().await;
    let number: u64 = CARD_NUMBER.parse().unwrap();
    for (case, body, field) in [
        ("as the card number", order_with(|o| o["card"]["number"] = json!(number)), "card.number"),
        ("as a quantity", order_with(|o| o["items"][0]["quantity"] = json!(number)), "items[0].quantity"),
        ("as the customer id", order_with(|o| o["customer_id"] = json!(number)), "customer_id"),
        ("as the e-mail", order_with(|o| o["email"] = json!(number)), "email"),
        ("as a quantity string", order_with(|o| o["items"][0]["quantity"] = json!(CARD_NUMBER)), "items[0].quantity"),
    ] {
        assert!(body.contains(CARD_NUMBER));
        let reply = gateway.send(post_order(body)).await;
        reply.assert_invalid(case, field);
        // Not even a part of it; the error object is all the body holds
        // besides the (random) trace id.
        let error = reply.body["error"].to_string();
        assert!(!error.contains("4242"), "{case}: the error echoes the number: {error}");
        gateway.assert_nothing_sent(case).await;
    }
}

// ---------------------------------------------------------------------------
// Body size and content type
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_body_over_64_kib_is_413() {
    let mut gateway = Gateway::start().await;
    // A valid order padded with whitespace: only its size is wrong.
    let order = good_order().to_string();
    let oversized = format!("{order}{}", " ".repeat(MAX_BODY_BYTES + 1 - order.len()));
    assert_eq!(oversized.len(), MAX_BODY_BYTES + 1);

    let reply = gateway.send(post_order(oversized.clone())).await;
    reply.assert_error("no content-length", StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None);
    gateway.assert_nothing_sent("no content-length").await;

    let request = with_header(post_order(oversized), "content-length", header_value(&(MAX_BODY_BYTES + 1).to_string()));
    let reply = gateway.send(request).await;
    reply.assert_error("with content-length", StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None);
    gateway.assert_nothing_sent("with content-length").await;

    let huge = format!("{order}{}", " ".repeat(4 * 1024 * 1024));
    let reply = gateway.send(post_order(huge)).await;
    reply.assert_error("4 MiB", StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None);
    gateway.assert_nothing_sent("4 MiB").await;
}

#[tokio::test]
async fn a_body_of_exactly_64_kib_is_read() {
    let mut gateway = Gateway::start().await;
    // At the limit the body is parsed: the missing customer id is the error.
    let order = order_with(|o| remove(o, "customer_id"));
    let at_limit = format!("{order}{}", " ".repeat(MAX_BODY_BYTES - order.len()));
    assert_eq!(at_limit.len(), MAX_BODY_BYTES);
    gateway.send(post_order(at_limit)).await.assert_invalid("at the limit", "customer_id");
    gateway.assert_nothing_sent("at the limit").await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let mut gateway = Gateway::start().await;
    let body = good_order().to_string();
    for (case, content_type) in [
        ("text/plain", Some("text/plain")),
        ("no content type", None),
        ("form", Some("application/x-www-form-urlencoded")),
        ("json prefix", Some("application/jsonx")),
    ] {
        let mut request = Request::post("/v1/orders");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let reply = gateway.send(request.body(Body::from(body.clone())).unwrap()).await;
        reply.assert_error(case, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", None);
        gateway.assert_nothing_sent(case).await;
    }
}

#[tokio::test]
async fn json_with_parameters_or_odd_case_is_accepted_as_json() {
    let mut gateway = Gateway::start().await;
    // Accepted as JSON, so the body is parsed and the rule it breaks is named.
    let body = order_with(|o| o["items"] = json!([]));
    for content_type in ["application/json; charset=utf-8", "Application/JSON"] {
        let request = Request::post("/v1/orders")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body.clone()))
            .unwrap();
        gateway.send(request).await.assert_invalid(content_type, "items");
        gateway.assert_nothing_sent(content_type).await;
    }
}

// ---------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_path_is_a_json_404() {
    let mut gateway = Gateway::start().await;
    for (case, request) in [
        ("GET /nope", get("/nope")),
        ("GET /v2/orders", get("/v2/orders")),
        ("POST /v1/order", Request::post("/v1/order").body(Body::empty()).unwrap()),
        ("GET /v1/orders/ (trailing slash)", get("/v1/orders/")),
    ] {
        let reply = gateway.send(request).await;
        reply.assert_error(case, StatusCode::NOT_FOUND, "not_found", None);
        gateway.assert_nothing_sent(case).await;
    }
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405() {
    let mut gateway = Gateway::start().await;
    for (case, method, path) in
        [("DELETE /v1/orders", Method::DELETE, "/v1/orders"), ("GET /v1/orders", Method::GET, "/v1/orders")]
    {
        let reply = gateway.send(Request::builder().method(method).uri(path).body(Body::empty()).unwrap()).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{case}");
        reply.traceresponse();
        // The API promises a JSON error body with the trace id on every failure.
        assert!(reply.body["error"]["code"].is_string(), "{case}: not a JSON error: {:?}", reply.text);
        reply.trace_id();
        gateway.assert_nothing_sent(case).await;
    }
}

#[tokio::test]
async fn an_order_id_that_is_not_a_uuid_is_400() {
    let mut gateway = Gateway::start().await;
    for (case, path) in [
        ("words", "/v1/orders/not-a-uuid"),
        ("almost a uuid", "/v1/orders/0190c5d5-7c1a-7a9b-8f00-00000000000g"),
        ("svc wildcard", "/v1/orders/%3E"),
    ] {
        gateway.send(get(path)).await.assert_invalid(case, "order_id");
        gateway.assert_nothing_sent(case).await;
    }
}

#[tokio::test]
async fn a_request_past_the_deadline_is_a_traced_json_504() {
    // The deadline is the order timeout plus 5 s; a body that never ends
    // holds the request until then.
    let gateway = Gateway::build(false, Duration::from_millis(10)).await;
    let body = Body::from_stream(futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>());
    let request = Request::post("/v1/orders").header(header::CONTENT_TYPE, "application/json").body(body).unwrap();
    let reply = gateway.send(with_header(request, "traceparent", header_value(TRACEPARENT))).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.text);
    assert_eq!(reply.traceresponse().0, TRACE_ID, "the 504 is not in the caller's trace");
    assert!(reply.body["error"]["code"].is_string(), "not a JSON error: {:?}", reply.text);
    assert_eq!(reply.trace_id(), TRACE_ID);
}

// ---------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------

#[tokio::test]
async fn healthz_is_200_while_connected() {
    let mut gateway = Gateway::start().await;
    let reply = gateway.send(get("/healthz")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body, json!({ "status": "ok", "nats": true }));
    reply.traceresponse();
    gateway.assert_nothing_sent("healthz").await;
}

#[tokio::test]
async fn healthz_is_503_once_nats_is_gone() {
    let mut gateway = Gateway::unwatched().await;
    gateway.server.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        let reply = gateway.send(get("/healthz")).await;
        if reply.status != StatusCode::OK || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text);
    assert_eq!(reply.body, json!({ "status": "degraded", "nats": false }));
    reply.traceresponse();
}

// ---------------------------------------------------------------------------
// What the order service answers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_valid_order_reaches_the_order_service() {
    // The control for every "nothing sent" check above: the watch does see a
    // request that the gateway lets through. Nobody replies, so it times out.
    let mut gateway = Gateway::build(true, Duration::from_millis(300)).await;
    let reply = gateway.send(post_order(good_order().to_string())).await;
    let sent = gateway.next_sent().await;
    assert_eq!(sent.subject.as_str(), subjects::ORDER_PLACE);
    let message = reply.assert_error("timed out", StatusCode::SERVICE_UNAVAILABLE, "unavailable", None);
    // The request carried the gateway's trace to the order service.
    let traceparent = sent.headers.as_ref().and_then(|headers| headers.get("traceparent")).map(|v| v.to_string());
    let expected_prefix = format!("00-{}-", reply.trace_id());
    assert!(
        traceparent.as_deref().is_some_and(|value| value.starts_with(&expected_prefix)),
        "the request's traceparent {traceparent:?} is not in trace {expected_prefix}"
    );
    assert!(!message.contains("svc.") && !message.contains("300"), "the message shows internals: {message}");
}

#[tokio::test]
async fn a_valid_order_that_nobody_answers_is_503() {
    let gateway = Gateway::unwatched().await;
    let started = Instant::now();
    let reply = gateway.send(post_order(good_order().to_string())).await;
    let message = reply.assert_error("no responders", StatusCode::SERVICE_UNAVAILABLE, "unavailable", None);
    // NATS says at once that nobody listens; the 5 s order timeout is not waited out.
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    for internal in ["svc.", "order.place", "nats", "NATS", "responder", "127.0.0.1"] {
        assert!(!message.contains(internal), "the message shows {internal:?}: {message}");
    }
}

#[tokio::test]
async fn an_internal_error_of_the_order_service_is_500_without_its_details() {
    let gateway = Gateway::unwatched().await;
    let reply =
        PlaceOrderReply { error: Some(WireError::new(ErrorCode::Internal, "secret internal detail")), order: None };
    let (_shutdown, mut requests) = gateway.fake_order_service(reply).await;
    let reply = gateway.send(post_order(good_order().to_string())).await;
    let message = reply.assert_error("internal", StatusCode::INTERNAL_SERVER_ERROR, "internal", None);
    assert!(!reply.text.contains("secret internal detail"), "the 500 leaks: {}", reply.text);
    assert!(!message.contains("secret"), "the 500 leaks: {message}");
    // It was the fake service that answered, with the order as sent.
    let (request, _) = requests.try_recv().expect("the fake order service saw no request");
    assert_eq!(request.customer_id, "alice");
}

#[tokio::test]
async fn an_unknown_error_code_is_500_without_its_details() {
    let gateway = Gateway::unwatched().await;
    let reply = PlaceOrderReply {
        error: Some(WireError { code: 999, message: "secret internal detail".to_string() }),
        order: None,
    };
    let (_shutdown, _requests) = gateway.fake_order_service(reply).await;
    let reply = gateway.send(post_order(good_order().to_string())).await;
    reply.assert_error("unknown code", StatusCode::INTERNAL_SERVER_ERROR, "internal", None);
    assert!(!reply.text.contains("secret internal detail"), "the 500 leaks: {}", reply.text);
}

fn order(status: OrderStatus, failure_reason: &str) -> Order {
    Order {
        order_id: "0190c5d5-7c1a-7a9b-8f00-000000000001".to_string(),
        customer_id: "alice".to_string(),
        status: status as i32,
        items: vec![PricedItem { sku: "KB-001".to_string(), quantity: 2, unit_price_cents: 4_999 }],
        total_cents: 9_998,
        failure_reason: failure_reason.to_string(),
        created_at_unix_ms: 1_700_000_000_000,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_confirmed_order_is_201_in_one_trace_with_the_order_service() {
    let gateway = Gateway::unwatched().await;
    let (_shutdown, mut requests) = gateway
        .fake_order_service(PlaceOrderReply { error: None, order: Some(order(OrderStatus::Confirmed, "")) })
        .await;
    let request = with_header(post_order(good_order().to_string()), "traceparent", header_value(TRACEPARENT));
    let reply = gateway.send(request).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["status"], "confirmed");
    assert_eq!(reply.body["total_cents"], 9_998);
    assert_eq!(reply.body["items"][0], json!({ "sku": "KB-001", "quantity": 2, "unit_price_cents": 4_999 }));
    assert!(reply.body.get("failure_reason").is_none(), "{}", reply.text);
    assert_eq!(reply.trace_id(), TRACE_ID);

    let (request, service_trace_id) = requests.try_recv().expect("the fake order service saw no request");
    assert_eq!(service_trace_id, TRACE_ID, "the order service ran outside the caller's trace");
    let card = request.card.expect("the card was not passed on");
    assert_eq!(card.number, CARD_NUMBER);
    assert_eq!(request.items[0].quantity, 2);
    assert_eq!(request.email, "alice@example.com");
}

#[tokio::test]
async fn a_declined_payment_is_402_with_the_failed_order() {
    let gateway = Gateway::unwatched().await;
    let reply = PlaceOrderReply {
        error: Some(WireError::new(ErrorCode::PaymentDeclined, "the card was declined")),
        order: Some(order(OrderStatus::Failed, "the card was declined")),
    };
    let (_shutdown, _requests) = gateway.fake_order_service(reply).await;
    let reply = gateway.send(post_order(good_order().to_string())).await;
    assert_eq!(reply.status, StatusCode::PAYMENT_REQUIRED, "{}", reply.text);
    assert_eq!(reply.body["error"]["code"], "payment_declined");
    assert_eq!(reply.body["error"]["message"], "the card was declined");
    assert_eq!(reply.body["order"]["status"], "failed");
    assert_eq!(reply.body["order"]["failure_reason"], "the card was declined");
    reply.trace_id();
}

// ---------------------------------------------------------------------------
// W3C trace context
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_well_formed_traceparent_is_continued() {
    let mut gateway = Gateway::start().await;

    let request =
        with_header(post_order(order_with(|o| remove(o, "customer_id"))), "traceparent", header_value(TRACEPARENT));
    let reply = gateway.send(request).await;
    reply.assert_invalid("400", "customer_id");
    let (trace_id, span_id) = reply.traceresponse();
    assert_eq!(trace_id, TRACE_ID);
    assert_ne!(span_id, PARENT_ID, "traceresponse must name the gateway's span, not the caller's");
    assert!(reply.headers["traceresponse"].to_str().unwrap().ends_with("-01"), "the sampled flag was lost");
    gateway.assert_nothing_sent("400").await;

    let reply = gateway.send(with_header(get("/nope"), "traceparent", header_value(TRACEPARENT))).await;
    reply.assert_error("404", StatusCode::NOT_FOUND, "not_found", None);
    assert_eq!(reply.trace_id(), TRACE_ID);

    let reply = gateway.send(with_header(get("/healthz"), "traceparent", header_value(TRACEPARENT))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.traceresponse().0, TRACE_ID);

    // A later version may append fields; its trace is continued too.
    let future = format!("{TRACEPARENT}-what-the-future-holds");
    let future = future.replacen("00-", "01-", 1);
    let reply = gateway.send(with_header(get("/nope"), "traceparent", header_value(&future))).await;
    assert_eq!(reply.trace_id(), TRACE_ID, "version 01 with extra fields");
    gateway.assert_nothing_sent("404").await;
}

#[tokio::test]
async fn an_unsampled_traceparent_is_continued_unsampled() {
    let gateway = Gateway::start().await;
    let unsampled = format!("00-{TRACE_ID}-{PARENT_ID}-00");
    let reply = gateway.send(with_header(get("/nope"), "traceparent", header_value(&unsampled))).await;
    reply.assert_error("unsampled", StatusCode::NOT_FOUND, "not_found", None);
    assert_eq!(reply.trace_id(), TRACE_ID);
    assert!(
        reply.headers["traceresponse"].to_str().unwrap().ends_with("-00"),
        "the caller's sampling decision was overridden"
    );
}

#[tokio::test]
async fn requests_without_traceparent_get_fresh_traces() {
    let gateway = Gateway::start().await;
    let first = gateway.send(get("/nope")).await.trace_id();
    let second = gateway.send(get("/nope")).await.trace_id();
    assert_ne!(first, second, "two requests share a trace");
}

#[tokio::test]
async fn a_malformed_traceparent_starts_a_new_trace() {
    let mut gateway = Gateway::start().await;
    let upper_case = TRACEPARENT.to_uppercase();
    let over_long = "a".repeat(5_000);
    let padded = format!("{TRACEPARENT}{}", "-00".repeat(1_700));
    let cases: Vec<(&str, HeaderValue)> = vec![
        ("garbage", header_value("garbage")),
        ("empty", header_value("")),
        ("short fields", header_value("00-1-2-01")),
        ("no flags", header_value(&format!("00-{TRACE_ID}-{PARENT_ID}"))),
        ("over-long (5,000 chars)", header_value(&over_long)),
        ("valid prefix padded to 5,000 chars", header_value(&padded)),
        ("upper-case hex", header_value(&upper_case)),
        ("all-zero trace id", header_value(&format!("00-{}-{PARENT_ID}-01", "0".repeat(32)))),
        ("all-zero parent id", header_value(&format!("00-{TRACE_ID}-{}-01", "0".repeat(16)))),
        ("version ff", header_value(&format!("ff-{TRACE_ID}-{PARENT_ID}-01"))),
        ("version 00 with extra field", header_value(&format!("{TRACEPARENT}-extra"))),
        ("non-hex trace id", header_value(&format!("00-{}-{PARENT_ID}-01", "g".repeat(32)))),
        ("bytes that are not UTF-8", HeaderValue::from_bytes(b"00-\xff\xfe-\x80-01").unwrap()),
    ];
    for (case, value) in cases {
        let body = order_with(|o| remove(o, "customer_id"));
        let reply = gateway.send(with_header(post_order(body), "traceparent", value)).await;
        // Still the normal answer: the header is ignored, never an error.
        reply.assert_invalid(case, "customer_id");
        let trace_id = reply.trace_id();
        assert_ne!(trace_id, TRACE_ID, "{case}: the malformed trace was continued");
        assert_ne!(trace_id, "0".repeat(32), "{case}");
        gateway.assert_nothing_sent(case).await;
    }

    // And on a route that answers 200.
    let reply = gateway.send(with_header(get("/healthz"), "traceparent", header_value(&upper_case))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_ne!(reply.traceresponse().0, TRACE_ID);
}

#[tokio::test]
async fn a_hostile_tracestate_or_baggage_does_not_stop_the_trace() {
    let mut gateway = Gateway::start().await;
    let cases: Vec<(&str, &'static str, HeaderValue)> = vec![
        ("tracestate of 5,000 chars", "tracestate", header_value(&format!("k={}", "v".repeat(5_000)))),
        ("tracestate of 20,000 chars", "tracestate", header_value(&format!("k={}", "v".repeat(20_000)))),
        ("tracestate of 500 members", "tracestate", header_value(&vec!["k=v"; 500].join(","))),
        ("malformed tracestate", "tracestate", header_value("=,,%%%=,=x=y=,")),
        ("tracestate not UTF-8", "tracestate", HeaderValue::from_bytes(b"k=\xff\xfe").unwrap()),
        ("baggage of 20,000 chars", "baggage", header_value(&format!("k={}", "v".repeat(20_000)))),
        ("baggage of 2,000 members", "baggage", header_value(&vec!["k=v"; 2_000].join(","))),
        ("malformed baggage", "baggage", header_value("===;;;,,%zz=%%")),
        ("baggage not UTF-8", "baggage", HeaderValue::from_bytes(b"k=\xff").unwrap()),
    ];
    for (case, name, value) in cases {
        let request = with_header(
            with_header(post_order(order_with(|o| remove(o, "customer_id"))), "traceparent", header_value(TRACEPARENT)),
            name,
            value,
        );
        let reply = gateway.send(request).await;
        reply.assert_invalid(case, "customer_id");
        assert_eq!(reply.trace_id(), TRACE_ID, "{case}: the trace was not continued");
        gateway.assert_nothing_sent(case).await;
    }
}

// ---------------------------------------------------------------------------
// The W3C Trace Context test suite (w3c/trace-context test/test.py), case by
// case: the harness's headers go to the gateway, and what the gateway sends
// on (its NATS request) is checked as the harness checks its callback.
// ---------------------------------------------------------------------------

const SUITE_TRACE_ID: &str = "12345678901234567890123456789012";
const SUITE_TP: &str = "00-12345678901234567890123456789012-1234567890123456-01";
const SUITE_TP_UNSAMPLED: &str = "00-12345678901234567890123456789012-1234567890123456-00";

/// What the gateway sent on for a request with `headers`.
struct Propagated {
    trace_id: String,
    parent_id: String,
    /// `None` when no tracestate header went out.
    tracestate: Option<String>,
    baggage: Option<String>,
}

impl Propagated {
    /// The tracestate's members, as the harness's parser reads them.
    fn member(&self, key: &str) -> Option<String> {
        self.tracestate
            .as_deref()?
            .split(',')
            .find_map(|m| m.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v.to_string()))
    }

    fn members(&self) -> usize {
        self.tracestate.as_deref().map_or(0, |t| t.split(',').count())
    }
}

async fn propagated(gateway: &mut Gateway, headers: &[(&str, &str)]) -> Propagated {
    let mut request = get(&format!("/v1/orders/{}", uuid::Uuid::new_v4()));
    for (name, value) in headers {
        let name = axum::http::HeaderName::from_bytes(name.as_bytes()).expect("a valid header name");
        request.headers_mut().append(name, header_value(value));
    }
    let _reply = gateway.send(request).await;
    let sent = gateway.next_sent().await;
    let header = |name: &str| sent.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.to_string());
    let traceparent = header("traceparent").expect("every request goes out with a traceparent");
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[0], "00");
    Propagated {
        trace_id: fields[1].to_string(),
        parent_id: fields[2].to_string(),
        tracestate: header("tracestate"),
        baggage: header("baggage"),
    }
}

#[tokio::test]
async fn the_w3c_traceparent_cases() {
    let mut gateway = Gateway::build(true, Duration::from_millis(200)).await;
    // test_both_traceparent_and_tracestate_missing: a new trace, and no
    // empty tracestate header goes out.
    let fresh = propagated(&mut gateway, &[]).await;
    assert_ne!(fresh.trace_id, "0".repeat(32));
    assert_eq!(fresh.tracestate, None, "no tracestate header when there is none");
    // test_traceparent_included_tracestate_missing
    let continued = propagated(&mut gateway, &[("traceparent", SUITE_TP)]).await;
    assert_eq!(continued.trace_id, SUITE_TRACE_ID);
    assert_ne!(continued.parent_id, "1234567890123456");
    // test_traceparent_duplicated
    let duplicated = propagated(
        &mut gateway,
        &[
            ("traceparent", "00-12345678901234567890123456789011-1234567890123456-01"),
            ("traceparent", "00-12345678901234567890123456789012-1234567890123456-01"),
        ],
    )
    .await;
    assert_ne!(duplicated.trace_id, "12345678901234567890123456789011");
    assert_ne!(duplicated.trace_id, SUITE_TRACE_ID);
    // test_traceparent_header_name and _valid_casing
    for name in ["trace-parent", "trace.parent"] {
        assert_ne!(propagated(&mut gateway, &[(name, SUITE_TP)]).await.trace_id, SUITE_TRACE_ID, "{name}");
    }
    for name in ["TraceParent", "TrAcEpArEnT", "TRACEPARENT"] {
        assert_eq!(propagated(&mut gateway, &[(name, SUITE_TP)]).await.trace_id, SUITE_TRACE_ID, "{name}");
    }
    // Continued: a later version read by its first four fields, and
    // optional white space around the value.
    for valid in [
        "cc-12345678901234567890123456789012-1234567890123456-01",
        "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        " 00-12345678901234567890123456789012-1234567890123456-01",
        "\t00-12345678901234567890123456789012-1234567890123456-01",
        "00-12345678901234567890123456789012-1234567890123456-01 ",
        "00-12345678901234567890123456789012-1234567890123456-01\t",
        "\t 00-12345678901234567890123456789012-1234567890123456-01 \t",
    ] {
        assert_eq!(propagated(&mut gateway, &[("traceparent", valid)]).await.trace_id, SUITE_TRACE_ID, "{valid:?}");
    }
    // A new trace: every malformed traceparent of the suite.
    for invalid in [
        "00-12345678901234567890123456789012-1234567890123456-01.",
        "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like",
        "ff-12345678901234567890123456789012-1234567890123456-01",
        ".0-12345678901234567890123456789012-1234567890123456-01",
        "0.-12345678901234567890123456789012-1234567890123456-01",
        "000-12345678901234567890123456789012-1234567890123456-01",
        "0000-12345678901234567890123456789012-1234567890123456-01",
        "0-12345678901234567890123456789012-1234567890123456-01",
        "00-00000000000000000000000000000000-1234567890123456-01",
        "00-.2345678901234567890123456789012-1234567890123456-01",
        "00-1234567890123456789012345678901.-1234567890123456-01",
        "00-123456789012345678901234567890123-1234567890123456-01",
        "00-1234567890123456789012345678901-1234567890123456-01",
        "00-12345678901234567890123456789012-0000000000000000-01",
        "00-12345678901234567890123456789012-.234567890123456-01",
        "00-12345678901234567890123456789012-123456789012345.-01",
        "00-12345678901234567890123456789012-12345678901234567-01",
        "00-12345678901234567890123456789012-123456789012345-01",
        "00-12345678901234567890123456789012-1234567890123456-.0",
        "00-12345678901234567890123456789012-1234567890123456-0.",
        "00-12345678901234567890123456789012-1234567890123456-001",
        "00-12345678901234567890123456789012-1234567890123456-1",
    ] {
        let sent = propagated(&mut gateway, &[("traceparent", invalid)]).await;
        assert_ne!(sent.trace_id, SUITE_TRACE_ID, "{invalid:?} was continued");
        for part in ["123456789012345678901234567890123", "23456789012345678901234567890123", "0".repeat(32).as_str()] {
            assert_ne!(sent.trace_id, part, "{invalid:?}");
        }
    }
    // test_multiple_requests_with_valid_traceparent / _without / _with_illegal
    let mut parents = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let sent = propagated(&mut gateway, &[("traceparent", SUITE_TP)]).await;
        assert_eq!(sent.trace_id, SUITE_TRACE_ID);
        parents.insert(sent.parent_id);
    }
    assert_eq!(parents.len(), 3, "a parent id of its own for each request");
    for _ in 0..3 {
        let sent =
            propagated(&mut gateway, &[("traceparent", "00-00000000000000000000000000000000-1234567890123456-01")])
                .await;
        assert_ne!(sent.trace_id, "0".repeat(32));
    }
}

#[tokio::test]
async fn the_w3c_tracestate_cases() {
    let mut gateway = Gateway::build(true, Duration::from_millis(200)).await;
    let tp = ("traceparent", SUITE_TP_UNSAMPLED);
    // test_tracestate_included_traceparent_missing: ignored with it.
    let alone = propagated(&mut gateway, &[("tracestate", "foo=1")]).await;
    assert_eq!(alone.tracestate, None);
    // test_tracestate_included_traceparent_included
    let both = propagated(&mut gateway, &[tp, ("tracestate", "foo=1,bar=2")]).await;
    assert_eq!(both.trace_id, SUITE_TRACE_ID);
    assert_eq!((both.member("foo").as_deref(), both.member("bar").as_deref()), (Some("1"), Some("2")));
    // test_tracestate_header_name and _valid_casing
    for name in ["trace-state", "trace.state"] {
        assert_eq!(propagated(&mut gateway, &[tp, (name, "foo=1")]).await.member("foo"), None, "{name}");
    }
    for name in ["TraceState", "TrAcEsTaTe", "TRACESTATE"] {
        assert_eq!(propagated(&mut gateway, &[tp, (name, "foo=1")]).await.member("foo").as_deref(), Some("1"));
    }
    // test_tracestate_empty_header
    let empty = propagated(&mut gateway, &[tp, ("tracestate", "")]).await;
    assert!(empty.tracestate.as_deref().is_none_or(|t| !t.is_empty()));
    assert_eq!(empty.trace_id, SUITE_TRACE_ID);
    for headers in
        [[tp, ("tracestate", "foo=1"), ("tracestate", "")], [tp, ("tracestate", ""), ("tracestate", "foo=1")]]
    {
        assert_eq!(propagated(&mut gateway, &headers).await.member("foo").as_deref(), Some("1"));
    }
    // test_tracestate_multiple_headers_different_keys: combined, in order.
    let combined = propagated(
        &mut gateway,
        &[tp, ("tracestate", "foo=1,bar=2"), ("tracestate", "rojo=1,congo=2"), ("tracestate", "baz=3")],
    )
    .await;
    assert_eq!(combined.tracestate.as_deref(), Some("foo=1,bar=2,rojo=1,congo=2,baz=3"));
    // test_tracestate_duplicated_keys: passed on once.
    for headers in [
        vec![tp, ("tracestate", "foo=1,foo=1")],
        vec![tp, ("tracestate", "foo=1,foo=2")],
        vec![tp, ("tracestate", "foo=1"), ("tracestate", "foo=1")],
        vec![tp, ("tracestate", "foo=1"), ("tracestate", "foo=2")],
    ] {
        let sent = propagated(&mut gateway, &headers).await;
        assert!(matches!(sent.member("foo").as_deref(), Some("1" | "2")), "{headers:?}");
        assert_eq!(sent.members(), 1, "{headers:?}");
    }
    // test_tracestate_all_allowed_characters
    let key: String = ('a'..='z').chain('0'..='9').chain(['_', '-', '*', '/']).collect();
    let value: String = (0x20u8..=0x2b).chain(0x2d..=0x3c).chain(0x3e..=0x7e).map(char::from).collect();
    for key in [key.clone(), format!("{key}@a-z0-9_-*/")] {
        let sent = propagated(&mut gateway, &[tp, ("tracestate", &format!("{key}={value}"))]).await;
        assert_eq!(sent.member(&key).as_deref(), Some(value.as_str()), "{key}");
    }
    // test_tracestate_ows_handling
    for ows in ["foo=1 \t , \t bar=2, \t baz=3", "foo=1\t \t,\t \tbar=2,\t \tbaz=3"] {
        let sent = propagated(&mut gateway, &[tp, ("tracestate", ows)]).await;
        assert_eq!(sent.tracestate.as_deref(), Some("foo=1,bar=2,baz=3"), "{ows:?}");
    }
    for ows in [" foo=1", "\tfoo=1", "foo=1 ", "foo=1\t", "\t foo=1 \t"] {
        assert_eq!(propagated(&mut gateway, &[tp, ("tracestate", ows)]).await.member("foo").as_deref(), Some("1"));
    }
    // test_tracestate_key_illegal_characters, _value_illegal_characters and
    // an illegal vendor format: the whole tracestate is dropped, the trace
    // goes on.
    for invalid in ["foo =1", "FOO=1", "foo.bar=1", "@foo=1,bar=2", "foo=bar=baz", "foo=,bar=3"] {
        let sent = propagated(&mut gateway, &[tp, ("tracestate", invalid)]).await;
        assert_eq!(sent.tracestate, None, "{invalid:?}");
        assert_eq!(sent.trace_id, SUITE_TRACE_ID, "{invalid:?}");
    }
    // test_tracestate_key_illegal_vendor_format: `foo@` passes. The suite's
    // Level 2 grammar also passes `foo@@bar` and `foo@bar@baz`, which
    // OpenTelemetry's TraceState (Level 1: one `@`) cannot carry: they are
    // dropped whole, never in part, and the trace goes on.
    let sent = propagated(&mut gateway, &[tp, ("tracestate", "foo@=1,bar=2")]).await;
    assert_eq!((sent.member("foo@").as_deref(), sent.member("bar").as_deref()), (Some("1"), Some("2")));
    for header in ["foo@@bar=1,bar=2", "foo@bar@baz=1,bar=2"] {
        let sent = propagated(&mut gateway, &[tp, ("tracestate", header)]).await;
        assert_eq!((sent.tracestate.as_deref(), sent.trace_id.as_str()), (None, SUITE_TRACE_ID), "{header}");
    }
    // test_tracestate_member_count_limit
    let members =
        |range: std::ops::RangeInclusive<u32>| range.map(|i| format!("bar{i:02}={i:02}")).collect::<Vec<_>>().join(",");
    let (a, b, c) = (members(1..=10), members(11..=20), members(21..=30));
    let thirty_two = propagated(
        &mut gateway,
        &[tp, ("tracestate", &a), ("tracestate", &b), ("tracestate", &c), ("tracestate", "bar31=31,bar32=32")],
    )
    .await;
    assert_eq!((thirty_two.members(), thirty_two.member("bar01").as_deref()), (32, Some("01")));
    let thirty_three = propagated(
        &mut gateway,
        &[tp, ("tracestate", &a), ("tracestate", &b), ("tracestate", &c), ("tracestate", "bar31=31,bar32=32,bar33=33")],
    )
    .await;
    assert_eq!(thirty_three.tracestate, None, "more than 32 members: dropped");
    // test_tracestate_key_length_limit
    // The suite also passes systems of 14 and 15 characters after the `@`,
    // past what OpenTelemetry's TraceState takes (13): those are dropped.
    for key in ["z".repeat(256), format!("{}@{}", "t".repeat(241), "v".repeat(13)), format!("{}@v", "t".repeat(242))] {
        let sent = propagated(&mut gateway, &[tp, ("tracestate", "foo=1"), ("tracestate", &format!("{key}=1"))]).await;
        assert_eq!((sent.member("foo").as_deref(), sent.member(&key).as_deref()), (Some("1"), Some("1")), "{key}");
    }
    for key in ["z".repeat(257), format!("{}@{}", "t".repeat(241), "v".repeat(14)), format!("t@{}", "v".repeat(15))] {
        let sent = propagated(&mut gateway, &[tp, ("tracestate", "foo=1"), ("tracestate", &format!("{key}=1"))]).await;
        assert_eq!(sent.tracestate, None, "{key}");
    }
}

#[tokio::test]
async fn client_baggage_is_dropped_at_the_edge_unless_allowed_and_bounded() {
    let mut gateway = Gateway::build(true, Duration::from_millis(200)).await;
    let sent = propagated(&mut gateway, &[("traceparent", SUITE_TP), ("baggage", "isAdmin=true,userId=mallory")]).await;
    assert_eq!(sent.baggage, None, "a client's baggage does not pass by default");
    let sent = propagated(&mut gateway, &[("baggage", "isAdmin=true, tenant=acme")]).await;
    assert_eq!(sent.baggage.as_deref(), Some("tenant=acme"), "an allowed key passes, alone");
    let sent = propagated(&mut gateway, &[("baggage", &format!("tenant={}", "x".repeat(100)))]).await;
    assert_eq!(sent.baggage, None, "past the size bound");
}
