//! The gateway's protections against its clients, as layers around the
//! application ([`protect`]), outside the routes and their tracing:
//!
//! - a rate limit per client (its IP address): `GATEWAY_RATE_LIMIT_PER_SECOND`
//!   requests a second, bursts of `GATEWAY_RATE_LIMIT_BURST`; beyond, 429
//!   with `Retry-After`, answered before anything else runs, so a flood
//!   costs no span, no NATS request, no database work;
//! - a deadline for the request body (`GATEWAY_BODY_TIMEOUT_MS`): a client
//!   that trickles its body is cut off (the whole request already has the
//!   checkout deadline, and bodies a size limit, in [`crate::app`]);
//! - security headers on every response: the API returns JSON only, to be
//!   cached nowhere, framed nowhere, sniffed as nothing else.
//!
//! The limiter is governor's GCRA, keyed by IP; only the key extraction and
//! the 429 are ours, because a request without a peer address (the tests'
//! `oneshot`) must share one bucket rather than fail as tower-governor's
//! extractor does. `X-Forwarded-For` is not trusted: behind a proxy, every
//! client is the proxy, and the limit should then be the proxy's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// How the gateway protects itself.
#[derive(Clone, Debug)]
pub struct Protection {
    /// How many requests each client may make, at what rate and in what
    /// bursts; `None`: no limit.
    pub quota: Option<Quota>,
    /// How long a client has to send its whole body.
    pub body_timeout: Duration,
}

impl Default for Protection {
    /// 500 requests a second per client, bursts of 1,000: far above what a
    /// person or the project's own load tool (200/s measured) sends from one
    /// address, far below a flood. 5 s for a body of at most 64 KiB.
    fn default() -> Self {
        Self { quota: Self::quota(500, 1000), body_timeout: Duration::from_secs(5) }
    }
}

impl Protection {
    /// `per_second` requests a second in bursts of `burst`; none when
    /// `per_second` is 0.
    pub fn quota(per_second: u32, burst: u32) -> Option<Quota> {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        NonZeroU32::new(per_second).map(|rate| Quota::per_second(rate).allow_burst(burst))
    }
}

/// The headers every response carries.
pub const SECURITY_HEADERS: [(&str, &str); 6] = [
    ("x-content-type-options", "nosniff"),
    ("cache-control", "no-store"),
    ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-resource-policy", "same-origin"),
];

/// `app` behind the rate limit, the body deadline and the security headers.
pub fn protect(app: Router, protection: &Protection) -> Router {
    let mut app = app.layer(RequestBodyTimeoutLayer::new(protection.body_timeout));
    if let Some(quota) = protection.quota {
        let limiter = Arc::new(Limiter { keyed: DefaultKeyedRateLimiter::keyed(quota), checks: AtomicU64::new(0) });
        app = app.layer(axum::middleware::from_fn(move |request, next| limit(limiter.clone(), request, next)));
    }
    for (name, value) in SECURITY_HEADERS {
        app = app
            .layer(SetResponseHeaderLayer::overriding(HeaderName::from_static(name), HeaderValue::from_static(value)));
    }
    app
}

struct Limiter {
    keyed: DefaultKeyedRateLimiter<IpAddr>,
    /// Requests seen, to forget idle clients now and then.
    checks: AtomicU64,
}

/// The clients forgotten every this many requests, so that the table of
/// buckets holds only clients that are still sending.
const PRUNE_EVERY: u64 = 4096;

async fn limit(limiter: Arc<Limiter>, request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(address)| address.ip());
    if limiter.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
        limiter.keyed.retain_recent();
    }
    match limiter.keyed.check_key(&client) {
        Ok(()) => next.run(request).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            too_many_requests(wait)
        }
    }
}

fn too_many_requests(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let body = serde_json::json!({
        "error": {"code": "rate_limited", "message": format!("too many requests; retry after {seconds} s")},
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}
