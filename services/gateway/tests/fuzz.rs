//! Property-based fuzzing (proptest) of the gateway's request parsing: any
//! body, near-valid or not, is parsed or refused with a field error that
//! never repeats a card number, CVV or e-mail address; a valid order parses
//! to exactly what was sent.
//!
//! Bounded for `cargo test` (proptest's 256 cases each); a longer run:
//! `PROPTEST_CASES=200000 cargo test --release -p tracehop-gateway --test fuzz`.

use proptest::prelude::*;
use serde_json::{Value, json};
use tracehop_gateway::api::parse_order;

fn card_number() -> impl Strategy<Value = String> {
    prop_oneof!["4[0-9]{15}", "[0-9 \\-]{10,24}", ".{0,20}"]
}

/// A body shaped like an order, each part valid, near valid or wild.
fn order_json() -> impl Strategy<Value = (Value, String, String)> {
    let item = (prop_oneof!["[A-Z]{2,3}-[0-9]{3}", ".{0,40}"], prop_oneof![1i64..=1000, any::<i64>()])
        .prop_map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}));
    (
        prop_oneof!["[a-z0-9._-]{1,64}", ".{0,80}"],
        proptest::collection::vec(item, 0..60),
        card_number(),
        prop_oneof!["[0-9]{2}/[0-9]{2}", ".{0,8}"],
        prop_oneof!["[0-9]{3,4}", ".{0,6}"],
        prop_oneof!["[a-z]{1,10}@[a-z]{1,10}\\.(com|org)", ".{0,300}"],
        any::<bool>(),
    )
        .prop_map(|(customer, items, number, expiry, cvv, email, extra)| {
            let mut body = json!({
                "customer_id": customer,
                "items": items,
                "card": {"number": number, "expiry": expiry, "cvv": cvv},
                "email": email,
            });
            if extra {
                body["unexpected"] = json!(1);
            }
            (body, number, email)
        })
}

/// Mutations of a JSON text: a byte dropped, doubled or replaced.
fn mutated(text: String, at: usize, byte: u8, how: u8) -> Vec<u8> {
    let mut bytes = text.into_bytes();
    if bytes.is_empty() {
        return bytes;
    }
    let at = at % bytes.len();
    match how % 3 {
        0 => {
            bytes.remove(at);
        }
        1 => bytes.insert(at, bytes[at]),
        _ => bytes[at] = byte,
    }
    bytes
}

proptest! {
    #[test]
    fn any_bytes_are_parsed_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_order(&bytes);
    }

    #[test]
    fn an_order_shaped_body_never_echoes_its_secrets((body, number, email) in order_json()) {
        match parse_order(body.to_string().as_bytes()) {
            Ok(request) => {
                // What was sent is what the order service gets.
                prop_assert!(request.validate().is_ok());
                let card = request.card.expect("a parsed order has a card");
                prop_assert_eq!(card.number, number);
                prop_assert_eq!(&request.email, &email);
                prop_assert_eq!(Some(request.items.len()), body["items"].as_array().map(Vec::len));
            }
            Err(error) => {
                let text = format!("{} {}", error.field, error.message);
                if number.len() >= 6 {
                    prop_assert!(!text.contains(&number), "echoed the card: {}", text);
                }
                if email.contains('@') {
                    prop_assert!(!text.contains(&email), "echoed the address: {}", text);
                }
            }
        }
    }

    #[test]
    fn a_mutated_body_is_parsed_or_refused((body, number, _) in order_json(), at in any::<usize>(), byte in any::<u8>(), how in any::<u8>()) {
        let bytes = mutated(body.to_string(), at, byte, how);
        if let Err(error) = parse_order(&bytes) {
            let text = format!("{} {}", error.field, error.message);
            if number.len() >= 6 {
                prop_assert!(!text.contains(&number), "echoed the card: {}", text);
            }
        }
    }
}
