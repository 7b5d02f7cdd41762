//! The points rules, free of I/O so that they can be tested on their own.
//!
//! Points are whole numbers: a fraction of a currency unit earns nothing. A
//! negative amount (which a valid order never has) earns nothing rather than
//! taking points away.

/// Cents in one currency unit.
const CENTS_PER_UNIT: i64 = 100;

/// Points per whole currency unit for a standard customer.
pub const STANDARD_POINTS_PER_UNIT: i64 = 1;

/// Points per whole currency unit for a premium customer.
pub const PREMIUM_POINTS_PER_UNIT: i64 = 2;

/// A customer's tier, as stored in `loyalty.accounts.tier`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tier {
    /// Every customer not known otherwise, including one without an account.
    #[default]
    Standard,
    Premium,
}

impl Tier {
    /// The tier stored in the database; anything unknown counts as standard
    /// (the table's CHECK allows only the two).
    pub fn from_db(tier: &str) -> Self {
        match tier {
            "premium" => Tier::Premium,
            _ => Tier::Standard,
        }
    }

    /// The name stored in the database and shown on spans.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Standard => "standard",
            Tier::Premium => "premium",
        }
    }
}

fn whole_units(cents: i64) -> i64 {
    cents.max(0) / CENTS_PER_UNIT
}

/// Points for a standard customer: 1 per whole currency unit of the order's
/// total.
pub fn standard_points(total_cents: i64) -> i64 {
    whole_units(total_cents).saturating_mul(STANDARD_POINTS_PER_UNIT)
}

/// Points for a premium customer: 2 per whole currency unit of each line's
/// unit price times its quantity, each line rounded down on its own.
/// `lines` holds `(unit_price_cents, quantity)`.
pub fn premium_points(lines: impl IntoIterator<Item = (i64, u32)>) -> i64 {
    lines
        .into_iter()
        .map(|(unit_price_cents, quantity)| {
            let line_cents = unit_price_cents.saturating_mul(i64::from(quantity));
            whole_units(line_cents).saturating_mul(PREMIUM_POINTS_PER_UNIT)
        })
        .fold(0i64, i64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_earns_one_point_per_whole_unit_of_the_total() {
        assert_eq!(standard_points(0), 0);
        assert_eq!(standard_points(99), 0);
        assert_eq!(standard_points(100), 1);
        assert_eq!(standard_points(17_899), 178);
        assert_eq!(standard_points(-500), 0);
    }

    #[test]
    fn premium_earns_two_points_per_whole_unit_of_each_line() {
        // 2 x 89.00 = 178.00 -> 356; 3 x 9.00 = 27.00 -> 54.
        assert_eq!(premium_points([(8_900, 2), (900, 3)]), 356 + 54);
        assert_eq!(premium_points(std::iter::empty()), 0);
    }

    #[test]
    fn premium_rounds_each_line_down_on_its_own() {
        // 1 x 1.50 -> 1 unit -> 2 points, twice; the order total 3.00 would give 6.
        assert_eq!(premium_points([(150, 1), (150, 1)]), 4);
        // The quantity counts before rounding: 3 x 0.50 = 1.50 -> 2 points.
        assert_eq!(premium_points([(50, 3)]), 2);
    }

    #[test]
    fn premium_never_goes_negative_or_overflows() {
        assert_eq!(premium_points([(-1_000, 5)]), 0);
        // Each line saturates at i64::MAX cents before it becomes points.
        let most_per_line = 2 * (i64::MAX / 100);
        assert_eq!(premium_points([(i64::MAX, u32::MAX), (i64::MAX, 1)]), 2 * most_per_line);
        assert_eq!(premium_points(vec![(i64::MAX, 1); 100]), i64::MAX);
    }

    #[test]
    fn tiers_read_from_the_database() {
        assert_eq!(Tier::from_db("premium"), Tier::Premium);
        assert_eq!(Tier::from_db("standard"), Tier::Standard);
        assert_eq!(Tier::from_db("gold"), Tier::Standard);
        assert_eq!(Tier::from_db(Tier::Premium.as_str()), Tier::Premium);
    }
}
