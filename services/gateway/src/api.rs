//! The JSON shapes of the public API and the parsing of an order request.
//!
//! Parsing names the field that is wrong (`items[0].quantity`) and never
//! repeats a value: a card number typed into the wrong field must not come
//! back in an error message or a log line.

use serde::{Deserialize, Serialize};
use tracehop_proto::v1::{self, OrderStatus};
use tracehop_proto::validate::{FieldError, MAX_QUANTITY};

/// `POST /v1/orders` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderBody {
    pub customer_id: String,
    pub items: Vec<ItemBody>,
    pub card: CardBody,
    #[serde(default)]
    pub email: Option<String>,
}

/// One line of the order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemBody {
    pub sku: String,
    /// Signed and wide on purpose, so that zero, negative and absurd
    /// quantities get a clear message instead of a type error.
    pub quantity: i64,
}

/// Card details; they go to the payment service and nowhere else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardBody {
    pub number: String,
    #[serde(default)]
    pub expiry: String,
    #[serde(default)]
    pub cvv: String,
}

impl std::fmt::Debug for CardBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardBody { .. }")
    }
}

/// Parses and checks an order request: the JSON, then every business rule.
pub fn parse_order(body: &[u8]) -> Result<v1::PlaceOrderRequest, FieldError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    let parsed: PlaceOrderBody = serde_path_to_error::deserialize(&mut *deserializer).map_err(|error| {
        let path = error.path().to_string();
        describe_json_error(&path, error.inner())
    })?;
    // Anything after the document (a second object, a stray comma) makes the
    // whole body invalid: never act on half of what was sent.
    deserializer.end().map_err(|error| describe_json_error("", &error))?;
    let mut items = Vec::with_capacity(parsed.items.len());
    for (index, item) in parsed.items.into_iter().enumerate() {
        if !(1..=i64::from(MAX_QUANTITY)).contains(&item.quantity) {
            return Err(FieldError {
                field: format!("items[{index}].quantity"),
                message: format!("must be from 1 to {MAX_QUANTITY}"),
            });
        }
        items.push(v1::LineItem { sku: item.sku, quantity: item.quantity as u32 });
    }
    let request = v1::PlaceOrderRequest {
        customer_id: parsed.customer_id,
        items,
        card: Some(v1::Card { number: parsed.card.number, expiry: parsed.card.expiry, cvv: parsed.card.cvv }),
        email: parsed.email.unwrap_or_default(),
        idempotency_key: String::new(),
    };
    request.validate()?;
    Ok(request)
}

/// Turns a serde error into a field error whose message holds no value from
/// the input.
fn describe_json_error(path: &str, error: &serde_json::Error) -> FieldError {
    use serde_json::error::Category;
    let text = error.to_string();
    let field = |name: &str| if path.is_empty() || path == "." { name.to_string() } else { path.to_string() };
    match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => FieldError {
            field: "body".to_string(),
            message: format!("is not valid JSON (line {}, column {})", error.line(), error.column()),
        },
        Category::Data => {
            if let Some(name) = quoted_after(&text, "missing field `") {
                let field = if path.is_empty() || path == "." { name.to_string() } else { format!("{path}.{name}") };
                FieldError { field, message: "is required".to_string() }
            } else if let Some(name) = quoted_after(&text, "unknown field `") {
                let field = if path.is_empty() || path == "." { name.to_string() } else { path.to_string() };
                FieldError { field, message: "is not a known field".to_string() }
            } else {
                // "invalid type: string \"...\", expected u32": keep the part
                // after "expected", which never quotes the input.
                let expected =
                    text.split(", expected ").nth(1).map(|rest| rest.split(" at line").next().unwrap_or(rest));
                FieldError {
                    field: field("body"),
                    message: match expected {
                        Some(expected) => format!("has the wrong type or value: expected {expected}"),
                        None => "has the wrong type or value".to_string(),
                    },
                }
            }
        }
    }
}

fn quoted_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    rest.split('`').next()
}

/// An order as the API shows it.
#[derive(Debug, Serialize)]
pub struct OrderView {
    pub order_id: String,
    pub customer_id: String,
    pub status: &'static str,
    pub items: Vec<OrderItemView>,
    pub total_cents: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub created_at_unix_ms: i64,
}

/// One priced line.
#[derive(Debug, Serialize)]
pub struct OrderItemView {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

impl From<v1::Order> for OrderView {
    fn from(order: v1::Order) -> Self {
        let status = match OrderStatus::try_from(order.status) {
            Ok(OrderStatus::Confirmed) => "confirmed",
            Ok(OrderStatus::Failed) => "failed",
            Ok(OrderStatus::Pending) => "pending",
            _ => "unknown",
        };
        Self {
            order_id: order.order_id,
            customer_id: order.customer_id,
            status,
            items: order
                .items
                .into_iter()
                .map(|item| OrderItemView {
                    sku: item.sku,
                    quantity: item.quantity,
                    unit_price_cents: item.unit_price_cents,
                })
                .collect(),
            total_cents: order.total_cents,
            failure_reason: Some(order.failure_reason).filter(|reason| !reason.is_empty()),
            created_at_unix_ms: order.created_at_unix_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> String {
        parse_order(body.as_bytes()).unwrap_err().field
    }

    const CARD: &str = r#""card":{"number":"4242424242424242"}"#;

    #[test]
    fn parses_a_good_order() {
        let body = format!(
            r#"{{"customer_id":"alice","items":[{{"sku":"KB-001","quantity":2}}],{CARD},"email":"a@example.com"}}"#
        );
        let request = parse_order(body.as_bytes()).unwrap();
        assert_eq!(request.items[0].quantity, 2);
        assert_eq!(request.email, "a@example.com");
    }

    #[test]
    fn names_the_field_that_is_wrong() {
        assert_eq!(field_of("{not json"), "body");
        assert_eq!(field_of(&format!(r#"{{"items":[{{"sku":"KB-001","quantity":1}}],{CARD}}}"#)), "customer_id");
        assert_eq!(
            field_of(&format!(r#"{{"customer_id":"a","items":[{{"sku":"KB-001"}}],{CARD}}}"#)),
            "items[0].quantity"
        );
        assert_eq!(
            field_of(&format!(r#"{{"customer_id":"a","items":[{{"sku":"KB-001","quantity":"two"}}],{CARD}}}"#)),
            "items[0].quantity"
        );
        assert_eq!(
            field_of(&format!(r#"{{"customer_id":"a","items":[{{"sku":"KB-001","quantity":-1}}],{CARD}}}"#)),
            "items[0].quantity"
        );
        assert_eq!(field_of(&format!(r#"{{"customer_id":"a","items":[],{CARD}}}"#)), "items");
        assert_eq!(
            field_of(&format!(r#"{{"customer_id":"a","items":[{{"sku":"KB-001","quantity":1}}],{CARD},"coupon":1}}"#)),
            "coupon"
        );
        assert_eq!(field_of(r#"{"customer_id":"a","items":[{"sku":"KB-001","quantity":1}]}"#), "card");
    }

    #[test]
    fn never_repeats_a_card_number_put_in_the_wrong_place() {
        let body = r#"{"customer_id":"a","items":[{"sku":"KB-001","quantity":4242424242424242}],"card":{"number":4242424242424242}}"#;
        let error = parse_order(body.as_bytes()).unwrap_err();
        assert!(!error.to_string().contains("4242"), "{error}");
    }
}
