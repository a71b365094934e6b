//! Storms of concurrent duplicates, on SQLite, PostgreSQL and Redis, with and without a
//! SIGKILL in the middle.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use hyper::body::Bytes;

use crate::client::{Answer, client, send, try_send};
use crate::gateway::assert_summary_and_exit_0;
use crate::servers;
use crate::support::{Gateway, PATIENCE};
use crate::upstream::upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_concurrent_duplicates_executes_each_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("o.db").display());
    storm(&store, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_concurrent_duplicates_executes_each_key_once_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    storm(&servers::postgres_url().await, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_concurrent_duplicates_executes_each_key_once_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    storm(&servers::redis_url().await, dir.path()).await;
}

/// A storm's requests: `requests` keys out of `keys` distinct ones, each key at least once and
/// the rest random duplicates, in a random order. The seed is printed, and
/// `ONCELY_TEST_STORM_SEED` replays it.
fn storm_order(requests: usize, keys: usize) -> Vec<usize> {
    let seed = std::env::var("ONCELY_TEST_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    eprintln!("storm: seed {seed} (ONCELY_TEST_STORM_SEED={seed} replays this order)");
    // SplitMix64: enough randomness for an order, and no dependency.
    let mut state = seed;
    let mut next = move |bound: usize| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % bound as u64) as usize
    };
    let mut order: Vec<usize> = (0..keys).collect();
    order.extend((keys..requests).map(|_| next(keys)));
    for i in (1..order.len()).rev() {
        order.swap(i, next(i + 1));
    }
    order
}

/// Sends the requests of `order` (key numbers) to `url`, at most `in_flight` at a time; a 409
/// (the key's first request in flight), or an answer in `also_retried`, is retried after
/// 25 ms. Each answer, or the error of a request the gateway never answered, goes to the
/// returned channel with its key and the number of retried answers before it.
fn send_storm(
    url: String,
    order: Vec<usize>,
    in_flight: usize,
    also_retried: &'static [StatusCode],
) -> tokio::sync::mpsc::UnboundedReceiver<(String, Option<Answer>, usize)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = client();
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    tokio::spawn(async move {
        for k in order {
            let permit = permits.clone().acquire_owned().await.unwrap();
            let (client, url, tx) = (client.clone(), url.clone(), tx.clone());
            tokio::spawn(async move {
                let key = format!("key-{k}");
                let body = format!("order {k}");
                let mut conflicts = 0;
                let answer = loop {
                    match try_send(&client, "POST", &url, Some(&key), &body).await {
                        Ok(answer)
                            if answer.status == StatusCode::CONFLICT
                                || also_retried.contains(&answer.status) =>
                        {
                            assert!(answer.headers.contains_key("retry-after"));
                            conflicts += 1;
                            tokio::time::sleep(Duration::from_millis(25)).await;
                        }
                        Ok(answer) => break Some(answer),
                        Err(_) => break None,
                    }
                };
                drop(permit);
                let _ = tx.send((key, answer, conflicts));
            });
        }
    });
    rx
}

/// 10,000 requests over 2,000 keys (each at least once, the rest random duplicates, shuffled),
/// 96 at a time, through a gateway on the store at `store`.
async fn storm(store: &str, dir: &Path) {
    const REQUESTS: usize = 10_000;
    const KEYS: usize = 2_000;
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start_on(store, dir, &upstream, &[]);
    let started = Instant::now();
    let mut answers = send_storm(gateway.url("/orders"), storm_order(REQUESTS, KEYS), 96, &[]);

    let mut first: HashMap<String, Bytes> = HashMap::new();
    let mut fresh = 0;
    let mut replays = 0;
    let mut conflicts = 0;
    let mut received = 0;
    while let Some((key, answer, retried)) = answers.recv().await {
        received += 1;
        conflicts += retried;
        let answer = answer.unwrap_or_else(|| panic!("{key}: no answer"));
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
        if answer.replayed() {
            replays += 1;
        } else {
            fresh += 1;
        }
        let body = first
            .entry(key.clone())
            .or_insert_with(|| answer.body.clone());
        assert_eq!(*body, answer.body, "{key}: a different response");
    }
    eprintln!(
        "storm: {received} requests in {:?}; {conflicts} answers were 409 (first request in \
         flight) and retried",
        started.elapsed()
    );
    assert_eq!(received, REQUESTS);
    assert_eq!(fresh, KEYS);
    assert_eq!(replays, REQUESTS - KEYS);
    let all = executions.all();
    assert_eq!(all.len(), KEYS);
    assert!(all.values().all(|&n| n == 1), "{all:?}");

    assert_summary_and_exit_0(
        &gateway.terminate(),
        &format!(
            "requests {}: executed {KEYS}, replayed {}, in flight (409) {conflicts}, \
             key reused (422) 0, rejected 0, store unavailable (503) 0, \
             upstream failed (502/504) 0, passed through 0, abandoned 0",
            REQUESTS + conflicts,
            REQUESTS - KEYS
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_storm_and_restarted_loses_no_completed_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("o.db").display());
    storm_killed(&store, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_storm_and_restarted_loses_no_completed_record_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    storm_killed(&servers::postgres_url().await, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_storm_and_restarted_loses_no_completed_record_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    storm_killed(&servers::redis_url().await, dir.path()).await;
}

/// A storm (3,000 requests over 600 keys) through a gateway on `store` that is SIGKILLed once
/// 500 answers have arrived, then restarted on the same store and upstream. Every key the
/// client saw answered before the kill is a completed record: it replays that answer byte for
/// byte and the upstream is not called for it again. A key whose requests were all cut off may
/// execute at most once more: at once if the killed gateway had not claimed it, or once its
/// claim's lease (--timeout 1s + 30s) runs out, which the test waits for.
async fn storm_killed(store: &str, dir: &Path) {
    const REQUESTS: usize = 3_000;
    const KEYS: usize = 600;
    const KILL_AFTER: usize = 500;
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start_on(store, dir, &upstream, &["--timeout", "1s"]);
    let mut answers = send_storm(gateway.url("/orders"), storm_order(REQUESTS, KEYS), 96, &[]);

    let mut gateway = Some(gateway);
    let mut completed: HashMap<String, Answer> = HashMap::new();
    let (mut received, mut cut_off) = (0, 0);
    while let Some((key, answer, _)) = answers.recv().await {
        let Some(answer) = answer else {
            assert!(gateway.is_none(), "{key}: no answer from a running gateway");
            cut_off += 1;
            continue;
        };
        received += 1;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
        match completed.get(&key) {
            Some(first) => assert_eq!(first.body, answer.body, "{key}: a different response"),
            None => {
                completed.insert(key, answer);
            }
        }
        if received == KILL_AFTER {
            gateway.take().unwrap().kill9();
        }
    }
    assert!(gateway.is_none(), "the storm ended before the kill");
    let before = executions.all();
    eprintln!(
        "killed mid-storm: {received} answers ({} keys completed), {cut_off} requests cut off, \
         {} keys executed",
        completed.len(),
        before.len()
    );
    for key in completed.keys() {
        assert_eq!(before.get(key), Some(&1), "{key}");
    }

    let gateway = Gateway::start_on(store, dir, &upstream, &[]);
    let client = client();
    let url = gateway.url("/orders");
    let (mut replayed, mut executed, mut held) = (0, 0, Vec::new());
    for k in 0..KEYS {
        let key = format!("key-{k}");
        let answer = send(&client, "POST", &url, Some(&key), &format!("order {k}")).await;
        let was = before.get(&key).copied().unwrap_or(0);
        if let Some(first) = completed.get(&key) {
            assert_eq!(answer.status, first.status, "{key}: {}", answer.text());
            assert!(answer.replayed(), "{key}: executed again after the restart");
            assert_eq!(answer.body, first.body, "{key}: a different response");
            assert_eq!(executions.of(&key), 1, "{key}");
            replayed += 1;
            continue;
        }
        match answer.status {
            StatusCode::CREATED if answer.replayed() => {
                assert_eq!(executions.of(&key), was, "{key}");
                replayed += 1;
            }
            StatusCode::CREATED => {
                assert_eq!(executions.of(&key), was + 1, "{key}");
                assert!(was <= 1, "{key}: executed {was} times before the restart");
                executed += 1;
            }
            StatusCode::CONFLICT => {
                assert!(answer.headers.contains_key("retry-after"));
                assert_eq!(executions.of(&key), was, "{key}");
                held.push(k);
            }
            status => panic!("{key}: {status} {}", answer.text()),
        }
    }
    eprintln!(
        "after the restart: {replayed} keys replayed, {executed} executed, {} still held by a \
         claim of the killed gateway (409 until its lease ends)",
        held.len()
    );
    assert!(replayed >= completed.len());

    // The killed gateway's claims end with their lease: then each held key executes once more
    // at most, and its next request replays that answer.
    let waited = Instant::now();
    let deadline = waited + Duration::from_secs(31) + PATIENCE;
    for k in held {
        let key = format!("key-{k}");
        let body = format!("order {k}");
        let was = before.get(&key).copied().unwrap_or(0);
        let answer = loop {
            let answer = send(&client, "POST", &url, Some(&key), &body).await;
            if answer.status != StatusCode::CONFLICT {
                break answer;
            }
            assert!(Instant::now() < deadline, "{key}: still held");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{key}: {}",
            answer.text()
        );
        assert!(executions.of(&key) <= was + 1, "{key}");
        let again = send(&client, "POST", &url, Some(&key), &body).await;
        assert!(again.replayed(), "{key}");
        assert_eq!(again.body, answer.body, "{key}: a different response");
        assert!(executions.of(&key) <= was + 1, "{key}");
    }
    eprintln!("the held keys were released after {:?}", waited.elapsed());
    assert!(executions.all().values().all(|&n| n <= 2));
    let (code, _) = gateway.terminate();
    assert_eq!(code, Some(0));
}

/// A storm (4,000 requests over 800 keys) through a gateway whose PostgreSQL (the test's own)
/// crashes once 500 answers have arrived and is down for a second, then is shut down and comes
/// back once 2,000 have. The client retries a 503 (store unavailable) as it does a 409. Each
/// key is executed exactly once and every request is answered with its key's one response:
/// claims during the outage are refused before anything runs, and a response that could not be
/// stored while the server was down is stored once it is back, within the claim's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_through_a_store_that_restarts_executes_each_key_once() {
    use oncely_conformance::faults::{PostgresServer, Restartable, Stop};
    const REQUESTS: usize = 4_000;
    const KEYS: usize = 800;
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(std::sync::Mutex::new(
        tokio::task::spawn_blocking(PostgresServer::start)
            .await
            .unwrap(),
    ));
    let store = server.lock().unwrap().url();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start_on(&store, dir.path(), &upstream, &["--timeout", "5s"]);
    let retried = &[StatusCode::SERVICE_UNAVAILABLE];
    let mut answers = send_storm(
        gateway.url("/orders"),
        storm_order(REQUESTS, KEYS),
        96,
        retried,
    );

    let mut first: HashMap<String, Bytes> = HashMap::new();
    let (mut received, mut restarts) = (0, Vec::new());
    while let Some((key, answer, _)) = answers.recv().await {
        received += 1;
        let answer = answer.unwrap_or_else(|| panic!("{key}: no answer"));
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{key}: {}",
            answer.text()
        );
        let body = first
            .entry(key.clone())
            .or_insert_with(|| answer.body.clone());
        assert_eq!(*body, answer.body, "{key}: a different response");
        for (at, how) in [(500, Stop::Crash), (2_000, Stop::Graceful)] {
            if received == at {
                let server = server.clone();
                restarts.push(tokio::task::spawn_blocking(move || {
                    server.lock().unwrap().restart(how, Duration::from_secs(1));
                    eprintln!("storm: the store {how:?} and back after 1 s, at {at} answers");
                }));
            }
        }
    }
    for restart in restarts {
        restart.await.unwrap();
    }
    assert_eq!(received, REQUESTS);
    assert_eq!(first.len(), KEYS);
    let all = executions.all();
    assert_eq!(all.len(), KEYS);
    let twice: Vec<_> = all.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "executed more than once: {twice:?}");
    let (code, summary) = gateway.terminate();
    eprintln!("storm through restarts: {}", summary.join(" | "));
    assert_eq!(code, Some(0));
}
