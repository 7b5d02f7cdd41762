//! The chaos suite past one machine: a three-node NATS cluster (ORDERS,
//! DEADLETTER, the leases and the span feed on three replicas) and two
//! copies of every service but the gateway, under steady checkouts.
//!
//! One copy of each service is killed with SIGKILL in turn and started
//! again; then the node that leads the ORDERS stream is killed and, a few
//! seconds later, restarted. Afterwards the chaos suite's verdict
//! (`common::chaos::verify`): every accepted order terminal with the fate
//! its client was told, each effect exactly once, no failed order charged,
//! one event per decided order, stock conserved. Then checkouts placed
//! after the chaos must have whole traces: every consumer span parented by,
//! and linked to, the order service's producer span, whichever copies did
//! the work.
//!
//! It prints what clients saw of the node's loss: the time from the kill to
//! the stream's new leader, the longest silence (no checkout answered) and
//! the longest checkout that started around the kill.
//!
//! Longer: `TRACEHOP_CHAOS_ORDERS=600 cargo test --release -p tracehop --test cluster -- --nocapture`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::chaos::*;
use common::*;
use tokio::sync::Mutex;
use tracehop_launcher::{SERVICES, Service};
use tracehop_spanfeed::SpanKind;
use tracehop_testkit::{NatsCluster, TestSystem};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_two_copies_of_everything_loses_nothing() {
    let min_orders = setting("TRACEHOP_CHAOS_ORDERS", 150);
    let concurrency = setting("TRACEHOP_CHAOS_CONCURRENCY", 4);
    let started = Instant::now();

    let cluster = NatsCluster::start().await.expect("three-node cluster");
    let mut system = TestSystem::start_on_cluster(cluster, 2, &CHAOS_ENV).await.expect("system start");
    let seeded = stock(&system).await;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let chaos_done = Arc::new(AtomicBool::new(false));
    let load =
        steady_orders(system.gateway_url.clone(), min_orders, concurrency, chaos_done.clone(), tally.clone(), started);
    let mut events = Vec::new();
    let mut node_loss = None;
    let chaos = async {
        let step = Duration::from_millis(1500);
        // One copy of each service in turn (the second of some, the first
        // of others, so that both names are exercised); the gateway runs
        // once and is left alone: killing it only breaks HTTP requests.
        for (i, service) in SERVICES.iter().filter(|s| **s != Service::Gateway.name()).enumerate() {
            tokio::time::sleep(step).await;
            let copy = if i % 2 == 0 { format!("{service}-2") } else { service.to_string() };
            system.kill_service(&copy).unwrap();
            events.push(format!("{:>6.1}s kill -9 {copy}", started.elapsed().as_secs_f64()));
            tokio::time::sleep(Duration::from_millis(700)).await;
            system.start_service(&copy).unwrap();
        }
        tokio::time::sleep(step).await;

        // The node that leads ORDERS dies; a new leader is elected among
        // the two left; the node comes back and catches up.
        let leader = system.nats_server.leader_of(&system.js, "ORDERS").await.unwrap().expect("ORDERS has a leader");
        system.nats_server.kill(leader);
        let killed_at = started.elapsed();
        let killed = Instant::now();
        events.push(format!(
            "{:>6.1}s kill -9 NATS node {} (the ORDERS leader)",
            killed_at.as_secs_f64(),
            NatsCluster::node_name(leader)
        ));
        let new_leader = system
            .nats_server
            .wait_for_leader(&system.js, "ORDERS", Some(leader), Duration::from_secs(30))
            .await
            .expect("a new ORDERS leader");
        let elected = killed.elapsed();
        events.push(format!(
            "{:>6.1}s ORDERS led by {} ({:.1} s after the kill)",
            started.elapsed().as_secs_f64(),
            NatsCluster::node_name(new_leader),
            elected.as_secs_f64()
        ));
        tokio::time::sleep(Duration::from_secs(3)).await;
        system.nats_server.restart(leader).await.expect("restart the node");
        events.push(format!(
            "{:>6.1}s NATS node {} restarted",
            started.elapsed().as_secs_f64(),
            NatsCluster::node_name(leader)
        ));
        system.nats_server.wait_caught_up(&system.js, "ORDERS", Duration::from_secs(60)).await.expect("caught up");
        events.push(format!("{:>6.1}s its ORDERS replica caught up", started.elapsed().as_secs_f64()));
        node_loss = Some((killed_at, elected));
        tokio::time::sleep(step).await;
        chaos_done.store(true, Ordering::Relaxed);
    };
    tokio::join!(load, chaos);
    let load_done = started.elapsed();
    system.wait_ready(&SERVICES).await.expect("every service back");

    let tally = tally.lock().await;
    let (killed_at, elected) = node_loss.expect("the node was killed");
    let around = killed_at.saturating_sub(Duration::from_secs(2))..killed_at + Duration::from_secs(20);
    let silence = tally.longest_silence_in(around.clone());
    let (longest_start, longest) = tally.longest_in(around).expect("checkouts around the node's loss");
    events.push(format!("ORDERS leader elected {:.1} s after the kill", elected.as_secs_f64()));
    events.push(format!("longest time without any checkout answered around the loss: {:.1} s", silence.as_secs_f64()));
    events.push(format!(
        "longest checkout started around the loss: {:.1} s (started {:.1} s after the kill)",
        longest.as_secs_f64(),
        longest_start.as_secs_f64() - killed_at.as_secs_f64()
    ));
    verify(&system, &tally, &seeded, min_orders, load_done, &events).await;
    drop(tally);

    // After the chaos, every trace is whole across copies: each consumer
    // span is a child of, and linked to, the order service's producer
    // span, and the spans come from more than one copy.
    let mut copies = std::collections::BTreeSet::new();
    for i in 0..6 {
        let (code, body, _) =
            post_order(&system, order_body(&format!("after-{i}"), &[("CB-004", 1)], CARD_OK), None).await;
        assert_eq!(code, 201, "{body}");
        let trace_id = body["trace_id"].as_str().unwrap();
        let spans = read_trace(&system, trace_id, |spans| {
            ["loyalty", "notification", "analytics"]
                .iter()
                .all(|consumer| spans.iter().any(|s| s.service == *consumer && s.kind == SpanKind::Consumer))
        })
        .await;
        for consumer in spans.iter().filter(|s| s.kind == SpanKind::Consumer) {
            let parent = parent_of(&spans, consumer);
            assert_eq!((parent.service.as_str(), parent.kind), ("order", SpanKind::Producer), "{}", names(&spans));
            assert!(consumer.links.iter().any(|l| l.span_id == parent.span_id), "{}", names(&spans));
        }
        assert!(services(&spans).contains("gateway") && services(&spans).contains("payment"), "{}", names(&spans));
        copies.extend(spans.iter().map(|s| (s.service.clone(), s.instance.clone())));
    }
    let order_copies = copies.iter().filter(|(service, _)| service == "order").count();
    println!("  order spans of the last traces came from {order_copies} copies");
}
