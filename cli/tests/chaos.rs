//! The chaos suite: a steady stream of orders against the whole system while
//! each of the seven services is killed with SIGKILL and restarted, then the
//! NATS server, then PostgreSQL (a private cluster, so nothing else is
//! disturbed). Afterwards it waits for quiet and checks, by SQL across the
//! schemas and by stream state, that nothing was lost and nothing doubled:
//!
//! - every order is confirmed or failed, none stuck;
//! - every confirmed order has exactly one loyalty accrual, one analytics
//!   record and one e-mail; every failed order one failure e-mail and one
//!   analytics record; no failed order stays charged;
//! - stock is conserved: seeded = on hand + reserved + sold, and nothing
//!   stays reserved;
//! - no event id is applied twice, and the ORDERS stream holds exactly one
//!   event per decided order.
//!
//! The kills here land wherever the load happens to be; `stock.rs` kills
//! PostgreSQL on purpose while releases are in flight.
//!
//! The short form runs in CI. The long form is for benchmarks:
//! `TRACEHOP_CHAOS_ORDERS=600 TRACEHOP_CHAOS_ROUNDS=2 cargo test --release -p tracehop --test chaos -- --nocapture`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::chaos::*;
use tokio::sync::Mutex;
use tracehop_launcher::SERVICES;
use tracehop_testkit::{PostgresCluster, TestDatabase, TestSystem};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_nothing_and_doubles_nothing() {
    let min_orders = setting("TRACEHOP_CHAOS_ORDERS", 150);
    let concurrency = setting("TRACEHOP_CHAOS_CONCURRENCY", 4);
    let rounds = setting("TRACEHOP_CHAOS_ROUNDS", 1);
    let started = Instant::now();

    // synchronous_commit stays on: a killed database must keep what it
    // acknowledged, as a production one does.
    let cluster = tokio::task::spawn_blocking(|| PostgresCluster::start_with(&[("synchronous_commit", "on")]))
        .await
        .unwrap()
        .expect("private PostgreSQL");
    let db = TestDatabase::create_on(&cluster.server_url()).await.expect("database");
    let mut cluster = Some(cluster);
    let mut system = TestSystem::start_on(db, &CHAOS_ENV).await.expect("system start");
    let seeded = stock(&system).await;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let chaos_done = Arc::new(AtomicBool::new(false));
    let load =
        steady_orders(system.gateway_url.clone(), min_orders, concurrency, chaos_done.clone(), tally.clone(), started);
    let mut events = Vec::new();
    let chaos = async {
        let step = Duration::from_millis(1500);
        for _ in 0..rounds {
            for service in SERVICES {
                tokio::time::sleep(step).await;
                system.kill_service(service).unwrap();
                events.push(format!("{:>6.1}s kill -9 {service}", started.elapsed().as_secs_f64()));
                tokio::time::sleep(Duration::from_millis(700)).await;
                system.start_service(service).unwrap();
            }
            tokio::time::sleep(step).await;
            events.push(format!("{:>6.1}s restart NATS", started.elapsed().as_secs_f64()));
            system.nats_server.restart().await.unwrap();
            tokio::time::sleep(step * 2).await;
            events.push(format!("{:>6.1}s kill -9 PostgreSQL, then start it", started.elapsed().as_secs_f64()));
            let mut postgres = cluster.take().expect("the cluster");
            cluster = Some(
                tokio::task::spawn_blocking(move || {
                    postgres.kill().expect("kill PostgreSQL");
                    std::thread::sleep(Duration::from_millis(700));
                    postgres.start_again().expect("start PostgreSQL");
                    postgres
                })
                .await
                .unwrap(),
            );
            tokio::time::sleep(step).await;
        }
        chaos_done.store(true, Ordering::Relaxed);
    };
    tokio::join!(load, chaos);
    let load_done = started.elapsed();
    system.wait_ready(&SERVICES).await.expect("every service back");

    let tally = tally.lock().await;
    verify(&system, &tally, &seeded, min_orders, load_done, &events).await;
    drop(cluster);
}
