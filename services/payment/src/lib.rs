//! The payment service: a simulated card processor with a configurable
//! latency, in the `payment` schema. It answers `svc.payment.charge`,
//! idempotently per order id: a charge retried after a timeout returns the
//! first outcome instead of charging twice.
//!
//! Only the card's last four digits are stored; the number, expiry and CVV
//! are never stored, logged or traced.
//!
//! Modules: [`config`] (environment), [`card`] (card parsing and the test
//! cards), [`charge`] (the handler and its SQL).

pub mod card;
pub mod charge;
pub mod config;

pub use config::Config;

use tracehop_messaging::Responder;
use tracehop_proto::subjects;
use tracehop_service::Runtime;

/// `service.name` of this service.
pub const SERVICE: &str = "payment";

/// Serves charges until shutdown, then drains.
pub async fn run(config: Config, runtime: Runtime) -> anyhow::Result<()> {
    let pool = tracehop_db::connect(&config.base.database_url, config.max_connections).await?;
    let processor = charge::Processor::new(pool.clone(), config.latency);
    let responder = Responder::new(runtime.nats, SERVICE, runtime.shutdown);
    responder.serve(subjects::PAYMENT_CHARGE, processor, charge::Processor::charge).await?;
    pool.close().await;
    Ok(())
}
