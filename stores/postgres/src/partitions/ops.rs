//! The store operations whose statements differ in the partitioned layout: every write of a key
//! under its advisory lock (no unique index serializes it across partitions), and purge by
//! dropping partitions.

use std::collections::HashMap;

use oncely_core::batch::{ClaimTransaction, Taken, claim_in_transaction};
use oncely_core::{Claim, ClaimOutcome, ClaimRequest, Key, Record, Result, Scope, Timestamp};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use super::maintenance::{PARTITIONS, now_millis};
use crate::PostgresStore;
use crate::store::guarded;

/// The advisory lock of one (scope, key): FNV-1a over the scope's length, the scope and the key.
/// Stable across builds and instances, as it must be; a collision only makes two keys wait.
fn key_lock(scope: &Scope, key: &Key) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let scope = scope.as_str().as_bytes();
    let len = (scope.len() as u32).to_le_bytes();
    for byte in len.iter().chain(scope).chain(key.as_str().as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// Distinct lock ids of `keys`, ascending: the order every transaction takes them in.
fn lock_ids<'a>(keys: impl Iterator<Item = (&'a Scope, &'a Key)>) -> Vec<i64> {
    let mut ids: Vec<i64> = keys.map(|(s, k)| key_lock(s, k)).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

const LOCK_KEYS: &str = "SELECT pg_advisory_xact_lock(h) FROM unnest($1::int8[]) AS u(h)";
const LOCK_MANY: &str = "SELECT scope, key, completed, token, attempt, fingerprint, created_at, \
     expires_at, outcome FROM oncely_records \
     WHERE (scope, key) IN (SELECT * FROM unnest($1::bytea[], $2::bytea[])) \
     ORDER BY scope, key FOR UPDATE";

/// A claim batch's transaction in the partitioned layout: advisory locks instead of a unique
/// index.
struct ClaimTx<'a> {
    store: &'a PostgresStore,
    tx: Transaction<'static, Postgres>,
}

fn bytes(records: &[&Record], column: impl Fn(&Record) -> &str) -> Vec<Vec<u8>> {
    records
        .iter()
        .map(|r| column(r).as_bytes().to_vec())
        .collect()
}

#[oncely_core::async_trait]
impl ClaimTransaction for ClaimTx<'_> {
    async fn take(&mut self, fresh: &[Record]) -> Result<Taken> {
        let store = self.store;
        let ids = lock_ids(fresh.iter().map(|r| (&r.scope, &r.key)));
        sqlx::query(LOCK_KEYS)
            .bind(ids)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| store.err(e))?;
        // Every writer of these keys now waits for us; this statement's snapshot is taken after
        // the locks were granted, so it sees their last committed rows, in whichever partition.
        let all: Vec<&Record> = fresh.iter().collect();
        let rows = sqlx::query(LOCK_MANY)
            .bind(bytes(&all, |r| r.scope.as_str()))
            .bind(bytes(&all, |r| r.key.as_str()))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(|e| store.err(e))?;
        let mut locked = HashMap::with_capacity(rows.len());
        for row in &rows {
            let record = store.record(row)?;
            let id = (record.scope.clone(), record.key.clone());
            if locked.insert(id, record).is_some() {
                return Err(
                    store.corrupt("a (scope, key) is stored twice across partitions".to_owned())
                );
            }
        }
        let absent: Vec<&Record> = fresh
            .iter()
            .filter(|r| !locked.contains_key(&(r.scope.clone(), r.key.clone())))
            .collect();
        if !absent.is_empty() {
            sqlx::query(
                "INSERT INTO oncely_records (scope, key, completed, token, attempt, fingerprint, created_at, expires_at) \
                 SELECT s, k, false, t, 1, f, c, e \
                 FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::bytea[], $5::int8[], $6::int8[]) AS u(s, k, t, f, c, e)",
            )
            .bind(bytes(&absent, |r| r.scope.as_str()))
            .bind(bytes(&absent, |r| r.key.as_str()))
            .bind(absent.iter().map(|r| r.token as i64).collect::<Vec<_>>())
            .bind(absent.iter().map(|r| r.fingerprint.map(|f| f.as_bytes().to_vec())).collect::<Vec<_>>())
            .bind(absent.iter().map(|r| r.created_at.as_millis()).collect::<Vec<_>>())
            .bind(absent.iter().map(|r| r.expires_at.as_millis()).collect::<Vec<_>>())
            .execute(&mut *self.tx)
            .await
            .map_err(|e| store.err(e))?;
        }
        Ok(Taken {
            inserted: absent
                .iter()
                .map(|r| (r.scope.clone(), r.key.clone()))
                .collect(),
            locked,
        })
    }

    async fn rewrite(&mut self, records: &[Record]) -> Result<()> {
        let all: Vec<&Record> = records.iter().collect();
        // A new expires_at moves the row to its partition (PostgreSQL 11+).
        let done = sqlx::query(
            "UPDATE oncely_records AS r SET completed = false, token = u.t, attempt = u.a, fingerprint = u.f, \
             created_at = u.c, expires_at = u.e, outcome = NULL \
             FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::int4[], $5::bytea[], $6::int8[], $7::int8[]) \
             AS u(s, k, t, a, f, c, e) WHERE r.scope = u.s AND r.key = u.k",
        )
        .bind(bytes(&all, |r| r.scope.as_str()))
        .bind(bytes(&all, |r| r.key.as_str()))
        .bind(records.iter().map(|r| r.token as i64).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.attempt as i32).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.fingerprint.map(|f| f.as_bytes().to_vec())).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.created_at.as_millis()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.expires_at.as_millis()).collect::<Vec<_>>())
        .execute(&mut *self.tx)
        .await
        .map_err(|e| self.store.err(e))?;
        if done.rows_affected() != records.len() as u64 {
            return Err(self.store.corrupt(format!(
                "rewrote {} of {} locked rows",
                done.rows_affected(),
                records.len()
            )));
        }
        Ok(())
    }
}

/// The [`Store`](oncely_core::Store) operations whose statements differ in the partitioned
/// layout; `get` and `apply_if_newer` are the default layout's.
impl PostgresStore {
    pub(crate) async fn partitioned_claim_many(
        &self,
        requests: &[ClaimRequest],
        now: Timestamp,
    ) -> Result<Vec<ClaimOutcome>> {
        let mut tx = ClaimTx {
            store: self,
            tx: self.begin().await?,
        };
        let outcomes = claim_in_transaction(&mut tx, &self.url, requests, now).await?;
        tx.tx.commit().await.map_err(|e| self.err(e))?;
        Ok(outcomes)
    }

    pub(crate) async fn lock_key(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        scope: &Scope,
        key: &Key,
    ) -> Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key_lock(scope, key))
            .execute(&mut **tx)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(crate) async fn partitioned_complete(
        &self,
        claim: &Claim,
        outcome: &[u8],
        expires_at: Timestamp,
    ) -> Result<()> {
        let update = guarded(
            "UPDATE oncely_records SET completed = true, outcome = $4, expires_at = $5",
            claim,
        )
        .bind(outcome)
        .bind(expires_at.as_millis());
        self.write_guarded(claim, update).await
    }

    pub(crate) async fn partitioned_purge(
        &self,
        expired_before: Timestamp,
        limit: usize,
    ) -> Result<usize> {
        if limit == 0 {
            return Ok(0);
        }
        // Ahead of the cut-off, and ahead of now by the system clock: a purge with a cut-off far
        // in the past must still keep partitions ready for the records being written now.
        self.maintain(&[expired_before.as_millis(), now_millis()], false)
            .await?;
        let candidates = sqlx::query(AssertSqlSafe(format!(
            "SELECT name, hi FROM ({PARTITIONS}) p WHERE hi IS NOT NULL AND hi <= $1 ORDER BY hi"
        )))
        .bind(expired_before.as_millis())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let mut purged = 0;
        for row in &candidates {
            if purged >= limit {
                break;
            }
            let name: String = row.try_get("name").map_err(|e| self.err(e))?;
            if let Some(rows) = self.drop_partition(&name, limit - purged).await? {
                purged += rows;
            }
        }
        if purged < limit {
            purged += self.delete_expired(expired_before, limit - purged).await?;
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_locks_are_stable_and_keep_scope_and_key_apart() {
        let lock = |s: &str, k: &str| key_lock(&Scope::new(s).unwrap(), &Key::new(k).unwrap());
        assert_eq!(lock("a", "bc"), lock("a", "bc"));
        assert_ne!(lock("a", "bc"), lock("ab", "c"));
        let (s, x, y) = (
            Scope::new("s").unwrap(),
            Key::new("x").unwrap(),
            Key::new("y").unwrap(),
        );
        let ids = lock_ids([(&s, &x), (&s, &y), (&s, &x)].into_iter());
        assert_eq!(ids.len(), 2);
        assert!(ids[0] < ids[1]);
    }
}
