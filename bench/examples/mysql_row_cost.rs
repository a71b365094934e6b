//! What one batched insert costs MariaDB/MySQL by the shape of its rows: the floor under any
//! batch claim, measured apart from oncely. 100,000 fresh UUID keys, 1,000 per transaction,
//! on 4 connections at once (the batched limit's terms), in a fresh database `oncely_row_cost`:
//!
//! - `key`: `INSERT IGNORE` into a key-only table (the benchmark's batched limit);
//! - `record`: `INSERT ... ON DUPLICATE KEY UPDATE` of oncely's record (its nine columns and its
//!   `expires_at` index), rows padded to 1,024 as the store pads them;
//! - `record-no-index`: the same without the `expires_at` index (that purge needs);
//! - `record-select`: `record`, then the rows read back `FOR UPDATE` (MySQL's way);
//! - `record-returning`: `record` with `RETURNING` (MariaDB's way).
//!
//! ```sh
//! cargo run --release -p oncely-bench --example mysql_row_cost -- key record record-no-index record-select record-returning
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use sqlx::{AssertSqlSafe, Connection, MySqlConnection};

const SERVER: &str = "mysql://root@127.0.0.1:3306/test";
const DATABASE: &str = "mysql://root@127.0.0.1:3306/oncely_row_cost";
const EVENTS: usize = 100_000;
const BATCH: usize = 1000;
const PADDED: usize = 1024;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), sqlx::Error> {
    for shape in std::env::args().skip(1) {
        let rate = run(&shape).await?;
        println!("{shape}: {rate:.0} rows/s");
    }
    let mut admin = MySqlConnection::connect(SERVER).await?;
    sqlx::raw_sql("DROP DATABASE IF EXISTS oncely_row_cost")
        .execute(&mut admin)
        .await?;
    Ok(())
}

async fn run(shape: &str) -> Result<f64, sqlx::Error> {
    let mut admin = MySqlConnection::connect(SERVER).await?;
    sqlx::raw_sql("DROP DATABASE IF EXISTS oncely_row_cost; CREATE DATABASE oncely_row_cost")
        .execute(&mut admin)
        .await?;
    let table = match shape {
        "key" => "CREATE TABLE t (k VARBINARY(512) PRIMARY KEY) ENGINE = InnoDB".to_owned(),
        _ => format!(
            "CREATE TABLE t (scope VARBINARY(255) NOT NULL, k VARBINARY(512) NOT NULL, \
             completed BOOLEAN NOT NULL, token BIGINT NOT NULL, attempt INT NOT NULL, \
             fingerprint BINARY(32) NULL, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, \
             outcome LONGBLOB NULL, PRIMARY KEY (scope, k){}) ENGINE = InnoDB",
            if shape == "record-no-index" {
                ""
            } else {
                ", INDEX (expires_at)"
            }
        ),
    };
    let mut conn = MySqlConnection::connect(DATABASE).await?;
    sqlx::raw_sql(AssertSqlSafe(table))
        .execute(&mut conn)
        .await?;
    let keys: Arc<Vec<String>> = Arc::new(
        (0..EVENTS)
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (keys, next, shape) = (keys.clone(), next.clone(), shape.to_owned());
        tasks.spawn(async move {
            let mut conn = MySqlConnection::connect(DATABASE).await?;
            sqlx::raw_sql("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                .execute(&mut conn)
                .await?;
            loop {
                let unit = next.fetch_add(1, Ordering::Relaxed);
                if unit >= EVENTS / BATCH {
                    return Ok::<_, sqlx::Error>(());
                }
                let mut chunk: Vec<&[u8]> = keys[unit * BATCH..(unit + 1) * BATCH]
                    .iter()
                    .map(|k| k.as_bytes())
                    .collect();
                chunk.sort_unstable();
                let mut tx = conn.begin().await?;
                batch(&mut tx, &shape, &chunk).await?;
                tx.commit().await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task")?;
    }
    Ok(EVENTS as f64 / started.elapsed().as_secs_f64())
}

async fn batch(conn: &mut MySqlConnection, shape: &str, keys: &[&[u8]]) -> Result<(), sqlx::Error> {
    if shape == "key" {
        let sql = format!(
            "INSERT IGNORE INTO t VALUES {}",
            vec!["(?)"; keys.len()].join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for key in keys {
            query = query.bind(*key);
        }
        query.execute(&mut *conn).await?;
        return Ok(());
    }
    let returning = if shape == "record-returning" {
        " RETURNING *"
    } else {
        ""
    };
    let sql = format!(
        "INSERT INTO t VALUES {} ON DUPLICATE KEY UPDATE token = token{returning}",
        vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; PADDED].join(", ")
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for i in 0..PADDED {
        query = query
            .bind(&b""[..])
            .bind(keys[i.min(keys.len() - 1)])
            .bind(true)
            .bind(i as i64)
            .bind(1_i32)
            .bind(None::<Vec<u8>>)
            .bind(1_i64)
            .bind(2_i64)
            .bind(Some(&b""[..]));
    }
    if returning.is_empty() {
        query.execute(&mut *conn).await?;
    } else {
        assert_eq!(query.fetch_all(&mut *conn).await?.len(), PADDED);
    }
    if shape == "record-select" {
        let sql = format!(
            "SELECT * FROM t WHERE scope = ? AND k IN ({}) FOR UPDATE",
            vec!["?"; keys.len()].join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(&b""[..]);
        for key in keys {
            query = query.bind(*key);
        }
        assert_eq!(query.fetch_all(&mut *conn).await?.len(), keys.len());
    }
    Ok(())
}
