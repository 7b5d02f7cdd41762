//! The load engine behind `tracehop load`: checkouts over real HTTP at a
//! constant arrival rate, as a library (a function taking a [`LoadConfig`] and
//! a progress callback, returning a [`LoadReport`]) so that other commands (a
//! benchmark, a console) drive the same engine; printing is the command's.
//!
//! **An open model.** Request `i` is due at `start + i / rate` and is sent
//! then, whether or not earlier requests have answered: a slow system cannot
//! slow the load down and hide its queue (coordinated omission). Latency is
//! measured from the time a request was *due*, not from when it went out, so
//! that a late send (the generator itself behind) still counts.
//!
//! With a concurrency limit, a request due while the limit is reached is not
//! sent at all: it is counted as `limited`, never queued to go out late.
//!
//! **Drain.** After the last answer the engine polls the ORDERS stream and
//! every expected durable consumer from the messaging crate's topology until
//! the stream holds at least one event per confirmed or declined order of
//! the run and every consumer has nothing pending and nothing awaiting its
//! ack, on two polls in a row with nothing new in between; `drain` is how
//! long after the last answer the first of them was.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};
use tracehop_messaging::topology::{ORDERS_STREAM as ORDERS, expected_consumers};

use crate::client::{ItemArg, OrderInput, TestCard, place_order};

/// The declined test card (see the README's test cards).
pub const DECLINED_CARD: &str = TestCard::Declined.number();
/// A card that is approved.
pub const APPROVED_CARD: &str = TestCard::Approved.number();
/// The premium customers seeded by the loyalty migration.
pub const PREMIUM_CUSTOMERS: [&str; 2] = ["premium-pat", "premium-sam"];
/// SKUs with plenty of stock, for the orders to spread over.
const SKUS: [&str; 6] = ["CB-004", "KB-001", "MS-002", "HS-005", "CB-004", "LMP-006"];
/// Items in a premium order.
const PREMIUM_ITEMS: usize = 4;
/// Ordinary customers, spread so that loyalty's rows are not all one.
const CUSTOMERS: u64 = 64;
/// Highest latency the histogram holds, in microseconds (an hour).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// How often the progress callback is called.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// The window of the "current" p99.
const RECENT_WINDOW: Duration = Duration::from_secs(2);
/// How often the drain is checked.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// `http://host:port` of the gateway.
    pub gateway_url: String,
    /// Requests per second.
    pub rate: f64,
    /// How long requests keep starting.
    pub duration: Duration,
    /// Most requests in flight at once; `None` for no limit.
    pub concurrency_limit: Option<usize>,
    /// Share of orders (0 to 1) placed by a premium customer, with several items.
    pub premium_ratio: f64,
    /// Share of orders (0 to 1) paid with the declined test card.
    pub decline_ratio: f64,
    /// A request without an answer after this long counts as a timeout.
    pub request_timeout: Duration,
    /// Longest wait for the consumers to drain after the last answer.
    pub drain_timeout: Duration,
}

impl LoadConfig {
    /// The defaults for everything but where, how fast and how long.
    pub fn new(gateway_url: impl Into<String>, rate: f64, duration: Duration) -> Self {
        Self {
            gateway_url: gateway_url.into(),
            rate,
            duration,
            concurrency_limit: None,
            premium_ratio: 0.0,
            decline_ratio: 0.0,
            request_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(60),
        }
    }

    /// How many requests the run sends: `rate × duration`, rounded down.
    pub fn planned(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).floor() as u64
    }

    /// Whether the run can go: a positive rate, ratios from 0 to 1, at
    /// least one request and not absurdly many.
    pub fn validate(&self) -> Result<(), LoadError> {
        let invalid = |reason: String| Err(LoadError::InvalidConfig(reason));
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return invalid(format!("rate must be a positive number of requests per second, not {}", self.rate));
        }
        for (name, ratio) in [("premium ratio", self.premium_ratio), ("decline ratio", self.decline_ratio)] {
            if !(0.0..=1.0).contains(&ratio) {
                return invalid(format!("{name} must be between 0 and 1, not {ratio}"));
            }
        }
        if self.concurrency_limit == Some(0) {
            return invalid("concurrency limit must be at least 1".to_string());
        }
        if self.planned() == 0 {
            return invalid(format!(
                "{} requests/s for {} is less than one request",
                self.rate,
                humantime::format_duration(self.duration)
            ));
        }
        if self.planned() > 10_000_000 {
            return invalid(format!("{} requests is more than this tool sends in one run", self.planned()));
        }
        Ok(())
    }

    /// The `n`th order of the run: every order is of the same shape, a
    /// premium or declined one where the ratios say, spread evenly over the
    /// run (not at random, so that a run is the same every time).
    pub fn order(&self, n: u64) -> OrderInput {
        let premium = spread(n, self.premium_ratio, 0.0);
        let declined = spread(n, self.decline_ratio, 0.5);
        let sku = |k: u64| SKUS[(k % SKUS.len() as u64) as usize].to_string();
        let (customer, items) = if premium {
            let customer = PREMIUM_CUSTOMERS[(n % 2) as usize].to_string();
            // Distinct SKUs: inventory refuses one that appears twice.
            let mut items: Vec<ItemArg> = Vec::new();
            let mut k = n;
            while items.len() < PREMIUM_ITEMS {
                let candidate = sku(k);
                if !items.iter().any(|item| item.sku == candidate) {
                    items.push(ItemArg { sku: candidate, quantity: 1 });
                }
                k += 1;
            }
            (customer, items)
        } else {
            (format!("load-{}", n % CUSTOMERS), vec![ItemArg { sku: sku(n), quantity: 1 }])
        };
        OrderInput {
            customer,
            items,
            card: if declined { DECLINED_CARD } else { APPROVED_CARD }.to_string(),
            email: Some("load@example.com".to_string()),
            traceparent: None,
        }
    }
}

/// True for about `ratio` of all `n`, evenly spaced; `phase` shifts where.
fn spread(n: u64, ratio: f64, phase: f64) -> bool {
    ((n + 1) as f64 * ratio + phase).floor() > (n as f64 * ratio + phase).floor()
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    InvalidConfig(String),
    #[error("failed to build the HTTP client: {0}")]
    Client(String),
}

/// What became of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Answer {
    /// 201: the order was confirmed.
    Created,
    /// 402: the card was declined.
    Declined,
    /// 409: out of stock.
    Conflict,
    /// 503: a dependency was unavailable.
    Unavailable,
    /// The gateway answered 504, or no answer came within the request timeout.
    Timeout,
    /// No connection, or it broke before an answer.
    ConnectionError,
    /// Any other status.
    Other,
    /// Not sent: the concurrency limit was reached when it was due.
    Limited,
}

impl Answer {
    pub const ALL: [Answer; 8] = [
        Self::Created,
        Self::Declined,
        Self::Conflict,
        Self::Unavailable,
        Self::Timeout,
        Self::ConnectionError,
        Self::Other,
        Self::Limited,
    ];

    /// The key in `answers`.
    pub fn key(self) -> &'static str {
        match self {
            Self::Created => "201",
            Self::Declined => "402",
            Self::Conflict => "409",
            Self::Unavailable => "503",
            Self::Timeout => "timeout",
            Self::ConnectionError => "connection_error",
            Self::Other => "other",
            Self::Limited => "limited",
        }
    }

    /// Of an HTTP status the gateway answered.
    pub fn of_status(status: u16) -> Self {
        match status {
            201 => Self::Created,
            402 => Self::Declined,
            409 => Self::Conflict,
            503 => Self::Unavailable,
            504 => Self::Timeout,
            _ => Self::Other,
        }
    }

    /// Of a request that got no HTTP answer.
    fn of_error(error: &anyhow::Error) -> Self {
        match error.downcast_ref::<reqwest::Error>() {
            Some(error) if error.is_timeout() => Self::Timeout,
            Some(error) if error.is_connect() || error.is_request() => Self::ConnectionError,
            Some(_) => Self::Other,
            None => Self::ConnectionError,
        }
    }
}

/// Counts by [`Answer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answers([u64; Answer::ALL.len()]);

impl Answers {
    pub fn get(&self, answer: Answer) -> u64 {
        self.0[answer as usize]
    }

    pub fn add(&mut self, answer: Answer) {
        self.0[answer as usize] += 1;
    }

    /// Every kind with its count, zeros included, in [`Answer::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Answer, u64)> + '_ {
        Answer::ALL.into_iter().map(|answer| (answer, self.get(answer)))
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Requests are still starting.
    Sending,
    /// All have started; waiting for the last answers.
    Answering,
    /// All answered; waiting for the consumers to process every event.
    Draining,
}

/// A snapshot for the progress callback.
#[derive(Clone, Debug)]
pub struct Progress {
    pub phase: Phase,
    pub elapsed: Duration,
    pub planned: u64,
    /// Requests due so far (sent or limited).
    pub sent: u64,
    pub in_flight: u64,
    pub answers: Answers,
    /// Requests put on the wire per second so far.
    pub achieved_rate: f64,
    /// p99 latency of the answers of the last couple of seconds, in ms.
    pub recent_p99_ms: Option<f64>,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Option<Self> {
        let ms = |us: u64| us as f64 / 1000.0;
        (!histogram.is_empty()).then(|| Self {
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        })
    }
}

/// How the drain went.
#[derive(Clone, Debug, PartialEq)]
pub enum Drain {
    /// Every consumer had processed every event this long after the last answer.
    Drained(Duration),
    /// Still not drained when the wait ran out.
    TimedOut(Duration),
    /// Not measured (no NATS given, or the stream could not be read), and why.
    NotMeasured(String),
}

impl Drain {
    /// The drain time, when there is one.
    pub fn drained(&self) -> Option<Duration> {
        match self {
            Self::Drained(duration) => Some(*duration),
            _ => None,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub config: LoadConfig,
    /// Stopped before every planned request was due (see [`run_until`]).
    pub stopped: bool,
    /// Requests due during the run: those sent plus those limited. Equal to
    /// the sum of `answers`.
    pub sent: u64,
    pub answers: Answers,
    /// Requests put on the wire per second, over the run's planned duration
    /// (or longer, when the generator fell behind).
    pub achieved_rate: f64,
    /// Every answered request (each kind but `limited`), from its due time.
    pub histogram: Histogram<u64>,
    pub latency: Option<Latency>,
    pub drain: Drain,
    /// From the first due time until the last request started.
    pub send_time: Duration,
    /// Until the last answer.
    pub answer_time: Duration,
    /// Most requests in flight at once.
    pub max_in_flight: u64,
}

/// Counters shared by the request tasks; held for a few instructions, never
/// across an await.
struct Stats {
    answers: Answers,
    sent: u64,
    in_flight: u64,
    max_in_flight: u64,
    total: Histogram<u64>,
    recent: Histogram<u64>,
    /// The previous window, reported while the current one is young.
    previous_p99_us: Option<u64>,
    recent_since: Instant,
}

impl Stats {
    fn new() -> Self {
        let histogram = || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds");
        Self {
            answers: Answers::default(),
            sent: 0,
            in_flight: 0,
            max_in_flight: 0,
            total: histogram(),
            recent: histogram(),
            previous_p99_us: None,
            recent_since: Instant::now(),
        }
    }

    fn record(&mut self, answer: Answer, latency: Duration) {
        self.answers.add(answer);
        self.in_flight -= 1;
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.total.saturating_record(us);
        self.recent.saturating_record(us);
    }

    fn recent_p99_ms(&mut self) -> Option<f64> {
        if self.recent_since.elapsed() >= RECENT_WINDOW {
            self.previous_p99_us = (!self.recent.is_empty()).then(|| self.recent.value_at_quantile(0.99));
            self.recent.reset();
            self.recent_since = Instant::now();
        }
        let current = (!self.recent.is_empty()).then(|| self.recent.value_at_quantile(0.99));
        let us = match (current, self.previous_p99_us) {
            (Some(current), Some(previous)) if self.recent_since.elapsed() < RECENT_WINDOW / 2 => current.max(previous),
            (Some(current), _) => current,
            (None, previous) => previous?,
        };
        Some(us as f64 / 1000.0)
    }
}

/// Runs the load described by `config`, calling `progress` about four times
/// a second. With `js`, the drain of the ORDERS consumers is measured after
/// the last answer; without it, the report says it was not.
pub async fn run(
    config: &LoadConfig,
    js: Option<&jetstream::Context>,
    progress: impl FnMut(&Progress),
) -> Result<LoadReport, LoadError> {
    run_until(config, js, progress, std::future::pending()).await
}

/// [`run`], stopping early when `stop` completes: no request is started
/// after that, those in flight are answered and counted, and the drain is
/// measured as usual; the report's `sent` is then below the planned count.
pub async fn run_until(
    config: &LoadConfig,
    js: Option<&jetstream::Context>,
    mut progress: impl FnMut(&Progress),
    stop: impl std::future::Future<Output = ()>,
) -> Result<LoadReport, LoadError> {
    let stop = std::pin::pin!(stop);
    let mut stop = futures::FutureExt::fuse(stop);
    let mut stopped = false;
    config.validate()?;
    let http = reqwest::Client::builder()
        .timeout(config.request_timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| LoadError::Client(e.to_string()))?;
    let planned = config.planned();
    // Where the stream was before the run: the drain waits for the run's events.
    let baseline = match js {
        Some(js) => orders_last_sequence(js).await.ok(),
        None => None,
    };

    let stats = Arc::new(Mutex::new(Stats::new()));
    let limiter = config.concurrency_limit.map(|limit| Arc::new(Semaphore::new(limit)));
    let interval = Duration::from_secs_f64(1.0 / config.rate);
    let start = Instant::now() + Duration::from_millis(5);
    let mut next_progress = start + PROGRESS_EVERY;
    let mut tasks = JoinSet::new();
    let snapshot = |phase: Phase, stats: &Mutex<Stats>| {
        let mut stats = stats.lock().expect("stats lock");
        let elapsed = start.elapsed();
        let on_wire = stats.sent - stats.answers.get(Answer::Limited);
        Progress {
            phase,
            elapsed,
            planned,
            sent: stats.sent,
            in_flight: stats.in_flight,
            answers: stats.answers,
            achieved_rate: if elapsed.is_zero() { 0.0 } else { on_wire as f64 / elapsed.as_secs_f64() },
            recent_p99_ms: stats.recent_p99_ms(),
        }
    };

    for n in 0..planned {
        let due = start + interval.mul_f64(n as f64);
        // Reported here too, so that a generator that has fallen behind (and
        // never sleeps) still shows where it is.
        loop {
            if Instant::now() >= next_progress {
                progress(&snapshot(Phase::Sending, &stats));
                next_progress = Instant::now() + PROGRESS_EVERY;
            }
            if Instant::now() >= due {
                break;
            }
            tokio::select! {
                () = &mut stop => stopped = true,
                () = sleep_until(due.min(next_progress)) => {}
            }
            if stopped {
                break;
            }
        }
        if stopped {
            break;
        }
        while tasks.try_join_next().is_some() {}
        let permit = match &limiter {
            Some(limiter) => match limiter.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let mut stats = stats.lock().expect("stats lock");
                    stats.sent += 1;
                    stats.answers.add(Answer::Limited);
                    continue;
                }
            },
            None => None,
        };
        {
            let mut stats = stats.lock().expect("stats lock");
            stats.sent += 1;
            stats.in_flight += 1;
            stats.max_in_flight = stats.max_in_flight.max(stats.in_flight);
        }
        let (http, url, order, stats) = (http.clone(), config.gateway_url.clone(), config.order(n), stats.clone());
        tasks.spawn(async move {
            let answer = match place_order(&http, &url, &order).await {
                Ok(outcome) => Answer::of_status(outcome.http_status),
                Err(error) => Answer::of_error(&error),
            };
            // From when it was due, not from when it went out.
            let latency = due.elapsed();
            stats.lock().expect("stats lock").record(answer, latency);
            drop(permit);
        });
    }
    let send_time = start.elapsed();

    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            _ = sleep_until(next_progress) => {
                progress(&snapshot(Phase::Answering, &stats));
                next_progress = Instant::now() + PROGRESS_EVERY;
            }
        }
    }
    let answer_time = start.elapsed();
    let answers = stats.lock().expect("stats lock").answers;

    let drain = match (js, baseline) {
        (None, _) => Drain::NotMeasured("no NATS connection".to_string()),
        (Some(_), None) => Drain::NotMeasured(format!("the {} stream could not be read", ORDERS)),
        (Some(js), Some(baseline)) => {
            let expected = baseline + answers.get(Answer::Created) + answers.get(Answer::Declined);
            let mut check = Box::pin(wait_for_drain(js, expected, config.drain_timeout));
            loop {
                tokio::select! {
                    outcome = &mut check => break match outcome {
                        Ok(Some(after)) => Drain::Drained(after),
                        Ok(None) => Drain::TimedOut(config.drain_timeout),
                        Err(why) => Drain::NotMeasured(why),
                    },
                    _ = sleep_until(next_progress) => {
                        progress(&snapshot(Phase::Draining, &stats));
                        next_progress = Instant::now() + PROGRESS_EVERY;
                    }
                }
            }
        }
    };

    let stats = stats.lock().expect("stats lock");
    let on_wire = stats.sent - stats.answers.get(Answer::Limited);
    // A run stopped early sent over the time it ran, not the time planned.
    let rate_window = if stopped { send_time.max(Duration::from_millis(1)) } else { send_time.max(config.duration) };
    Ok(LoadReport {
        config: config.clone(),
        stopped,
        sent: stats.sent,
        answers: stats.answers,
        achieved_rate: on_wire as f64 / rate_window.as_secs_f64(),
        latency: Latency::of(&stats.total),
        histogram: stats.total.clone(),
        drain,
        send_time,
        answer_time,
        max_in_flight: stats.max_in_flight,
    })
}

async fn orders_last_sequence(js: &jetstream::Context) -> Result<u64, String> {
    let mut stream = js.get_stream(ORDERS).await.map_err(|e| e.to_string())?;
    Ok(stream.info().await.map_err(|e| e.to_string())?.state.last_sequence)
}

/// Polls until the stream's last sequence reaches `expected_last` and every
/// expected consumer of ORDERS has no pending and no ack-pending message, on
/// two polls in a row (an event of an order the run cannot count, a 503 that
/// failed an order, may still be on its way): `Ok(Some(after))` with the time
/// of the first of the two; `Ok(None)` when `deadline` passes first; `Err`
/// when the stream or a consumer cannot be read at all.
async fn wait_for_drain(
    js: &jetstream::Context,
    expected_last: u64,
    deadline: Duration,
) -> Result<Option<Duration>, String> {
    let started = Instant::now();
    let consumers: Vec<_> = expected_consumers().into_iter().filter(|spec| spec.stream == ORDERS).collect();
    let stream = js.get_stream(ORDERS).await.map_err(|e| format!("the {ORDERS} stream could not be read: {e}"))?;
    let mut drained_since: Option<(Duration, u64)> = None;
    loop {
        let last = orders_last_sequence(js).await?;
        let mut done = last >= expected_last;
        for spec in &consumers {
            if !done {
                break;
            }
            let info = stream
                .consumer_info(spec.durable)
                .await
                .map_err(|e| format!("consumer {} could not be read: {e}", spec.durable))?;
            done = info.num_pending == 0 && info.num_ack_pending == 0;
        }
        drained_since = match (done, drained_since) {
            // Confirmed: nothing new arrived in between.
            (true, Some((at, seen))) if seen == last => return Ok(Some(at)),
            (true, _) => Some((started.elapsed(), last)),
            (false, _) => None,
        };
        if started.elapsed() >= deadline {
            return Ok(None);
        }
        sleep(DRAIN_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_spread_evenly_and_exactly() {
        let mut config = LoadConfig::new("http://127.0.0.1:1", 10.0, Duration::from_secs(10));
        config.premium_ratio = 0.2;
        config.decline_ratio = 0.1;
        let orders: Vec<OrderInput> = (0..100).map(|n| config.order(n)).collect();
        let premium = orders.iter().filter(|o| PREMIUM_CUSTOMERS.contains(&o.customer.as_str())).count();
        let declined = orders.iter().filter(|o| o.card == DECLINED_CARD).count();
        assert_eq!((premium, declined), (20, 10));
        for order in &orders {
            let premium = PREMIUM_CUSTOMERS.contains(&order.customer.as_str());
            assert_eq!(order.items.len(), if premium { PREMIUM_ITEMS } else { 1 });
            let mut skus: Vec<&str> = order.items.iter().map(|i| i.sku.as_str()).collect();
            skus.sort_unstable();
            skus.dedup();
            assert_eq!(skus.len(), order.items.len(), "no SKU twice in one order: {order:?}");
        }
        config.premium_ratio = 0.0;
        config.decline_ratio = 1.0;
        assert!((0..50).all(|n| config.order(n).card == DECLINED_CARD && config.order(n).items.len() == 1));
    }

    #[test]
    fn invalid_configs_are_refused_with_a_reason() {
        let base = LoadConfig::new("http://127.0.0.1:1", 10.0, Duration::from_secs(1));
        assert!(base.validate().is_ok());
        assert_eq!(base.planned(), 10);
        let cases = [
            LoadConfig { rate: 0.0, ..base.clone() },
            LoadConfig { rate: f64::NAN, ..base.clone() },
            LoadConfig { decline_ratio: 1.5, ..base.clone() },
            LoadConfig { premium_ratio: -0.1, ..base.clone() },
            LoadConfig { concurrency_limit: Some(0), ..base.clone() },
            LoadConfig { duration: Duration::from_millis(50), ..base.clone() },
        ];
        for config in cases {
            assert!(matches!(config.validate(), Err(LoadError::InvalidConfig(_))), "{config:?}");
        }
    }

    #[test]
    fn statuses_map_to_answer_kinds() {
        let kinds: Vec<&str> = [201, 402, 409, 503, 504, 400, 500].map(Answer::of_status).map(Answer::key).to_vec();
        assert_eq!(kinds, ["201", "402", "409", "503", "timeout", "other", "other"]);
        assert_eq!(Answer::of_error(&anyhow::anyhow!("whatever")), Answer::ConnectionError);
    }

    /// Nothing listens on the port: every request is a connection error, the
    /// schedule is kept anyway, and the counts add up.
    #[tokio::test]
    async fn a_run_against_nothing_counts_connection_errors_on_schedule() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = LoadConfig::new(format!("http://127.0.0.1:{port}"), 40.0, Duration::from_millis(500));
        let mut calls = 0;
        let report = run(&config, None, |_| calls += 1).await.unwrap();
        assert_eq!(report.sent, 20);
        assert_eq!(report.answers.get(Answer::ConnectionError), 20);
        assert_eq!(report.answers.total(), report.sent);
        assert!(report.send_time < Duration::from_millis(700), "{:?}", report.send_time);
        assert!((report.achieved_rate - 40.0).abs() < 4.0, "{}", report.achieved_rate);
        assert!(calls >= 1, "progress was reported");
        assert!(matches!(report.drain, Drain::NotMeasured(_)));
        assert_eq!(report.histogram.len(), 20);
    }

    /// A server that never answers, behind a limit of 2: the requests due
    /// while two are waiting are not sent but counted as limited.
    #[tokio::test]
    async fn the_concurrency_limit_counts_what_it_holds_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let mut config = LoadConfig::new(format!("http://127.0.0.1:{port}"), 20.0, Duration::from_millis(500));
        config.concurrency_limit = Some(2);
        config.request_timeout = Duration::from_millis(300);
        let report = run(&config, None, |_| {}).await.unwrap();
        held.abort();
        assert_eq!(report.sent, 10);
        assert_eq!(report.answers.total(), 10);
        assert!(report.max_in_flight <= 2, "{}", report.max_in_flight);
        let (timeouts, limited) = (report.answers.get(Answer::Timeout), report.answers.get(Answer::Limited));
        assert_eq!(timeouts + limited, 10, "{:?}", report.answers);
        assert!(limited >= 4 && timeouts >= 2, "{:?}", report.answers);
        // A timed-out request's latency is at least the timeout.
        assert!(report.latency.unwrap().p50 >= 300.0, "{:?}", report.latency);
    }
}
