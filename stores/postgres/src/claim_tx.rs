//! A claim batch's transaction in the default layout: the statements are PostgreSQL's, the
//! orchestration is [`oncely_core::batch`]'s. The store's own transaction for `claim_many`, the
//! caller's for the inbox.

use std::collections::{HashMap, HashSet};

use oncely_core::batch::{ClaimTransaction, Taken};
use oncely_core::{Error, Record, Result, async_trait};
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};

use crate::driver::{error, record_from_row};

const LOCK_MANY: &str = "SELECT scope, key, completed, token, attempt, fingerprint, created_at, \
     expires_at, outcome FROM oncely_records \
     WHERE (scope, key) IN (SELECT * FROM unnest($1::bytea[], $2::bytea[])) \
     ORDER BY scope, key FOR UPDATE";

/// A claim batch's transaction; the statements are PostgreSQL's, the orchestration the core's.
/// The store's own transaction for `claim_many`, the caller's for the inbox.
pub(crate) struct ClaimTx<'a> {
    pub(crate) conn: &'a mut PgConnection,
    /// Names the store in errors.
    pub(crate) store: &'a str,
}

impl ClaimTx<'_> {
    fn err(&self, e: sqlx::Error) -> Error {
        error(self.store, e)
    }

    fn record(&self, row: &PgRow) -> Result<Record> {
        record_from_row(row).map_err(|detail| Error::Corrupt {
            store: self.store.to_owned(),
            detail,
        })
    }
}

fn bytes(records: &[Record], column: impl Fn(&Record) -> &str) -> Vec<&[u8]> {
    records.iter().map(|r| column(r).as_bytes()).collect()
}

#[async_trait]
impl ClaimTransaction for ClaimTx<'_> {
    async fn take(&mut self, fresh: &[Record]) -> Result<Taken> {
        // ON CONFLICT DO NOTHING waits for a concurrent inserter of the same key, then skips it.
        // A record with an outcome (the inbox's) is written completed.
        let rows = sqlx::query(
            "INSERT INTO oncely_records (scope, key, completed, token, attempt, fingerprint, created_at, expires_at, outcome) \
             SELECT s, k, o IS NOT NULL, t, 1, f, c, e, o \
             FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::bytea[], $5::int8[], $6::int8[], $7::bytea[]) AS u(s, k, t, f, c, e, o) \
             ON CONFLICT (scope, key) DO NOTHING RETURNING scope, key",
        )
        .bind(bytes(fresh, |r| r.scope.as_str()))
        .bind(bytes(fresh, |r| r.key.as_str()))
        .bind(fresh.iter().map(|r| r.token as i64).collect::<Vec<_>>())
        .bind(fresh.iter().map(|r| r.fingerprint.map(|f| f.as_bytes().to_vec())).collect::<Vec<_>>())
        .bind(fresh.iter().map(|r| r.created_at.as_millis()).collect::<Vec<_>>())
        .bind(fresh.iter().map(|r| r.expires_at.as_millis()).collect::<Vec<_>>())
        .bind(fresh.iter().map(Record::outcome).collect::<Vec<_>>())
        .fetch_all(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        let mut inserted = HashSet::with_capacity(rows.len());
        for row in &rows {
            let scope: Vec<u8> = row.try_get("scope").map_err(|e| self.err(e))?;
            let key: Vec<u8> = row.try_get("key").map_err(|e| self.err(e))?;
            inserted.insert((scope, key));
        }
        let (inserted, others): (Vec<&Record>, Vec<&Record>) = fresh.iter().partition(|r| {
            inserted.contains(&(
                r.scope.as_str().as_bytes().to_vec(),
                r.key.as_str().as_bytes().to_vec(),
            ))
        });
        let mut taken = Taken {
            inserted: inserted
                .into_iter()
                .map(|r| (r.scope.clone(), r.key.clone()))
                .collect(),
            locked: HashMap::new(),
        };
        if !others.is_empty() {
            let rows = sqlx::query(LOCK_MANY)
                .bind(
                    others
                        .iter()
                        .map(|r| r.scope.as_str().as_bytes())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    others
                        .iter()
                        .map(|r| r.key.as_str().as_bytes())
                        .collect::<Vec<_>>(),
                )
                .fetch_all(&mut *self.conn)
                .await
                .map_err(|e| self.err(e))?;
            for row in &rows {
                let record = self.record(row)?;
                taken
                    .locked
                    .insert((record.scope.clone(), record.key.clone()), record);
            }
        }
        Ok(taken)
    }

    async fn rewrite(&mut self, records: &[Record]) -> Result<()> {
        sqlx::query(
            "UPDATE oncely_records AS r SET completed = u.o IS NOT NULL, token = u.t, attempt = u.a, \
             fingerprint = u.f, created_at = u.c, expires_at = u.e, outcome = u.o \
             FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::int4[], $5::bytea[], $6::int8[], $7::int8[], $8::bytea[]) \
             AS u(s, k, t, a, f, c, e, o) WHERE r.scope = u.s AND r.key = u.k",
        )
        .bind(bytes(records, |r| r.scope.as_str()))
        .bind(bytes(records, |r| r.key.as_str()))
        .bind(records.iter().map(|r| r.token as i64).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.attempt as i32).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.fingerprint.map(|f| f.as_bytes().to_vec())).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.created_at.as_millis()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.expires_at.as_millis()).collect::<Vec<_>>())
        .bind(records.iter().map(Record::outcome).collect::<Vec<_>>())
        .execute(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }
}
