//! `tracehop discard-dead-letters --consumer NAME`: drops a consumer's dead
//! letters on purpose, for events that must not be processed after all,
//! and says what it dropped (how many, and why each group was given up
//! on). It is the other way, besides a redrive (`tracehop replay
//! --dead-letters`), to close the sentinel's dead-letter alert. A dead
//! letter stored while it runs is kept.

use std::process::ExitCode;

use serde_json::{Value, json};
use tracehop_messaging::dead_letters::{self, Summary};
use tracehop_messaging::topology;

use crate::settings::Settings;
use crate::term::sanitize;

/// Drops every dead letter of `consumer` stored so far and prints what.
pub async fn run(settings: &Settings, consumer: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    if !topology::expected_consumers().iter().any(|spec| spec.durable == consumer) {
        let names: Vec<&str> = topology::expected_consumers().iter().map(|spec| spec.durable).collect();
        anyhow::bail!("unknown consumer {consumer:?}; the consumers are {}", names.join(", "));
    }
    let nats = super::connect_nats(settings).await?;
    let js = async_nats::jetstream::new(nats);
    let dropped = dead_letters::discard(&js, consumer).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&to_json(consumer, &dropped))?);
    } else {
        print!("{}", describe(consumer, &dropped));
    }
    Ok(ExitCode::SUCCESS)
}

/// What was dropped, for people.
pub fn describe(consumer: &str, dropped: &Summary) -> String {
    if dropped.count == 0 {
        return format!("{consumer} has no dead letters; nothing discarded\n");
    }
    let noun = if dropped.count == 1 { "dead letter" } else { "dead letters" };
    let mut text =
        format!("discarded {} {noun} of {consumer}: those events will not be processed by {consumer}\n", dropped.count);
    for (reason, count) in &dropped.reasons {
        text.push_str(&format!("  {count:>5}  {}\n", sanitize(reason)));
    }
    if !dropped.original_sequences.is_empty() {
        let sequences: Vec<String> = dropped.original_sequences.iter().take(20).map(u64::to_string).collect();
        let more = if dropped.original_sequences.len() > 20 { ", ..." } else { "" };
        text.push_str(&format!("  stream sequences {}{more}\n", sequences.join(", ")));
    }
    text
}

/// What was dropped, for scripts.
pub fn to_json(consumer: &str, dropped: &Summary) -> Value {
    json!({
        "consumer": consumer,
        "discarded": dropped.count,
        "reasons": dropped.reasons,
        "stream_sequences": dropped.original_sequences,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_how_many_and_why() {
        let dropped = Summary {
            count: 3,
            reasons: [("payload is not a valid tracehop.v1.OrderEvent\x1b[2J".to_string(), 3)].into_iter().collect(),
            original_sequences: [4, 5, 9].into_iter().collect(),
            last_sequence: 12,
        };
        let text = describe("analytics", &dropped);
        assert_eq!(
            text,
            "discarded 3 dead letters of analytics: those events will not be processed by analytics\n      3  \
             payload is not a valid tracehop.v1.OrderEvent[2J\n  stream sequences 4, 5, 9\n"
        );
        assert_eq!(to_json("analytics", &dropped)["discarded"], 3);
        assert_eq!(describe("loyalty", &Summary::default()), "loyalty has no dead letters; nothing discarded\n");
    }
}
