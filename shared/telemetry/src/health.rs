//! Where each process says how its span pipelines are doing, for
//! `tracehop status`: every few seconds it puts its [`PipelineReport`] in the
//! key-value bucket [`BUCKET`] under `<service>.<instance>`, and logs a
//! warning when spans were lost since the last report. A key ages out of
//! the bucket a minute after its process stopped reporting.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::pipeline::PipelineSnapshot;

/// The bucket of pipeline reports.
pub const BUCKET: &str = "tracehop_telemetry";
/// How often a process reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);
/// How long a report is kept without a newer one.
const KEEP_FOR: Duration = Duration::from_secs(60);

/// One process's span pipelines, as it last reported them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineReport {
    pub service: String,
    /// `service.instance.id`.
    pub instance: String,
    pub pipelines: Vec<PipelineSnapshot>,
    pub reported_at_unix_ms: i64,
}

impl PipelineReport {
    /// Spans lost by every pipeline of the process.
    pub fn lost(&self) -> u64 {
        self.pipelines.iter().map(PipelineSnapshot::lost).sum()
    }
}

/// The bucket's backing stream, configured as a key-value bucket's is
/// (memory, one value per key, aged out), created as a stream because
/// `create_key_value` reads account information that nats-server 2.9 does
/// not send.
fn bucket_stream_config() -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{BUCKET}"),
        description: Some("tracehop span pipelines: what each process exported, dropped and holds".to_string()),
        subjects: vec![format!("$KV.{BUCKET}.>")],
        max_messages_per_subject: 1,
        max_age: KEEP_FOR,
        storage: jetstream::stream::StorageType::Memory,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

/// Creates the bucket on `replicas` servers of a cluster (1 on a single
/// server), or brings an existing one to that count: what `tracehop up`
/// and `prepare` do, knowing the count. [`ensure_bucket`], for the
/// services, creates a missing one with one copy.
pub async fn create_bucket(js: &jetstream::Context, replicas: usize) -> anyhow::Result<()> {
    let config = jetstream::stream::Config { num_replicas: replicas, ..bucket_stream_config() };
    js.create_or_update_stream(config).await?;
    Ok(())
}

/// Opens the bucket, creating it when it is missing.
pub async fn ensure_bucket(js: &jetstream::Context) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(BUCKET).await {
        return Ok(store);
    }
    js.get_or_create_stream(bucket_stream_config()).await?;
    Ok(js.get_key_value(BUCKET).await?)
}

/// Every report in the bucket, by key.
pub async fn read_reports(js: &jetstream::Context) -> anyhow::Result<Vec<PipelineReport>> {
    let Ok(store) = js.get_key_value(BUCKET).await else { return Ok(Vec::new()) };
    let mut keys = store.keys().await?;
    let mut reports = Vec::new();
    while let Some(key) = keys.next().await {
        let Ok(key) = key else { continue };
        if let Ok(Some(value)) = store.get(&key).await
            && let Ok(report) = serde_json::from_slice::<PipelineReport>(&value)
        {
            reports.push(report);
        }
    }
    reports.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
    Ok(reports)
}

/// Key of one process's report: NATS subject tokens allow no dots inside.
pub fn key(service: &str, instance: &str) -> String {
    format!("{service}.{instance}")
}

/// Reports `snapshot()` every [`REPORT_EVERY`] until `stop` fires, and once
/// more then; warns in the log when spans were lost since the last report.
pub(crate) async fn report(
    js: jetstream::Context,
    service: &'static str,
    instance: String,
    snapshot: impl Fn() -> Vec<PipelineSnapshot>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut stop = stop;
    let mut store = None;
    let mut lost_before = 0;
    loop {
        let pipelines = snapshot();
        let lost: u64 = pipelines.iter().map(PipelineSnapshot::lost).sum();
        if lost > lost_before {
            // Outside any span: this line is about the pipeline itself.
            tracing::warn!(
                lost_spans = lost - lost_before,
                lost_spans_total = lost,
                "spans were lost on their way out: traces are incomplete"
            );
            lost_before = lost;
        }
        if store.is_none() {
            store = ensure_bucket(&js).await.ok();
        }
        if let Some(bucket) = &store {
            let report = PipelineReport {
                service: service.to_string(),
                instance: instance.clone(),
                pipelines,
                reported_at_unix_ms: crate::now_unix_ms(),
            };
            if let Ok(value) = serde_json::to_vec(&report)
                && bucket.put(key(service, &instance), value.into()).await.is_err()
            {
                // The bucket lives in memory: a restarted server lost it.
                store = None;
            }
        }
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(REPORT_EVERY) => {}
        }
    }
}
