//! # oncely-redis
//!
//! A [`Store`] on Redis, single node or Redis Cluster, for services that already run Redis and
//! want dedup decisions in about a millisecond, shared by every instance.
//!
//! Needs Redis 7.0 or later (or Valkey): a claim is one `SET ... NX GET`.
//!
//! ## When to use it
//!
//! Pick Redis when claims must be fast and shared across many instances, and your Redis is
//! durable enough for the dedup window you need (AOF with `appendfsync everysec` loses at most
//! about a second of acknowledged claims on a crash; a cache-only Redis with eviction loses
//! records silently — give oncely a `noeviction` database). If the dedup record must commit
//! together with your business writes, use a SQL store's transactional inbox instead.
//!
//! ## How it works
//!
//! - **Atomic by Lua.** `claim_many`, `complete`, `release`, `extend` and `apply_if_newer` each
//!   run as one server-side script (EVALSHA, loaded on first use), so the read-decide-write of
//!   the lifecycle's rules happens with no other client in between. The scripts implement the
//!   rules of [`oncely_core::lifecycle`]; the answers are built on the client by those very
//!   functions.
//! - **One string per record.** A record is one Redis string (state, deadline, token, attempt,
//!   creation time, fingerprint and outcome), so a claim is a `GET` and a `SET ... PX`, and so
//!   is a completion; no index is written per record. Concurrent single calls are coalesced
//!   into one script per scope and batch.
//! - **One slot per scope.** Every key of a scope carries the scope as its hash tag
//!   (`oncely:{orders}:r:evt-1`), so each script touches one slot and works unchanged on Redis
//!   Cluster. A batch spanning several scopes becomes one script call per scope, sent together,
//!   answered in request order.
//! - **Your clock, not Redis's.** Stores never read a clock: lease and retention are decided
//!   against the `now` the caller passes. Redis's own expiry is only a memory backstop (see
//!   *Expiry* below).
//! - **Purge and stats walk the records.** They `SCAN` the server (on a cluster, each
//!   primary) for the records of every scope under the prefix, 128 keys a step, so they never
//!   block claims for long. A walk visits every key on that server, so it takes time in
//!   proportion to the server's size; a purge goes on where the last one stopped, so purging
//!   in small batches walks the server about once in all. A record may be counted twice if
//!   Redis resizes its table during the walk. Memory does not wait for purge: the native TTL
//!   (below) removes expired records by itself.
//!
//! ## Upgrading from the hash records
//!
//! Versions before the one-string record kept each record as a hash, indexed in two sorted
//! sets per scope. This version reads those records, answers claims on them, replaces them
//! when they expire, and purges and counts them by their index, so it can share a Redis with
//! the older version during a rolling upgrade. The older version cannot read the new strings:
//! its scripts fail with `WRONGTYPE` on such a key, an error its caller sees (no effect runs
//! twice). Finish the upgrade before relying on those keys from the older version.
//!
//! ## URLs
//!
//! | URL | meaning |
//! |---|---|
//! | `redis://[user:password@]host[:port][/db]` | one server (database `db`, default 0) |
//! | `rediss://[user:password@]host[:port][/db][?cacert=PATH]` | one server over TLS |
//! | `redis+unix:///path/redis.sock` | one server over a Unix socket |
//! | `redis+cluster://[user:password@]h1:p1,h2:p2,...` | a Redis Cluster, from any of its nodes |
//! | `rediss+cluster://[user:password@]h1:p1,...[?cacert=PATH]` | a Redis Cluster over TLS |
//!
//! Query parameters: `prefix=NAME` puts every key under `NAME` (default `oncely`; no braces), so
//! several applications or test runs share one Redis; `ttl_grace=SECONDS|off` sets the expiry
//! backstop's grace (default 3600).
//!
//! TLS: `rediss://[user:password@]host[:port]` reaches one server over TLS (rustls), and
//! `rediss+cluster://` every node of a cluster (the nodes must run with `tls-cluster yes`, so
//! that they tell clients their TLS ports). Certificates are verified against the system's
//! roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` replace them, as for OpenSSL) or, with
//! `cacert=PATH`, against the PEM roots in that file alone; a node's certificate must name the
//! address the cluster gives out for it (its IP unless `cluster-announce-hostname` is set).
//!
//! ## Expiry
//!
//! A record counts as expired when `expires_at < now` for the caller's `now`, decided inside the
//! scripts with exact integer comparison. Redis's native TTL plays no part in that decision: it
//! is set on each record only as a backstop, so memory is reclaimed even if nobody runs purge.
//! It is *relative*: `expires_at - now + grace` (a claim) or `expires_at - claimed_at + grace`
//! (a completion or a lease renewal, whose `now` the store is not told; `claimed_at` is
//! earlier, so that is longer, never shorter). A record can therefore vanish natively only
//! `grace` after it expired by the caller's clock, provided the caller's clock does not run
//! slower than the Redis server's by more than `grace` over the record's life. A vanished
//! expired record answers as purged: the next claim is `New` (attempt 1), its old holder gets
//! `ClaimLost(Missing)`.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use oncely_core::{Key, Oncely, Scope};
//! use oncely_redis::RedisStore;
//!
//! let store = RedisStore::connect("redis://127.0.0.1:6379/0?prefix=billing").await?;
//! let oncely = Oncely::new(Arc::new(store));
//! let out = oncely
//!     .run(&Scope::new("payments")?, &Key::new("evt-42")?, None, || async {
//!         Ok::<_, std::io::Error>(b"charged".to_vec())
//!     })
//!     .await?;
//! assert!(!out.was_replayed());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

// What the crate docs link to.
#[cfg(doc)]
use oncely_core::Store;

mod connection;
mod keys;
mod options;
mod record;
mod scripts;
mod store;

pub use options::{DEFAULT_PREFIX, DEFAULT_TTL_GRACE};
pub use store::RedisStore;
