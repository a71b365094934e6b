//! The client: requests to the gateway and their answers.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Debug)]
pub struct Answer {
    pub version: hyper::Version,
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    key: Option<&str>,
    body: &str,
) -> Answer {
    try_send(client, method, url, key, body).await.unwrap()
}

/// [`send`], with a gateway that may be gone: an error rather than a panic.
pub async fn try_send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    key: Option<&str>,
    body: &str,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let mut request = Request::builder().method(method).uri(url);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let request = request
        .header("x-hop", "1")
        .header("connection", "x-hop")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await?;
    let (parts, body) = response.into_parts();
    Ok(Answer {
        version: parts.version,
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// `tests/retrying_client.py` (Python's requests with urllib3's Retry, as `.ci/run` installs
/// them: no silent skip) posting `keys` keys to `url` from `threads` threads, with `env` set:
/// one answer per key.
pub async fn retrying_python_client(
    url: String,
    keys: usize,
    threads: usize,
    env: &[(&str, &str)],
) -> Vec<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/retrying_client.py");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([script, &url, &keys.to_string(), &threads.to_string()])
            .envs(env)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let answers: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(answers.len(), keys, "{stderr}");
    answers
}

/// Each of the `keys` answers is 201 from the one execution of its key, and most are replays:
/// the client's 0.3 s read timeout cuts every first attempt of `/slow`.
pub fn one_execution_per_key(
    answers: &[serde_json::Value],
    executions: &crate::upstream::Executions,
    keys: usize,
) {
    let mut replayed = 0;
    for answer in answers {
        let key = answer["key"].as_str().unwrap();
        assert_eq!(answer["status"], 201, "{answer}");
        // One execution, so the answer is that execution's, whoever got it first.
        assert_eq!(
            executions.of(key),
            1,
            "{key} executed more than once: {answer}"
        );
        let body = answer["body"].as_str().unwrap();
        assert!(body.contains(&format!("key={key} n=")), "{answer}");
        replayed += usize::from(answer["replayed"] == true);
    }
    let total = executions.all().values().sum::<u64>();
    eprintln!("{keys} keys: {total} upstream executions, {replayed} final answers replayed");
    assert_eq!(total, keys as u64);
    assert!(replayed > keys / 2, "only {replayed} replays");
}
