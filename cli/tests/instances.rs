//! Two copies of every service (`tracehop up --instances 2`), on one
//! machine: they share the work, the sentinel's copies elect one leader,
//! one copy of a consumer dying raises no alert while both dying does, and
//! when the leading sentinel dies the standby takes over and raises the
//! next alert.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt as _;
use prost::Message as _;
use tracehop::commands::status;
use tracehop_proto::v1::{Alert, AlertKind};
use tracehop_spanfeed::SpanKind;
use tracehop_testkit::TestSystem;

const DEADLINE_MS: u64 = 3000;
/// How long a dead leader's lease may outlive it, plus a campaign's retry
/// and the down-after period of a fresh judgement.
const TAKEOVER: Duration = Duration::from_secs(12);

async fn next_alert(alerts: &mut async_nats::Subscriber, within: Duration) -> Option<Alert> {
    let message = tokio::time::timeout(within, alerts.next()).await.ok()??;
    Alert::decode(message.payload.as_ref()).ok()
}

async fn place(system: &TestSystem, customer: &str) -> (uuid::Uuid, String) {
    let (code, body, _) = post_order(system, order_body(customer, &[("CB-004", 1)], CARD_OK), None).await;
    assert_eq!(code, 201, "{body}");
    (body["order_id"].as_str().unwrap().parse().unwrap(), body["trace_id"].as_str().unwrap().to_string())
}

fn copies_up(status: &status::Status, service: &str) -> Vec<status::ServiceStatus> {
    status.services.iter().filter(|s| s.service == service && s.state == "up").cloned().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_copies_of_every_service_share_the_work_and_fail_over() {
    let deadline = DEADLINE_MS.to_string();
    let mut system =
        TestSystem::start_instances(2, &[("SENTINEL_DEADLINE_MS", deadline.as_str())]).await.expect("system start");

    // Every copy runs; the sentinel's copies elect exactly one leader.
    let seen = status::gather(&system.launcher, &system.nats).await;
    for service in ["inventory", "payment", "order", "loyalty", "notification", "analytics", "sentinel", "keeper"] {
        assert_eq!(copies_up(&seen, service).len(), 2, "{service}: {:#?}", seen.services);
    }
    assert_eq!(copies_up(&seen, "gateway").len(), 1, "{:#?}", seen.services);
    let roles: BTreeSet<Option<String>> = copies_up(&seen, "sentinel").into_iter().map(|s| s.role).collect();
    assert_eq!(roles, BTreeSet::from([Some("leader".to_string()), Some("standby".to_string())]), "{seen:#?}");

    // Checkouts are shared: each request/reply service's SERVER spans and
    // each consumer's CONSUMER spans come from both copies (by
    // `service.instance.id`), and every trace is whole.
    let mut orders = Vec::new();
    for i in 0..16 {
        orders.push(place(&system, &format!("shared-{i}")).await);
    }
    let mut instances: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (order_id, trace_id) in &orders {
        let processed = "SELECT COUNT(*) FROM analytics.order_events WHERE order_id = $1";
        assert_eq!(eventually(&system, processed, *order_id, 1).await, 1, "analytics processed {order_id}");
        let spans = read_trace(&system, trace_id, |spans| {
            ["loyalty", "notification", "analytics"]
                .iter()
                .all(|consumer| spans.iter().any(|s| s.service == *consumer && s.kind == SpanKind::Consumer))
        })
        .await;
        for span in spans.iter().filter(|s| matches!(s.kind, SpanKind::Server | SpanKind::Consumer)) {
            instances.entry(format!("{} {:?}", span.service, span.kind)).or_default().insert(span.instance.clone());
        }
        // Parented across processes: every consumer span's parent is the
        // order service's producer span, whichever copy relayed it.
        for consumer in spans.iter().filter(|s| s.kind == SpanKind::Consumer) {
            let parent = parent_of(&spans, consumer);
            assert_eq!((parent.service.as_str(), parent.kind), ("order", SpanKind::Producer), "{}", names(&spans));
            assert!(consumer.links.iter().any(|l| l.span_id == parent.span_id), "{}", names(&spans));
        }
    }
    for (service, kind) in [("order", SpanKind::Server), ("inventory", SpanKind::Server), ("payment", SpanKind::Server)]
    {
        let copies = instances.get(&format!("{service} {kind:?}")).cloned().unwrap_or_default();
        assert_eq!(copies.len(), 2, "{service} {kind:?} spans came from {copies:?}");
    }
    for consumer in ["loyalty", "notification", "analytics"] {
        let copies = instances.get(&format!("{consumer} Consumer")).cloned().unwrap_or_default();
        assert_eq!(copies.len(), 2, "{consumer}'s events were processed by {copies:?}");
    }

    // One copy of a consumer dies: the other goes on, and the sentinel says
    // nothing.
    let mut alerts =
        system.nats.subscribe(format!("{}.analytics", tracehop_proto::subjects::ALERTS_PREFIX)).await.unwrap();
    system.nats.flush().await.unwrap();
    system.kill_service("analytics-2").unwrap();
    let mut after_one = Vec::new();
    for i in 0..6 {
        after_one.push(place(&system, &format!("one-down-{i}")).await);
    }
    for (order_id, _) in &after_one {
        let processed = "SELECT COUNT(*) FROM analytics.order_events WHERE order_id = $1";
        assert_eq!(eventually(&system, processed, *order_id, 1).await, 1, "the other copy processed {order_id}");
    }
    let quiet = next_alert(&mut alerts, Duration::from_millis(DEADLINE_MS + 2000)).await;
    assert!(quiet.is_none(), "an alert while a copy of analytics still works: {quiet:?}");

    // Both copies dead: the consumer is down, and the sentinel says so.
    system.kill_service("analytics").unwrap();
    let killed = Instant::now();
    place(&system, "both-down").await;
    let alert = next_alert(&mut alerts, Duration::from_millis(DEADLINE_MS + 3000))
        .await
        .expect("no alert with both copies down");
    assert_eq!(alert.kind, AlertKind::ConsumerDown as i32, "{alert:?}");
    println!("both copies of analytics down: alert after {:.1} s", killed.elapsed().as_secs_f64());

    // The leading sentinel dies: the standby takes the lease and, judging
    // afresh, raises the alert of the consumer that is still down.
    let leader = copies_up(&status::gather(&system.launcher, &system.nats).await, "sentinel")
        .into_iter()
        .find(|s| s.role.as_deref() == Some("leader"))
        .expect("a leading sentinel");
    system.kill_service(&leader.name).unwrap();
    let leader_killed = Instant::now();
    // Down, or lagging when a pull request of a dead copy still lingers
    // on the durable: both say analytics is not processing.
    let alert = next_alert(&mut alerts, TAKEOVER).await.expect("the standby sentinel raised no alert");
    let not_processing = [AlertKind::ConsumerDown as i32, AlertKind::ConsumerLagging as i32];
    assert!(not_processing.contains(&alert.kind) && alert.consumer == "analytics", "{alert:?}");
    println!("leading sentinel killed: the standby's alert after {:.1} s", leader_killed.elapsed().as_secs_f64());
    let now = status::gather(&system.launcher, &system.nats).await;
    let leading: Vec<String> = copies_up(&now, "sentinel")
        .into_iter()
        .filter(|s| s.role.as_deref() == Some("leader"))
        .map(|s| s.name)
        .collect();
    assert_eq!(leading.len(), 1, "{now:#?}");
    assert_ne!(leading[0], leader.name, "{now:#?}");
    assert!(now.sentinel, "the new leader answers status");

    // Analytics back: the new leader reports the recovery, nothing lost.
    system.start_service("analytics").unwrap();
    system.wait_ready(&["analytics"]).await.unwrap();
    let recovered = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match next_alert(&mut alerts, Duration::from_secs(20)).await {
                Some(alert) if alert.kind == AlertKind::ConsumerRecovered as i32 => return alert,
                Some(_) => continue,
                None => panic!("no recovery alert"),
            }
        }
    })
    .await
    .expect("no recovery alert within 20 s");
    assert_eq!(recovered.consumer, "analytics");
    let placed = orders.len() + after_one.len() + 1;
    let recorded =
        eventually_value(&system, "SELECT COUNT(*) FROM analytics.order_events", |n| n >= placed as i64).await;
    assert_eq!(recorded, placed as i64, "every event processed once");
}
