//! Fresh, throwaway namespaces on a database server: a PostgreSQL schema or a MySQL database
//! per contender, so every contender starts on empty tables of its own, and none of them
//! touches what the URL's own database holds.

use sqlx::{AssertSqlSafe, Connection};

use crate::{BenchError, StoreKind};

/// The namespaces one run created on a server; [`Namespaces::drop_all`] removes them.
pub(crate) struct Namespaces {
    kind: StoreKind,
    /// The server URL as the driver takes it (`mariadb://` spelled `mysql://`).
    base: String,
    prefix: String,
    created: Vec<String>,
    /// The URL's `oncely_*` parameters: for oncely's store, not for the baselines' driver.
    store_params: Vec<String>,
}

impl Namespaces {
    pub(crate) fn new(kind: StoreKind, url: &str) -> Self {
        let base = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_owned(),
        };
        let (base, query) = match base.split_once('?') {
            Some((b, q)) => (b.to_owned(), q.to_owned()),
            None => (base, String::new()),
        };
        let (store_params, driver_params): (Vec<&str>, Vec<&str>) =
            query.split('&').filter(|p| !p.is_empty()).partition(|p| {
                ["oncely_", "cache=", "cache_ttl="]
                    .iter()
                    .any(|ours| p.starts_with(ours))
            });
        let base = driver_params
            .iter()
            .fold(base, |url, p| with_param(&url, p));
        Namespaces {
            kind,
            base,
            // Two benchmarks on one server at once keep apart.
            prefix: format!("oncely_bench_{}", std::process::id()),
            created: Vec::new(),
            store_params: store_params.into_iter().map(str::to_owned).collect(),
        }
    }

    /// Drops and creates the namespace for `contender`; answers a URL whose connections work in
    /// it, for `oncely::connect` and for sqlx alike.
    pub(crate) async fn fresh(&mut self, contender: &str) -> Result<String, BenchError> {
        let name = format!("{}_{contender}", self.prefix);
        let (drop, create, url) = match self.kind {
            StoreKind::Postgres => (
                format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"),
                format!("CREATE SCHEMA \"{name}\""),
                with_param(&self.base, &format!("options=-csearch_path%3D{name}")),
            ),
            StoreKind::Mysql => (
                format!("DROP DATABASE IF EXISTS `{name}`"),
                format!("CREATE DATABASE `{name}`"),
                with_database(&self.base, &name),
            ),
            StoreKind::Memory | StoreKind::Sqlite | StoreKind::Redis => {
                unreachable!("not a SQL server store")
            }
        };
        self.execute(&[drop, create]).await?;
        self.created.push(name);
        Ok(url)
    }

    /// `url` with the `oncely_*` parameters the benchmark was given, for oncely's own store.
    pub(crate) fn for_store(&self, url: &str) -> String {
        self.store_params
            .iter()
            .fold(url.to_owned(), |url, p| with_param(&url, p))
    }

    /// Drops every namespace this run created.
    pub(crate) async fn drop_all(&mut self) -> Result<(), BenchError> {
        let drops: Vec<String> = self
            .created
            .drain(..)
            .map(|name| match self.kind {
                StoreKind::Postgres => format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"),
                _ => format!("DROP DATABASE IF EXISTS `{name}`"),
            })
            .collect();
        self.execute(&drops).await
    }

    async fn execute(&self, statements: &[String]) -> Result<(), BenchError> {
        let unreachable = |e: sqlx::Error| {
            BenchError::Other(format!(
                "cannot reach the server at {}: {e}",
                oncely::backend::url::redact_password(&self.base)
            ))
        };
        match self.kind {
            StoreKind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.base)
                    .await
                    .map_err(unreachable)?;
                for s in statements {
                    sqlx::raw_sql(AssertSqlSafe(s.clone()))
                        .execute(&mut conn)
                        .await?;
                }
                conn.close().await?;
            }
            _ => {
                let mut conn = sqlx::MySqlConnection::connect(&self.base)
                    .await
                    .map_err(unreachable)?;
                for s in statements {
                    sqlx::raw_sql(AssertSqlSafe(s.clone()))
                        .execute(&mut conn)
                        .await?;
                }
                conn.close().await?;
            }
        }
        Ok(())
    }
}

/// `url` with one more query parameter.
fn with_param(url: &str, param: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{param}")
}

/// `url` naming database `name` instead of its own (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (url, None),
    };
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let server = match url[authority_start..].find('/') {
        Some(slash) => &url[..authority_start + slash],
        None => url,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_fresh_namespace() {
        assert_eq!(
            with_database("mysql://root@127.0.0.1:3306/test", "b"),
            "mysql://root@127.0.0.1:3306/b"
        );
        assert_eq!(
            with_database("mysql://root@h/test?ssl-mode=disabled", "b"),
            "mysql://root@h/b?ssl-mode=disabled"
        );
        assert_eq!(with_database("mysql://root@h", "b"), "mysql://root@h/b");
        assert_eq!(
            with_param("postgres://p@h/test", "options=x"),
            "postgres://p@h/test?options=x"
        );
        assert_eq!(
            with_param("postgres://p@h/test?sslmode=disable", "options=x"),
            "postgres://p@h/test?sslmode=disable&options=x"
        );
    }
}
