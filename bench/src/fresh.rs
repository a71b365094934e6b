//! Fresh, empty stores of the kind a URL names, one per contender, removed at the end: a new
//! SQLite file under the bench directory, a fresh schema or database on a SQL server
//! ([`Namespaces`]), a key prefix of its own on Redis. The store the URL names is never written.

use std::path::{Path, PathBuf};

use crate::server::Namespaces;
use crate::{BenchError, StoreKind, baseline, fresh_file};

/// The stores one run made; [`FreshStores::remove_all`] removes what the servers hold.
pub(crate) struct FreshStores {
    kind: StoreKind,
    dir: PathBuf,
    namespaces: Option<Namespaces>,
    redis: Option<RedisPrefixes>,
}

impl FreshStores {
    /// Fresh stores of the kind `url` names (`kind`); SQLite files go in `dir`.
    pub(crate) fn new(kind: StoreKind, url: &str, dir: &Path) -> Self {
        FreshStores {
            kind,
            dir: dir.to_owned(),
            namespaces: kind.is_server().then(|| Namespaces::new(kind, url)),
            redis: (kind == StoreKind::Redis).then(|| RedisPrefixes::new(url)),
        }
    }

    /// An empty store for `contender`, as an `oncely::connect` URL.
    pub(crate) async fn fresh(&mut self, contender: &str) -> Result<String, BenchError> {
        Ok(match self.kind {
            StoreKind::Memory => "memory:".to_owned(),
            StoreKind::Sqlite => format!("sqlite:{}", fresh_file(&self.dir, contender)?.display()),
            StoreKind::Postgres | StoreKind::Mysql => {
                let namespaces = self.namespaces.as_mut().expect("a server's namespaces");
                let url = namespaces.fresh(contender).await?;
                namespaces.for_store(&url)
            }
            StoreKind::Redis => self
                .redis
                .as_ref()
                .expect("a Redis prefix")
                .store_url(contender),
        })
    }

    /// Drops the schemas or databases and removes the Redis keys this run made.
    pub(crate) async fn remove_all(&mut self) -> Result<(), BenchError> {
        if let Some(namespaces) = &mut self.namespaces {
            namespaces.drop_all().await?;
        }
        if let Some(redis) = &self.redis {
            redis.forget().await?;
        }
        Ok(())
    }
}

/// Key prefixes of this run on a Redis server: `oncely_bench_<pid>_<contender>`.
pub(crate) struct RedisPrefixes {
    /// The URL without a `prefix` parameter (oncely's other parameters kept).
    server: String,
    /// The server as Redis's own driver takes it: no query.
    pub(crate) driver_url: String,
    /// This run's prefix, in front of every contender's.
    pub(crate) prefix: String,
}

impl RedisPrefixes {
    pub(crate) fn new(url: &str) -> Self {
        let (server, _) = oncely::backend::url::take_param(url, "prefix");
        let driver_url = server
            .split_once('?')
            .map_or(server.as_str(), |(base, _)| base)
            .to_owned();
        RedisPrefixes {
            server,
            driver_url,
            // Two benchmarks on one server at once keep apart.
            prefix: format!("oncely_bench_{}", std::process::id()),
        }
    }

    /// oncely's store URL for `contender`: its keys under a prefix of its own.
    pub(crate) fn store_url(&self, contender: &str) -> String {
        let separator = if self.server.contains('?') { '&' } else { '?' };
        format!(
            "{}{separator}prefix={}",
            self.server,
            self.contender_prefix(contender)
        )
    }

    /// The prefix of `contender`'s keys.
    pub(crate) fn contender_prefix(&self, contender: &str) -> String {
        format!("{}_{contender}", self.prefix)
    }

    /// Removes every key of this run.
    pub(crate) async fn forget(&self) -> Result<(), BenchError> {
        baseline::redis::forget(&self.driver_url, &self.prefix).await
    }
}
