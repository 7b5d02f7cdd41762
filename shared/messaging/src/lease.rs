//! Leader leases in a key-value bucket, for a service whose copies must not
//! all act ([`crate::topology::Instances::Leader`]: the sentinel, whose
//! alerts would otherwise be raised once per copy).
//!
//! The lease of a service is the key `<service>` in [`BUCKET`], whose value
//! names the holder. The bucket's `max_age` is the lease's time to live
//! ([`TTL`]), so a holder that dies stops renewing and the server itself
//! forgets the key within [`TTL`]; nothing needs to notice the death.
//!
//! - A candidate *campaigns* ([`Lease::campaign`]): it creates the key,
//!   which succeeds only when nobody holds it (JetStream's "expected last
//!   subject sequence" makes the create atomic, on one server or a
//!   cluster), retrying every [`RETRY`].
//! - The holder renews every [`RENEW`] with an update that expects its own
//!   last revision. A revision that is not its own means another holds the
//!   lease: it has lost at once. A renewal that cannot reach the server
//!   keeps being retried, but once [`STEP_DOWN_AFTER`] passed since the last
//!   renewal that got through was *sent*, the holder gives up: that is
//!   before the server can have expired its key (the key was stored after
//!   it was sent), so two holders never act at once, given clocks that run
//!   at the same rate.
//! - On shutdown the holder deletes the key (expecting its revision), so
//!   that the next takes over at once rather than after [`TTL`].

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The bucket of every lease.
pub const BUCKET: &str = "tracehop_leases";
/// How long a lease lasts without renewal: the bucket's `max_age`.
pub const TTL: Duration = Duration::from_secs(6);
/// How often the holder renews.
pub const RENEW: Duration = Duration::from_secs(2);
/// How often a candidate tries to take the lease.
pub const RETRY: Duration = Duration::from_millis(500);
/// How long after its last renewal was sent a holder that cannot renew
/// still acts: a margin of a third of the TTL before the server forgets it.
pub const STEP_DOWN_AFTER: Duration = Duration::from_secs(4);

/// The bucket's backing stream, as a key-value bucket's is configured
/// (created as a stream rather than through `create_key_value`, which reads
/// the account's JetStream info in a form nats-server 2.9 does not send).
/// File storage: a lease must survive a server restart, or a second holder
/// could take it while the first still acts.
pub fn bucket_stream_config(replicas: usize) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{BUCKET}"),
        description: Some("tracehop leader leases: one key per service whose copies elect a leader".to_string()),
        subjects: vec![format!("$KV.{BUCKET}.>")],
        max_messages_per_subject: 1,
        max_age: TTL,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// Opens the lease bucket, creating it when it is missing.
pub async fn ensure_bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, LeaseError> {
    if let Ok(store) = js.get_key_value(BUCKET).await {
        return Ok(store);
    }
    js.get_or_create_stream(bucket_stream_config(replicas)).await.map_err(|e| LeaseError(Box::new(e)))?;
    js.get_key_value(BUCKET).await.map_err(|e| LeaseError(Box::new(e)))
}

/// The lease bucket could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("failed to open the {BUCKET} bucket")]
pub struct LeaseError(#[source] Box<dyn std::error::Error + Send + Sync>);

/// Who holds the lease of `key` now, if anyone.
pub async fn holder(store: &kv::Store, key: &str) -> Option<String> {
    let value = store.get(key).await.ok().flatten()?;
    Some(String::from_utf8_lossy(&value).into_owned())
}

/// One candidate for the lease of one key.
#[derive(Clone)]
pub struct Lease {
    store: kv::Store,
    key: String,
    holder: String,
}

/// A term as leader: `lost` is cancelled when the lease is lost (or the
/// process shuts down); [`Term::resign`] hands it back.
pub struct Term {
    lost: CancellationToken,
    renewal: tokio::task::JoinHandle<Option<u64>>,
    lease: Lease,
}

impl Lease {
    /// A candidate named `holder` (an instance's name) for the lease `key`
    /// (a service's name).
    pub fn new(store: kv::Store, key: impl Into<String>, holder: impl Into<String>) -> Self {
        Self { store, key: key.into(), holder: holder.into() }
    }

    /// Waits until this candidate holds the lease, then keeps renewing it
    /// in the background; `None` when `shutdown` fired first.
    pub async fn campaign(&self, shutdown: &CancellationToken) -> Option<Term> {
        let mut last_complaint: Option<Instant> = None;
        loop {
            let sent = Instant::now();
            match self.store.create(&self.key, self.holder.clone().into()).await {
                Ok(revision) => {
                    tracing::info!(lease = %self.key, holder = %self.holder, "took the lease: leading");
                    return Some(self.begin_term(revision, sent, shutdown));
                }
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(error) => {
                    if last_complaint.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
                        tracing::warn!(lease = %self.key, error = %error, "cannot campaign for the lease");
                        last_complaint = Some(Instant::now());
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    fn begin_term(&self, revision: u64, sent: Instant, shutdown: &CancellationToken) -> Term {
        let lost = shutdown.child_token();
        let renewal = tokio::spawn(self.clone().renew(revision, sent, lost.clone()));
        Term { lost, renewal, lease: self.clone() }
    }

    /// Renews until the lease is lost or `lost` fires; returns the last
    /// revision this holder wrote, when it still holds the lease.
    async fn renew(self, mut revision: u64, mut last_sent: Instant, lost: CancellationToken) -> Option<u64> {
        loop {
            tokio::select! {
                _ = lost.cancelled() => return Some(revision),
                _ = tokio::time::sleep(RENEW) => {}
            }
            let sent = Instant::now();
            let attempt =
                tokio::time::timeout(RENEW, self.store.update(&self.key, self.holder.clone().into(), revision)).await;
            match attempt {
                Ok(Ok(next)) => {
                    revision = next;
                    last_sent = sent;
                }
                Ok(Err(error)) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!(lease = %self.key, holder = %self.holder, "the lease was taken by another: stepping down");
                    lost.cancel();
                    return None;
                }
                Ok(Err(error)) => tracing::warn!(lease = %self.key, error = %error, "cannot renew the lease"),
                Err(_) => tracing::warn!(lease = %self.key, "renewing the lease timed out"),
            }
            if last_sent.elapsed() >= STEP_DOWN_AFTER {
                tracing::warn!(
                    lease = %self.key,
                    holder = %self.holder,
                    "the lease could not be renewed for {:?}: stepping down before it expires",
                    STEP_DOWN_AFTER
                );
                lost.cancel();
                return None;
            }
        }
    }
}

impl Term {
    /// Cancelled when the lease is lost or the process shuts down: stop
    /// acting as leader.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Ends the term: stops renewing and, when the lease is still this
    /// holder's, deletes it so that another takes over at once.
    pub async fn resign(self) {
        self.lost.cancel();
        if let Ok(Some(revision)) = self.renewal.await
            && let Err(error) = self.lease.store.delete_expect_revision(&self.lease.key, Some(revision)).await
        {
            tracing::warn!(lease = %self.lease.key, error = %error, "failed to hand the lease back; it expires by itself");
        }
        tracing::info!(lease = %self.lease.key, holder = %self.lease.holder, "resigned the lease");
    }
}
