//! A real three-node NATS cluster: it forms, `prepare` replicates every
//! store on all three nodes, and when the node that leads ORDERS is killed
//! under a steady publisher, a new leader is elected and the same client's
//! publishes keep being acknowledged, none twice; the node restarted catches
//! up with everything it missed.
//!
//! `cargo test -p tracehop-testkit --test cluster -- --nocapture` prints the
//! failover time the publishing client saw.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage as Publish};
use tokio::time::Instant;
use tracehop_messaging::Service;
use tracehop_messaging::topology::{DEAD_LETTER_STREAM, ORDERS_STREAM, StreamReplicas};
use tracehop_testkit::{CLUSTER_NODES, NatsCluster, TestDatabase, TestNats, TestSystem};

fn three() -> StreamReplicas {
    StreamReplicas::new(CLUSTER_NODES).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_replicates_every_store_on_the_three_nodes() {
    let started = Instant::now();
    let cluster = NatsCluster::start().await.expect("the cluster starts");
    println!("cluster ready in {:?}", started.elapsed());
    assert_eq!(cluster.url().split(',').count(), 3);
    let pids: std::collections::HashSet<u32> = (0..CLUSTER_NODES).filter_map(|node| cluster.pid(node)).collect();
    assert_eq!(pids.len(), 3, "three processes");
    assert_eq!(cluster.stream_replicas(), three());

    let db = TestDatabase::create().await.expect("a database");
    let command = cluster.connect_command().await.unwrap();
    tracehop_launcher::prepare(&command, &db.url(), &tracehop_spanfeed::kept::Limits::default(), three(), |_| None)
        .await
        .expect("prepare on the cluster");
    let js = jetstream::new(command);
    let stores = [
        ORDERS_STREAM.to_string(),
        DEAD_LETTER_STREAM.to_string(),
        tracehop_spanfeed::STREAM.to_string(),
        tracehop_spanfeed::kept::STREAM.to_string(),
        format!("KV_{}", tracehop_scenarios::BUCKET),
        format!("KV_{}", tracehop_telemetry::health::BUCKET),
    ];
    for name in &stores {
        let info = cluster.wait_caught_up(&js, name, Duration::from_secs(20)).await.expect("replicated");
        assert_eq!(info.config.num_replicas, 3, "{name}");
        let group = info.cluster.expect("a clustered stream has cluster info");
        let mut members: Vec<String> = group.replicas.iter().map(|peer| peer.name.clone()).collect();
        members.extend(group.leader);
        members.sort();
        assert_eq!(members, ["tracehop-1", "tracehop-2", "tracehop-3"], "{name} lives on every node");
    }
    // The durables are replicated with their stream.
    for spec in tracehop_messaging::topology::expected_consumers() {
        let stream = js.get_stream(spec.stream).await.unwrap();
        let consumer = stream.consumer_info(spec.durable).await.expect("the durable exists");
        let group = consumer.cluster.clone().expect("a clustered consumer has cluster info");
        assert_eq!(group.replicas.len() + usize::from(group.leader.is_some()), 3, "{}", spec.durable);
    }

    let order = jetstream::new(cluster.connect_service(Service::Order).await.unwrap());
    let ack = order
        .send_publish("orders.confirmed", Publish::build().payload("first".into()).message_id("event-1"))
        .await
        .unwrap()
        .await
        .expect("a publish to R3 ORDERS is acked");
    assert_eq!((ack.stream.as_str(), ack.sequence), (ORDERS_STREAM, 1));
    assert!(cluster.violations().is_empty(), "{:?}", cluster.violations());
}

/// One publish the way the outbox relay does it: a message id, retried
/// until acknowledged. Returns how many attempts it took.
async fn publish_until_acked(js: &jetstream::Context, id: &str, deadline: Instant) -> usize {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let publish = Publish::build().payload(id.to_string().into()).message_id(id);
        let sent = async { js.send_publish("orders.confirmed", publish).await?.await.map_err(anyhow::Error::from) };
        match tokio::time::timeout(Duration::from_secs(2), sent).await {
            Ok(Ok(_)) => return attempts,
            _ if Instant::now() >= deadline => panic!("{id} was not acknowledged in time ({attempts} attempts)"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orders_leader_dies_a_new_one_takes_over_and_the_node_catches_up() {
    let mut cluster = NatsCluster::start().await.expect("the cluster starts");
    let js = jetstream::new(cluster.connect_command().await.unwrap());
    tracehop_messaging::topology::ensure_all(&js, three()).await.expect("ORDERS on three nodes");
    // The publisher is given every node, as a service is; it may well be
    // connected to the leader that dies.
    let order = jetstream::new(cluster.connect_service(Service::Order).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(90);

    let mut next = 0usize;
    for _ in 0..50 {
        next += 1;
        publish_until_acked(&order, &format!("event-{next}"), deadline).await;
    }
    let leader = cluster.wait_for_leader(&js, ORDERS_STREAM, None, Duration::from_secs(10)).await.unwrap();
    println!("ORDERS is led by {}; killing it", NatsCluster::node_name(leader));

    let killed_at = Instant::now();
    cluster.kill(leader);
    // The very next publish after the kill: how long until it is acked is
    // the failover time a client sees (the election, plus its reconnect
    // when it was connected to the dead node).
    next += 1;
    let attempts = publish_until_acked(&order, &format!("event-{next}"), deadline).await;
    let failover = killed_at.elapsed();
    let new_leader = cluster.wait_for_leader(&js, ORDERS_STREAM, Some(leader), Duration::from_secs(30)).await.unwrap();
    println!(
        "failover seen by the publishing client: {failover:?} ({attempts} attempts); new leader {}",
        NatsCluster::node_name(new_leader)
    );
    assert_ne!(new_leader, leader);
    assert!(failover < Duration::from_secs(30), "failover took {failover:?}");

    // Publishes keep being acked with the node down, each promptly.
    for _ in 0..50 {
        next += 1;
        let one = Instant::now();
        publish_until_acked(&order, &format!("event-{next}"), deadline).await;
        assert!(one.elapsed() < Duration::from_secs(2), "a publish on two nodes took {:?}", one.elapsed());
    }
    // An event the relay publishes again after the failover (its ack was
    // lost) is recognised as a duplicate, across leaders.
    let again = order
        .send_publish("orders.confirmed", Publish::build().payload("again".into()).message_id("event-1"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(again.duplicate, "the new leader knows the message ids of the old one");

    // The killed node comes back on its ports and store and catches up.
    cluster.restart(leader).await.expect("the node restarts");
    let info = cluster.wait_caught_up(&js, ORDERS_STREAM, Duration::from_secs(30)).await.expect("it catches up");
    assert_eq!(info.state.messages, next as u64, "every event once, none twice");
    // Make the restarted node the leader: what it serves is what it holds.
    let leads = lead_with(&cluster, &js, ORDERS_STREAM, leader, Duration::from_secs(60)).await;
    assert!(leads, "the restarted node never became the leader");
    let info = js.get_stream(ORDERS_STREAM).await.unwrap().cached_info().clone();
    assert_eq!(info.state.messages, next as u64, "the restarted node holds every event");
    assert_eq!(info.state.last_sequence, next as u64);
    next += 1;
    publish_until_acked(&order, &format!("event-{next}"), deadline).await;
    assert!(cluster.violations().is_empty(), "{:?}", cluster.violations());
}

/// Asks `stream`'s leader to step down until `node` leads; false when it
/// did not within `timeout`.
async fn lead_with(
    cluster: &NatsCluster,
    js: &jetstream::Context,
    stream: &str,
    node: usize,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match cluster.leader_of(js, stream).await {
            Ok(Some(leader)) if leader == node => return true,
            Ok(Some(_)) => {
                let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
                let _ = js.client().request(subject, "".into()).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    false
}

/// What replicating the span feed costs: the same spans-sized messages to a
/// memory stream with one copy and with three, 16 publishes in flight (as
/// the exporters' batches are), from a service on a subject of its spans.
/// Printed for `Store::replicas`' argument; the test asserts only that
/// every message was stored, and that nothing was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_span_feed_on_one_node_and_on_three() {
    let cluster = NatsCluster::start().await.expect("the cluster starts");
    let js = jetstream::new(cluster.connect_command().await.unwrap());
    let service = jetstream::new(cluster.connect_service(Service::Order).await.unwrap());
    // 2.7 KB: a feed message at 200 checkouts a second (4.5 MiB/s in 1,700).
    let payload = bytes::Bytes::from(vec![b'x'; 2700]);
    let count = 4000usize;
    for replicas in [1usize, 3] {
        // A partition of the feed's subjects of its own, as the service may
        // publish there.
        let name = format!("FEED_R{replicas}");
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("spans.{replicas}.*.*")],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .unwrap();
        let subject = format!("spans.{replicas}.0123456789abcdef0123456789abcdef.order");
        let started = Instant::now();
        let mut in_flight = std::collections::VecDeque::new();
        for _ in 0..count {
            if in_flight.len() == 16 {
                let ack: async_nats::jetstream::context::PublishAckFuture = in_flight.pop_front().unwrap();
                ack.await.expect("acked");
            }
            in_flight.push_back(service.publish(subject.clone(), payload.clone()).await.unwrap());
        }
        for ack in in_flight {
            ack.await.expect("acked");
        }
        let elapsed = started.elapsed();
        let stored = js.get_stream(&name).await.unwrap().cached_info().state.messages;
        assert_eq!(stored, count as u64);
        println!(
            "memory stream R{replicas}: {count} messages of 2.7 KB in {elapsed:?}: {:.0} messages/s",
            count as f64 / elapsed.as_secs_f64()
        );
    }
    assert!(cluster.violations().is_empty(), "{:?}", cluster.violations());
}

/// A checkout through the gateway, over plain HTTP/1.1 (the testkit has no
/// HTTP client); the status code, or `None` when there was no answer.
async fn checkout(gateway_url: &str, idempotency_key: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = gateway_url.trim_start_matches("http://");
    let body = r#"{"customer_id":"cluster-test","items":[{"sku":"KB-001","quantity":1}],"card":{"number":"4242 4242 4242 4242","expiry":"12/34","cvv":"123"},"email":"cluster@example.com"}"#;
    let request = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nIdempotency-Key: \
         {idempotency_key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        response.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(30), exchange).await.ok().flatten()
}

/// Places checkouts, each with a key of its own, until one is confirmed
/// (201); returns how many were not (a checkout in flight while a node
/// dies may fail, safely: a payment that timed out fails its order, and
/// the same key would be answered the same again).
async fn checkout_until_confirmed(gateway_url: &str, prefix: &str, timeout: Duration) -> Result<usize, String> {
    let deadline = Instant::now() + timeout;
    let mut answers = Vec::new();
    loop {
        let key = format!("{prefix}-{}", answers.len() + 1);
        match checkout(gateway_url, &key).await {
            Some(201) => return Ok(answers.len()),
            answer if Instant::now() >= deadline => {
                answers.push(answer);
                return Err(format!("no checkout confirmed within {timeout:?}; answers: {answers:?}"));
            }
            answer => {
                answers.push(answer);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Every service on the cluster, under the shipped permissions: ready,
/// a checkout confirmed and its event consumed; then the node leading
/// ORDERS is killed, and the next checkout is confirmed and consumed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_runs_on_the_cluster_and_outlives_a_node() {
    let cluster = NatsCluster::start().await.expect("the cluster starts");
    let mut system =
        TestSystem::start_on_cluster(cluster, 2, &[]).await.expect("every service gets ready on the cluster");
    let info = system.nats_server.wait_caught_up(&system.js, ORDERS_STREAM, Duration::from_secs(20)).await.unwrap();
    assert_eq!(info.config.num_replicas, 3);

    let confirmed = checkout_until_confirmed(&system.gateway_url, "before", Duration::from_secs(30)).await;
    let failed = confirmed.unwrap_or_else(|error| panic!("{error}; logs:\n{}", system.logs()));
    assert_eq!(failed, 0, "a checkout failed with every node up");
    wait_consumed(&system, 1).await;

    let leader = system.nats_server.leader_of(&system.js, ORDERS_STREAM).await.unwrap().expect("ORDERS has a leader");
    system.nats_server.kill(leader);
    let killed_at = Instant::now();
    let confirmed = checkout_until_confirmed(&system.gateway_url, "after", Duration::from_secs(60)).await;
    let failed = confirmed.unwrap_or_else(|error| panic!("{error}; logs:\n{}", system.logs()));
    println!(
        "a checkout confirmed {:?} after the ORDERS leader was killed ({failed} failed first)",
        killed_at.elapsed()
    );
    wait_consumed(&system, 2).await;
    system.nats_server.restart(leader).await.unwrap();
    system.nats_server.wait_caught_up(&system.js, ORDERS_STREAM, Duration::from_secs(30)).await.unwrap();
    system.wait_ready(&tracehop_launcher::SERVICES).await.unwrap();
}

/// Waits until ORDERS holds one event per decided order in the database
/// (confirmed or failed; at least `at_least`), none twice and none missing,
/// and every expected durable has acknowledged all of them.
async fn wait_consumed(system: &TestSystem<NatsCluster>, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let decided: i64 =
            sqlx::query_scalar("SELECT count(*) FROM ordering.orders WHERE status IN ('confirmed', 'failed')")
                .fetch_one(&system.db.pool)
                .await
                .unwrap();
        let mut done = match system.js.get_stream(ORDERS_STREAM).await {
            Ok(stream) => {
                let events = stream.cached_info().state.messages;
                events >= at_least && events == decided as u64
            }
            Err(_) => false,
        };
        for spec in tracehop_messaging::topology::expected_consumers() {
            let Ok(stream) = system.js.get_stream(spec.stream).await else {
                done = false;
                continue;
            };
            match stream.consumer_info(spec.durable).await {
                Ok(info) => done &= info.num_pending == 0 && info.num_ack_pending == 0,
                Err(_) => done = false,
            }
        }
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "the events of {decided} orders were not all consumed:\n{}", system.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
