//! The rules a checkout request must follow, in one place: the gateway
//! checks them to answer 400 naming the field, and the order service checks
//! them again because its NATS subject is an API of its own.

use std::collections::HashSet;
use std::fmt;

use crate::v1::PlaceOrderRequest;

/// Most lines one order may have.
pub const MAX_ITEMS: usize = 50;
/// Most units of one SKU in one order.
pub const MAX_QUANTITY: u32 = 1000;
/// Longest customer id.
pub const MAX_CUSTOMER_ID_LEN: usize = 64;
/// Longest SKU.
pub const MAX_SKU_LEN: usize = 32;
/// Longest e-mail address (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;

/// A rule broken by one field. The message never repeats the field's value
/// when the value may be secret or personal (card number, e-mail address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The JSON path of the field, such as `items[1].quantity`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

fn error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

impl PlaceOrderRequest {
    /// Checks every rule; the first broken one is the error.
    pub fn validate(&self) -> Result<(), FieldError> {
        let customer = self.customer_id.as_str();
        if customer.is_empty() {
            return Err(error("customer_id", "must not be empty"));
        }
        if customer.len() > MAX_CUSTOMER_ID_LEN
            || !customer.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(error(
                "customer_id",
                format!("must be at most {MAX_CUSTOMER_ID_LEN} letters, digits, '-', '_' or '.'"),
            ));
        }
        if self.items.is_empty() {
            return Err(error("items", "must hold at least one item"));
        }
        if self.items.len() > MAX_ITEMS {
            return Err(error("items", format!("must hold at most {MAX_ITEMS} items")));
        }
        let mut seen = HashSet::new();
        for (index, item) in self.items.iter().enumerate() {
            let sku = item.sku.as_str();
            if sku.is_empty()
                || sku.len() > MAX_SKU_LEN
                || !sku.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(error(
                    format!("items[{index}].sku"),
                    format!("must be 1 to {MAX_SKU_LEN} upper-case letters, digits or '-'"),
                ));
            }
            if !(1..=MAX_QUANTITY).contains(&item.quantity) {
                return Err(error(format!("items[{index}].quantity"), format!("must be from 1 to {MAX_QUANTITY}")));
            }
            if !seen.insert(sku) {
                return Err(error(format!("items[{index}].sku"), "repeats an sku of an earlier item"));
            }
        }
        let number = self.card.as_ref().map(|card| card.number.as_str()).unwrap_or_default();
        let digits: Vec<char> = number.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if digits.is_empty() {
            return Err(error("card.number", "is required"));
        }
        if !(12..=19).contains(&digits.len()) || !digits.iter().all(char::is_ascii_digit) {
            return Err(error("card.number", "must be 12 to 19 digits"));
        }
        let email = self.email.as_str();
        if !email.is_empty() {
            let valid = email.len() <= MAX_EMAIL_LEN
                && email.split_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
                })
                && !email.chars().any(|c| c.is_whitespace() || c.is_control());
            if !valid {
                return Err(error("email", "is not a valid e-mail address"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Card, LineItem};

    fn request() -> PlaceOrderRequest {
        PlaceOrderRequest {
            customer_id: "alice".into(),
            items: vec![LineItem { sku: "KB-001".into(), quantity: 1 }],
            card: Some(Card { number: "4242 4242 4242 4242".into(), ..Default::default() }),
            email: "alice@example.com".into(),
            idempotency_key: String::new(),
        }
    }

    #[test]
    fn accepts_a_good_request() {
        assert_eq!(request().validate(), Ok(()));
    }

    #[test]
    fn names_the_broken_field() {
        type Breaker = fn(&mut PlaceOrderRequest);
        let cases: Vec<(Breaker, &str)> = vec![
            (|r| r.customer_id.clear(), "customer_id"),
            (|r| r.items.clear(), "items"),
            (|r| r.items[0].quantity = 0, "items[0].quantity"),
            (|r| r.items[0].quantity = MAX_QUANTITY + 1, "items[0].quantity"),
            (|r| r.items[0].sku = "kb 1".into(), "items[0].sku"),
            (|r| r.items.push(LineItem { sku: "KB-001".into(), quantity: 2 }), "items[1].sku"),
            (|r| r.card = None, "card.number"),
            (|r| r.card.as_mut().unwrap().number = "4242-abc".into(), "card.number"),
            (|r| r.email = "not-an-address".into(), "email"),
        ];
        for (break_it, field) in cases {
            let mut broken = request();
            break_it(&mut broken);
            assert_eq!(broken.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn never_echoes_card_or_email() {
        let mut broken = request();
        broken.card.as_mut().unwrap().number = "4242 4242 4242 42x2".into();
        assert!(!broken.validate().unwrap_err().to_string().contains("4242"));
        let mut broken = request();
        broken.email = "secret@nowhere".into();
        assert!(!broken.validate().unwrap_err().to_string().contains("secret"));
    }
}
