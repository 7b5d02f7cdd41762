//! What every tracehop service process shares: the base configuration read
//! from the environment, the shutdown signal, and [`run`], the life cycle of
//! a service: connect to NATS, start telemetry, run the service until
//! SIGTERM or Ctrl-C, let it drain, and flush telemetry last.
//!
//! A service's `main` is three lines: read its config, then
//! `tracehop_service::run(name, version, &config.base, |runtime| service::run(config, runtime))`.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracehop_telemetry::TelemetryConfig;

/// The default NATS server on a developer machine.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// The default database on a developer machine.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tracehop";

/// Settings every service has. Read from the environment here and nowhere
/// else; the standard `OTEL_*` variables keep their standard meaning.
#[derive(Clone, Debug)]
pub struct BaseConfig {
    /// `NATS_URL`.
    pub nats_url: String,
    /// `TRACEHOP_NATS_KEYS`: the folder of NATS keys, in which this service
    /// reads `<service>.nk`; unset: `NATS_NKEY`, or no credentials.
    pub nats_keys: Option<std::path::PathBuf>,
    /// `NATS_NKEY`: this service's nkey seed, for deployments that keep
    /// secrets in the environment. Never printed.
    pub nats_nkey: Option<tracehop_messaging::access::Seed>,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: metrics and logs go there when set,
    /// and spans too unless the keeper exports them (`tail_sampling`).
    pub otlp_endpoint: Option<String>,
    /// `TRACEHOP_ENVIRONMENT` (default `development`): the resource's
    /// `deployment.environment.name`.
    pub environment: String,
    /// `RUST_LOG`.
    pub log_filter: String,
    /// `TRACEHOP_SPAN_FEED` (default on): publish spans to the span feed.
    pub span_feed: bool,
    /// `TRACEHOP_INSTANCE`: which copy of the service this process is
    /// (`order-2`), set by the launcher when several run; unset: the
    /// service's name.
    pub instance: Option<String>,
    /// `TRACEHOP_INSTANCES` (1): how many copies of this service run, set
    /// by the launcher; a pool sized for the whole service is shared among
    /// them ([`BaseConfig::pool_share`]).
    pub copies: u32,
    /// `TRACEHOP_TAIL_SAMPLING` (default on): the keeper decides, per whole
    /// trace, what reaches `OTEL_EXPORTER_OTLP_ENDPOINT`, and services export
    /// nothing there themselves (so no span arrives twice). Off: each service
    /// exports its own spans there, sampled at the head by `OTEL_TRACES_SAMPLER`.
    pub tail_sampling: bool,
}

impl BaseConfig {
    /// Reads the base settings, with defaults that work on a developer machine.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            nats_url: env_or("NATS_URL", DEFAULT_NATS_URL.to_string())?,
            nats_keys: std::env::var_os("TRACEHOP_NATS_KEYS").filter(|v| !v.is_empty()).map(Into::into),
            nats_nkey: std::env::var("NATS_NKEY")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(tracehop_messaging::access::Seed),
            database_url: env_or("DATABASE_URL", DEFAULT_DATABASE_URL.to_string())?,
            otlp_endpoint: std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|v| !v.trim().is_empty()),
            environment: env_or("TRACEHOP_ENVIRONMENT", "development".to_string())?,
            log_filter: env_or("RUST_LOG", "info".to_string())?,
            span_feed: env_or("TRACEHOP_SPAN_FEED", true)?,
            tail_sampling: env_or("TRACEHOP_TAIL_SAMPLING", true)?,
            instance: std::env::var("TRACEHOP_INSTANCE").ok().filter(|v| !v.trim().is_empty()),
            copies: env_or("TRACEHOP_INSTANCES", 1u32)?.max(1),
        })
    }
}

impl BaseConfig {
    /// This copy's share of a database pool of `total` connections for the
    /// whole service (at least 2): N copies then hold what one did, and
    /// PostgreSQL's `max_connections` (100 by default) is not exceeded by
    /// starting more of them.
    pub fn pool_share(&self, total: u32) -> u32 {
        total.div_ceil(self.copies).max(2)
    }
}

/// Reads `name` from the environment and parses it, or returns `default` when
/// it is unset or empty. A value that does not parse is an error naming the
/// variable, never a silent default.
pub fn env_or<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse()
            .map_err(|error| anyhow::anyhow!("environment variable {name}={value:?} is invalid: {error}")),
        _ => Ok(default),
    }
}

/// Reads a duration given in milliseconds.
pub fn env_millis(name: &str, default: Duration) -> anyhow::Result<Duration> {
    env_or(name, default.as_millis() as u64).map(Duration::from_millis)
}

/// What [`run`] hands to a service.
#[derive(Clone)]
pub struct Runtime {
    /// The process's NATS connection.
    pub nats: async_nats::Client,
    /// Fires on SIGTERM or Ctrl-C: stop taking work, finish what is in hand.
    pub shutdown: CancellationToken,
    /// Which copy of the service this process is (`TRACEHOP_INSTANCE`, or
    /// the service's name): a lease holder's name.
    pub instance: String,
}

/// Runs a service process from start to flush. `service` is the
/// service's whole life; it must return once `runtime.shutdown` has fired and
/// its work has drained.
pub async fn run<F, Fut>(name: &'static str, version: &'static str, base: &BaseConfig, service: F) -> anyhow::Result<()>
where
    F: FnOnce(Runtime) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let catalog_entry = tracehop_messaging::Service::from_name(name)
        .with_context(|| format!("{name} is not a service of the catalog"))?;
    let user = tracehop_messaging::access::NatsUser::Service(catalog_entry);
    let credentials =
        tracehop_messaging::access::NatsCredentials::load(user, base.nats_keys.as_deref(), base.nats_nkey.as_ref())?;
    let nats = tracehop_messaging::connect(&base.nats_url, user, &credentials)
        .await
        .with_context(|| format!("failed to connect to NATS at {}", base.nats_url))?;
    let js = async_nats::jetstream::new(nats.clone());
    if base.span_feed {
        ensure_span_feed_stream(&js).await;
    }
    let mut telemetry_config = TelemetryConfig::new(name, version);
    // With tail sampling the keeper exports what it keeps; a service that
    // exported spans too would send them twice. Metrics and logs are not
    // sampled: they go from each service.
    telemetry_config.otlp_endpoint = base.otlp_endpoint.clone();
    telemetry_config.otlp_traces = !base.tail_sampling;
    telemetry_config.environment = base.environment.clone();
    telemetry_config.log_filter = base.log_filter.clone();
    let telemetry = tracehop_telemetry::init(&telemetry_config, base.span_feed.then_some(js))?;

    let shutdown = CancellationToken::new();
    let signal = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutdown signal received, draining");
            shutdown.cancel();
        }
    });
    let instance = base.instance.clone().unwrap_or_else(|| name.to_string());
    tracing::info!(version, instance, "started");
    let result = service(Runtime { nats: nats.clone(), shutdown, instance }).await;
    signal.abort();
    match &result {
        Ok(()) => tracing::info!("stopped"),
        Err(error) => tracing::error!(error = format!("{error:#}"), "stopped with an error"),
    }
    let _ = nats.flush().await;
    telemetry.shutdown().await;
    let _ = nats.flush().await;
    result
}

async fn ensure_span_feed_stream(js: &async_nats::jetstream::Context) {
    // The feed's stream is created by `tracehop up`; a service creates it too
    // when it is missing so that it never publishes into the void.
    if js.get_stream(tracehop_telemetry::SPAN_FEED_STREAM).await.is_err()
        && let Err(error) = tracehop_telemetry::ensure_span_feed(js).await
    {
        eprintln!("failed to create the span feed stream: {error}");
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
