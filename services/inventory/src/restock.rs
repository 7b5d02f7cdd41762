//! The restock queue, and the live scenario `slow-inventory` that happens
//! in it.
//!
//! While the scenario is on, two things are true, as they are on a real
//! system on a bad night:
//!
//! - **A batch job holds the queue.** [`run_batch_job`] works through the
//!   restock queue in one long transaction: it locks every row of
//!   `inventory.restock_requests`, then keeps the transaction open for
//!   [`BATCH_HOLD`] while it "waits for the supplier" (idle in transaction,
//!   the classic stuck job), then commits and starts over.
//! - **A rare reservation files a restock request.** A share of
//!   reservations (the switch's rate, 2% by default, chosen by the order id)
//!   add their units to their products' rows in that queue, inside the
//!   reservation's transaction. Such a reservation waits for the batch
//!   job's lock in PostgreSQL's own lock manager: a real lock wait, seen as
//!   `wait_event_type = Lock` in `pg_stat_activity` and recorded on the
//!   reservation's span. The order service's retries then make that
//!   checkout take about 12 s, while every other checkout stays fast.
//!
//! **The fix**: the request is filed under a lock timeout of
//! [`FIX_LOCK_TIMEOUT`] with a retry budget of [`FIX_ATTEMPTS`]; when the
//! lock is still not had, the request is deferred to
//! `inventory.restock_deferred` (an append, which waits on nothing), which
//! the batch job folds in on its next round. The checkout goes on at once.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracehop_db::{describe_error, traced};
use tracehop_proto::v1::LineItem;
use tracehop_scenarios::{Scenario, Switches};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

/// How long the batch job keeps its transaction, and the queue's locks.
/// With the order service's three reserve attempts of 4 s, a reservation
/// that waits for the whole of it makes a checkout of about 12 s.
pub const BATCH_HOLD: Duration = Duration::from_secs(11);
/// The pause between two rounds of the batch job.
pub const BATCH_PAUSE: Duration = Duration::from_millis(200);
/// The fix: how long filing a request may wait for its row's lock.
pub const FIX_LOCK_TIMEOUT: Duration = Duration::from_millis(100);
/// The fix: how many times filing is tried before the request is deferred.
pub const FIX_ATTEMPTS: u32 = 3;
/// How long a filing waits before its wait is looked up in
/// `pg_stat_activity` and recorded on the span.
const WAIT_PROBE_AFTER: Duration = Duration::from_millis(300);
/// The batch job's `application_name`, which a waiting reservation reports
/// as what blocks it.
pub const BATCH_APPLICATION_NAME: &str = "tracehop restock batch job";

/// Whether `order_id`'s reservation files a restock request, at `rate`
/// (a share from 0 to 1). Decided by the order id's random bits, so a retry
/// of the same reservation takes the same path.
pub fn files_request(order_id: Uuid, rate: f64) -> bool {
    let bucket = (order_id.as_u128() % 10_000) as f64;
    bucket < rate * 10_000.0
}

/// What became of a restock request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filed {
    /// Added to the queue.
    Queued,
    /// The queue was locked past the fix's budget: appended to the
    /// deferred requests instead.
    Deferred,
}

impl Filed {
    pub fn as_str(self) -> &'static str {
        match self {
            Filed::Queued => "queued",
            Filed::Deferred => "deferred",
        }
    }
}

/// Files the restock request of a reservation, inside its transaction
/// `tx`, for `items` (sorted by SKU, the order in which every transaction
/// takes these rows). `fixed`: under the fix's lock timeout and budget.
/// `pool` is used only to look up what a long wait is waiting for.
pub async fn file_request(
    tx: &mut PgConnection,
    pool: &PgPool,
    order_id: Uuid,
    items: &[&LineItem],
    fixed: bool,
) -> Result<Filed, sqlx::Error> {
    let span = tracing::Span::current();
    if !fixed {
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *tx).await?;
        for item in items {
            let queued = enqueue(tx, item);
            tokio::pin!(queued);
            tokio::select! {
                result = &mut queued => result?,
                _ = tokio::time::sleep(WAIT_PROBE_AFTER) => {
                    record_wait(pool, backend, &span).await;
                    queued.await?
                }
            }
        }
        return Ok(Filed::Queued);
    }
    for attempt in 1..=FIX_ATTEMPTS {
        sqlx::query("SAVEPOINT restock").execute(&mut *tx).await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{}ms'", FIX_LOCK_TIMEOUT.as_millis()))
            .execute(&mut *tx)
            .await?;
        let mut result = Ok(());
        for item in items {
            result = enqueue(tx, item).await;
            if result.is_err() {
                break;
            }
        }
        match result {
            Ok(()) => {
                // Ends the savepoint; SET LOCAL would outlive it otherwise.
                sqlx::query("RELEASE SAVEPOINT restock").execute(&mut *tx).await?;
                sqlx::query("SET LOCAL lock_timeout TO DEFAULT").execute(&mut *tx).await?;
                return Ok(Filed::Queued);
            }
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => {
                // The lock was not had in time; the savepoint's rollback also
                // undoes its SET LOCAL.
                sqlx::query("ROLLBACK TO SAVEPOINT restock").execute(&mut *tx).await?;
                span.set_attribute("inventory.restock.lock_timeouts", i64::from(attempt));
            }
            Err(error) => return Err(error),
        }
    }
    traced(
        "INSERT",
        "inventory.restock_deferred",
        sqlx::query(
            "INSERT INTO inventory.restock_deferred (sku, units, order_id)
             SELECT sku, units, $3 FROM UNNEST($1::text[], $2::int[]) AS d(sku, units)",
        )
        .bind(items.iter().map(|i| i.sku.clone()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.quantity as i32).collect::<Vec<_>>())
        .bind(order_id),
        |query| query.execute(&mut *tx),
    )
    .await?;
    Ok(Filed::Deferred)
}

async fn enqueue(tx: &mut PgConnection, item: &LineItem) -> Result<(), sqlx::Error> {
    traced(
        "UPDATE",
        "inventory.restock_requests",
        sqlx::query(
            "UPDATE inventory.restock_requests SET requested_units = requested_units + $2, updated_at = now()
             WHERE sku = $1",
        )
        .bind(&item.sku)
        .bind(i64::from(item.quantity)),
        |query| query.execute(&mut *tx),
    )
    .await
    .map(drop)
}

/// Records on `span` what backend `pid` is waiting for, and who holds it,
/// as PostgreSQL sees it: where the time of a slow statement goes. The
/// holder is the root of the chain of waits (others may queue for the same
/// lock ahead of this one).
async fn record_wait(pool: &PgPool, pid: i32, span: &tracing::Span) {
    /// Wait event type, wait event, and the holders at the chain's root.
    type Wait = (Option<String>, Option<String>, Option<String>);
    let row: Result<Option<Wait>, _> = sqlx::query_as(
        "WITH RECURSIVE chain(pid, depth) AS (
            SELECT $1::int, 0
            UNION
            SELECT blocker, chain.depth + 1 FROM chain, unnest(pg_blocking_pids(chain.pid)) AS blocker
            WHERE chain.depth < 16)
         SELECT a.wait_event_type, a.wait_event,
                (SELECT string_agg(DISTINCT
                        COALESCE(NULLIF(b.application_name, ''), 'pid ' || b.pid) || ' (' || b.state || ')', ', ')
                 FROM chain JOIN pg_stat_activity b ON b.pid = chain.pid
                 WHERE chain.depth > 0 AND cardinality(pg_blocking_pids(b.pid)) = 0)
         FROM pg_stat_activity a WHERE a.pid = $1",
    )
    .bind(pid)
    .fetch_optional(pool)
    .await;
    if let Ok(Some((wait_type, wait_event, blockers))) = row {
        if let (Some(wait_type), Some(wait_event)) = (wait_type, wait_event) {
            span.set_attribute("db.wait_event", format!("{wait_type}:{wait_event}"));
        }
        if let Some(blockers) = blockers {
            span.set_attribute("db.blocked_by", blockers);
        }
    }
}

/// Runs the restock batch job while `slow-inventory` is on, until
/// `shutdown`: one round after another, each in a span of its own.
pub async fn run_batch_job(pool: PgPool, mut switches: Switches, shutdown: CancellationToken) {
    loop {
        if switches.get(Scenario::SlowInventory).on {
            let span = tracing::info_span!(
                "restock batch",
                otel.kind = "internal",
                inventory.restock.requests = tracing::field::Empty
            );
            switches.annotate(&span, &[Scenario::SlowInventory]);
            if let Err(error) = batch_round(&pool, &switches, &shutdown).instrument(span.clone()).await {
                tracing::warn!(parent: &span, error = %describe_error(&error), "restock batch round failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(BATCH_PAUSE) => {}
            }
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = switches.changed() => if !changed { return },
            }
        }
    }
}

/// One round: lock the whole queue, fold in the deferred requests, hold the
/// transaction open for [`BATCH_HOLD`] (or until the scenario goes off),
/// then mark the requests handled and commit.
async fn batch_round(pool: &PgPool, switches: &Switches, shutdown: &CancellationToken) -> Result<(), sqlx::Error> {
    let mut tx = tracehop_db::begin(pool).await?;
    sqlx::query(&format!("SET LOCAL application_name = '{BATCH_APPLICATION_NAME}'")).execute(&mut *tx).await?;
    let queued: Vec<(String, i64)> = traced(
        "SELECT",
        "inventory.restock_requests",
        sqlx::query_as("SELECT sku, requested_units FROM inventory.restock_requests ORDER BY sku FOR UPDATE"),
        |query| query.fetch_all(&mut *tx),
    )
    .await?;
    traced(
        "UPDATE",
        "inventory.restock_requests",
        sqlx::query(
            "WITH folded AS (DELETE FROM inventory.restock_deferred RETURNING sku, units)
             UPDATE inventory.restock_requests r SET requested_units = r.requested_units + f.units
             FROM (SELECT sku, SUM(units) AS units FROM folded GROUP BY sku) f WHERE r.sku = f.sku",
        ),
        |query| query.execute(&mut *tx),
    )
    .await?;
    tracing::Span::current().record("inventory.restock.requests", queued.iter().map(|(_, n)| n).sum::<i64>());
    // The stuck part: the job waits on something outside the database with
    // its transaction, and the queue's locks, held.
    let hold = tokio::time::sleep(BATCH_HOLD);
    tokio::pin!(hold);
    let mut switches = switches.clone();
    loop {
        tokio::select! {
            _ = &mut hold => break,
            _ = shutdown.cancelled() => break,
            changed = switches.changed() => {
                if !changed || !switches.get(Scenario::SlowInventory).on {
                    break;
                }
            }
        }
    }
    traced(
        "UPDATE",
        "inventory.restock_requests",
        sqlx::query("UPDATE inventory.restock_requests SET requested_units = 0, updated_at = now()"),
        |query| query.execute(&mut *tx),
    )
    .await?;
    tracehop_db::commit(tx).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_the_rate_of_orders_file_a_request() {
        let filed = (0..100_000).filter(|_| files_request(Uuid::now_v7(), 0.02)).count();
        assert!((1_500..2_500).contains(&filed), "{filed} of 100000 at 2%");
        assert_eq!((0..1000).filter(|_| files_request(Uuid::now_v7(), 0.0)).count(), 0);
        assert_eq!((0..1000).filter(|_| files_request(Uuid::now_v7(), 1.0)).count(), 1000);
    }

    #[test]
    fn a_retried_reservation_takes_the_same_path() {
        let order = Uuid::now_v7();
        assert_eq!(files_request(order, 0.3), files_request(order, 0.3));
    }
}
