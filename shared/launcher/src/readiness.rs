//! Readiness: a service is ready when it answers. A responder is probed on
//! each of its subjects (the probe is answered without running a handler, so
//! it leaves no span); a consumer is ready when it has a pull request waiting
//! on its durable; the gateway when `/healthz` says 200.

use std::time::Duration;

use anyhow::bail;
use async_nats::jetstream;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracehop_messaging::topology;
use tracehop_proto::subjects;

const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The request/reply subjects each responder serves.
pub fn subjects_of(service: &str) -> Vec<String> {
    let fixed: &[&str] = match service {
        "order" => &[subjects::ORDER_PLACE, subjects::ORDER_GET],
        "inventory" => &[
            subjects::INVENTORY_RESERVE,
            subjects::INVENTORY_COMMIT,
            subjects::INVENTORY_RELEASE,
            subjects::INVENTORY_PRICES,
        ],
        "payment" => &[subjects::PAYMENT_CHARGE],
        "analytics" => &[subjects::ANALYTICS_SUMMARY],
        "sentinel" => &[subjects::SENTINEL_STATUS],
        "keeper" => &[subjects::KEEPER_STATS],
        _ => &[],
    };
    let mut all: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    if matches!(service, "loyalty" | "notification" | "analytics") {
        all.push(subjects::replay(service));
    }
    all
}

/// Whether `service` answers now. `gateway_addr` is used for the gateway.
pub async fn probe(nats: &async_nats::Client, service: &str, gateway_addr: &str) -> bool {
    for subject in subjects_of(service) {
        if !tracehop_messaging::probe(nats, &subject, PROBE_TIMEOUT).await {
            return false;
        }
    }
    match service {
        "loyalty" | "notification" | "analytics" | "payment" => consumer_pulling(nats, service).await,
        "gateway" => gateway_healthy(gateway_addr).await,
        "order" | "inventory" | "sentinel" | "keeper" => true,
        _ => false,
    }
}

async fn consumer_pulling(nats: &async_nats::Client, durable: &str) -> bool {
    let js = jetstream::new(nats.clone());
    let Ok(stream) = js.get_stream(topology::ORDERS_STREAM).await else { return false };
    let Ok(mut consumer) = stream.get_consumer::<jetstream::consumer::pull::Config>(durable).await else {
        return false;
    };
    consumer.info().await.is_ok_and(|info| info.num_waiting > 0)
}

async fn gateway_healthy(addr: &str) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt).await.ok().flatten().unwrap_or(false)
}

/// Waits until every one of `services` answers, or fails after `timeout`
/// naming those that did not.
pub async fn wait_ready(
    nats: &async_nats::Client,
    services: &[&str],
    gateway_addr: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pending: Vec<&str> = services.to_vec();
    loop {
        let mut still = Vec::new();
        for service in pending {
            if !probe(nats, service, gateway_addr).await {
                still.push(service);
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("not ready after {timeout:?}: {}", still.join(", "));
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
