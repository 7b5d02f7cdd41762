//! Test support: real parts, isolated per test, cleaned up on drop.
//!
//! - [`NatsServer`]: a `nats-server` with JetStream on a free port and a
//!   temporary store, killed on drop; it can be restarted on the same port.
//!   It runs the system's own configuration (a user per service and the
//!   command, permissions from the catalog, nobody anonymous), and
//!   [`NatsServer::connect_as`] plays any user.
//! - [`NatsCluster`]: three such servers forming one JetStream cluster (a
//!   store each, free client and route ports), whose nodes can be killed
//!   and restarted, and whose stream leaders can be found. [`TestNats`] is
//!   what both offer a test system.
//! - [`TestDatabase`]: a fresh PostgreSQL database named by a UUID,
//!   migrated, dropped on drop.
//! - [`TestSystem`]: both of the above plus every service started as its own
//!   process from the workspace's executables (each with its own NATS key
//!   and database role), ready when it returns; dropping it fails the test
//!   when the NATS server refused anything a service or the command did.
//!   [`TestSystem::start_on_cluster`] runs it on a [`NatsCluster`].
//! - [`PostgresCluster`]: a PostgreSQL server of its own (`initdb` in a
//!   temporary folder, a free port), for tests that restart or kill it;
//!   stopped and removed on drop.
//! - [`OtlpReceiver`]: a real OTLP/HTTP receiver that keeps the traces,
//!   metrics and logs it is sent ([`otlp`] has helpers to read them).
//! - [`SmtpServer`]: a small real SMTP server that records mail and can
//!   stall or go down, for the tests of mail delivery.
//!
//! PostgreSQL is taken from `TRACEHOP_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432`); `nats-server` from the `PATH`.

mod cluster;
mod database;
mod nats;
pub mod otlp;
mod postgres;
mod smtp;
mod system;

pub use cluster::{CLUSTER_NODES, NatsCluster};
pub use database::TestDatabase;
pub use nats::{NatsServer, TestNats, supports_sync_always};
pub use otlp::OtlpReceiver;
pub use postgres::PostgresCluster;
pub use smtp::{ReceivedMail, SmtpServer, Stall};
pub use system::TestSystem;

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("failed to find a free port on 127.0.0.1")
}
