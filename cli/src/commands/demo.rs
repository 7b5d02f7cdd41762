//! `tracehop demo`: a guided run of what tracehop shows.

use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream;
use tracehop_spanfeed::wait_for_settled_trace;

use crate::client::{ItemArg, OrderInput, place_order};
use crate::render;
use crate::settings::Settings;

pub async fn run(settings: &Settings) -> anyhow::Result<ExitCode> {
    println!("== tracehop demo ==\n\n-- bringing the system up --");
    super::up::bring_up(settings).await?;
    let js = jetstream::new(super::connect_nats(settings).await?);
    let http = reqwest::Client::new();
    let item = |sku: &str, quantity| ItemArg { sku: sku.to_string(), quantity };
    let orders = [
        (
            "a confirmed order",
            OrderInput {
                customer: "alice".into(),
                items: vec![item("KB-001", 1), item("MS-002", 2)],
                card: "4242424242424242".into(),
                email: Some("alice@example.com".into()),
                traceparent: None,
            },
        ),
        (
            "a premium customer's order (loyalty prices every item)",
            OrderInput {
                customer: "premium-pat".into(),
                items: vec![item("MN-003", 1), item("CB-004", 3), item("HS-005", 1)],
                card: "4242424242424242".into(),
                email: Some("pat@example.com".into()),
                traceparent: None,
            },
        ),
        (
            "a declined card",
            OrderInput {
                customer: "bob".into(),
                items: vec![item("LMP-006", 1)],
                card: "4000000000000002".into(),
                email: Some("bob@example.com".into()),
                traceparent: None,
            },
        ),
    ];
    let color = super::is_terminal();
    for (title, input) in orders {
        println!("\n-- {title} --");
        let outcome = place_order(&http, &settings.gateway_url(), &input).await?;
        println!("{}", super::order::describe(&outcome));
        let Some(trace_id) = outcome.trace_id.as_deref() else { continue };
        let spans = wait_for_settled_trace(&js, trace_id, super::trace::SETTLE, Duration::from_secs(15)).await?;
        println!("{}", render::waterfall(&spans, super::trace::terminal_width(), color));
    }
    println!("\nThe system is still running. Next:");
    println!("  tracehop order --json                 place another order");
    println!("  tracehop trace <trace_id> --wait 5    read its trace back");
    println!("  tracehop watch                        spans as they finish");
    println!("  tracehop down                         stop everything");
    Ok(ExitCode::SUCCESS)
}
