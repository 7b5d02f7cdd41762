//! The gateway's HTTP API as the `tracehop` command uses it.

use anyhow::Context as _;
use serde::Serialize;
use serde_json::{Value, json};

/// One line of an order: `SKU:QTY` on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemArg {
    pub sku: String,
    pub quantity: i64,
}

impl std::str::FromStr for ItemArg {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (sku, quantity) = value.split_once(':').unwrap_or((value, "1"));
        let quantity = quantity.parse().map_err(|_| format!("{value:?}: quantity must be a number (SKU:QTY)"))?;
        Ok(Self { sku: sku.to_string(), quantity })
    }
}

/// What to order.
#[derive(Clone, Debug)]
pub struct OrderInput {
    pub customer: String,
    pub items: Vec<ItemArg>,
    pub card: String,
    pub email: Option<String>,
    /// A `traceparent` to send, to continue a trace of the caller's.
    pub traceparent: Option<String>,
}

/// What the gateway answered.
#[derive(Clone, Debug, Serialize)]
pub struct OrderOutcome {
    pub http_status: u16,
    /// `None` when the request was rejected before an order existed.
    pub order_id: Option<String>,
    /// `confirmed`, `failed` or `rejected`.
    pub status: String,
    pub trace_id: Option<String>,
    pub total_cents: Option<i64>,
    pub error: Option<Value>,
    /// The whole response body.
    #[serde(skip)]
    pub body: Value,
    /// How long the HTTP request took, in milliseconds.
    pub elapsed_ms: f64,
}

/// Places an order through `POST /v1/orders`.
pub async fn place_order(
    http: &reqwest::Client,
    gateway_url: &str,
    input: &OrderInput,
) -> anyhow::Result<OrderOutcome> {
    let mut body = json!({
        "customer_id": input.customer,
        "items": input.items.iter().map(|i| json!({"sku": i.sku, "quantity": i.quantity})).collect::<Vec<_>>(),
        "card": {"number": input.card, "expiry": "12/34", "cvv": "123"},
    });
    if let Some(email) = &input.email {
        body["email"] = json!(email);
    }
    let mut request = http.post(format!("{gateway_url}/v1/orders")).json(&body);
    if let Some(traceparent) = &input.traceparent {
        request = request.header("traceparent", traceparent);
    }
    let started = std::time::Instant::now();
    let response = request.send().await.with_context(|| {
        format!("failed to reach the gateway at {gateway_url} (is the system up? try `tracehop up`)")
    })?;
    let status = response.status().as_u16();
    let traceresponse = response
        .headers()
        .get("traceresponse")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split('-').nth(1))
        .map(str::to_string);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let order = if body.get("order_id").is_some() { Some(&body) } else { body.get("order") };
    Ok(OrderOutcome {
        http_status: status,
        order_id: order.and_then(|o| o["order_id"].as_str()).map(str::to_string),
        status: order.and_then(|o| o["status"].as_str()).unwrap_or("rejected").to_string(),
        trace_id: body["trace_id"].as_str().map(str::to_string).or(traceresponse),
        total_cents: order.and_then(|o| o["total_cents"].as_i64()),
        error: body.get("error").cloned(),
        elapsed_ms,
        body,
    })
}

/// The test cards the payment service knows (any expiry, any CVV). Their
/// numbers are for the gateway only: the console offers a card by its
/// outcome and never shows the number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestCard {
    Approved,
    Declined,
    InsufficientFunds,
    ProcessorError,
}

impl TestCard {
    pub const ALL: [TestCard; 4] =
        [TestCard::Approved, TestCard::Declined, TestCard::InsufficientFunds, TestCard::ProcessorError];

    pub const fn number(self) -> &'static str {
        match self {
            TestCard::Approved => "4242424242424242",
            TestCard::Declined => "4000000000000002",
            TestCard::InsufficientFunds => "4000000000009995",
            TestCard::ProcessorError => "4000000000000119",
        }
    }

    /// The name a form sends.
    pub fn key(self) -> &'static str {
        match self {
            TestCard::Approved => "approved",
            TestCard::Declined => "declined",
            TestCard::InsufficientFunds => "insufficient-funds",
            TestCard::ProcessorError => "processor-error",
        }
    }

    /// What paying with it does, for people.
    pub fn label(self) -> &'static str {
        match self {
            TestCard::Approved => "approved",
            TestCard::Declined => "declined",
            TestCard::InsufficientFunds => "declined: insufficient funds",
            TestCard::ProcessorError => "processor error",
        }
    }

    pub fn parse(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|card| card.key() == key)
    }
}

/// The catalog that the inventory migration seeds: SKU and name.
pub const CATALOG: [(&str, &str); 7] = [
    ("KB-001", "Mechanical keyboard"),
    ("MS-002", "Wireless mouse"),
    ("MN-003", "27-inch monitor"),
    ("CB-004", "USB-C cable"),
    ("HS-005", "Headset"),
    ("LMP-006", "Desk lamp"),
    ("LTD-007", "Limited-edition print"),
];

/// Money in cents as `$12.34`.
pub fn dollars(cents: i64) -> String {
    format!("${}.{:02}", cents / 100, (cents % 100).abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_item_arguments() {
        assert_eq!("KB-001:3".parse::<ItemArg>().unwrap(), ItemArg { sku: "KB-001".into(), quantity: 3 });
        assert_eq!("KB-001".parse::<ItemArg>().unwrap(), ItemArg { sku: "KB-001".into(), quantity: 1 });
        assert!("KB-001:x".parse::<ItemArg>().is_err());
        assert_eq!(dollars(8900), "$89.00");
        assert_eq!(dollars(905), "$9.05");
    }

    #[test]
    fn the_catalog_is_what_the_migration_seeds() {
        let seed = include_str!("../../migrations/20261127000001_inventory.sql");
        for (sku, name) in CATALOG {
            assert!(seed.contains(&format!("('{sku}',")) && seed.contains(&format!("'{name}'")), "{sku} {name}");
        }
        assert_eq!(seed.matches("('").count() - seed.matches("IN ('").count(), CATALOG.len(), "a SKU is missing");
    }
}
