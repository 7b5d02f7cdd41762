//! Mail against a real SMTP server (the testkit's, on a free port): a relay
//! that stalls after DATA fails the attempt within the deadline and holds up
//! only the mail it stalls; a relay that is down dead-letters, and the
//! redrive sends each mail once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tracehop_spanfeed::{SpanStatus, fetch_trace};
use tracehop_testkit::{SmtpServer, Stall, TestSystem};

const DEADLINE_MS: u64 = 4000;

async fn place(system: &TestSystem, customer: &str, email: &str) -> Value {
    let mut body = order_body(customer, &[("CB-004", 1)], CARD_OK);
    body["email"] = Value::from(email);
    let (status, answer, _) = post_order(system, body, None).await;
    assert_eq!(status, 201, "{answer}");
    answer
}

fn mails_to(smtp: &SmtpServer, text: &str) -> usize {
    smtp.mails().iter().filter(|mail| mail.recipients.iter().any(|r| r.contains(text))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_relay_fails_within_the_deadline_and_holds_up_only_its_own_mail() {
    let smtp = SmtpServer::start().await.unwrap();
    smtp.set_stall(Stall::RecipientContaining("slow".to_string()));
    let deadline = DEADLINE_MS.to_string();
    let system = TestSystem::start_with(&[("SMTP_URL", &smtp.url()), ("NOTIFICATION_SMTP_TIMEOUT_MS", &deadline)])
        .await
        .unwrap();

    let slow = place(&system, "slow", "slow.customer@example.com").await;
    let placed = Instant::now();
    for n in 0..4 {
        place(&system, &format!("quick-{n}"), &format!("quick{n}@example.com")).await;
    }
    // The four quick mails go out while the slow one is still stalled: they
    // do not wait for its deadline.
    while mails_to(&smtp, "quick") < 4 && placed.elapsed() < Duration::from_millis(DEADLINE_MS * 3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let quick_done = placed.elapsed();
    assert_eq!(mails_to(&smtp, "quick"), 4, "logs:\n{}", system.logs());
    assert!(
        quick_done < Duration::from_millis(DEADLINE_MS),
        "the quick mails waited for the stalled one: {quick_done:?}"
    );
    assert_eq!(smtp.stalled(), 1, "the slow mail is being held");

    // The stalled attempt fails at the deadline, in a failed send span.
    let trace_id = slow["trace_id"].as_str().unwrap().to_string();
    let mut failed_send = None;
    for _ in 0..200 {
        let spans = fetch_trace(&system.js, &trace_id).await.unwrap();
        failed_send = spans.into_iter().find(|s| s.name == "send email" && s.status == SpanStatus::Error);
        if failed_send.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed_send = failed_send.unwrap_or_else(|| panic!("no failed send span; logs:\n{}", system.logs()));
    let took = Duration::from_nanos(failed_send.duration_nanos());
    assert!(
        took >= Duration::from_millis(DEADLINE_MS - 100) && took < Duration::from_millis(DEADLINE_MS + 1500),
        "the send gave up after {took:?}, not at the {DEADLINE_MS} ms deadline"
    );
    assert!(failed_send.status_message.contains("deadline"), "{}", failed_send.status_message);
    assert_eq!(failed_send.attr_str("server.address"), Some("127.0.0.1"));
    assert!(failed_send.attributes.get("server.port").and_then(Value::as_i64).is_some());

    // The relay recovers: the retry sends the slow mail, once.
    smtp.set_stall(Stall::Never);
    let recovered = Instant::now();
    while mails_to(&smtp, "slow") < 1 && recovered.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mails_to(&smtp, "slow"), 1, "logs:\n{}", system.logs());
    let sent = "SELECT COUNT(*) FROM notification.emails WHERE status = 'sent'";
    assert_eq!(eventually_value(&system, sent, |n| n == 5).await, 5);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.mails().len(), 5, "each mail once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_is_down_dead_letters_and_the_redrive_sends_each_mail_once() {
    let mut smtp = SmtpServer::start().await.unwrap();
    let system = TestSystem::start_with(&[("SMTP_URL", &smtp.url())]).await.unwrap();
    smtp.stop();

    place(&system, "down-1", "down1@example.com").await;
    place(&system, "down-2", "down2@example.com").await;
    // Five deliveries each (naks of 0.5, 1, 2 and 4 s), then dead letters.
    let dead_letters = async || {
        let mut stream = system.js.get_stream("DEADLETTER").await.unwrap();
        stream.info().await.unwrap().state.messages
    };
    let started = Instant::now();
    while dead_letters().await < 2 && started.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dead_letters().await, 2, "logs:\n{}", system.logs());
    assert!(smtp.mails().is_empty());
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM notification.emails").await, 0, "nothing recorded as sent");

    // The relay is back: the redrive sends each mail once; a second finds
    // nothing to do.
    smtp.start_again().await.unwrap();
    for expected_applied in [2, 0] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tracehop"))
            .args(["replay", "--dead-letters", "--consumer", "notification", "--json"])
            .envs(system.command_env())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let redrive: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(redrive["applied"].as_u64(), Some(expected_applied), "{redrive}");
    }
    assert_eq!(mails_to(&smtp, "down1"), 1);
    assert_eq!(mails_to(&smtp, "down2"), 1);
    assert_eq!(smtp.mails().len(), 2);
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM notification.emails WHERE status = 'sent'").await, 2);
}
