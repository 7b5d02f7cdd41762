//! `tracehop console`: the operator's view in a browser, served by the
//! command itself. It places orders through the gateway like `tracehop
//! order`, draws a trace read from the span feed like `tracehop trace` with
//! the summary of `tracehop explain`, flips scenarios like `tracehop
//! scenario` (and records them as flipped from the console), lists the
//! slowest checkouts like `tracehop slowest`, runs the engine of
//! `tracehop load`, and kills, stops and starts a service like `tracehop
//! kill` and `start`. The live parts (checkouts of the last minute, consumer
//! health as `tracehop status` judges it, the sentinel's alerts, the
//! scenario switches, a load run's progress) are sent as server-sent events
//! and replace themselves on the page with no reload.
//!
//! Server-rendered HTML, one stylesheet and one small hand-written script,
//! both compiled into the binary: nothing is fetched at run time, nothing
//! is built.
//!
//! Modules: this file (the server: routes, the guard, the load run), [`view`]
//! (the markup, pure functions), `live` (the live parts and the tasks that
//! keep them current), [`html`] (the escaper that every outside text passes
//! through, after the project's scrubber of secrets).
//!
//! **Security.** The console binds to 127.0.0.1 unless told otherwise, and
//! an address other than a loopback one needs a token (the command makes
//! one and prints it, or takes one). Every request must name the console's
//! own host (against DNS rebinding); a form post from a page of another
//! origin is refused (against cross-site requests: the console places
//! orders and flips faults). Pages carry a content security policy that
//! allows the console's own script and style only. No card number and no
//! e-mail address is shown: test cards are offered by outcome, and every
//! text from the system is scrubbed. An order is checked by the gateway's
//! own rules (`PlaceOrderRequest::validate`) before it is sent.

pub mod html;
mod live;
pub mod view;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt as _};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracehop_launcher::Launcher;
use tracehop_proto::v1;
use tracehop_scenarios::{Change, Scenario};

use self::live::Sections;
use self::view::OrderForm;
use crate::client::{ItemArg, OrderInput, TestCard, place_order};
use crate::commands::trace::{self as trace_command, Source};
use crate::load::{self, LoadConfig};

/// The default address: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8088";
/// The cookie that holds the token once a browser has shown it.
const TOKEN_COOKIE: &str = "tracehop_console_token";
/// Largest form accepted.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// How long a trace page keeps following a trace that is still growing.
const FOLLOW_TRACE: Duration = Duration::from_secs(60);
/// A trace that has not grown for this long is drawn as complete.
const TRACE_SETTLED: Duration = Duration::from_secs(3);

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The policy of every page: the console's own script and stylesheet, and
/// the inline widths of the waterfall's bars; nothing from elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// What the console needs: where it listens, who may use it, and the parts
/// of the system it reads and drives.
#[derive(Clone, Debug)]
pub struct Config {
    /// The address it is bound to: requests must name it (or, on a loopback
    /// address, `localhost`) as their host.
    pub addr: SocketAddr,
    /// Required of every request when set.
    pub token: Option<String>,
    /// `http://host:port` of the gateway, where orders and load go.
    pub gateway_url: String,
    /// Which services run (pid files), for the services' states.
    pub launcher: Launcher,
    /// Connected as the command.
    pub nats: async_nats::Client,
    /// Recorded with each scenario flip.
    pub changed_by: String,
}

/// Whether `addr` may be served without a token: loopback only.
pub fn needs_token(addr: &SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

/// The hosts a request may name: on a loopback address its own names only,
/// since a page of any site could reach it through a name of its own that
/// resolves to 127.0.0.1 (DNS rebinding); elsewhere any, the token being
/// what keeps others out (such a page never has the console's cookie).
fn allowed_hosts(addr: &SocketAddr) -> Option<Vec<String>> {
    let port = addr.port();
    addr.ip().is_loopback().then(|| {
        vec![addr.to_string(), format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}")]
    })
}

/// A fresh token: 122 random bits from the operating system, as hex.
pub fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[derive(Clone)]
struct Console(Arc<Inner>);

struct Inner {
    config: Config,
    js: jetstream::Context,
    http: reqwest::Client,
    sections: Sections,
    /// The hosts a request may name; any when `None`.
    hosts: Option<Vec<String>>,
    /// The load run going on, if any: how to stop it.
    load: Mutex<Option<oneshot::Sender<()>>>,
    shutdown: CancellationToken,
}

/// Serves the console on `listener` until `shutdown` completes; then every
/// live stream ends and the background tasks stop.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let sections = Sections::default();
    let mut tasks = JoinSet::new();
    live::start(&mut tasks, &sections, &config.nats, &config.launcher, &token);
    if needs_token(&config.addr) && config.token.is_none() {
        anyhow::bail!("the console on {}, beyond this machine, needs a token", config.addr);
    }
    let hosts = allowed_hosts(&config.addr);
    let console = Console(Arc::new(Inner {
        js: jetstream::new(config.nats.clone()),
        http: reqwest::Client::new(),
        sections,
        hosts,
        load: Mutex::new(None),
        shutdown: token.clone(),
        config,
    }));
    let stop = token.clone();
    axum::serve(listener, app(console))
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
        })
        .await
        .context("failed to serve the console")?;
    token.cancel();
    tasks.shutdown().await;
    Ok(())
}

fn app(console: Console) -> Router {
    Router::new()
        .route("/", get(live_page))
        .route("/order", get(order_page).post(order))
        .route("/trace", get(find_trace))
        .route("/trace/{id}", get(trace_page))
        .route("/trace/{id}/events", get(trace_events))
        .route("/scenarios", get(scenarios_page).post(flip))
        .route("/slowest", get(slowest_page))
        .route("/load", get(load_page))
        .route("/load/start", post(start_load))
        .route("/load/stop", post(stop_load))
        .route("/services", post(service_action))
        .route("/events", get(events))
        .route("/assets/console.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }))
        .route("/assets/console.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS) }))
        .fallback(|| async { (StatusCode::NOT_FOUND, Html(view::message_page("Not found", "no such page"))) })
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::from_fn_with_state(console.clone(), guard))
        .with_state(console)
}

// -------------------------------------------------------------------- guard

/// Refuses what the console must not serve, and marks what it serves.
async fn guard(State(console): State<Console>, request: Request, next: Next) -> Response {
    let mut response = match check(&console, &request) {
        None => next.run(request).await,
        Some(response) => response,
    };
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        // The console's own origin on its own requests (so that a form post
        // says where it comes from), nothing to other sites.
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// `None` to go on; else the answer instead: a refusal, or the redirect
/// that sets the token's cookie.
fn check(console: &Console, request: &Request) -> Option<Response> {
    let refuse =
        |status: StatusCode, message: &str| (status, Html(view::message_page("Refused", message))).into_response();
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    if let Some(hosts) = &console.0.hosts
        && !hosts.iter().any(|allowed| allowed.eq_ignore_ascii_case(host))
    {
        return Some(refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "this console answers only to the address it was started on",
        ));
    }
    if request.method() != axum::http::Method::GET && request.method() != axum::http::Method::HEAD {
        // Browsers say where a form post comes from: `Sec-Fetch-Site`, and
        // `Origin` (`null` from some pages). A post from a page of another
        // origin is a cross-site request; a client that is no browser (curl)
        // sends neither.
        let site = headers.get("sec-fetch-site").and_then(|o| o.to_str().ok());
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).filter(|o| *o != "null");
        let same_origin = match site {
            Some(site) => site == "same-origin" || site == "none",
            None => headers.get(header::ORIGIN).is_none() || origin.is_some(),
        } && origin.is_none_or(|origin| origin.eq_ignore_ascii_case(&format!("http://{host}")));
        if !same_origin {
            return Some(refuse(StatusCode::FORBIDDEN, "a form of another site may not post to the console"));
        }
    }
    let Some(token) = &console.0.config.token else { return None };
    if presented_token(headers).is_some_and(|given| same(given, token)) {
        return None;
    }
    // The URL the command printed: remember the token in a cookie, and
    // take it out of the address bar.
    let query_token = request
        .uri()
        .query()
        .and_then(|_| Query::<BTreeMap<String, String>>::try_from_uri(request.uri()).ok())
        .and_then(|Query(q)| q.get("token").cloned());
    if let Some(given) = query_token
        && same(&given, token)
        && request.method() == axum::http::Method::GET
    {
        let mut response = Redirect::to(request.uri().path()).into_response();
        let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        return Some(response);
    }
    Some(refuse(
        StatusCode::UNAUTHORIZED,
        "this console needs its token: open the address that `tracehop console` printed",
    ))
}

/// The token from the cookie or an `Authorization: Bearer` header.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='))
    })
}

/// Compares in time independent of where they differ.
fn same(given: &str, expected: &str) -> bool {
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

// -------------------------------------------------------------------- pages

async fn live_page(State(console): State<Console>) -> Html<String> {
    let sections = &console.0.sections;
    Html(view::live_page(&|name| sections.get(name)))
}

async fn order_page() -> Html<String> {
    Html(view::order_page(&OrderForm::default(), ""))
}

/// Checks the form by the gateway's rules, then places the order through
/// the gateway, as `tracehop order` does.
async fn order(State(console): State<Console>, Form(pairs): Form<Vec<(String, String)>>) -> Html<String> {
    let value = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim().to_string()).unwrap_or_default();
    let skus = pairs.iter().filter(|(k, _)| k == "sku").map(|(_, v)| v.trim().to_string());
    let quantities = pairs.iter().filter(|(k, _)| k == "quantity").map(|(_, v)| v.trim().to_string());
    let form = OrderForm {
        customer: value("customer"),
        premium: value("premium") == "on",
        items: skus.zip(quantities).take(view::ORDER_LINES * 4).collect(),
        card: value("card"),
    };
    let email = value("email");
    let refused = |field: &str, message: &str| Html(view::order_page(&form, &view::order_refused(field, message)));

    let customer = if form.premium { crate::load::PREMIUM_CUSTOMERS[0].to_string() } else { form.customer.clone() };
    let mut items = Vec::new();
    for (sku, quantity) in form.items.iter().filter(|(sku, _)| !sku.is_empty()) {
        let Ok(quantity) = quantity.parse::<i64>() else {
            return refused(&format!("items[{}].quantity", items.len()), "must be a whole number");
        };
        items.push(ItemArg { sku: sku.clone(), quantity });
    }
    let Some(card) = TestCard::parse(&form.card) else { return refused("card", "is not one of the test cards") };
    let input = OrderInput {
        customer,
        items,
        card: card.number().to_string(),
        email: (!email.is_empty()).then_some(email),
        traceparent: None,
    };
    // The gateway's rules, before anything is sent: a quantity that does
    // not fit is 0 here, which the rules refuse as the gateway does.
    let request = v1::PlaceOrderRequest {
        customer_id: input.customer.clone(),
        items: input
            .items
            .iter()
            .map(|i| v1::LineItem { sku: i.sku.clone(), quantity: u32::try_from(i.quantity).unwrap_or(0) })
            .collect(),
        card: Some(v1::Card { number: input.card.clone(), ..Default::default() }),
        email: input.email.clone().unwrap_or_default(),
        idempotency_key: String::new(),
    };
    if let Err(error) = request.validate() {
        return refused(&error.field, &error.message);
    }
    let result = match place_order(&console.0.http, &console.0.config.gateway_url, &input).await {
        Ok(outcome) => view::order_outcome(&outcome),
        Err(error) => view::order_refused("gateway", &format!("{error:#}")),
    };
    Html(view::order_page(&form, &result))
}

#[derive(serde::Deserialize)]
struct TraceQuery {
    #[serde(default)]
    id: String,
}

async fn find_trace(Query(query): Query<TraceQuery>) -> Response {
    match tracehop_spanfeed::normalize_trace_id(query.id.trim()) {
        Ok(id) => Redirect::to(&format!("/trace/{id}")).into_response(),
        Err(_) => bad_trace_id(),
    }
}

fn bad_trace_id() -> Response {
    (StatusCode::BAD_REQUEST, Html(view::message_page("Not a trace id", "a trace id is 32 hexadecimal digits")))
        .into_response()
}

async fn trace_page(State(console): State<Console>, Path(id): Path<String>) -> Response {
    let Ok(trace_id) = tracehop_spanfeed::normalize_trace_id(&id) else { return bad_trace_id() };
    let found = match trace_command::find(&console.0.js, &trace_id, None).await {
        Ok(found) => found,
        Err(error) => {
            let message = format!("the trace cannot be read: {error:#}");
            return (StatusCode::BAD_GATEWAY, Html(view::message_page("Trace", &message))).into_response();
        }
    };
    let explain = explanation_html(&console, &trace_id, &found.spans).await;
    Html(view::trace_page(&trace_id, &view::waterfall(&found.spans, source_label(&found)), &explain)).into_response()
}

fn source_label(found: &trace_command::Found) -> &'static str {
    match found.source {
        Source::Feed => "span feed",
        Source::Kept => "kept-traces store",
        Source::Gone => "span feed (nothing yet)",
    }
}

async fn explanation_html(console: &Console, trace_id: &str, spans: &[tracehop_spanfeed::SpanRecord]) -> String {
    if spans.is_empty() {
        return String::new();
    }
    match crate::commands::explain::explanation(&console.0.js, trace_id, spans).await {
        Ok(Some(explanation)) => view::explanation(&explanation),
        Ok(None) => String::new(),
        Err(error) => view::message_fragment(&format!("no explanation: {error:#}")),
    }
}

/// The trace again each time it grows, until it has settled; then its
/// explanation, and the end of the stream.
async fn trace_events(State(console): State<Console>, Path(id): Path<String>) -> Response {
    let Ok(trace_id) = tracehop_spanfeed::normalize_trace_id(&id) else { return bad_trace_id() };
    struct Follow {
        console: Console,
        trace_id: String,
        started: Instant,
        last_change: Instant,
        count: Option<usize>,
        done: bool,
    }
    let state = Follow {
        console: console.clone(),
        trace_id,
        started: Instant::now(),
        last_change: Instant::now(),
        count: None,
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        loop {
            let found = trace_command::find(&state.console.0.js, &state.trace_id, None).await;
            let spans = found.as_ref().map(|f| f.spans.clone()).unwrap_or_default();
            if state.count != Some(spans.len()) {
                state.count = Some(spans.len());
                state.last_change = Instant::now();
                let label = found.as_ref().map(source_label).unwrap_or("span feed");
                let event = fragment("trace", &view::waterfall(&spans, label));
                return Some((vec![event], state));
            }
            let settled = !spans.is_empty() && state.last_change.elapsed() >= TRACE_SETTLED;
            if settled || state.started.elapsed() >= FOLLOW_TRACE {
                state.done = true;
                let explain = explanation_html(&state.console, &state.trace_id, &spans).await;
                return Some((
                    vec![fragment("explain", &explain), Event::default().event("settled").data("settled")],
                    state,
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let stream =
        stream.flat_map(|events| futures::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>)));
    sse(stream.take_until(console.0.shutdown.clone().cancelled_owned()))
}

fn fragment(target: &str, html: &str) -> Event {
    Event::default().event("fragment").data(format!("{target}\n{html}"))
}

fn sse(stream: impl Stream<Item = Result<Event, std::convert::Infallible>> + Send + 'static) -> Response {
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))).into_response()
}

/// Every live part now, then each part again whenever it changes.
async fn events(State(console): State<Console>) -> Response {
    let receiver = console.0.sections.subscribe();
    let sent: BTreeMap<&'static str, u64> = BTreeMap::new();
    let stream = futures::stream::unfold((receiver, sent, true), |(mut receiver, mut sent, first)| async move {
        if !first && receiver.changed().await.is_err() {
            return None;
        }
        let mut events = Vec::new();
        for (name, part) in receiver.borrow_and_update().iter() {
            if sent.insert(name, part.version) != Some(part.version) {
                events.push(fragment(name, &part.html));
            }
        }
        Some((events, (receiver, sent, false)))
    });
    let stream = stream.flat_map(|events| futures::stream::iter(events.into_iter().map(Ok)));
    sse(stream.take_until(console.0.shutdown.clone().cancelled_owned()))
}

async fn scenarios_page(State(console): State<Console>) -> Html<String> {
    Html(view::scenarios_page(&console.0.sections.get("scenarios"), ""))
}

#[derive(serde::Deserialize)]
struct FlipForm {
    name: String,
    change: String,
    #[serde(default)]
    rate: String,
}

/// Flips a switch as `tracehop scenario` does, recording who and from where.
async fn flip(State(console): State<Console>, Form(form): Form<FlipForm>) -> Response {
    let refused = |message: &str| {
        let notice = view::message_fragment(message);
        (StatusCode::BAD_REQUEST, Html(view::scenarios_page(&console.0.sections.get("scenarios"), &notice)))
            .into_response()
    };
    let Ok(scenario) = Scenario::parse(&form.name) else { return refused("no such scenario") };
    let change = match form.change.as_str() {
        "on" => {
            let rate = match form.rate.trim() {
                "" => None,
                rate => match rate.parse::<f64>() {
                    Ok(rate) if scenario == Scenario::SlowInventory => Some(rate),
                    Ok(_) => return refused("only slow-inventory takes a rate"),
                    Err(_) => return refused("the rate must be a number from 0 to 1"),
                },
            };
            Change::On { rate }
        }
        "off" => Change::Off,
        "fix" => Change::Fix,
        "unfix" => Change::Unfix,
        _ => return refused("the change must be on, off, fix or unfix"),
    };
    let js = &console.0.js;
    if let Err(error) = tracehop_scenarios::apply(js, scenario, change, &console.0.config.changed_by).await {
        return refused(&error.to_string());
    }
    // Shown at once, without waiting for the watch to hear of it.
    if let Ok(all) = tracehop_scenarios::read_all(js).await {
        console.0.sections.set("scenarios", view::scenarios(&all));
    }
    Redirect::to("/scenarios").into_response()
}

#[derive(serde::Deserialize)]
struct SlowestQuery {
    since: Option<String>,
    limit: Option<usize>,
}

async fn slowest_page(State(console): State<Console>, Query(query): Query<SlowestQuery>) -> Response {
    let since_key = query.since.as_deref().unwrap_or("15m");
    let Some((since_key, since_label)) = view::SINCE_CHOICES.into_iter().find(|(key, _)| *key == since_key) else {
        return (StatusCode::BAD_REQUEST, Html(view::message_page("Slowest", "no such window"))).into_response();
    };
    let since = humantime::parse_duration(since_key).ok();
    let limit = query.limit.unwrap_or(20).clamp(1, view::MAX_SLOWEST);
    let label = match since {
        Some(_) => format!("that started within {since_label}"),
        None => "in the span feed and the kept traces".to_string(),
    };
    match crate::commands::slowest::find(&console.0.js, since, limit).await {
        Ok(found) => Html(view::slowest_page(&found.top, &found.durations, &label, since_key, limit)).into_response(),
        Err(error) => {
            let message = format!("the span feed cannot be read: {error:#}");
            (StatusCode::BAD_GATEWAY, Html(view::message_page("Slowest", &message))).into_response()
        }
    }
}

async fn load_page(State(console): State<Console>) -> Html<String> {
    Html(view::load_page(&console.0.sections.get("load")))
}

#[derive(serde::Deserialize)]
struct LoadForm {
    rate: f64,
    seconds: u64,
    #[serde(default)]
    premium_ratio: Option<f64>,
    #[serde(default)]
    decline_ratio: Option<f64>,
    #[serde(default)]
    concurrency_limit: Option<String>,
}

/// Starts a bounded run of the load engine, one at a time; its progress and
/// then its summary are a live part.
async fn start_load(
    State(console): State<Console>,
    form: Result<Form<LoadForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let sections = console.0.sections.clone();
    let Ok(Form(form)) = form else {
        sections.set("load", view::load_failed("the rate and the duration must be numbers"));
        return Redirect::to("/load").into_response();
    };
    let limit = match form.concurrency_limit.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) => Some(limit),
            Err(_) => {
                sections.set("load", view::load_failed("at most in flight must be a whole number"));
                return Redirect::to("/load").into_response();
            }
        },
    };
    let config = LoadConfig {
        concurrency_limit: limit,
        premium_ratio: form.premium_ratio.unwrap_or(0.0),
        decline_ratio: form.decline_ratio.unwrap_or(0.0),
        ..LoadConfig::new(console.0.config.gateway_url.clone(), form.rate, Duration::from_secs(form.seconds))
    };
    let bounded = if !form.rate.is_finite() || form.rate > view::MAX_LOAD_RATE {
        Err(format!("the console runs at most {} checkouts per second", view::MAX_LOAD_RATE))
    } else if !(1..=view::MAX_LOAD_SECONDS).contains(&form.seconds) {
        Err(format!("a run lasts from 1 to {} seconds", view::MAX_LOAD_SECONDS))
    } else {
        config.validate().map_err(|error| error.to_string())
    };
    if let Err(message) = bounded {
        sections.set("load", view::load_failed(&message));
        return Redirect::to("/load").into_response();
    }
    let (stop, stopped) = oneshot::channel();
    {
        let mut running = console.0.load.lock().expect("load lock");
        if running.is_some() {
            return Redirect::to("/load").into_response();
        }
        *running = Some(stop);
    }
    let js = console.0.js.clone();
    let shutdown = console.0.shutdown.clone();
    let started = format!(
        "{} checkouts/s for {}, started at {}",
        config.rate,
        humantime::format_duration(config.duration),
        crate::render::time_of_day(tracehop_telemetry::now_unix_ms().max(0) as u64 * 1_000_000)
    );
    sections.set("load", view::load_starting(&started));
    tokio::spawn(async move {
        let progress_sections = sections.clone();
        let run = load::run_until(
            &config,
            Some(&js),
            |progress| progress_sections.set("load", view::load_progress(progress)),
            async move {
                let _ = stopped.await;
            },
        );
        let outcome = tokio::select! {
            () = shutdown.cancelled() => None,
            report = run => Some(report),
        };
        match outcome {
            Some(Ok(report)) => sections.set("load", view::load_report(&report, &started)),
            Some(Err(error)) => sections.set("load", view::load_failed(&error.to_string())),
            None => {}
        }
        console.0.load.lock().expect("load lock").take();
    });
    Redirect::to("/load").into_response()
}

async fn stop_load(State(console): State<Console>) -> Redirect {
    if let Some(stop) = console.0.load.lock().expect("load lock").take() {
        let _ = stop.send(());
    }
    Redirect::to("/load")
}

#[derive(serde::Deserialize)]
struct ServiceForm {
    name: String,
    action: String,
}

/// Kills, stops or starts a service as `tracehop kill` and `start` do; the
/// outcome is a live part of the Live page.
async fn service_action(State(console): State<Console>, Form(form): Form<ServiceForm>) -> Response {
    let sections = console.0.sections.clone();
    let service = match console.0.config.launcher.resolve(&form.name) {
        Ok(_) => form.name.clone(),
        Err(error) => {
            sections.set("service-action", view::message_fragment(&error.to_string()));
            return Redirect::to("/").into_response();
        }
    };
    let (doing, term) = match form.action.as_str() {
        "kill" => ("killing", false),
        "term" => ("stopping", true),
        "start" => ("starting", false),
        _ => {
            sections.set("service-action", view::message_fragment("the action must be kill, term or start"));
            return Redirect::to("/").into_response();
        }
    };
    sections.set("service-action", view::service_action(&format!("{doing} {service}…"), true));
    let start = form.action == "start";
    tokio::spawn(async move {
        let config = &console.0.config;
        let outcome = if start {
            let gateway_addr = config.gateway_url.trim_start_matches("http://");
            match crate::commands::start::start(&config.launcher, &config.nats, gateway_addr, &service).await {
                Ok(started) => {
                    let lines: Vec<String> = started.iter().map(|s| s.describe()).collect();
                    // The services outlive the console; while they run, the
                    // console is their parent and reaps them when they exit.
                    for process in started {
                        let mut child = process.child;
                        tokio::task::spawn_blocking(move || child.wait());
                    }
                    Ok(lines.join("; "))
                }
                Err(error) => Err(error),
            }
        } else {
            crate::commands::kill::stop(&config.launcher, &service, term)
                .await
                .map(|stopped| stopped.iter().map(|s| s.describe()).collect::<Vec<_>>().join("; "))
        };
        let html = match outcome {
            Ok(line) => view::service_action(&line, true),
            Err(error) => view::service_action(&format!("{error:#}"), false),
        };
        console.0.sections.set("service-action", html);
    });
    Redirect::to("/").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abd", "abc"));
        assert!(!same("ab", "abc"));
        assert_eq!(new_token().len(), 32);
        assert_ne!(new_token(), new_token());
    }

    #[test]
    fn only_loopback_goes_without_a_token() {
        assert!(!needs_token(&"127.0.0.1:8088".parse().unwrap()));
        assert!(!needs_token(&"[::1]:8088".parse().unwrap()));
        assert!(needs_token(&"0.0.0.0:8088".parse().unwrap()));
        assert!(needs_token(&"192.168.1.20:8088".parse().unwrap()));
    }

    #[test]
    fn loopback_answers_to_its_own_names_only() {
        let hosts = allowed_hosts(&"127.0.0.1:8088".parse().unwrap()).unwrap();
        assert!(hosts.contains(&"localhost:8088".to_string()) && hosts.contains(&"127.0.0.1:8088".to_string()));
        assert!(!hosts.iter().any(|h| h.ends_with(":80")));
        assert_eq!(allowed_hosts(&"0.0.0.0:8088".parse().unwrap()), None);
    }

    #[test]
    fn the_token_comes_from_a_cookie_or_a_bearer_header() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=b; tracehop_console_token=xyz"));
        assert_eq!(presented_token(&headers), Some("xyz"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer qrs"));
        assert_eq!(presented_token(&headers), Some("qrs"));
    }
}
