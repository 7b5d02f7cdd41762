//! PostgreSQL for every service: connecting, creating the database and
//! applying `migrations/`, and [`traced`], which runs one SQL statement in a
//! CLIENT span named after its operation and table, with the database
//! conventions' attributes (the parameterised text included), marked failed
//! when the statement fails; [`begin`] and [`commit`] make a transaction's
//! own round trips spans too.
//!
//! [`retry_transient`] runs a transaction again when PostgreSQL aborted it
//! only because of concurrent work (a deadlock or a serialization failure).
//!
//! Each service owns one schema (`inventory`, `ordering`, `payment`,
//! `loyalty`, `notification`, `analytics`) and reads no other: [`roles`]
//! gives each a login role that PostgreSQL confines to its schema.

use std::future::Future;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgPool};
use tracehop_telemetry::record_failure;
use tracing::Instrument as _;

pub mod roles;

pub use sqlx;

/// Every migration of every schema, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// A pooled connection idle for longer than this is pinged before use.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Opens a pool of at most `max_connections` to `url`.
///
/// sqlx pings every connection it hands out by default: a round trip to
/// PostgreSQL before each statement or transaction, which under load is a
/// third of all round trips. Here only a connection that sat idle for more
/// than [`PING_IF_IDLE_FOR`] is pinged (one that broke while idle is then
/// replaced unseen). A hot connection broken by a PostgreSQL restart fails
/// its next statement instead, and sqlx closes it: every caller already
/// treats a failed statement as a passing failure (a retry, a redelivery, or
/// a 503 before any effect), as it must while PostgreSQL is down anyway.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    remember_endpoint(url);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IF_IDLE_FOR {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
        .connect(url)
        .await
}

/// Creates the database that `url` names, if it does not exist yet, by
/// connecting to the server's `postgres` database.
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    let name = options.get_database().unwrap_or("postgres").to_string();
    let mut admin = sqlx::PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::raw_sql(&format!("CREATE DATABASE {quoted}")).execute(&mut admin).await {
            Ok(_) => {}
            // Another process created it in the meantime.
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P04") => {}
            Err(error) => return Err(error),
        }
    }
    admin.close().await
}

/// Creates the database if needed and applies every pending migration.
pub async fn migrate(url: &str) -> Result<(), sqlx::Error> {
    ensure_database(url).await?;
    let pool = connect(url, 1).await?;
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Where the process's database is, for its spans: `db.namespace`,
/// `server.address` and `server.port`; set by the first [`connect`].
#[derive(Clone, Debug)]
struct DatabaseEndpoint {
    namespace: String,
    address: String,
    port: u16,
}

static ENDPOINT: std::sync::OnceLock<DatabaseEndpoint> = std::sync::OnceLock::new();

fn remember_endpoint(url: &str) {
    if let Ok(options) = PgConnectOptions::from_str(url) {
        let _ = ENDPOINT.set(DatabaseEndpoint {
            namespace: options.get_database().unwrap_or("postgres").to_string(),
            address: options.get_host().to_string(),
            port: options.get_port(),
        });
    }
}

/// A statement's text as a span shows it: parameterised (values are bound,
/// never in the text), on one line.
fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs `query` (through `run`, which executes or fetches it) in a CLIENT
/// span `<operation> <table>` after the OpenTelemetry database conventions:
/// `db.system.name`, `db.namespace`, `db.operation.name`,
/// `db.collection.name`, `db.query.summary`, `db.query.text` (the
/// parameterised statement, never a value), `server.address` and
/// `server.port`. A failure marks the span with the SQLSTATE as
/// `error.type`; the message names only the operation and table, as
/// database messages may quote values.
pub async fn traced<'q, Q, T, F>(
    operation: &'static str,
    table: &'static str,
    query: Q,
    run: impl FnOnce(Q) -> F,
) -> Result<T, sqlx::Error>
where
    Q: sqlx::Execute<'q, sqlx::Postgres>,
    F: Future<Output = Result<T, sqlx::Error>>,
{
    let text = one_line(query.sql());
    in_client_span(operation, Some(table), Some(&text), run(query)).await
}

/// Opens a transaction in a CLIENT span `BEGIN`.
pub async fn begin(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    in_client_span("BEGIN", None, None, pool.begin()).await
}

/// Commits a transaction in a CLIENT span `COMMIT`: under load, the wait
/// for the write-ahead log's flush is where a transaction's time goes.
pub async fn commit(transaction: sqlx::Transaction<'_, sqlx::Postgres>) -> Result<(), sqlx::Error> {
    in_client_span("COMMIT", None, None, transaction.commit()).await
}

async fn in_client_span<T>(
    operation: &'static str,
    table: Option<&'static str>,
    text: Option<&str>,
    statement: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    let summary = match table {
        Some(table) => format!("{operation} {table}"),
        None => operation.to_string(),
    };
    let endpoint = ENDPOINT.get();
    let span = tracing::info_span!(
        "db.statement",
        otel.name = %summary,
        otel.kind = "client",
        db.system.name = "postgresql",
        db.namespace = endpoint.map(|e| e.namespace.as_str()),
        db.operation.name = operation,
        db.collection.name = table,
        db.query.summary = %summary,
        db.query.text = text,
        server.address = endpoint.map(|e| e.address.as_str()),
        server.port = endpoint.map(|e| i64::from(e.port)),
        db.response.status_code = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let result = statement.instrument(span.clone()).await;
    record_duration(started.elapsed(), operation, table.unwrap_or_default(), result.as_ref().err());
    if let Err(error) = &result {
        let code = match error {
            sqlx::Error::Database(db_error) => db_error.code().map(|c| c.to_string()),
            _ => None,
        };
        if let Some(code) = &code {
            span.record("db.response.status_code", code.as_str());
        }
        let error_type = code.unwrap_or_else(|| sqlx_error_kind(error).to_string());
        record_failure(&span, &error_type, &format!("{summary} failed ({})", sqlx_error_kind(error)));
    }
    result
}

fn record_duration(elapsed: Duration, operation: &str, table: &str, error: Option<&sqlx::Error>) {
    let error_type = error.map(|error| match error {
        sqlx::Error::Database(db_error) => {
            db_error.code().map_or_else(|| "database_error".to_string(), |c| c.to_string())
        }
        other => sqlx_error_kind(other).to_string(),
    });
    tracehop_telemetry::metrics::db_client_operation(elapsed, operation, table, error_type.as_deref());
}

/// How many times in all [`retry_transient`] runs a transaction.
pub const TRANSIENT_ATTEMPTS: u32 = 4;

/// Whether PostgreSQL aborted the statement only because of concurrent work:
/// a deadlock (`40P01`) or a serialization failure (`40001`). Running the
/// whole transaction again is correct, and likely to succeed.
pub fn is_transient(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db_error) if matches!(db_error.code().as_deref(), Some("40P01" | "40001")))
}

/// Runs `transaction` (which begins, runs and commits one transaction) and,
/// when PostgreSQL aborted it for a deadlock or a serialization failure,
/// runs it again after a short random pause, at most [`TRANSIENT_ATTEMPTS`]
/// times in all. Each retry is an event on the current span; the last
/// failure is returned as it is.
///
/// Deadlocks are prevented at their cause (every transaction locks rows in
/// one global order); this is the bound on what remains, such as a lock
/// order that PostgreSQL's own foreign-key or index checks impose.
pub async fn retry_transient<T, F, Fut>(mut transaction: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut attempt = 1;
    loop {
        match transaction().await {
            Err(error) if is_transient(&error) && attempt < TRANSIENT_ATTEMPTS => {
                // Random, so that the transactions that collided do not
                // collide again in lockstep.
                let pause = Duration::from_millis(fastrand::u64(5..=20) * u64::from(attempt));
                tracing::info!(
                    db.response.status_code = %describe_error(&error),
                    tracehop.db.attempt = attempt,
                    pause_ms = pause.as_millis() as u64,
                    "transaction aborted by concurrent work; running it again"
                );
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn sqlx_error_kind(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::Database(_) => "database_error",
        sqlx::Error::PoolTimedOut => "pool_timed_out",
        sqlx::Error::PoolClosed => "pool_closed",
        sqlx::Error::Io(_) => "io",
        sqlx::Error::RowNotFound => "row_not_found",
        sqlx::Error::Protocol(_) => "protocol",
        _ => "other",
    }
}

/// The wire error for a failed statement, for a service's reply: a
/// connection problem or a server restart is `UNAVAILABLE` (worth
/// retrying), anything else `INTERNAL`. The details stay in the log and the
/// trace, never in the reply; the log gets only [`describe_error`], as the
/// database's own message may quote values.
pub fn wire_error(error: &sqlx::Error) -> tracehop_proto::v1::Error {
    use tracehop_proto::v1::{Error, ErrorCode};
    // A warning, not an error: an ERROR-level line marks the span it is
    // logged in as failed, and the failure is already recorded once, on the
    // statement's own span.
    tracing::warn!(error = %describe_error(error), "database statement failed");
    let unavailable = match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        // Connection exceptions (08) and operator intervention (57: the
        // server shutting down or restarting) pass with the outage.
        sqlx::Error::Database(db_error) => {
            db_error.code().is_some_and(|code| code.starts_with("08") || code.starts_with("57"))
        }
        _ => false,
    };
    if unavailable {
        Error::new(ErrorCode::Unavailable, "the database is unavailable")
    } else {
        Error::new(ErrorCode::Internal, "internal error")
    }
}

/// A description of a failed statement that is safe to log, trace or put in
/// a dead letter's reason: the SQLSTATE or the kind of failure, never the
/// database's message, which may quote values.
pub fn describe_error(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db_error) => match db_error.code() {
            Some(code) => format!("sqlstate {code}"),
            None => "database error".to_string(),
        },
        sqlx::Error::PoolTimedOut => "no connection available".to_string(),
        sqlx::Error::PoolClosed => "pool closed".to_string(),
        sqlx::Error::Io(error) => format!("i/o: {}", error.kind()),
        _ => "unexpected error".to_string(),
    }
}
