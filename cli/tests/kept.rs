//! The kept-traces store: after the span feed has wrapped around many
//! times, a slow and an error trace are still found by `tracehop trace`,
//! `slowest` and `explain`, from the store; a trace that was not kept is reported as
//! older than the feed's window, with the window.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt as _;
use prost::Message as _;
use serde_json::Value;
use tracehop_proto::subjects;
use tracehop_proto::v1::{KeeperStatsReply, KeeperStatsRequest};
use tracehop_testkit::TestSystem;

/// A small feed, so that a few dozen orders wrap it.
const FEED_BYTES: i64 = 160 * 1024;

fn tracehop(system: &TestSystem, args: &[&str]) -> (bool, Value, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tracehop"))
        .args(args)
        .envs(system.command_env())
        .output()
        .unwrap();
    let json = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output.status.success(), json, String::from_utf8_lossy(&output.stdout).to_string())
}

async fn stored(system: &TestSystem) -> u64 {
    let reply =
        system.nats.request(subjects::KEEPER_STATS, KeeperStatsRequest {}.encode_to_vec().into()).await.unwrap();
    KeeperStatsReply::decode(reply.payload.as_ref()).unwrap().traces_stored
}

async fn feed_state(system: &TestSystem) -> async_nats::jetstream::stream::State {
    let mut stream = system.js.get_stream(tracehop_spanfeed::STREAM).await.unwrap();
    stream.info().await.unwrap().state.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_traces_outlive_the_feed_and_a_gone_trace_says_so() {
    let system = TestSystem::start_with(&[("TRACEHOP_KEEP_RATIO", "0"), ("KEEPER_QUIET_MS", "1000")]).await.unwrap();
    system
        .js
        .create_or_update_stream(tracehop_spanfeed::stream_config(FEED_BYTES, Duration::from_secs(3600)))
        .await
        .unwrap();

    let (status, body, _) = post_order(&system, order_body("plain", &[("CB-004", 1)], CARD_OK), None).await;
    assert_eq!(status, 201);
    let plain = body["trace_id"].as_str().unwrap().to_string();
    let (status, body, _) = post_order(&system, order_body("declined", &[("CB-004", 1)], CARD_DECLINED), None).await;
    assert_eq!(status, 402);
    let declined = body["trace_id"].as_str().unwrap().to_string();
    // A slow checkout: a real row lock on its product, held 1.5 s.
    let slow =
        slow_checkout(&system, "HS-005", Duration::from_millis(1500)).await["trace_id"].as_str().unwrap().to_string();

    let started = Instant::now();
    while stored(&system).await < 2 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stored(&system).await, 2, "the error and the slow trace were stored, nothing else");

    // Wrap the feed around, many times.
    let before = feed_state(&system).await;
    futures::stream::iter(0..90)
        .for_each_concurrent(6, |n| {
            let system = &system;
            async move {
                let (status, ..) =
                    post_order(system, order_body(&format!("filler-{n}"), &[("MS-002", 1)], CARD_OK), None).await;
                assert_eq!(status, 201);
            }
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = feed_state(&system).await;
    let wraps = (after.last_sequence - before.last_sequence) as f64 / after.messages.max(1) as f64;
    println!(
        "feed: {} messages held, {} published since; wrapped {wraps:.1} times",
        after.messages,
        after.last_sequence - before.last_sequence
    );
    assert!(after.first_sequence > before.last_sequence, "the feed dropped everything from before");
    assert!(wraps >= 3.0, "the feed wrapped around {wraps:.1} times");

    for (trace_id, reason) in [(&declined, "error"), (&slow, "slow")] {
        let (found, json, _) = tracehop(&system, &["trace", trace_id, "--json"]);
        assert!(found, "{trace_id}: {json}");
        assert_eq!(json["found_in"], "kept", "{json}");
        assert_eq!(json["kept_reason"], reason, "{json}");
        assert!(json["spans"].as_array().unwrap().len() > 10, "the whole trace");
    }
    let (found, text, _) = tracehop(&system, &["trace", &declined]);
    assert!(found, "{text}");
    // slowest finds the slow checkout in the store, and explain reads it.
    let (ok, json, _) = tracehop(&system, &["slowest", "--json", "--limit", "3"]);
    assert!(ok, "{json}");
    assert_eq!(json["traces"][0]["trace_id"], slow.as_str(), "{json}");
    let (ok, json, _) = tracehop(&system, &["explain", &slow, "--json"]);
    assert!(ok, "{json}");
    assert!(json["duration_ms"].as_f64().is_some_and(|ms| ms >= 1400.0), "{json}");

    let (found, json, _) = tracehop(&system, &["trace", &plain, "--json"]);
    assert!(!found, "a dropped, old trace is not found");
    assert_eq!(json["found_in"], "gone", "{json}");
    assert!(json["feed_window_seconds"].as_f64().is_some_and(|w| w > 0.0), "{json}");
    let (_, _, text) = tracehop(&system, &["trace", &plain]);
    assert!(text.contains("neither on the span feed") && text.contains("reaches back about"), "{text}");
}
