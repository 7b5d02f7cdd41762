//! The payment service: a simulated card processor with a configurable
//! latency, in the `payment` schema. It answers `svc.payment.charge`,
//! idempotently per order id: a charge retried after a timeout returns the
//! first outcome instead of charging twice.
//!
//! Only the card's last four digits are stored; the number, expiry and CVV
//! are never stored, logged or traced.
//!
//! It also consumes `orders.failed` ([`settle`]): a failed order's charge is
//! refunded, or voided before it can happen, so that an order never fails
//! with the customer charged.
//!
//! Modules: [`config`] (environment), [`card`] (card parsing and the test
//! cards), [`charge`] (the handler and its SQL), [`settle`].

pub mod card;
pub mod charge;
pub mod config;
pub mod settle;

pub use config::Config;

use tracehop_messaging::{Responder, Withhold, run_consumer, topology};
use tracehop_proto::subjects;
use tracehop_scenarios::Scenario;
use tracehop_service::Runtime;

/// `service.name` of this service.
pub const SERVICE: &str = tracehop_messaging::Service::Payment.name();

/// Serves charges until shutdown, then drains. While the scenario
/// `payment-down` is on, charge requests are received and never answered:
/// the process lives, the replies never come.
pub async fn run(config: Config, runtime: Runtime) -> anyhow::Result<()> {
    let pool = tracehop_db::connect(&config.base.database_url, config.max_connections).await?;
    let js = async_nats::jetstream::new(runtime.nats.clone());
    let switches = tracehop_scenarios::watch(&js, runtime.shutdown.clone()).await?;
    let withhold: Withhold = std::sync::Arc::new(move |span: &tracing::Span| {
        let down = switches.get(Scenario::PaymentDown).on;
        if down {
            switches.annotate(span, &[Scenario::PaymentDown]);
        }
        down
    });
    let processor = charge::Processor::new(pool.clone(), config.latency);
    let settlement = settle::Settlement::new(pool.clone());
    let responder = Responder::new(runtime.nats, SERVICE, runtime.shutdown.clone());
    tokio::try_join!(
        async {
            responder
                .serve_withholding(subjects::PAYMENT_CHARGE, processor, charge::Processor::charge, withhold)
                .await
                .map_err(anyhow::Error::from)
        },
        async {
            run_consumer(js, topology::payment_consumer(), |delivery| settlement.settle(delivery), runtime.shutdown)
                .await
                .map_err(anyhow::Error::from)
        },
    )?;
    pool.close().await;
    Ok(())
}
