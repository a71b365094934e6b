//! The process: a restart on the same store, signals, metrics.

use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::{Request, StatusCode};

use crate::client::{client, send};
use crate::gateway::assert_summary_and_exit_0;
use crate::support::{Gateway, PATIENCE};
use crate::upstream::upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_on_the_same_store_replays_a_completed_key() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let client = client();

    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let first = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let (code, _) = gateway.terminate();
    assert_eq!(code, Some(0));

    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let again = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    assert!(again.replayed());
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body);
    assert_eq!(executions.of("k"), 1);
    let (code, _) = gateway.terminate();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish_then_exits_0_with_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let client = client();
    let url = gateway.url("/slow");
    let in_flight = tokio::spawn(async move { send(&client, "POST", &url, Some("k"), "A").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let terminated = tokio::task::spawn_blocking(move || gateway.terminate());

    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    assert_eq!(executions.of("k"), 1);
    let terminated = terminated.await.unwrap();
    assert!(
        terminated
            .1
            .iter()
            .any(|l| l.starts_with("stopping: no new connections")),
        "{:#?}",
        terminated.1
    );
    assert_summary_and_exit_0(
        &terminated,
        "requests 1: executed 1, replayed 0, in flight (409) 0, key reused (422) 0, \
         rejected 0, store unavailable (503) 0, upstream failed (502/504) 0, \
         passed through 0, abandoned 0",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_outcome_in_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, _executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &["--metrics-addr", "127.0.0.1:0"]);
    let metrics = gateway
        .stderr
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| l.strip_prefix("metrics on ").map(str::to_owned))
        .expect("the metrics address on stderr");
    let client = client();
    for _ in 0..3 {
        send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    }
    send(&client, "GET", &gateway.url("/pay"), None, "").await;

    let scrape = send(&client, "GET", &metrics, None, "").await;
    assert_eq!(scrape.status, StatusCode::OK);
    let text = scrape.text();
    for line in [
        "oncely_serve_requests_total{outcome=\"executed\"} 1",
        "oncely_serve_requests_total{outcome=\"replayed\"} 2",
        "oncely_serve_requests_total{outcome=\"passed_through\"} 1",
        "oncely_serve_requests_total{outcome=\"in_flight\"} 0",
        "oncely_serve_request_duration_seconds_count{outcome=\"replayed\"} 2",
        "oncely_serve_request_duration_seconds_bucket{outcome=\"replayed\",le=\"+Inf\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    let (code, _) = gateway.terminate();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_with_130() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, _executions, _task) = upstream().await;
    let mut gateway = Gateway::start(dir.path(), &upstream, &[]);
    let client = client();
    let url = gateway.url("/slow");
    let _in_flight = tokio::spawn(async move {
        client
            .request(Request::post(url).body(Full::default()).unwrap())
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = i32::try_from(gateway.child.id()).unwrap();
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let started = Instant::now();
    while !gateway
        .stderr
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("stopping:"))
    {
        assert!(started.elapsed() < PATIENCE, "no stopping line");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = gateway.child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    // Before the slow request (1s) could finish.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let _ = gateway.ended.recv_timeout(PATIENCE);
    let stderr = gateway.stderr.lock().unwrap().clone();
    assert!(
        stderr.last().unwrap().starts_with("error: stopped at once"),
        "{stderr:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_store_or_the_upstream_is_down() {
    use oncely_conformance::faults::{FaultProxy, Link};
    let dir = tempfile::tempdir().unwrap();
    let (upstream, _executions, upstream_task) = upstream().await;
    // The store through a proxy the test cuts.
    let direct = crate::servers::postgres_url().await;
    let proxy = FaultProxy::start(5432).await;
    let store = direct.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port()));
    assert_ne!(store, direct, "{direct}");
    let gateway = Gateway::start_on(
        &store,
        dir.path(),
        &upstream,
        &["--metrics-addr", "127.0.0.1:0"],
    );
    let base = gateway
        .stderr
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.strip_prefix("health on ")?
                .strip_suffix("/healthz and /readyz")
        })
        .map(str::to_owned)
        .expect("the health address on stderr");
    let client = client();
    let get = |path: &str| {
        let (client, url) = (client.clone(), format!("{base}{path}"));
        async move { send(&client, "GET", &url, None, "").await }
    };
    // Polls /readyz until it answers `status`, for up to 15 s: its body.
    let readyz_becomes = |status: StatusCode| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let answer = get("/readyz").await;
            if answer.status == status {
                return answer.text();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/readyz still {} ({}), not {status}",
                answer.status,
                answer.text()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    assert_eq!(get("/healthz").await.status, StatusCode::OK);
    readyz_becomes(StatusCode::OK).await;

    proxy.set(Link::Cut);
    let why = readyz_becomes(StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(why.contains("the store"), "{why}");
    // Alive all the same: a restart would not bring the store back.
    assert_eq!(get("/healthz").await.status, StatusCode::OK);
    proxy.set(Link::Up);
    readyz_becomes(StatusCode::OK).await;

    upstream_task.abort();
    let why = readyz_becomes(StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(why.contains("the upstream"), "{why}");
    let (code, _) = gateway.terminate();
    assert_eq!(code, Some(0));
}
