//! The layer's options as flags.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use tokio::net::TcpListener;

use crate::servers;
use crate::support::{BIN, Gateway};

/// A TCP link to the Redis server under test that the test can cut: the gateway's store goes
/// away mid-run (its connections closed, new ones refused), as when Redis goes down.
struct StoreLink {
    addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

use crate::client::{client, send};
use crate::gateway::assert_summary_and_exit_0;
use crate::upstream::upstream;

impl StoreLink {
    /// A link to the server of the Redis URL `url`.
    async fn to(url: &str) -> StoreLink {
        let server = redis_authority(url);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let held = connections.clone();
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&server).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(task.abort_handle());
            }
        });
        StoreLink {
            addr,
            accepting,
            connections,
        }
    }

    /// `url` (a Redis URL) through this link.
    fn url(&self, url: &str) -> String {
        url.replacen(&redis_authority(url), &self.addr.to_string(), 1)
    }

    /// Closes every connection and refuses new ones.
    async fn cut(self) {
        self.accepting.abort();
        // The listener is dropped with the accepting task; then no connection is added.
        let _ = self.accepting.await;
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

/// `HOST:PORT` of a Redis URL.
fn redis_authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_gone_down_is_503_and_with_fail_open_requests_still_reach_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let store = servers::redis_url().await;
    let link = StoreLink::to(&store).await;
    let through_link = link.url(&store);
    let closed = Gateway::start_on(&through_link, dir.path(), &upstream, &[]);
    let open = Gateway::start_on(&through_link, dir.path(), &upstream, &["--fail-open"]);
    let client = client();
    for gateway in [&closed, &open] {
        let key = format!("up-{}", gateway.addr.port());
        let answer = send(&client, "POST", &gateway.url("/pay"), Some(&key), "A").await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    }

    link.cut().await;
    let refused = send(&client, "POST", &closed.url("/pay"), Some("down-1"), "A").await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert_eq!(refused.content_type(), "application/problem+json");
    assert!(
        refused.text().contains("urn:oncely:http:store-unavailable"),
        "{}",
        refused.text()
    );
    assert_eq!(executions.of("down-1"), 0, "fail closed forwards nothing");

    for _ in 0..2 {
        let through = send(&client, "POST", &open.url("/pay"), Some("down-2"), "A").await;
        assert_eq!(through.status, StatusCode::CREATED, "{}", through.text());
        assert!(!through.replayed());
        assert!(through.text().contains("key=down-2"), "{}", through.text());
    }
    // Unprotected: each retry executes, which is what fail open trades for availability.
    assert_eq!(executions.of("down-2"), 2);

    assert_summary_and_exit_0(
        &closed.terminate(),
        "requests 2: executed 1, replayed 0, in flight (409) 0, key reused (422) 0, \
         rejected 0, store unavailable (503) 1, upstream failed (502/504) 0, \
         passed through 0, abandoned 0",
    );
    let (code, stderr) = open.terminate();
    assert_summary_and_exit_0(
        &(code, stderr.clone()),
        "requests 3: executed 1, replayed 0, in flight (409) 0, key reused (422) 0, \
         rejected 0, store unavailable (503) 0, upstream failed (502/504) 0, \
         passed through 2, abandoned 0",
    );
    // The layer's warning reaches stderr through the log (RUST_LOG unset: warnings).
    assert!(
        stderr.iter().any(|l| l.contains("fail open")),
        "{stderr:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_releases_the_key_and_with_store_server_errors_it_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let releasing = Gateway::start(dir.path(), &upstream, &[]);
    let client = client();
    for _ in 0..2 {
        let answer = send(&client, "POST", &releasing.url("/fail"), Some("r-1"), "A").await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!answer.replayed());
    }
    assert_eq!(executions.of("r-1"), 2, "a released key executes again");
    drop(releasing);

    let storing = Gateway::start(dir.path(), &upstream, &["--store-server-errors"]);
    let first = send(&client, "POST", &storing.url("/fail"), Some("s-1"), "A").await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    let again = send(&client, "POST", &storing.url("/fail"), Some("s-1"), "A").await;
    assert_eq!(again.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(executions.of("s-1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_releases_the_key_a_422_is_replayed_and_store_status_lists_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let client = client();
    // Twice with one key to /status/CODE: (executions, the second replayed).
    let twice = |gateway: &Gateway, code: u16, key: &'static str| {
        let (client, url) = (client.clone(), gateway.url(&format!("/status/{code}")));
        let executions = executions.clone();
        async move {
            let first = send(&client, "POST", &url, Some(key), "A").await;
            assert_eq!(first.status.as_u16(), code);
            let second = send(&client, "POST", &url, Some(key), "A").await;
            (executions.of(key), second.replayed())
        }
    };
    let default = Gateway::start(dir.path(), &upstream, &[]);
    assert_eq!(twice(&default, 429, "a-429").await, (2, false));
    assert_eq!(twice(&default, 422, "a-422").await, (1, true));
    drop(default);

    let listed = Gateway::start(dir.path(), &upstream, &["--store-status", "201,429"]);
    assert_eq!(twice(&listed, 429, "b-429").await, (1, true));
    assert_eq!(twice(&listed, 422, "b-422").await, (2, false));
    assert_eq!(twice(&listed, 201, "b-201").await, (1, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_header_is_sent_but_never_replayed_and_set_cookie_stays_denied() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, _executions, _task) = upstream().await;
    let store = format!("sqlite:{}", dir.path().join("o.db").display());
    let by_flag = Gateway::start_on(
        &store,
        dir.path(),
        &upstream,
        &["--deny-header", "X-Upstream"],
    );
    let by_env = Gateway::start_with_env(
        &store,
        dir.path(),
        &upstream,
        &[],
        &[("ONCELY_DENY_HEADERS", "x-other,X-Upstream")],
    );
    let client = client();
    for (gateway, key) in [(&by_flag, "d-1"), (&by_env, "d-2")] {
        let first = send(&client, "POST", &gateway.url("/orders"), Some(key), "A").await;
        assert_eq!(first.headers["x-upstream"], "yes");
        assert_eq!(first.headers["set-cookie"], "session=1");
        let again = send(&client, "POST", &gateway.url("/orders"), Some(key), "A").await;
        assert!(again.replayed());
        assert_eq!(again.body, first.body);
        assert!(
            !again.headers.contains_key("x-upstream"),
            "{:?}",
            again.headers
        );
        assert!(
            !again.headers.contains_key("set-cookie"),
            "{:?}",
            again.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_takes_binary_units_and_fingerprint_headers_tell_requests_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(
        dir.path(),
        &upstream,
        &["--max-body", "1KiB", "--fingerprint-header", "X-Hop"],
    );
    let client = client();
    let small = send(
        &client,
        "POST",
        &gateway.url("/a"),
        Some("m-1"),
        &"x".repeat(1024),
    )
    .await;
    assert_eq!(small.status, StatusCode::CREATED);
    let large = send(
        &client,
        "POST",
        &gateway.url("/a"),
        Some("m-2"),
        &"x".repeat(1025),
    )
    .await;
    assert_eq!(
        large.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        large.text()
    );
    assert_eq!(executions.of("m-2"), 0);

    // `send` sends X-Hop: 1; the same key with another X-Hop value is another request.
    let request = Request::post(gateway.url("/a"))
        .header("idempotency-key", "m-1")
        .header("x-hop", "2")
        .body(Full::new(Bytes::from("x".repeat(1024))))
        .unwrap();
    let reused = client.request(request).await.unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(executions.of("m-1"), 1);
}

#[test]
fn a_size_that_is_not_one_is_refused_with_the_accepted_forms() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args([
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--max-response",
            "1MB",
        ])
        .current_dir(dir.path())
        .env_remove("ONCELY_STORE")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`1MB` is not a size: unknown unit `MB`")
            && stderr.contains("e.g. 65536, 64KiB, 1MiB"),
        "{stderr}"
    );
    assert!(!dir.path().join("oncely.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problem_types_start_with_the_problem_type_base() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let base = "https://docs.example.com/errors/";
    let gateway = Gateway::start(dir.path(), &down, &["--problem-type-base", base]);
    let client = client();
    // One problem the layer answers, one the gateway's proxy does.
    let malformed = send(&client, "POST", &gateway.url("/pay"), Some("\"k"), "A").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    let unavailable = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    assert_eq!(unavailable.status, StatusCode::BAD_GATEWAY);
    for (answer, slug) in [
        (malformed, "idempotency-key-malformed"),
        (unavailable, "upstream-unavailable"),
    ] {
        let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(json["type"], format!("{base}{slug}"), "{json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_a_stored_response_as_status_headers_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, _executions, _task) = upstream().await;
    let store = format!("sqlite:{}", dir.path().join("o.db").display());
    let gateway = Gateway::start_on(&store, dir.path(), &upstream, &[]);
    let first = send(&client(), "POST", &gateway.url("/orders"), Some("i-1"), "A").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let inspect = |format: &str| {
        let out = Command::new(BIN)
            .args([
                "--store", &store, "inspect", "--scope", "http", "--output", format, "i-1",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let text = inspect("text");
    assert!(text.contains("status       201 Created\n"), "{text}");
    assert!(text.contains("header       x-upstream: yes\n"), "{text}");
    // Set-Cookie was not stored, so it is not shown.
    assert!(!text.to_lowercase().contains("set-cookie"), "{text}");
    let body = String::from_utf8(first.body.to_vec()).unwrap();
    assert!(text.ends_with(&format!("\n\n{body}\n")), "{text}");

    let json: serde_json::Value = serde_json::from_str(&inspect("json")).unwrap();
    let response = &json["response"];
    assert_eq!(response["status"], 201);
    assert_eq!(response["body"], body);
    assert_eq!(response["body_bytes"], body.len());
    assert!(
        response["headers"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["x-upstream", "yes"])),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_responses_are_purged_in_the_background_while_requests_come() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, _executions, _task) = upstream().await;
    let client = client();
    for (purge_every, purged) in [("1s", true), ("off", false)] {
        let store = format!(
            "sqlite:{}",
            dir.path().join(format!("{purge_every}.db")).display()
        );
        let gateway = Gateway::start_on(
            &store,
            dir.path(),
            &upstream,
            &["--ttl", "1s", "--purge-every", purge_every],
        );
        let url = gateway.url("/orders");
        for n in 0..30 {
            let key = format!("old-{n}");
            send(&client, "POST", &url, Some(&key), "A").await;
        }
        // Under load: a request every 100 ms while the first 30 expire and the purge runs.
        for n in 0..30 {
            let key = format!("new-{n}");
            send(&client, "POST", &url, Some(&key), "A").await;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let out = Command::new(BIN)
            .args(["--store", &store, "stats", "--output", "json"])
            .output()
            .unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let records = stats["records"].as_u64().unwrap();
        let old_left = Command::new(BIN)
            .args(["--store", &store, "inspect", "--scope", "http", "old-0"])
            .output()
            .unwrap()
            .status
            .success();
        if purged {
            assert!(records < 60, "--purge-every {purge_every}: {stats}");
            assert!(!old_left, "the first, long expired, is purged");
        } else {
            assert_eq!(records, 60, "--purge-every off keeps them: {stats}");
            assert!(old_left);
        }
    }
}

/// `--key-from-body` keys requests that send no Idempotency-Key by their body; with
/// `--body-fingerprint ignore:/sentAt` a retry stamped with a new time is the same request,
/// another amount is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_from_the_body_and_a_fingerprint_that_ignores_a_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(
        dir.path(),
        &upstream,
        &[
            "--key-from-body",
            "powertools_json(body).orderId",
            "--body-fingerprint",
            "ignore:/sentAt",
        ],
    );
    let client = client();
    let order = |amount: u32, at: &str| {
        serde_json::json!({
            "body": serde_json::json!({"orderId": "o-1", "amount": amount}).to_string(),
            "sentAt": at,
        })
        .to_string()
    };
    let first = send(&client, "POST", &gateway.url("/a"), None, &order(10, "t1")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let retry = send(&client, "POST", &gateway.url("/a"), None, &order(10, "t2")).await;
    assert_eq!(retry.status, first.status);
    assert_eq!(retry.body, first.body, "replayed");
    let other = send(&client, "POST", &gateway.url("/a"), None, &order(11, "t3")).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(executions.of(""), 1);

    let bad = Command::new(BIN)
        .args(["serve", "--upstream", "http://127.0.0.1:9"])
        .args(["--body-fingerprint", "sha256"])
        .current_dir(dir.path())
        .env_remove("ONCELY_STORE")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("is not a fingerprint"), "{stderr}");
}
