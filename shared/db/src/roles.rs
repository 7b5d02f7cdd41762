//! A PostgreSQL role per service, allowed only its own schema.
//!
//! Migrations run as the database's owner (the `DATABASE_URL` user); then
//! [`ensure`] creates each service's login role if it is missing (roles are
//! the server's, shared by its databases) and grants it, in this database,
//! the use of its schema's tables and sequences and nothing else. A role
//! has no right on another schema, so a service that tries to read another's
//! tables is refused by PostgreSQL itself. [`service_url`] is the URL a
//! service connects with.
//!
//! Idempotent: `tracehop up` and every test run it after migrating.

use std::str::FromStr as _;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};

/// A service's role and the schema it owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaRole {
    /// The login role, `tracehop_<service>`.
    pub role: String,
    /// The one schema it may use.
    pub schema: &'static str,
    /// Whether it may read every session's activity (`pg_read_all_stats`):
    /// inventory names who holds the lock a reservation waits for.
    pub reads_lock_waits: bool,
}

/// Creates the roles that are missing (no password: set one with
/// `password`), and grants each its schema in the database `owner_url`
/// names. `password` gives the password of a role, when there is one.
pub async fn ensure(
    owner_url: &str,
    roles: &[SchemaRole],
    password: impl Fn(&SchemaRole) -> Option<String>,
) -> Result<(), sqlx::Error> {
    let mut owner = PgConnection::connect(owner_url).await?;
    for role in roles {
        create_role(&mut owner, &role.role).await?;
        if let Some(password) = password(role) {
            // A literal: ALTER ROLE takes no bind parameters.
            let statement = format!("ALTER ROLE {} PASSWORD {}", ident(&role.role), literal(&password));
            on_the_server(&mut owner, &statement).await?;
        }
        let (r, s) = (ident(&role.role), ident(role.schema));
        let grants = format!(
            "GRANT CONNECT ON DATABASE {db} TO {r};
             GRANT USAGE ON SCHEMA {s} TO {r};
             GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA {s} TO {r};
             GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {s} TO {r};
             ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO {r};
             ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {r};",
            db = ident(&database_of(owner_url)?),
        );
        sqlx::raw_sql(&grants).execute(&mut owner).await?;
        if role.reads_lock_waits {
            let member: bool = sqlx::query_scalar("SELECT pg_has_role($1, 'pg_read_all_stats', 'MEMBER')")
                .bind(&role.role)
                .fetch_one(&mut owner)
                .await?;
            if !member {
                on_the_server(&mut owner, &format!("GRANT pg_read_all_stats TO {r}")).await?;
            }
        }
    }
    // Nobody but the owner creates objects in `public`.
    sqlx::raw_sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC").execute(&mut owner).await?;
    owner.close().await
}

/// Runs `statement`, which changes a role (the server's, shared by every
/// database on it): two systems or tests preparing at once may change the
/// same role, which PostgreSQL refuses with "tuple concurrently updated"
/// (XX000) rather than waiting; the statement is then run again.
async fn on_the_server(owner: &mut PgConnection, statement: &str) -> Result<(), sqlx::Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match sqlx::raw_sql(statement).execute(&mut *owner).await {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(error))
                if attempt < 8
                    && error.code().as_deref() == Some("XX000")
                    && error.message().contains("concurrently") =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn create_role(owner: &mut PgConnection, role: &str) -> Result<(), sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(role)
        .fetch_one(&mut *owner)
        .await?;
    if exists {
        return Ok(());
    }
    match sqlx::raw_sql(&format!("CREATE ROLE {} LOGIN", ident(role))).execute(&mut *owner).await {
        Ok(_) => Ok(()),
        // Created meanwhile by another process (tests run side by side):
        // `duplicate_object`, or the unique index of pg_authid.
        Err(sqlx::Error::Database(error)) if matches!(error.code().as_deref(), Some("42710") | Some("23505")) => Ok(()),
        Err(error) => Err(error),
    }
}

/// The URL of `owner_url`'s database for `role`, with `password` if any.
pub fn service_url(owner_url: &str, role: &str, password: Option<&str>) -> Result<String, sqlx::Error> {
    let mut url = url_parts(owner_url)?;
    url.user = role.to_string();
    url.password = password.map(str::to_string);
    Ok(url.to_string())
}

fn database_of(url: &str) -> Result<String, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    Ok(options.get_database().unwrap_or("postgres").to_string())
}

/// `postgres://user[:password]@rest`, split.
struct UrlParts {
    scheme: String,
    user: String,
    password: Option<String>,
    rest: String,
}

fn url_parts(url: &str) -> Result<UrlParts, sqlx::Error> {
    let bad = || {
        sqlx::Error::Configuration(format!("not a postgres URL: {}", url.split('@').next_back().unwrap_or("")).into())
    };
    let (scheme, after) = url.split_once("://").ok_or_else(bad)?;
    let (user, rest) = match after.rsplit_once('@') {
        Some((credentials, rest)) => (credentials.split(':').next().unwrap_or("").to_string(), rest.to_string()),
        None => (String::new(), after.to_string()),
    };
    Ok(UrlParts { scheme: scheme.to_string(), user, password: None, rest })
}

impl std::fmt::Display for UrlParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, percent_encode(&self.user))?;
        if let Some(password) = &self.password {
            write!(f, ":{}", percent_encode(password))?;
        }
        write!(f, "@{}", self.rest)
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls_keep_the_server_and_database() {
        assert_eq!(
            service_url("postgres://postgres@127.0.0.1:5432/tracehop", "tracehop_order", None).unwrap(),
            "postgres://tracehop_order@127.0.0.1:5432/tracehop"
        );
        assert_eq!(
            service_url("postgres://postgres:se%40cret@db:5432/t?sslmode=disable", "tracehop_order", Some("p@ss"))
                .unwrap(),
            "postgres://tracehop_order:p%40ss@db:5432/t?sslmode=disable"
        );
        assert_eq!(
            service_url("postgres://127.0.0.1/x", "tracehop_order", None).unwrap(),
            "postgres://tracehop_order@127.0.0.1/x"
        );
    }
}
