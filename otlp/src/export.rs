//! [`Exporter`]: a thread of its own that POSTs the queued spans in batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http::header::CONTENT_TYPE;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oncely_http::gateway::client::{Connector, connector};
use serde_json::{Value, json};

use crate::config::{OtlpConfig, OtlpError};

/// Spans in one request at most.
const MAX_BATCH: usize = 512;

enum Message {
    Span(Value),
    /// Send everything queued before this, then answer and stop.
    Shutdown(SyncSender<()>),
}

/// The layer's end of the queue: never blocks; a full queue drops the span and counts it.
pub(crate) struct Queue {
    sender: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

impl Queue {
    pub(crate) fn push(&self, span: Value) {
        match self.sender.try_send(Message::Span(span)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends the spans an [`OtlpLayer`](crate::OtlpLayer) queues, every
/// [`every`](OtlpConfig::every) or 512 spans, from a thread of its own (so a process
/// whose runtime is busy or ending still exports). A failed export is logged (a warning, once
/// per run of failures) and its spans dropped: tracing never holds the work up.
///
/// Dropping it, or [`shutdown`](Exporter::shutdown), sends what is queued first.
pub struct Exporter {
    sender: SyncSender<Message>,
    thread: Option<JoinHandle<()>>,
    timeout: Duration,
}

impl Exporter {
    pub(crate) fn start(config: OtlpConfig) -> Result<(Queue, Exporter), OtlpError> {
        let https = config.endpoint.scheme_str() == Some("https");
        let connector = connector(https)?;
        let (sender, receiver) = mpsc::sync_channel(config.max_queue);
        let dropped = Arc::new(AtomicU64::new(0));
        let timeout = config.timeout;
        let thread = {
            let dropped = dropped.clone();
            std::thread::Builder::new()
                .name("oncely-otlp".to_owned())
                .spawn(move || export_loop(config, connector, receiver, dropped))?
        };
        let queue = Queue {
            sender: sender.clone(),
            dropped,
        };
        let exporter = Exporter {
            sender,
            thread: Some(thread),
            timeout,
        };
        Ok((queue, exporter))
    }

    /// Sends what is queued, waiting at most the export timeout, and stops.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let (done, answered) = mpsc::sync_channel(1);
        // Blocks while the queue is full: the thread is draining it.
        if self.sender.send(Message::Shutdown(done)).is_ok() {
            // Whatever was queued, and one last request of at most the timeout.
            let _ = answered.recv_timeout(self.timeout + Duration::from_secs(1));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

fn export_loop(
    config: OtlpConfig,
    connector: Connector,
    receiver: Receiver<Message>,
    dropped: Arc<AtomicU64>,
) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("oncely-otlp: no runtime for the exporter; spans are not exported");
        return;
    };
    let client: Client<Connector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let resource: Vec<Value> = config
        .resource
        .iter()
        .map(|(key, value)| json!({"key": key, "value": {"stringValue": value}}))
        .collect();
    let mut failing = false;
    let mut batch = Vec::new();
    let mut next = Instant::now() + config.every;
    loop {
        let mut shutdown = None;
        // Gather until the batch is full, the time is up, or shutdown.
        while batch.len() < MAX_BATCH {
            let wait = next.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(wait) {
                Ok(Message::Span(span)) => batch.push(span),
                Ok(Message::Shutdown(done)) => {
                    shutdown = Some(done);
                    break;
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if batch.len() < MAX_BATCH {
            next = Instant::now() + config.every;
        }
        if !batch.is_empty() {
            let spans = std::mem::take(&mut batch);
            let count = spans.len();
            let body = json!({"resourceSpans": [{
                "resource": {"attributes": resource},
                "scopeSpans": [{
                    "scope": {"name": "oncely", "version": env!("CARGO_PKG_VERSION")},
                    "spans": spans,
                }],
            }]});
            let result = runtime.block_on(post(&client, &config, body));
            match result {
                Ok(()) => failing = false,
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(target: "oncely_otlp", %error, spans = count,
                        endpoint = %config.endpoint, "OTLP export failed; spans dropped");
                }
                Err(_) => {}
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(target: "oncely_otlp", spans = lost,
                "OTLP export queue full; spans dropped (OTEL_BSP_MAX_QUEUE_SIZE)");
        }
        if let Some(done) = shutdown {
            // Everything queued before the shutdown was sent: the channel is FIFO.
            let _ = done.send(());
            return;
        }
    }
}

async fn post(
    client: &Client<Connector, Full<Bytes>>,
    config: &OtlpConfig,
    body: Value,
) -> Result<(), String> {
    let mut request = Request::post(config.endpoint.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    for (name, value) in &config.headers {
        request.headers_mut().insert(name, value.clone());
    }
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            Err(format!("the receiver answered {status}: {text}"))
        }
    };
    match tokio::time::timeout(config.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", config.timeout)),
    }
}
