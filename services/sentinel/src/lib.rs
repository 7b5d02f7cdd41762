//! The sentinel: it knows which consumers must process each stream's events
//! (from [`tracehop_messaging::topology::expected_consumers`]) and watches
//! them through JetStream's own state, so that a consumer that stops
//! processing is noticed even though nothing ever fails loudly: the events
//! just wait.
//!
//! It reports, for each consumer:
//! - **down** (nobody pulling and nothing moving for the down-after period)
//!   or **lagging** (its oldest unprocessed event is older than the
//!   deadline), as [`tracehop_messaging::health::judge`] decides: an alert,
//!   published on `tracehop.alerts.<consumer>` and logged, naming the
//!   backlog and the oldest age;
//! - every event the consumer misses: a failure span in that event's own
//!   trace, child of its producer span, naming the consumer and the delay
//!   (bounded per incident; the rest are counted);
//! - recovery: once it has caught up, a span and an alert saying how long
//!   the incident lasted, how many events were processed late and how many
//!   were dead-lettered instead;
//! - dead letters (**failing**): one alert per consumer naming the count and
//!   the reasons, open until they are redriven or discarded.
//!
//! `svc.sentinel.status` answers with all of it (`tracehop status`), and
//! each consumer's lag is also a metric ([`lag`]).
//!
//! Several copies may run (`tracehop up --instances N`): they elect one
//! through a lease ([`tracehop_messaging::lease`]), and only the leader
//! watches, alerts and answers `svc.sentinel.status`; the others wait to
//! take over, which happens within the lease's time to live after the
//! leader dies (at once when it stops gracefully). A new leader starts its
//! judgement afresh: an incident that was open is raised again once it
//! still holds after the down-after period.
//!
//! Modules: [`config`], [`watch`] (the per-consumer state machine),
//! [`dead_letters`] (the max-deliveries advisory), [`lag`] (consumer lag
//! gauges).

pub mod config;
pub mod dead_letters;
pub mod lag;
pub mod watch;

pub use config::Config;

use std::sync::Arc;

use tokio::sync::Mutex;
use tracehop_messaging::{Responder, lease, topology};
use tracehop_proto::subjects;
use tracehop_proto::v1::{Error as WireError, SentinelStatusReply, SentinelStatusRequest};
use tracehop_service::Runtime;

/// `service.name` of this service.
pub const SERVICE: &str = tracehop_messaging::Service::Sentinel.name();

/// The sentinel's shared view, read by the status responder.
pub type SharedView = Arc<Mutex<SentinelStatusReply>>;

/// Campaigns for the sentinel's lease and, while it leads, watches every
/// expected consumer; until shutdown.
pub async fn run(config: Config, runtime: Runtime) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(runtime.nats.clone());
    // `tracehop up` creates the bucket with the deployment's replicas; one
    // replica when it did not run.
    let store = lease::ensure_bucket(&js, 1).await?;
    let candidate = lease::Lease::new(store, SERVICE, runtime.instance.clone());
    let view: SharedView = Arc::new(Mutex::new(empty_view(&config)));
    lag::register(view.clone());
    while let Some(term) = candidate.campaign(&runtime.shutdown).await {
        let outcome = lead(config.clone(), runtime.clone(), term.lost(), view.clone()).await;
        term.resign().await;
        // A follower reports no lag: the leader does.
        *view.lock().await = empty_view(&config);
        outcome?;
    }
    Ok(())
}

fn empty_view(config: &Config) -> SentinelStatusReply {
    SentinelStatusReply { deadline_ms: config.deadline.as_millis() as i64, ..Default::default() }
}

/// The sentinel's work for one term as leader: until `term_over` fires
/// (the lease was lost, or shutdown).
async fn lead(
    config: Config,
    runtime: Runtime,
    term_over: tokio_util::sync::CancellationToken,
    view: SharedView,
) -> anyhow::Result<()> {
    let runtime = Runtime { shutdown: term_over, ..runtime };
    let js = async_nats::jetstream::new(runtime.nats.clone());
    let watcher = watch::Watcher::new(js.clone(), runtime.nats.clone(), config.clone(), topology::expected_consumers());
    let responder = Responder::new(runtime.nats.clone(), SERVICE, runtime.shutdown.clone());
    tokio::try_join!(
        async { responder.serve(subjects::SENTINEL_STATUS, view.clone(), status).await.map_err(anyhow::Error::from) },
        async {
            watcher.run(view.clone(), runtime.shutdown.clone()).await;
            Ok(())
        },
        async {
            dead_letters::watch_max_deliveries(runtime.nats.clone(), js.clone(), runtime.shutdown.clone()).await;
            Ok(())
        },
    )?;
    Ok(())
}

async fn status(view: SharedView, _request: SentinelStatusRequest) -> Result<SentinelStatusReply, WireError> {
    Ok(view.lock().await.clone())
}
