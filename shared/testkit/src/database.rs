//! A fresh, migrated database per test.

use sqlx::{Connection as _, PgPool};

/// A database named `tracehop_test_<uuid>`, migrated; dropped on drop.
pub struct TestDatabase {
    name: String,
    server: String,
    pub pool: PgPool,
}

impl TestDatabase {
    /// Creates and migrates the database on the shared server
    /// (`TRACEHOP_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432`).
    pub async fn create() -> anyhow::Result<Self> {
        let server = std::env::var("TRACEHOP_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string());
        Self::create_on(&server).await
    }

    /// Creates and migrates the database on `server` (a URL without a
    /// database), such as a private [`crate::PostgresCluster`].
    pub async fn create_on(server: &str) -> anyhow::Result<Self> {
        let server = server.trim_end_matches('/').to_string();
        let name = format!("tracehop_test_{}", uuid::Uuid::new_v4().simple());
        let url = format!("{server}/{name}");
        tracehop_db::migrate(&url).await?;
        let pool = tracehop_db::connect(&url, 4).await?;
        Ok(Self { name, server, pool })
    }

    /// The database's URL.
    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside any runtime we may block: use a thread of our own.
        let admin = format!("{}/postgres", self.server);
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async move {
                // FORCE ends the connections still open, the pool's included.
                if let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::raw_sql(&statement).execute(&mut connection).await;
                    let _ = connection.close().await;
                }
            });
        })
        .join();
    }
}
