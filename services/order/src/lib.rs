//! The order service: it owns orders (schema `ordering`) and runs the
//! synchronous part of checkout over NATS request/reply:
//!
//! 1. the order is written as `pending`;
//! 2. inventory reserves the stock (a rejection — unknown SKU, out of stock —
//!    removes the pending order again: nothing is left written);
//! 3. payment charges the card (3 s timeout by default);
//! 4. inventory commits the reservation, and the order is confirmed; or the
//!    reservation is released and the order failed.
//!
//! The decided order's event (`orders.confirmed` / `orders.failed`) is written
//! to the outbox in the same transaction as the order's final state, and the
//! [`relay`] publishes it to JetStream, so an event is never lost nor sent for
//! an order that was not decided.
//!
//! Payment is called through a circuit breaker ([`breaker`]); a crash in the
//! middle of a checkout is finished by the [`resolver`]. A reserve that
//! times out is asked again (it is idempotent per order), up to
//! `ORDER_INVENTORY_ATTEMPTS` times.
//!
//! The live scenario `payment-down`, unfixed, reproduces the incident as it
//! was before the fix: charges wait [`checkout::UNFIXED_PAYMENT_TIMEOUT`]
//! and no breaker guards them.
//!
//! Modules: [`config`], [`checkout`] (the handlers), [`store`] (SQL),
//! [`relay`] (outbox to JetStream), [`breaker`], [`resolver`].

pub mod breaker;
pub mod checkout;
pub mod config;
pub mod relay;
pub mod resolver;
pub mod store;

pub use config::Config;

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracehop_messaging::Responder;
use tracehop_proto::subjects;
use tracehop_service::Runtime;

/// `service.name` of this service.
pub const SERVICE: &str = tracehop_messaging::Service::Order.name();

/// Serves order requests and relays the outbox until shutdown, then drains.
pub async fn run(config: Config, runtime: Runtime) -> anyhow::Result<()> {
    let pool = tracehop_db::connect(&config.base.database_url, config.max_connections).await?;
    let js = async_nats::jetstream::new(runtime.nats.clone());
    let switches = tracehop_scenarios::watch(&js, runtime.shutdown.clone()).await?;
    let outbox_written = Arc::new(Notify::new());
    let orders = checkout::Orders::new(
        store::Store::new(pool.clone()),
        runtime.nats.clone(),
        config.clone(),
        outbox_written.clone(),
        switches,
    );
    let responder = Responder::new(runtime.nats.clone(), SERVICE, runtime.shutdown.clone());
    let relay = relay::Relay::new(pool.clone(), js, config.outbox_poll_interval, outbox_written);
    // The relay stops only after the responders have drained: checkouts
    // still in flight at SIGTERM write their events, and the relay's last
    // round publishes them.
    let relay_stop = CancellationToken::new();
    let serving = async {
        let served = tokio::try_join!(
            responder.serve(subjects::ORDER_PLACE, orders.clone(), checkout::Orders::place),
            responder.serve(subjects::ORDER_GET, orders.clone(), checkout::Orders::get),
            async {
                resolver::run(orders, config.resolver_interval, config.pending_timeout, runtime.shutdown.clone()).await;
                Ok(())
            },
        );
        relay_stop.cancel();
        served
    };
    let (served, ()) = tokio::join!(serving, relay.run(relay_stop.clone()));
    served?;
    pool.close().await;
    Ok(())
}
