//! How long a committed outbox row waits before its relay publishes it: with PostgreSQL's
//! LISTEN/NOTIFY wake-up, and by polling alone (the relay's default 200 ms poll), on the real
//! PostgreSQL and NATS JetStream.
//!
//! `cargo bench -p oncely-relay --bench wake` (`-- 500` for 500 rows per mode). Each row is
//! committed alone, at a random moment (20-120 ms after the previous one), so the rows fall
//! anywhere in the relay's poll; the latency is from the commit's return to the message's
//! arrival at a NATS subscriber of the stream's subject. Figures go to BENCHMARKS.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use oncely_conformance::servers;
use oncely_core::outbox::{AfterParked, Backlog, OutboxId, OutboxStore, ParkedRow};
use oncely_core::{Result, async_trait};
use oncely_nats::{FreshOptions, NatsPublisher, async_nats, fresh_destination};
use oncely_postgres::outbox::{Outbox, OutboxMessage, PostgresOutbox, PostgresOutboxStore};
use oncely_relay::Relay;

/// The PostgreSQL outbox without its wake-up: what the relay did before it had one.
struct PollOnly(PostgresOutboxStore);

#[async_trait]
impl OutboxStore for PollOnly {
    type Batch = <PostgresOutboxStore as OutboxStore>::Batch;
    async fn origin(&self) -> Result<String> {
        self.0.origin().await
    }
    async fn take(&self, limit: usize, after: AfterParked) -> Result<Option<Self::Batch>> {
        self.0.take(limit, after).await
    }
    async fn purge(&self, retention: Duration, limit: usize) -> Result<u64> {
        self.0.purge(retention, limit).await
    }
    async fn backlog(&self) -> Result<Backlog> {
        self.0.backlog().await
    }
    async fn parked(&self, limit: usize) -> Result<Vec<ParkedRow>> {
        self.0.parked(limit).await
    }
    async fn retry_parked(&self, ids: &[OutboxId]) -> Result<u64> {
        self.0.retry_parked(ids).await
    }
    async fn drop_parked(&self, ids: &[OutboxId]) -> Result<u64> {
        self.0.drop_parked(ids).await
    }
}

fn nats_server() -> String {
    std::env::var("ONCELY_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// Commit-to-arrival latencies of `rows` rows, one commit at a time.
async fn latencies<S: OutboxStore + 'static>(
    name: &str,
    rows: usize,
    store: impl FnOnce(PostgresOutboxStore) -> S,
) -> Vec<Duration> {
    let url = servers::postgres_url(&format!("oncely_bench_wake_{name}")).await;
    let outbox_store = PostgresOutboxStore::connect(&url).await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let fresh = fresh_destination(&nats_server(), &FreshOptions::new("ONCELY_BENCH_", name))
        .await
        .expect("NATS with JetStream");
    let client = async_nats::connect(nats_server()).await.unwrap();
    let mut subscription = client.subscribe(fresh.subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let arrived: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let record = arrived.clone();
    let subscriber = tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            let n: usize = std::str::from_utf8(&message.payload)
                .unwrap()
                .parse()
                .unwrap();
            record.lock().unwrap().insert(n, Instant::now());
        }
    });
    let publisher = NatsPublisher::connect(&format!("{}/{}", nats_server(), fresh.subject))
        .await
        .unwrap();
    let relay = Relay::new(store(outbox_store), publisher);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run(async {
        stopped.await.ok();
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let outbox = Outbox::new();
    let mut committed = Vec::with_capacity(rows);
    for n in 0..rows {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(20..=120))).await;
        let mut tx = pool.begin().await.unwrap();
        let row = OutboxMessage::new(format!("a-{}", n % 8), n.to_string().into_bytes());
        outbox.enqueue(&mut tx, &row).await.unwrap();
        tx.commit().await.unwrap();
        committed.push(Instant::now());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrived.lock().unwrap().len() < rows {
        assert!(Instant::now() < deadline, "rows missing after 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    subscriber.abort();
    let arrived = arrived.lock().unwrap();
    (0..rows)
        .map(|n| arrived[&n].saturating_duration_since(committed[n]))
        .collect()
}

fn summary(mut latencies: Vec<Duration>) -> String {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
        ms(at(1.0))
    )
}

#[tokio::main]
async fn main() {
    let rows: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(200);
    println!("commit to arrival, {rows} rows each, one commit at a time, relay poll 200 ms:");
    let notified = latencies("notify", rows, |store| store).await;
    println!("  LISTEN/NOTIFY wake-up: {}", summary(notified));
    let polled = latencies("poll", rows, PollOnly).await;
    println!("  polling only:          {}", summary(polled));
}
