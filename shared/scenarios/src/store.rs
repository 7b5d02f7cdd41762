//! The switches in their key-value bucket: created by `tracehop up` (and
//! by any service that finds it missing), flipped by `tracehop scenario`,
//! watched by the services.
//!
//! Each value is a protobuf [`ScenarioSwitch`]; the bucket keeps the last
//! [`HISTORY`] values of each key, so who flipped what, and when, stays on
//! record. It is file-backed and, like the other small control state, not
//! replicated beyond the stream replica default: a lost switch reads as off.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use prost::Message as _;
use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;
use tracehop_proto::v1::ScenarioSwitch;

use crate::{BUCKET, Scenario, Switch, Switches};

/// Values kept per switch.
pub const HISTORY: i64 = 20;

/// A scenario could not be read or flipped.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(
        "no scenario is named {0:?}; the scenarios are slow-inventory, payment-down, loyalty-n-plus-one, analytics-down"
    )]
    Unknown(String),
    #[error("the rate must be above 0 and at most 1, got {0}")]
    Rate(f64),
    #[error("failed to open the {BUCKET} bucket")]
    Bucket(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("failed to read the switch of {0}")]
    Read(Scenario, #[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("failed to flip the switch of {0}")]
    Write(Scenario, #[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A flip of one switch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    /// Inject the fault; `rate` for `slow-inventory` (the default if none).
    On { rate: Option<f64> },
    /// Remove the fault (the fix setting is kept for next time).
    Off,
    /// Apply the fix.
    Fix,
    /// Remove the fix.
    Unfix,
}

/// The bucket's backing stream, as a key-value bucket's is configured.
/// Created as a stream rather than through `create_key_value`, which first
/// reads the account's JetStream info in a form that nats-server 2.9 does
/// not send.
fn bucket_stream_config() -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{BUCKET}"),
        description: Some("tracehop live scenarios: one switch per scenario".to_string()),
        subjects: vec![format!("$KV.{BUCKET}.>")],
        max_messages_per_subject: HISTORY,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// Creates the bucket on `replicas` servers of a cluster (1 on a single
/// server), or brings an existing one to that count: what `tracehop up`
/// and `prepare` do, knowing the count. [`ensure_bucket`], for everyone
/// else, creates a missing one with one copy.
pub async fn create_bucket(js: &jetstream::Context, replicas: usize) -> Result<(), ScenarioError> {
    let config = jetstream::stream::Config { num_replicas: replicas, ..bucket_stream_config() };
    js.create_or_update_stream(config).await.map(drop).map_err(|e| ScenarioError::Bucket(Box::new(e)))
}

/// Opens the bucket, creating it if it is missing.
pub async fn ensure_bucket(js: &jetstream::Context) -> Result<kv::Store, ScenarioError> {
    if let Ok(store) = js.get_key_value(BUCKET).await {
        return Ok(store);
    }
    js.get_or_create_stream(bucket_stream_config()).await.map_err(|e| ScenarioError::Bucket(Box::new(e)))?;
    js.get_key_value(BUCKET).await.map_err(|e| ScenarioError::Bucket(Box::new(e)))
}

fn decode(value: &[u8]) -> Switch {
    // A value that does not decode reads as off: a switch is never trusted
    // to turn a fault on by accident.
    let stored = ScenarioSwitch::decode(value).unwrap_or_default();
    Switch {
        on: stored.on,
        fixed: stored.fixed,
        rate: stored.rate,
        changed_by: stored.changed_by,
        changed_at_unix_ms: stored.changed_at_unix_ms,
    }
}

/// Every scenario's switch, as stored now.
pub async fn read_all(js: &jetstream::Context) -> Result<Vec<(Scenario, Switch)>, ScenarioError> {
    let store = ensure_bucket(js).await?;
    let mut all = Vec::with_capacity(Scenario::ALL.len());
    for scenario in Scenario::ALL {
        let value = store.get(scenario.name()).await.map_err(|e| ScenarioError::Read(scenario, Box::new(e)))?;
        all.push((scenario, value.map(|v| decode(&v)).unwrap_or_default()));
    }
    Ok(all)
}

/// Flips `scenario`'s switch as `change` says, recording `changed_by`;
/// returns the switch as stored. Concurrent flips are serialised by the
/// key's revision, so none is lost.
pub async fn apply(
    js: &jetstream::Context,
    scenario: Scenario,
    change: Change,
    changed_by: &str,
) -> Result<Switch, ScenarioError> {
    if let Change::On { rate: Some(rate) } = change
        && !(rate > 0.0 && rate <= 1.0)
    {
        return Err(ScenarioError::Rate(rate));
    }
    let store = ensure_bucket(js).await?;
    for _ in 0..10 {
        let entry = store.entry(scenario.name()).await.map_err(|e| ScenarioError::Read(scenario, Box::new(e)))?;
        let (mut switch, revision) = match &entry {
            Some(entry) if entry.operation == kv::Operation::Put => (decode(&entry.value), entry.revision),
            Some(entry) => (Switch::default(), entry.revision),
            None => (Switch::default(), 0),
        };
        match change {
            Change::On { rate } => {
                switch.on = true;
                switch.rate = rate.unwrap_or(0.0);
            }
            Change::Off => switch.on = false,
            Change::Fix => switch.fixed = true,
            Change::Unfix => switch.fixed = false,
        }
        switch.changed_by = changed_by.to_string();
        switch.changed_at_unix_ms = now_unix_ms();
        let value = ScenarioSwitch {
            on: switch.on,
            fixed: switch.fixed,
            rate: switch.rate,
            changed_by: switch.changed_by.clone(),
            changed_at_unix_ms: switch.changed_at_unix_ms,
        }
        .encode_to_vec()
        .into();
        let written = if revision == 0 {
            store.create(scenario.name(), value).await.map(drop).map_err(|e| e.to_string())
        } else {
            store.update(scenario.name(), value, revision).await.map(drop).map_err(|e| e.to_string())
        };
        match written {
            Ok(()) => return Ok(switch),
            // Someone else flipped it in between: read again and retry.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    Err(ScenarioError::Write(scenario, "the switch kept changing under us".into()))
}

/// Reads every switch, then keeps them current until `shutdown` with a
/// watch on the bucket (re-established if it breaks, as on a NATS restart).
/// Returns once the current values are known.
pub async fn watch(js: &jetstream::Context, shutdown: CancellationToken) -> Result<Switches, ScenarioError> {
    let initial: BTreeMap<Scenario, Switch> = read_all(js).await?.into_iter().collect();
    let (sender, receiver) = channel::channel(initial);
    let js = js.clone();
    tokio::spawn(async move {
        while !shutdown.is_cancelled() {
            let watched = match ensure_bucket(&js).await {
                Ok(store) => store.watch_with_history(">").await.map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            match watched {
                Ok(mut entries) => loop {
                    let entry = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        entry = entries.next() => entry,
                    };
                    let Some(Ok(entry)) = entry else { break };
                    let Ok(scenario) = Scenario::parse(&entry.key) else { continue };
                    let switch = match entry.operation {
                        kv::Operation::Put => decode(&entry.value),
                        kv::Operation::Delete | kv::Operation::Purge => Switch::default(),
                    };
                    sender.send_if_modified(|switches| {
                        let changed = switches.get(&scenario) != Some(&switch);
                        if changed {
                            tracing::info!(
                                scenario = scenario.name(),
                                on = switch.on,
                                fixed = switch.fixed,
                                changed_by = %switch.changed_by,
                                "scenario switch changed"
                            );
                            switches.insert(scenario, switch);
                        }
                        changed
                    });
                },
                Err(error) => tracing::warn!(%error, "failed to watch the scenario switches, retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
    Ok(Switches::from_receiver(receiver))
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
