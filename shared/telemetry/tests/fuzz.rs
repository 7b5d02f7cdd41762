//! Property-based fuzzing (proptest) of the scrubber every span, log line
//! and header passes through: any text is scrubbed without a panic, a
//! secret hidden in any text is gone, and scrubbing twice changes nothing.
//!
//! Bounded for `cargo test` (proptest's 256 cases each); a longer run:
//! `PROPTEST_CASES=200000 cargo test --release -p tracehop-telemetry --test fuzz`.

use proptest::prelude::*;
use tracehop_telemetry::redact::redact;

/// A card number that passes the Luhn check, from 12 to 18 random digits
/// and the check digit, written with or without separators.
fn card() -> impl Strategy<Value = (String, String)> {
    (proptest::collection::vec(0u8..10, 12..19), 0u8..3).prop_map(|(mut digits, style)| {
        let sum: u32 = digits
            .iter()
            .rev()
            .enumerate()
            .map(|(i, &d)| {
                let d = u32::from(d);
                if i % 2 == 0 {
                    let doubled = d * 2;
                    if doubled > 9 { doubled - 9 } else { doubled }
                } else {
                    d
                }
            })
            .sum();
        digits.push(((10 - sum % 10) % 10) as u8);
        let plain: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
        let written = match style {
            0 => plain.clone(),
            separator => plain
                .as_bytes()
                .chunks(4)
                .map(|chunk| std::str::from_utf8(chunk).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(if separator == 1 { " " } else { "-" }),
        };
        (plain, written)
    })
}

fn email() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._+-]{0,15}@[a-z0-9][a-z0-9-]{0,10}\\.[a-z]{2,6}"
}

/// Text around a secret: words, punctuation, JSON and log syntax, or
/// anything; never a letter or digit touching the secret, which would make
/// it part of a longer word.
fn surroundings() -> impl Strategy<Value = String> {
    prop_oneof![".{0,30}", "[ a-z=\":,{}\\[\\]]{0,30}"]
}

fn glue(left: &str, right: &str) -> (String, String) {
    let left = if left.chars().last().is_some_and(|c| c.is_alphanumeric() || "._%+-'".contains(c)) {
        format!("{left} ")
    } else {
        left.to_string()
    };
    let right = if right.chars().next().is_some_and(|c| c.is_alphanumeric() || "._-@".contains(c)) {
        format!(" {right}")
    } else {
        right.to_string()
    };
    (left, right)
}

proptest! {
    #[test]
    fn any_text_is_scrubbed_and_scrubbing_twice_changes_nothing(text in ".{0,200}") {
        let once = redact(&text).into_owned();
        prop_assert_eq!(redact(&once).into_owned(), once);
    }

    #[test]
    fn a_card_number_anywhere_is_gone((plain, written) in card(), left in surroundings(), right in surroundings()) {
        let (left, right) = glue(&left, &right);
        let text = format!("{left}{written}{right}");
        let scrubbed = redact(&text);
        prop_assert!(!scrubbed.contains(&written), "{:?} -> {:?}", text, scrubbed);
        prop_assert!(!scrubbed.replace([' ', '-'], "").contains(&plain), "{:?} -> {:?}", text, scrubbed);
    }

    #[test]
    fn an_email_address_anywhere_is_gone(address in email(), encoded in any::<bool>(), left in surroundings(), right in surroundings()) {
        let written = if encoded { address.replace('@', "%40") } else { address.clone() };
        let (left, right) = glue(&left, &right);
        let text = format!("{left}{written}{right}");
        let scrubbed = redact(&text);
        prop_assert!(!scrubbed.contains(&written), "{:?} -> {:?}", text, scrubbed);
    }

    #[test]
    fn a_labelled_cvv_is_gone(cvv in "[0-9]{3,4}", label in "(cvv|CVV|cvc|Cvc)", between in "(\":\"|: |=|\"=\"| )") {
        let text = format!("{{\"card\":{{{label}{between}{cvv}\"}}}}");
        let scrubbed = redact(&text);
        prop_assert!(!scrubbed.contains(&format!("{between}{cvv}")), "{:?} -> {:?}", text, scrubbed);
    }
}
