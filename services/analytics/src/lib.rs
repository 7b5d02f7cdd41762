//! The analytics service: a durable consumer of every order event
//! (`orders.confirmed`, `orders.failed`) that records each event and keeps
//! running totals in the `analytics` schema, and a responder for
//! `svc.analytics.summary`, which reads those totals.
//!
//! Each event counts once: its id is the key of `analytics.order_events`,
//! and the totals move in the same transaction as that insert, so a
//! redelivery or a replay changes nothing.
//!
//! It also answers `svc.analytics.replay` (`tracehop replay --consumer
//! analytics`): the stream's events again through the same handler, a
//! rebuild of the totals from scratch, or a redrive of dead letters.
//!
//! While the live scenario `analytics-down` is on and unfixed, it stops
//! consuming without dying: it still answers summaries and replays, its
//! events wait in the stream, and only the sentinel says so.
//!
//! Modules: [`config`] (environment), [`record`] (the event handler and its
//! SQL), [`summary`] (the summary request), [`replay`] (the handler as a
//! replayable projection, and the rebuild's reset).

pub mod config;
pub mod record;
pub mod replay;
pub mod summary;

pub use config::Config;

use anyhow::Context as _;
use tracehop_messaging::{Responder, async_nats, run_projection_pausable, topology};
use tracehop_proto::subjects;
use tracehop_scenarios::Scenario;
use tracehop_service::Runtime;

/// `service.name` of this service.
pub const SERVICE: &str = tracehop_messaging::Service::Analytics.name();

/// Records order events and answers summary requests until shutdown, then
/// drains both.
pub async fn run(config: Config, runtime: Runtime) -> anyhow::Result<()> {
    let pool = tracehop_db::connect(&config.base.database_url, config.max_connections)
        .await
        .context("failed to connect to the database")?;
    let recorder = record::Recorder::new(pool.clone());
    let summary = summary::Summary::new(pool.clone());
    let js = async_nats::jetstream::new(runtime.nats.clone());
    let switches = tracehop_scenarios::watch(&js, runtime.shutdown.clone()).await?;
    let paused = switches.broken_signal(Scenario::AnalyticsDown);
    let responder = Responder::new(runtime.nats, SERVICE, runtime.shutdown.clone());
    let result = tokio::try_join!(
        async {
            run_projection_pausable(
                &responder,
                js,
                topology::analytics_consumer(),
                recorder,
                Some(paused),
                runtime.shutdown,
            )
            .await
            .context("the analytics projection failed")
        },
        async {
            responder
                .serve(subjects::ANALYTICS_SUMMARY, summary, summary::Summary::summary)
                .await
                .with_context(|| format!("failed to serve {}", subjects::ANALYTICS_SUMMARY))
        },
    );
    pool.close().await;
    result.map(|_| ())
}
