//! The gateway's protections, driven with `oneshot` against a real
//! nats-server: security headers on every response, a rate limit per
//! client that answers 429 before anything runs.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use governor::Quota;
use tower::ServiceExt as _;
use tracehop_gateway::protect::{Protection, SECURITY_HEADERS, protect};
use tracehop_gateway::{AppState, app};
use tracehop_messaging::Service;
use tracehop_messaging::w3c::BaggagePolicy;
use tracehop_testkit::NatsServer;

async fn gateway(server: &NatsServer, protection: &Protection) -> axum::Router {
    let nats = server.connect_service(Service::Gateway).await.unwrap();
    let state = AppState {
        nats,
        order_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
        baggage: BaggagePolicy { allowed_keys: Vec::new(), max_bytes: 64 },
    };
    protect(app(state), protection)
}

fn from(client: [u8; 4], path: &str) -> Request<Body> {
    let mut request = Request::get(path).body(Body::empty()).unwrap();
    request.extensions_mut().insert(ConnectInfo(SocketAddr::from((client, 40000))));
    request
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let server = NatsServer::start().await.unwrap();
    let app = gateway(&server, &Protection::default()).await;
    for path in ["/healthz", "/no/such/thing", "/v1/orders/not-a-uuid"] {
        let response = app.clone().oneshot(from([127, 0, 0, 1], path)).await.unwrap();
        for (name, value) in SECURITY_HEADERS {
            assert_eq!(
                response.headers().get(name).and_then(|v| v.to_str().ok()),
                Some(value),
                "{path} ({}) lacks {name}",
                response.status()
            );
        }
    }
}

#[tokio::test]
async fn a_client_past_its_rate_gets_429_and_others_do_not() {
    let server = NatsServer::start().await.unwrap();
    // Two at once, then one an hour: the third request is over, whatever
    // the machine's speed.
    let quota =
        Quota::per_hour(std::num::NonZeroU32::new(1).unwrap()).allow_burst(std::num::NonZeroU32::new(2).unwrap());
    let protection = Protection { quota: Some(quota), ..Protection::default() };
    let app = gateway(&server, &protection).await;
    for _ in 0..2 {
        let response = app.clone().oneshot(from([10, 0, 0, 1], "/no/such/thing")).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    let limited = app.clone().oneshot(from([10, 0, 0, 1], "/no/such/thing")).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    assert_eq!(limited.headers().get("x-content-type-options").unwrap(), "nosniff");
    // Not a span, not a trace: nothing ran.
    assert!(limited.headers().get("traceresponse").is_none());
    let body = axum::body::to_bytes(limited.into_body(), 4096).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");

    // Another client has its own bucket.
    let other = app.clone().oneshot(from([10, 0, 0, 2], "/no/such/thing")).await.unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}
