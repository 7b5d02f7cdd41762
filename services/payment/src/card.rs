//! Card numbers: parsed once, never shown. [`CardNumber`]'s `Debug` prints
//! only the last four digits, so it cannot leak through a log line.
//!
//! Test cards (any expiry, any CVV):
//!
//! | number              | outcome                                   |
//! |---------------------|-------------------------------------------|
//! | 4242 4242 4242 4242 | approved                                  |
//! | 4000 0000 0000 0002 | declined: card declined                   |
//! | 4000 0000 0000 9995 | declined: insufficient funds              |
//! | 4000 0000 0000 0119 | processor error (the charge fails)        |
//!
//! Any other number that passes the Luhn check is approved.

use std::fmt;

/// A card number that has 12 to 19 digits and passes the Luhn check.
#[derive(Clone, PartialEq, Eq)]
pub struct CardNumber(String);

/// What the simulated processor does with a card.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Approve,
    Decline(&'static str),
    ProcessorError,
}

impl CardNumber {
    /// Parses a number, ignoring spaces and dashes. The error never repeats
    /// the number.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let digits: String = raw.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if digits.is_empty() {
            return Err("card number is missing");
        }
        if !digits.chars().all(|c| c.is_ascii_digit()) || !(12..=19).contains(&digits.len()) {
            return Err("card number must have 12 to 19 digits");
        }
        if !luhn_valid(&digits) {
            return Err("card number is not valid");
        }
        Ok(Self(digits))
    }

    /// The last four digits, the only part that is ever stored.
    pub fn last4(&self) -> &str {
        &self.0[self.0.len() - 4..]
    }

    /// What the simulated processor does with this card.
    pub fn outcome(&self) -> Outcome {
        match self.0.as_str() {
            "4000000000000002" => Outcome::Decline("card declined"),
            "4000000000009995" => Outcome::Decline("insufficient funds"),
            "4000000000000119" => Outcome::ProcessorError,
            _ => Outcome::Approve,
        }
    }
}

impl fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardNumber(****{})", self.last4())
    }
}

fn luhn_valid(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_test_cards_and_keeps_only_last4_visible() {
        let card = CardNumber::parse("4242 4242 4242 4242").unwrap();
        assert_eq!(card.last4(), "4242");
        assert_eq!(format!("{card:?}"), "CardNumber(****4242)");
        assert_eq!(card.outcome(), Outcome::Approve);
        assert_eq!(CardNumber::parse("4000-0000-0000-0002").unwrap().outcome(), Outcome::Decline("card declined"));
        assert_eq!(CardNumber::parse("4000000000000119").unwrap().outcome(), Outcome::ProcessorError);
    }

    #[test]
    fn rejects_bad_numbers_without_echoing_them() {
        for raw in ["", "4242", "4242 4242 4242 4241", "4242x4242x4242x4242", "12345678901234567890"] {
            let error = CardNumber::parse(raw).unwrap_err();
            assert!(raw.len() < 4 || !error.contains(&raw[raw.len() - 4..]), "{error}");
        }
    }
}
