//! The `orders.confirmed` handler: prices a premium order's items through
//! inventory, then records the accrual and adds the points in one
//! transaction.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use sqlx::PgPool;
use tracehop_db::{describe_error, traced};
use tracehop_messaging::async_nats::Client;
use tracehop_messaging::{ProcessError, RequestError, request};
use tracehop_proto::subjects;
use tracehop_proto::v1::{GetPricesReply, GetPricesRequest, OrderEvent, OrderStatus, PricedItem};
use tracing::field::Empty;
use uuid::Uuid;

use tracehop_scenarios::{Scenario, Switches};

use crate::config::Pricing;
use crate::points::{Tier, premium_points, standard_points};

/// Why an event did not accrue. Messages are free of personal data: they
/// end up on spans.
#[derive(Debug, thiserror::Error)]
pub enum AccrueError {
    /// The event can never accrue (a malformed id, an unknown status).
    #[error("{0}")]
    Invalid(String),
    /// A statement failed; its own span holds the details. The database's
    /// message is left out, as it may quote values.
    #[error("a database statement failed ({})", describe_error(.0))]
    Database(#[from] sqlx::Error),
    /// Inventory did not price the items.
    #[error("failed to price the items: {0}")]
    Pricing(#[from] RequestError),
    /// Inventory answered, but without this SKU's price.
    #[error("inventory returned no price for sku {0}")]
    MissingPrice(String),
}

impl From<AccrueError> for ProcessError {
    fn from(error: AccrueError) -> Self {
        match error {
            AccrueError::Invalid(reason) => ProcessError::Reject(reason.into()),
            // The database or inventory may be back on the next delivery.
            other => ProcessError::Retry(other.into()),
        }
    }
}

fn parse_uuid(field: &str, value: &str) -> Result<Uuid, AccrueError> {
    Uuid::parse_str(value).map_err(|_| AccrueError::Invalid(format!("{field} is not a UUID")))
}

/// The handler's shared state: the pool, the NATS connection for price
/// requests, and the live scenarios, which decide how to price.
#[derive(Clone, Debug)]
pub struct Accrual {
    pool: PgPool,
    nats: Client,
    switches: Switches,
    price_timeout: Duration,
}

impl Accrual {
    pub fn new(pool: PgPool, nats: Client, switches: Switches, price_timeout: Duration) -> Self {
        Self { pool, nats, switches, price_timeout }
    }

    /// How premium orders are priced now: one request per item while
    /// `loyalty-n-plus-one` is on and unfixed, one batch request otherwise.
    pub fn pricing(&self) -> Pricing {
        if self.switches.get(Scenario::LoyaltyNPlusOne).broken() { Pricing::PerItem } else { Pricing::Batch }
    }

    /// Accrues the event's points once; returns false, changing nothing,
    /// when it had accrued before or earns nothing. The kind of customer,
    /// the pricing mode and the points go on the span: they explain both the
    /// number and the price requests beneath it.
    #[tracing::instrument(
        name = "accrue points",
        skip_all,
        fields(
            order.id = %event.order_id,
            loyalty.tier = Empty,
            loyalty.pricing = Empty,
            loyalty.points = Empty,
            loyalty.duplicate = Empty,
        ),
    )]
    pub async fn accrue(&self, event: &OrderEvent) -> Result<bool, AccrueError> {
        let span = tracing::Span::current();
        let event_id = parse_uuid("event_id", &event.event_id)?;
        let order_id = parse_uuid("order_id", &event.order_id)?;
        // The status decides, not the subject: it is part of the payload
        // that the event id dedupes, so a replay is judged the same way.
        match OrderStatus::try_from(event.status) {
            Ok(OrderStatus::Confirmed) => {}
            Ok(OrderStatus::Failed) => {
                // Not expected on orders.confirmed; a failed order earns
                // nothing, so there is nothing to do.
                tracing::debug!("order not confirmed, no points");
                return Ok(false);
            }
            _ => {
                return Err(AccrueError::Invalid(format!("status {} is neither confirmed nor failed", event.status)));
            }
        }
        if event.customer_id.is_empty() {
            return Err(AccrueError::Invalid("customer_id is empty".to_string()));
        }

        // The accrual check only saves work (price requests) on a
        // redelivery; the insert below is what guarantees at most one
        // accrual.
        let (accrued, tier) = self.accrued_and_tier(event_id, &event.customer_id).await?;
        if accrued {
            span.record("loyalty.duplicate", true);
            return Ok(false);
        }
        span.record("loyalty.tier", tier.as_str());
        let points = match tier {
            Tier::Standard => standard_points(event.total_cents),
            Tier::Premium => {
                let pricing = self.pricing();
                span.record("loyalty.pricing", pricing.as_str());
                self.switches.annotate(&span, &[Scenario::LoyaltyNPlusOne]);
                let prices = self.unit_prices(pricing, &event.items).await?;
                let lines = event
                    .items
                    .iter()
                    .map(|item| match prices.get(&item.sku) {
                        Some(price) => Ok((*price, item.quantity)),
                        None => Err(AccrueError::MissingPrice(item.sku.clone())),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                premium_points(lines)
            }
        };
        span.record("loyalty.points", points);
        let inserted = self.record(event_id, order_id, &event.customer_id, points).await?;
        span.record("loyalty.duplicate", !inserted);
        Ok(inserted)
    }

    /// The pool, for the replay's reset.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Unit prices of the items, from inventory: one request per item, or
    /// one for all.
    async fn unit_prices(&self, pricing: Pricing, items: &[PricedItem]) -> Result<HashMap<String, i64>, AccrueError> {
        let mut prices = HashMap::with_capacity(items.len());
        match pricing {
            Pricing::PerItem => {
                for item in items {
                    prices.extend(self.ask_prices(vec![item.sku.clone()]).await?);
                }
            }
            Pricing::Batch => {
                let skus: BTreeSet<&String> = items.iter().map(|item| &item.sku).collect();
                if !skus.is_empty() {
                    prices.extend(self.ask_prices(skus.into_iter().cloned().collect()).await?);
                }
            }
        }
        Ok(prices)
    }

    async fn ask_prices(&self, skus: Vec<String>) -> Result<HashMap<String, i64>, RequestError> {
        let reply: GetPricesReply =
            request(&self.nats, subjects::INVENTORY_PRICES, &GetPricesRequest { skus }, self.price_timeout).await?;
        Ok(reply.unit_price_cents)
    }

    /// Whether the event accrued before, and the customer's tier (a customer
    /// without an account is standard), in one round trip.
    async fn accrued_and_tier(&self, event_id: Uuid, customer_id: &str) -> Result<(bool, Tier), sqlx::Error> {
        let (accrued, tier): (bool, Option<String>) = traced(
            "SELECT",
            "loyalty.accruals",
            sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM loyalty.accruals WHERE event_id = $1),
                        (SELECT tier FROM loyalty.accounts WHERE customer_id = $2)",
            )
            .bind(event_id)
            .bind(customer_id),
            |query| query.fetch_one(&self.pool),
        )
        .await?;
        Ok((accrued, tier.as_deref().map(Tier::from_db).unwrap_or_default()))
    }

    /// Records the accrual and adds the points, in one statement (one round
    /// trip, one commit): the account is credited only with what the
    /// accrual's insert returned. Returns false, changing nothing, when the
    /// event had already accrued.
    async fn record(
        &self,
        event_id: Uuid,
        order_id: Uuid,
        customer_id: &str,
        points: i64,
    ) -> Result<bool, sqlx::Error> {
        let credited = traced(
            "INSERT",
            "loyalty.accruals",
            sqlx::query(
                "WITH accrued AS (
                    INSERT INTO loyalty.accruals (event_id, order_id, customer_id, points)
                    VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING RETURNING customer_id, points)
                 INSERT INTO loyalty.accounts (customer_id, tier, points)
                 SELECT customer_id, 'standard', points FROM accrued
                 ON CONFLICT (customer_id)
                 DO UPDATE SET points = loyalty.accounts.points + EXCLUDED.points, updated_at = now()",
            )
            .bind(event_id)
            .bind(order_id)
            .bind(customer_id)
            .bind(points),
            |query| query.execute(&self.pool),
        )
        .await?
        .rows_affected();
        Ok(credited == 1)
    }
}
