//! The inventory service: the catalog, stock levels and reservations, in the
//! `inventory` schema. It answers four requests over NATS:
//!
//! - `svc.inventory.reserve`: reserve every item of an order, or none. Atomic
//!   and safe under concurrency: a reservation is a conditional `UPDATE` that
//!   only succeeds while enough stock is on hand, so nothing is ever oversold.
//!   Idempotent per order id.
//! - `svc.inventory.commit`: the order's reservation becomes a sale.
//! - `svc.inventory.release`: the order's reserved stock goes back on hand.
//! - `svc.inventory.prices`: unit prices of any number of SKUs.
//!
//! Stock is conserved per product: seeded stock = `on_hand + reserved + sold`.
//!
//! While the live scenario `slow-inventory` is on, a restock batch job holds
//! the restock queue's locks and the rare reservation that files a restock
//! request waits for them in PostgreSQL: see [`restock`].
//!
//! Modules: [`config`] (environment), [`stock`] (the handlers and their SQL),
//! [`restock`] (the restock queue, its batch job, the scenario and its fix),
//! [`inflight`] (a retried reservation joins its first attempt).

pub mod config;
pub mod inflight;
pub mod restock;
pub mod stock;

pub use config::Config;

use tracehop_messaging::Responder;
use tracehop_proto::subjects;
use tracehop_service::Runtime;

/// `service.name` of this service.
pub const SERVICE: &str = tracehop_messaging::Service::Inventory.name();

/// Serves every inventory request until shutdown, then drains.
pub async fn run(config: Config, runtime: Runtime) -> anyhow::Result<()> {
    let pool = tracehop_db::connect(&config.base.database_url, config.max_connections).await?;
    let js = async_nats::jetstream::new(runtime.nats.clone());
    let switches = tracehop_scenarios::watch(&js, runtime.shutdown.clone()).await?;
    let stock = stock::Stock::with_switches(pool.clone(), switches.clone());
    let batch_job = tokio::spawn(restock::run_batch_job(pool.clone(), switches, runtime.shutdown.clone()));
    let responder = Responder::new(runtime.nats, SERVICE, runtime.shutdown);
    tokio::try_join!(
        responder.serve(subjects::INVENTORY_RESERVE, stock.clone(), stock::Stock::reserve),
        responder.serve(subjects::INVENTORY_COMMIT, stock.clone(), stock::Stock::commit),
        responder.serve(subjects::INVENTORY_RELEASE, stock.clone(), stock::Stock::release),
        responder.serve(subjects::INVENTORY_PRICES, stock, stock::Stock::prices),
    )?;
    let _ = batch_job.await;
    pool.close().await;
    Ok(())
}
