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
    super::up::bring_up(settings, settings.launcher()?.instances).await?;
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
    silent_failure(settings, &js, &http).await?;
    twelve_second_checkout(settings, &js).await?;

    println!("\nThe system is still running. Next:");
    println!("  tracehop order --json                 place another order");
    println!("  tracehop trace <trace_id> --wait 5    read its trace back");
    println!("  tracehop watch                        spans as they finish");
    println!("  tracehop status                       services, consumers, traces, alerts");
    println!("  tracehop scenario list                the other faults to switch on, and their fixes");
    println!("  tracehop load --rate 30 --duration 1m then: tracehop slowest");
    println!("  tracehop down                         stop everything");
    Ok(ExitCode::SUCCESS)
}

/// Kill analytics, place orders, show the sentinel's alert and a trace with
/// its failure span, restart analytics, show the recovery and that nothing
/// was lost, then rebuild analytics by replay.
async fn silent_failure(settings: &Settings, js: &jetstream::Context, http: &reqwest::Client) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use tracehop_launcher::StopMode;
    use tracehop_proto::Message as _;
    use tracehop_proto::v1::{Alert, AlertKind};

    let nats = js.client();
    let launcher = settings.launcher()?;
    let mut alerts = nats.subscribe(format!("{}.analytics", tracehop_proto::subjects::ALERTS_PREFIX)).await?;
    let before = analytics_summary(http, settings).await?;

    println!("\n-- a silent failure: analytics is killed (SIGKILL) while orders keep coming --");
    launcher.stop("analytics", StopMode::Kill).await?;
    let mut missed = Vec::new();
    for customer in ["dora", "eli", "fay"] {
        let input = OrderInput {
            customer: customer.into(),
            items: vec![ItemArg { sku: "CB-004".into(), quantity: 2 }],
            card: "4242424242424242".into(),
            email: None,
            traceparent: None,
        };
        let outcome = place_order(http, &settings.gateway_url(), &input).await?;
        println!("{}", super::order::describe(&outcome));
        missed.extend(outcome.trace_id);
    }
    println!("(checkout still works: nothing fails loudly, the events just wait)");
    let alert = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(message) = alerts.next().await {
            if let Ok(alert) = Alert::decode(message.payload.as_ref()) {
                return Some(alert);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    match alert {
        Some(alert) => println!("\nALERT from the sentinel: {}", alert.message),
        None => println!("\nno alert from the sentinel within 15 s (is it running? tracehop status)"),
    }
    if let Some(trace_id) = missed.first() {
        println!("\nThe first missed order's trace: the sentinel's failure span names the consumer and the delay.");
        let spans = tracehop_spanfeed::wait_for_trace(js, trace_id, Duration::from_secs(20), |spans| {
            spans.iter().any(|s| s.name == "missed by analytics")
        })
        .await?;
        println!("{}", render::waterfall(&spans, super::trace::terminal_width(), super::is_terminal()));
    }

    println!("\n-- analytics is started again --");
    launcher.start("analytics")?;
    tracehop_launcher::wait_ready(&nats, &["analytics"], &settings.gateway_addr, Duration::from_secs(30)).await?;
    let recovered = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(message) = alerts.next().await {
            if let Ok(alert) = Alert::decode(message.payload.as_ref())
                && alert.kind == AlertKind::ConsumerRecovered as i32
            {
                return Some(alert);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    if let Some(alert) = recovered {
        println!("RECOVERED: {}", alert.message);
    }
    let after = analytics_summary(http, settings).await?;
    println!(
        "nothing lost: analytics counted {} confirmed orders before the kill and {} now (3 placed while it was down)",
        before, after
    );

    println!("\n-- a replay: analytics' projection rebuilt from the stream --");
    let args = super::replay::ReplayArgs { consumer: "analytics".into(), rebuild: true, ..Default::default() };
    super::replay::run(settings, args, false).await?;
    let rebuilt = analytics_summary(http, settings).await?;
    println!("after the rebuild analytics counts {rebuilt} confirmed orders: the same as before it");
    Ok(())
}

/// Load at a steady rate for the demo's acts, printing the live line and
/// the summary.
async fn demo_load(settings: &Settings, js: &jetstream::Context) -> anyhow::Result<crate::load::LoadReport> {
    let config = crate::load::LoadConfig {
        premium_ratio: 0.1,
        decline_ratio: 0.02,
        ..crate::load::LoadConfig::new(settings.gateway_url(), DEMO_RATE, DEMO_LOAD)
    };
    let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr_with_hz(4));
    let report = crate::load::run(&config, Some(js), |progress| {
        bar.set_message(super::load::progress_line(progress));
        bar.tick();
    })
    .await;
    bar.finish_and_clear();
    let report = report?;
    print!("{}", super::load::summary(&report));
    Ok(report)
}

/// Checkouts a second in the demo's load runs.
const DEMO_RATE: f64 = 20.0;
/// How long each demo load runs.
const DEMO_LOAD: Duration = Duration::from_secs(30);

/// The story tracehop exists to tell: checkout takes 12 seconds, but only
/// sometimes. Load runs with `slow-inventory` on; `slowest` finds the rare
/// slow checkout among the fast ones, `explain` says why; the fix goes on,
/// and the next run's tail shows it.
async fn twelve_second_checkout(settings: &Settings, js: &jetstream::Context) -> anyhow::Result<()> {
    use tracehop_scenarios::{Change, Scenario};
    let who = "tracehop demo";
    println!("\n-- \"checkout takes 12 seconds, but only sometimes\" --");
    println!("slow-inventory on: a restock batch job holds the restock queue's row locks; 5% of reservations file a");
    println!(
        "restock request and wait for them in PostgreSQL. {DEMO_RATE} checkouts a second for {}:",
        humantime::format_duration(DEMO_LOAD)
    );
    tracehop_scenarios::apply(js, Scenario::SlowInventory, Change::Unfix, who).await?;
    tracehop_scenarios::apply(js, Scenario::SlowInventory, Change::On { rate: Some(0.05) }, who).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    demo_load(settings, js).await?;

    println!("\nEvery service looks fine on its own. The traces find it: tracehop slowest --since 1m");
    super::slowest::run(settings, Some(Duration::from_secs(60)), 3, false).await?;
    let scan = tracehop_spanfeed::scan_feed(js, Some(Duration::from_secs(60))).await?;
    if let Some((_, trace_id)) = crate::analysis::checkouts_in(&scan, 0).first() {
        println!("\ntracehop explain {trace_id}");
        super::explain::run(settings, trace_id, None, false).await?;
    }

    println!("\n-- the fix: a lock timeout with a retry budget; the request is deferred, nobody waits --");
    tracehop_scenarios::apply(js, Scenario::SlowInventory, Change::Fix, who).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    demo_load(settings, js).await?;
    tracehop_scenarios::apply(js, Scenario::SlowInventory, Change::Off, who).await?;
    tracehop_scenarios::apply(js, Scenario::SlowInventory, Change::Unfix, who).await?;
    println!("\nslow-inventory is off again. The other scenarios: tracehop scenario list");
    Ok(())
}

async fn analytics_summary(http: &reqwest::Client, settings: &Settings) -> anyhow::Result<u64> {
    let summary: serde_json::Value =
        http.get(format!("{}/v1/analytics/summary", settings.gateway_url())).send().await?.json().await?;
    Ok(summary["orders_confirmed"].as_u64().unwrap_or_default())
}
