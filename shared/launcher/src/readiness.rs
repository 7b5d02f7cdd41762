//! Readiness: a service is ready when it answers, as the catalog
//! ([`Service`]) describes it: it is probed on each subject it serves (the
//! probe is answered without running a handler, so it leaves no span), each
//! of its durables has a pull request waiting, and a service with an HTTP
//! probe (the gateway) says 200 on `/healthz`. A name outside the catalog is
//! never ready.

use std::time::Duration;

use anyhow::bail;
use async_nats::jetstream;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracehop_messaging::topology::{ConsumerSpec, Probe, Service};

const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The request/reply subjects the service called `service` answers on.
pub fn subjects_of(service: &str) -> Vec<String> {
    Service::from_name(service).map(Service::all_subjects).unwrap_or_default()
}

/// Whether `service` answers now. `gateway_addr` is used for an HTTP probe.
pub async fn probe(nats: &async_nats::Client, service: &str, gateway_addr: &str) -> bool {
    let Some(service) = Service::from_name(service) else { return false };
    for subject in service.all_subjects() {
        if !tracehop_messaging::probe(nats, &subject, PROBE_TIMEOUT).await {
            return false;
        }
    }
    for spec in service.consumers() {
        if !consumer_pulling(nats, &spec).await {
            return false;
        }
    }
    match service.probe() {
        Probe::Messaging => true,
        Probe::Http => gateway_healthy(gateway_addr).await,
    }
}

async fn consumer_pulling(nats: &async_nats::Client, spec: &ConsumerSpec) -> bool {
    let js = jetstream::new(nats.clone());
    let Ok(stream) = js.get_stream_no_info(spec.stream).await else { return false };
    stream.consumer_info(spec.durable).await.is_ok_and(|info| info.num_waiting > 0)
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
