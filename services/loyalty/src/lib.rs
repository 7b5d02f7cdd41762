//! The loyalty service: a durable consumer of `orders.confirmed` that accrues
//! points per customer in the `loyalty` schema.
//!
//! A standard customer earns 1 point per whole currency unit of the order's
//! total. A premium customer earns 2 points per whole currency unit of each
//! item's price times its quantity, and every item is priced by asking
//! inventory (`svc.inventory.prices`): one request per item by default, the
//! deliberate N+1 call pattern that a scenario later reproduces and fixes
//! with `LOYALTY_PRICING=batch` (one request for the whole order).
//!
//! Each event accrues at most once: its id is recorded in
//! `loyalty.accruals` in the same transaction that adds the points, so a
//! redelivery or a replay changes nothing.
//!
//! Modules: [`config`] (environment), [`points`] (the pure points rules),
//! [`accrue`] (the event handler, its price requests and its SQL).

pub mod accrue;
pub mod config;
pub mod points;

pub use config::{Config, Pricing};

use anyhow::Context as _;
use tracehop_messaging::{async_nats, run_consumer, topology};
use tracehop_service::Runtime;

/// `service.name` of this service.
pub const SERVICE: &str = "loyalty";

/// Processes order events until shutdown; the event in hand is finished
/// first.
pub async fn run(config: Config, runtime: Runtime) -> anyhow::Result<()> {
    let pool = tracehop_db::connect(&config.base.database_url, config.max_connections)
        .await
        .context("failed to connect to the database")?;
    let accrual = accrue::Accrual::new(pool.clone(), runtime.nats.clone(), config.pricing, config.price_timeout);
    let js = async_nats::jetstream::new(runtime.nats);
    let consumed = run_consumer(
        js,
        topology::loyalty_consumer(),
        move |delivery| accrual.clone().handle(delivery),
        runtime.shutdown,
    )
    .await;
    pool.close().await;
    consumed.context("the loyalty consumer failed")
}
