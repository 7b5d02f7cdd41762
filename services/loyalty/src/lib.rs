//! The loyalty service: a durable consumer of `orders.confirmed` that accrues
//! points per customer in the `loyalty` schema.
//!
//! A standard customer earns 1 point per whole currency unit of the order's
//! total. A premium customer earns 2 points per whole currency unit of each
//! item's price times its quantity, and every item is priced by asking
//! inventory (`svc.inventory.prices`): one request for the whole order; or,
//! while the live scenario `loyalty-n-plus-one` is on and unfixed, one
//! request per item, the N+1 call pattern, as N sequential CLIENT spans.
//!
//! Each event accrues at most once: its id is recorded in
//! `loyalty.accruals` in the same transaction that adds the points, so a
//! redelivery or a replay changes nothing.
//!
//! It also answers `svc.loyalty.replay` (`tracehop replay --consumer
//! loyalty`): the stream's events again through the same handler, a rebuild
//! of the points from scratch, or a redrive of dead letters.
//!
//! Modules: [`config`] (environment), [`points`] (the pure points rules),
//! [`accrue`] (the event handler, its price requests and its SQL),
//! [`replay`] (the handler as a replayable projection, and the rebuild's
//! reset).

pub mod accrue;
pub mod config;
pub mod points;
pub mod replay;

pub use config::{Config, Pricing};

use anyhow::Context as _;
use tracehop_messaging::{Responder, async_nats, run_projection, topology};
use tracehop_service::Runtime;

/// `service.name` of this service.
pub const SERVICE: &str = tracehop_messaging::Service::Loyalty.name();

/// Processes order events and answers replay requests until shutdown; the
/// event in hand is finished first, a replay stops at the next event.
pub async fn run(config: Config, runtime: Runtime) -> anyhow::Result<()> {
    let pool = tracehop_db::connect(&config.base.database_url, config.max_connections)
        .await
        .context("failed to connect to the database")?;
    let js = async_nats::jetstream::new(runtime.nats.clone());
    let switches = tracehop_scenarios::watch(&js, runtime.shutdown.clone()).await?;
    let accrual = accrue::Accrual::new(pool.clone(), runtime.nats.clone(), switches, config.price_timeout);
    let responder = Responder::new(runtime.nats, SERVICE, runtime.shutdown.clone());
    let result = run_projection(&responder, js, topology::loyalty_consumer(), accrual, runtime.shutdown)
        .await
        .context("the loyalty projection failed");
    pool.close().await;
    result.map(|_| ())
}
