//! Two gateways on one store whose hosts' clocks are 30 s apart: the one ahead runs under
//! libfaketime (Debian's `libfaketime`), which moves the time every call into the C library
//! reads, as a host whose clock is off would.

use std::time::Duration;

use hyper::StatusCode;

use crate::client::{client, send};
use crate::servers;
use crate::support::Gateway;
use crate::upstream::upstream;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The gateway 30 s ahead must see the other's lease as live: 409 while the first request runs,
/// then its answer replayed; the upstream executes the key once. Without the store's clock it
/// saw the lease (30 s, renewed every 10 s) as already run out and executed the key again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_clock_is_30_s_ahead_does_not_take_over_a_live_key() {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install libfaketime (scripts/test does)"
    );
    let store = servers::postgres_url().await;
    let (upstream, executions, _task) = upstream().await;
    let (dir_on_time, dir_ahead) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let on_time = Gateway::start_on(&store, dir_on_time.path(), &upstream, &[]);
    let ahead = Gateway::start_with_env(
        &store,
        dir_ahead.path(),
        &upstream,
        &[],
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME", "+30s"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let client = client();

    let url = on_time.url("/slow");
    let first = {
        let client = client.clone();
        tokio::spawn(async move { send(&client, "POST", &url, Some("skewed-1"), "A").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = send(&client, "POST", &ahead.url("/slow"), Some("skewed-1"), "A").await;
    assert_eq!(during.status, StatusCode::CONFLICT, "{}", during.text());
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let after = send(&client, "POST", &ahead.url("/slow"), Some("skewed-1"), "A").await;
    assert!(after.replayed(), "{} {}", after.status, after.text());
    assert_eq!(after.body, first.body);
    assert_eq!(executions.of("skewed-1"), 1);

    // The clock really was off, and the gateway said so.
    let log = ahead.stderr.lock().unwrap().clone();
    let warned = log
        .iter()
        .find(|l| l.contains("this host's clock is off the store's"))
        .unwrap_or_else(|| panic!("no clock warning: {log:#?}"));
    let offset: i64 = warned
        .split("offset_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no offset in {warned}"));
    assert!((-31_000..=-29_000).contains(&offset), "{warned}");
}
