//! `oncely consume` end to end: the binary as a process, real brokers (NATS JetStream at
//! `ONCELY_NATS_URL`, default nats://127.0.0.1:4222; RabbitMQ at `ONCELY_AMQP_URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f; a Kafka-protocol broker at `ONCELY_KAFKA_BROKERS`,
//! default 127.0.0.1:9092; an SQS-compatible server at `ONCELY_SQS_URL`, default
//! sqs+http://127.0.0.1:5999), a real SQLite store, and a small HTTP handler in this process that
//! records every request it gets.
//!
//! Streams, queues and topics are named after this process and a counter. Streams are deleted
//! at the end of their test (and those of dead earlier runs at the start of the next); queues
//! carry `x-expires`, so RabbitMQ removes them a few minutes after their last use; topics (and
//! their dead-letter topics) are deleted at the end of their test, and carry the time in their
//! name, so a run never meets an earlier one's; so are SQS queues.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use oncely::consumer::{ATTEMPTS_HEADER, ERROR_HEADER, KEY_HEADER, Message, SOURCE_HEADER};
use oncely::kafka::MESSAGE_ID_HEADER;
use oncely::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use oncely::kafka::rdkafka::client::DefaultClientContext;
use oncely::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use oncely::kafka::rdkafka::message::{Header, Headers, OwnedHeaders};
use oncely::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use oncely::kafka::rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use oncely::nats::async_nats::{self, HeaderMap, jetstream};
use oncely::rabbitmq::lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use oncely::rabbitmq::lapin::types::{AMQPValue, FieldTable};
use oncely::rabbitmq::lapin::{self, BasicProperties, Confirmation, Connection};

const BIN: &str = env!("CARGO_BIN_EXE_oncely");

/// How long the consumer gets to do what a test waits for.
const PATIENCE: Duration = Duration::from_secs(30);

/// The key whose handler answers 500, every time.
const FAILING: &str = "always-fails";

fn nats_server() -> String {
    std::env::var("ONCELY_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn amqp_server() -> String {
    std::env::var("ONCELY_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn sqs_server() -> String {
    std::env::var("ONCELY_SQS_URL").unwrap_or_else(|_| "sqs+http://127.0.0.1:5999".into())
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}_{n}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// The handler: a minimal HTTP/1.1 server on 127.0.0.1:0.

/// One request the handler got.
#[derive(Clone, Debug)]
struct Received {
    method: String,
    path: String,
    /// Lower-cased names.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    fn key(&self) -> &str {
        self.header("idempotency-key").unwrap_or_default()
    }
}

/// Answers 200 with `ok <key>` to every request, except 500 to key [`FAILING`]; one
/// connection per request (`Connection: close`).
struct Handler {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Handler {
    fn start() -> Handler {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = log.clone();
                std::thread::spawn(move || {
                    if let Some(request) = answer(stream) {
                        log.lock().unwrap().push(request);
                    }
                });
            }
        });
        Handler { url, received }
    }

    /// A handler that takes connections and never answers.
    fn silent() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                held.push(stream);
            }
        });
        url
    }

    /// A handler URL where nothing listens.
    fn down() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", listener.local_addr().unwrap())
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// How many requests each key got.
    fn per_key(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for request in self.received() {
            *counts.entry(request.key().to_owned()).or_default() += 1;
        }
        counts
    }
}

fn answer(stream: TcpStream) -> Option<Received> {
    let request = read_request(&stream)?;
    let (status, text) = if request.key() == FAILING {
        (
            "500 Internal Server Error",
            format!("boom: {} cannot be handled", request.key()),
        )
    } else {
        ("200 OK", format!("ok {}", request.key()))
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    )
    .ok()?;
    stream.flush().ok()?;
    Some(request)
}

/// One request from `stream`, head and body.
fn read_request(stream: &TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        method,
        path,
        headers,
        body,
    })
}

// ---------------------------------------------------------------------------------------------
// The process.

fn spawn_consume(dir: &Path, args: &[&str]) -> Child {
    let store = format!("sqlite:{}", dir.join("o.db").display());
    spawn_consume_on(&store, dir, args)
}

fn spawn_consume_on(store: &str, dir: &Path, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(["--store", store, "consume"])
        .args(args)
        .current_dir(dir)
        .env_remove("ONCELY_STORE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// SIGTERM, then everything the process printed.
fn terminate(child: Child) -> Output {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    child.wait_with_output().unwrap()
}

/// The process's output when it ends by itself (a setup error).
fn run_to_end(dir: &Path, args: &[&str]) -> Output {
    wait_to_end(spawn_consume(dir, args))
}

fn wait_to_end(child: Child) -> Output {
    let deadline = Instant::now() + PATIENCE;
    let pid = child.id();
    let output = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !output.is_finished() {
        assert!(
            Instant::now() < deadline,
            "oncely consume (pid {pid}) kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    output.join().unwrap()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_summary_and_exit_0(output: &Output, summary: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.lines().last(), Some(summary), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn assert_one_clear_error(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code();
    assert!(
        code.is_some_and(|c| c != 0 && c != 101),
        "{code:?}: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
}

/// Every good key POSTed exactly once with its body; the failing one `attempts` times.
fn assert_each_key_posted_once(
    handler: &Handler,
    bodies: &HashMap<&str, Vec<u8>>,
    attempts: usize,
) {
    let received = handler.received();
    let per_key = handler.per_key();
    for (key, body) in bodies {
        let expected = if *key == FAILING { attempts } else { 1 };
        assert_eq!(
            per_key.get(*key),
            Some(&expected),
            "POSTs of {key}: {per_key:?}"
        );
        for request in received.iter().filter(|r| r.key() == *key) {
            assert_eq!(request.method, "POST");
            assert_eq!(request.path, "/hook");
            assert_eq!(&request.body, body, "body of {key}");
        }
    }
    assert_eq!(per_key.len(), bodies.len(), "unexpected keys: {per_key:?}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ.

/// A fresh queue and dead-letter queue, both expiring when unused.
struct Rabbit {
    connection: Connection,
    publisher: lapin::Channel,
    queue: String,
    dlq: String,
}

impl Rabbit {
    async fn new() -> Rabbit {
        let connection = Connection::connect(&amqp_server(), Default::default())
            .await
            .expect("RabbitMQ at ONCELY_AMQP_URL (start it with `rabbitmq-server -detached`)");
        let queue = unique("oncely.cli.consume.");
        let dlq = format!("{queue}.failed");
        let setup = connection.create_channel().await.unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongInt(5 * 60 * 1000));
        for name in [&queue, &dlq] {
            setup
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions::durable(),
                    arguments.clone(),
                )
                .await
                .unwrap();
        }
        let publisher = connection.create_channel().await.unwrap();
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Rabbit {
            connection,
            publisher,
            queue,
            dlq,
        }
    }

    async fn publish(&self, message_id: &str, payload: &[u8]) {
        let properties = BasicProperties::default().with_message_id(message_id.into());
        let confirmation = self
            .publisher
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            matches!(confirmation, Confirmation::Ack(None)),
            "{confirmation:?}"
        );
    }

    /// The dead letters, taken for good.
    async fn dead_letters(&self) -> Vec<Message> {
        let channel = self.connection.create_channel().await.unwrap();
        let mut letters = Vec::new();
        while let Some(got) = channel
            .basic_get(self.dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            letters.push(oncely::rabbitmq::message::from_amqp(
                &got.delivery.properties,
                &got.delivery.data,
                &self.dlq,
            ));
        }
        channel.close(200, "OK".into()).await.ok();
        letters
    }
}

fn order(id: &str, n: u32) -> Vec<u8> {
    format!(r#"{{"id":"{id}","n":{n}}}"#).into_bytes()
}

#[test]
fn rabbitmq_each_key_is_posted_once_and_the_failing_one_is_dead_lettered() {
    let rt = runtime();
    let rabbit = rt.block_on(Rabbit::new());
    let handler = Handler::start();
    let dir = tempfile::tempdir().unwrap();

    // In order, one at a time (--concurrency 1): once `last` is POSTed, all before it are settled.
    let bodies: HashMap<&str, Vec<u8>> = [
        ("a", order("a", 1)),
        ("b", order("b", 2)),
        (FAILING, order(FAILING, 3)),
        ("c", order("c", 4)),
        ("last", order("last", 5)),
    ]
    .into_iter()
    .collect();
    let sequence = ["a", "b", "a", FAILING, "c", "b", "last"];
    rt.block_on(async {
        for (i, key) in sequence.iter().enumerate() {
            rabbit.publish(&format!("m-{i}"), &bodies[key]).await;
        }
    });

    let from = format!("{}/{}", amqp_server(), rabbit.queue);
    let child = spawn_consume(
        dir.path(),
        &[
            "--from",
            &from,
            "--key",
            "/id",
            "--deliver",
            &handler.url,
            "--dlq",
            &rabbit.dlq,
            "--max-attempts",
            "3",
            "--timeout",
            "5s",
        ],
    );
    wait_for("every key's POST", || {
        handler.per_key().contains_key("last")
    });
    let letters = rt.block_on(async {
        let mut letters = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while letters.is_empty() && Instant::now() < deadline {
            letters = rabbit.dead_letters().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        letters
    });
    let output = terminate(child);
    assert_summary_and_exit_0(
        &output,
        "consumed 7: done 4, duplicates 2, redelivered 0, dead-lettered 1",
    );

    assert_each_key_posted_once(&handler, &bodies, 3);
    let first_a = handler
        .received()
        .into_iter()
        .find(|r| r.key() == "a")
        .unwrap();
    assert_eq!(first_a.header("content-type"), Some("application/json"));
    assert_eq!(first_a.header("oncely-message-id"), Some("m-0"));
    assert_eq!(first_a.header("oncely-source"), Some(rabbit.queue.as_str()));

    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.payload(), bodies[FAILING].as_slice());
    assert_eq!(letter.header(KEY_HEADER), Some(FAILING));
    assert_eq!(letter.header(ATTEMPTS_HEADER), Some("3"));
    assert_eq!(
        letter.header(ERROR_HEADER),
        Some("handler answered 500 Internal Server Error: boom: always-fails cannot be handled")
    );
    assert_eq!(letter.message_id(), Some("m-3"));
}

// ---------------------------------------------------------------------------------------------
// NATS JetStream.

/// A fresh stream capturing `<name>.in`; deleted, with its dead-letter stream, at the end.
struct Nats {
    context: jetstream::Context,
    name: String,
}

impl Nats {
    async fn new() -> Nats {
        let client = async_nats::connect(nats_server())
            .await
            .expect("NATS with JetStream at ONCELY_NATS_URL (start nats-server -js)");
        let context = jetstream::new(client);
        remove_leftovers(&context).await;
        let name = unique("ONCELY_CLI_");
        context
            .create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("{name}.in")],
                ..Default::default()
            })
            .await
            .expect("create stream");
        Nats { context, name }
    }

    async fn publish(&self, message_id: &str, event_id: &str, payload: &[u8]) {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", message_id);
        headers.insert("Event-Id", event_id);
        self.context
            .publish_with_headers(
                format!("{}.in", self.name),
                headers,
                payload.to_vec().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// True once the consumer has no message left to deliver and none unacked.
    async fn drained(&self, consumer: &str) -> bool {
        let stream = self.context.get_stream(&self.name).await.unwrap();
        let info = stream.consumer_info(consumer).await.unwrap();
        info.num_pending == 0 && info.num_ack_pending == 0
    }

    async fn dead_letters(&self, subject: &str) -> Vec<jetstream::message::StreamMessage> {
        let Ok(name) = self.context.stream_by_subject(subject).await else {
            return Vec::new();
        };
        let mut stream = self.context.get_stream(&name).await.unwrap();
        let count = stream.info().await.unwrap().state.messages;
        let mut letters = Vec::new();
        for sequence in 1..=count {
            letters.push(stream.get_raw_message(sequence).await.unwrap());
        }
        letters
    }

    async fn delete(&self) {
        for name in [self.name.clone(), format!("{}_DLQ", self.name)] {
            self.context.delete_stream(&name).await.ok();
        }
    }
}

/// Deletes the streams of earlier runs whose process is gone.
async fn remove_leftovers(context: &jetstream::Context) {
    let names: Vec<String> = context.stream_names().try_collect().await.unwrap();
    for name in names {
        let Some(rest) = name.strip_prefix("ONCELY_CLI_") else {
            continue;
        };
        let pid = rest.split('_').next().unwrap_or_default();
        if pid != std::process::id().to_string() && !Path::new(&format!("/proc/{pid}")).exists() {
            context.delete_stream(&name).await.ok();
        }
    }
}

#[test]
fn nats_each_key_is_posted_once_and_the_failing_one_is_dead_lettered() {
    let rt = runtime();
    let nats = rt.block_on(Nats::new());
    let handler = Handler::start();
    let dir = tempfile::tempdir().unwrap();
    let dlq = format!("{}.failed", nats.name);

    // Keys from a header; one payload is not JSON. Each publish has its own Nats-Msg-Id, so
    // the stream keeps the duplicates and the consumer sees them.
    let bodies: HashMap<&str, Vec<u8>> = [
        ("e-1", order("x", 1)),
        ("e-2", b"\x00\x01 raw bytes".to_vec()),
        ("e-3", order("y", 3)),
        (FAILING, order("z", 4)),
    ]
    .into_iter()
    .collect();
    rt.block_on(async {
        for (i, key) in ["e-1", "e-2", "e-3", FAILING].iter().enumerate() {
            nats.publish(&format!("m-{i}"), key, &bodies[key]).await;
        }
    });

    let from = format!("{}/{}/bridge", nats_server(), nats.name);
    let child = spawn_consume(
        dir.path(),
        &[
            "--from",
            &from,
            "--key",
            "header:Event-Id",
            "--deliver",
            &handler.url,
            "--dlq",
            &dlq,
            "--max-attempts",
            "2",
            "--concurrency",
            "4",
        ],
    );
    wait_for("the first round of POSTs", || {
        let per_key = handler.per_key();
        ["e-1", "e-2", "e-3"]
            .iter()
            .all(|k| per_key.contains_key(*k))
            && per_key.get(FAILING) == Some(&2)
    });
    // Duplicates after the originals are done, so none meets its original in flight.
    rt.block_on(async {
        nats.publish("m-4", "e-1", &bodies["e-1"]).await;
        nats.publish("m-5", "e-2", &bodies["e-2"]).await;
    });
    let letters = rt.block_on(async {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let letters = nats.dead_letters(&dlq).await;
            if (!letters.is_empty() && nats.drained("bridge").await) || Instant::now() > deadline {
                return letters;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let output = terminate(child);
    rt.block_on(nats.delete());
    assert_summary_and_exit_0(
        &output,
        "consumed 6: done 3, duplicates 2, redelivered 0, dead-lettered 1",
    );

    assert_each_key_posted_once(&handler, &bodies, 2);
    let received = handler.received();
    let by_key = |key: &str| received.iter().find(|r| r.key() == key).unwrap();
    assert_eq!(
        by_key("e-1").header("content-type"),
        Some("application/json")
    );
    assert_eq!(
        by_key("e-2").header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(by_key("e-3").header("oncely-message-id"), Some("m-2"));
    assert_eq!(
        by_key("e-3").header("oncely-source"),
        Some(format!("{}.in", nats.name).as_str())
    );

    assert_eq!(letters.len(), 1, "dead letters on {dlq}");
    let letter = &letters[0];
    assert_eq!(letter.payload.as_ref(), bodies[FAILING].as_slice());
    let header = |name: &str| letter.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header(KEY_HEADER).as_deref(), Some(FAILING));
    assert_eq!(header(ATTEMPTS_HEADER).as_deref(), Some("2"));
    assert_eq!(
        header(ERROR_HEADER).as_deref(),
        Some("handler answered 500 Internal Server Error: boom: always-fails cannot be handled")
    );
}

// ---------------------------------------------------------------------------------------------
// Kafka.

fn kafka_brokers() -> String {
    std::env::var("ONCELY_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn kafka_config() -> ClientConfig {
    oncely::kafka::client_config(&kafka_brokers())
}

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh topic of three partitions, named after this process, a counter and the time (topics
/// outlive a run: a name is never reused); deleted, with its dead-letter topic, at the end.
struct Kafka {
    topic: String,
    producer: FutureProducer,
    /// Per partition, the offset after the last record produced to it.
    ends: Mutex<HashMap<i32, i64>>,
}

impl Kafka {
    async fn new() -> Kafka {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let topic = format!("{}.{millis}", unique("oncely.cli.consume."));
        let admin: AdminClient<DefaultClientContext> = kafka_config().create().unwrap();
        let new = NewTopic::new(&topic, 3, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
        let results = admin
            .create_topics([&new], &options)
            .await
            .expect("Kafka at ONCELY_KAFKA_BROKERS (start tansu)");
        for result in results {
            result.unwrap_or_else(|(name, code)| panic!("creating topic {name}: {code}"));
        }
        let producer = kafka_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .unwrap();
        Kafka {
            topic,
            producer,
            ends: Mutex::new(HashMap::new()),
        }
    }

    /// The `--from` URL for consumer group `group` (offsets committed every 50 ms).
    fn url(&self, group: &str) -> String {
        format!(
            "kafka://{}/{}?group={group}&commit_interval=50ms",
            kafka_brokers(),
            self.topic
        )
    }

    fn dead_letter_topic(&self) -> String {
        format!("{}.dlq", self.topic)
    }

    /// Produces `payload` with Kafka key `key` (one key, one partition) and `message_id` in the
    /// Oncely-Message-Id header, as the relay does.
    async fn publish(&self, key: &str, message_id: &str, payload: &[u8]) {
        let headers = OwnedHeaders::new().insert(Header {
            key: MESSAGE_ID_HEADER,
            value: Some(message_id),
        });
        let record = FutureRecord::to(&self.topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        let (partition, offset) = self
            .producer
            .send(record, KAFKA_TIMEOUT)
            .await
            .map(|d| (d.partition, d.offset))
            .map_err(|(e, _)| e)
            .unwrap();
        let mut ends = self.ends.lock().unwrap();
        let end = ends.entry(partition).or_default();
        *end = (*end).max(offset + 1);
    }

    /// True once `group` has committed every record produced (blocking). From the records'
    /// own offsets, not the high watermarks: tansu's can lag (see [`read_kafka_topic`]).
    fn settled(&self, group: &str) -> bool {
        let consumer: BaseConsumer = kafka_config().set("group.id", group).create().unwrap();
        let ends = self.ends.lock().unwrap().clone();
        let mut tpl = TopicPartitionList::new();
        for partition in ends.keys() {
            tpl.add_partition(&self.topic, *partition);
        }
        let Ok(committed) = consumer.committed_offsets(tpl, KAFKA_TIMEOUT) else {
            return false;
        };
        ends.iter().all(|(partition, end)| {
            matches!(
                committed.find_partition(&self.topic, *partition).map(|e| e.offset()),
                Some(Offset::Offset(at)) if at >= *end
            )
        })
    }

    async fn delete(&self) {
        let admin: AdminClient<DefaultClientContext> = kafka_config().create().unwrap();
        let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
        let dlq = self.dead_letter_topic();
        admin
            .delete_topics(&[&self.topic, &dlq], &options)
            .await
            .ok();
    }
}

/// Every record of `topic`, if it exists (blocking): its partitions read from the beginning
/// until nothing more comes for half a second. Not up to the high watermark: tansu (0.6)
/// answers the base offset of a partition's last produce batch plus one, short of the records
/// after the first of a last batch of several.
fn read_kafka_topic(topic: &str) -> Vec<Message> {
    let consumer: BaseConsumer = kafka_config()
        .set("group.id", format!("{topic}.reader"))
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT) else {
        return Vec::new();
    };
    let mut tpl = TopicPartitionList::new();
    for partition in metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions())
    {
        tpl.add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    let mut messages = Vec::new();
    if tpl.count() == 0 {
        return messages;
    }
    consumer.assign(&tpl).unwrap();
    let mut last_read = Instant::now();
    while last_read.elapsed() < Duration::from_millis(500) {
        let Some(Ok(read)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        last_read = Instant::now();
        let mut message = Message::new(read.payload().unwrap_or_default().to_vec(), topic);
        if let Some(key) = read.key() {
            message = message.with_ordering_key(String::from_utf8_lossy(key));
        }
        for header in read.headers().iter().flat_map(|h| h.iter()) {
            let value = String::from_utf8_lossy(header.value.unwrap_or_default());
            if header.key == MESSAGE_ID_HEADER {
                message = message.with_message_id(value.clone());
            }
            message = message.with_header(header.key, value);
        }
        messages.push(message);
    }
    messages
}

#[test]
fn kafka_each_key_is_posted_once_and_the_failing_one_is_dead_lettered() {
    let rt = runtime();
    let kafka = rt.block_on(Kafka::new());
    let handler = Handler::start();
    let dir = tempfile::tempdir().unwrap();
    let group = format!("{}.group", kafka.topic);

    // The Kafka key is the order id: a duplicate shares its original's partition, so it comes
    // after the original settled, never beside it. Three partitions, side by side.
    let bodies: HashMap<&str, Vec<u8>> = [
        ("a", order("a", 1)),
        ("b", order("b", 2)),
        (FAILING, order(FAILING, 3)),
        ("c", order("c", 4)),
        ("last", order("last", 5)),
    ]
    .into_iter()
    .collect();
    let sequence = ["a", "b", "a", FAILING, "c", "b", "last"];
    rt.block_on(async {
        for (i, key) in sequence.iter().enumerate() {
            kafka.publish(key, &format!("m-{i}"), &bodies[key]).await;
        }
    });

    let from = kafka.url(&group);
    let child = spawn_consume(
        dir.path(),
        &[
            "--from",
            &from,
            "--key",
            "/id",
            "--deliver",
            &handler.url,
            "--max-attempts",
            "3",
            "--timeout",
            "5s",
            "--concurrency",
            "3",
        ],
    );
    // Every record settled: the duplicates too, which POST nothing.
    wait_for("every record's offset committed", || kafka.settled(&group));
    let letters = read_kafka_topic(&kafka.dead_letter_topic());
    let output = terminate(child);
    rt.block_on(kafka.delete());
    assert_summary_and_exit_0(
        &output,
        "consumed 7: done 4, duplicates 2, redelivered 0, dead-lettered 1",
    );

    assert_each_key_posted_once(&handler, &bodies, 3);
    let first_a = handler
        .received()
        .into_iter()
        .find(|r| r.key() == "a")
        .unwrap();
    assert_eq!(first_a.header("content-type"), Some("application/json"));
    assert_eq!(first_a.header("oncely-message-id"), Some("m-0"));
    assert_eq!(first_a.header("oncely-source"), Some(kafka.topic.as_str()));

    assert_eq!(
        letters.len(),
        1,
        "dead letters on {}",
        kafka.dead_letter_topic()
    );
    let letter = &letters[0];
    assert_eq!(letter.payload(), bodies[FAILING].as_slice());
    assert_eq!(
        letter.ordering_key(),
        Some(FAILING),
        "the original's Kafka key"
    );
    assert_eq!(letter.message_id(), Some("m-3"), "the original's headers");
    assert_eq!(letter.header(KEY_HEADER), Some(FAILING));
    assert_eq!(letter.header(ATTEMPTS_HEADER), Some("3"));
    assert_eq!(letter.header(SOURCE_HEADER), Some(kafka.topic.as_str()));
    assert_eq!(
        letter.header(ERROR_HEADER),
        Some("handler answered 500 Internal Server Error: boom: always-fails cannot be handled")
    );
}

/// What the outbox relay produces (one aggregate per Kafka key, the row's id in the
/// Oncely-Message-Id header), with a row produced twice as a relay killed between the ack and
/// marking it sent does: `--key message-id` POSTs each row once.
#[test]
fn kafka_rows_produced_twice_by_the_relay_are_posted_once_by_message_id() {
    let rt = runtime();
    let kafka = rt.block_on(Kafka::new());
    let handler = Handler::start();
    let dir = tempfile::tempdir().unwrap();
    let group = format!("{}.group", kafka.topic);

    let rows = [
        ("order-1", "o-1", "created"),
        ("order-2", "o-2", "created"),
        ("order-1", "o-3", "paid"),
        ("order-1", "o-3", "paid"),
        ("order-2", "o-4", "paid"),
        ("order-3", "o-5", "created"),
        ("order-2", "o-4", "paid"),
    ];
    rt.block_on(async {
        for (aggregate, id, event) in rows {
            let payload = format!(r#"{{"order":"{aggregate}","event":"{event}"}}"#);
            kafka.publish(aggregate, id, payload.as_bytes()).await;
        }
    });

    let from = kafka.url(&group);
    let child = spawn_consume(
        dir.path(),
        &[
            "--from",
            &from,
            "--key",
            "message-id",
            "--deliver",
            &handler.url,
            "--concurrency",
            "3",
        ],
    );
    wait_for("every record's offset committed", || kafka.settled(&group));
    let output = terminate(child);
    rt.block_on(kafka.delete());
    assert_summary_and_exit_0(
        &output,
        "consumed 7: done 5, duplicates 2, redelivered 0, dead-lettered 0",
    );
    let per_key = handler.per_key();
    assert_eq!(per_key.len(), 5, "{per_key:?}");
    assert!(per_key.values().all(|n| *n == 1), "{per_key:?}");
}

// ---------------------------------------------------------------------------------------------
// SQS.

/// A fresh standard queue and its dead-letter queue (`<queue>-failed`, given with --dlq), named
/// after this process, a counter and the time; both deleted at the end.
struct Sqs {
    client: aws_sdk_sqs::Client,
    queue: String,
    queue_url: String,
    dlq: String,
    dlq_url: String,
}

impl Sqs {
    async fn new() -> Sqs {
        let options = oncely::sqs::SqsOptions::parse_queue_optional(&sqs_server()).unwrap();
        let client = oncely::sqs::client(&options).unwrap();
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let queue = format!("{}-{millis}", unique("oncely-cli-consume-"));
        let dlq = format!("{queue}-failed");
        let mut urls = Vec::new();
        for name in [&queue, &dlq] {
            let created = client
                .create_queue()
                .queue_name(name)
                .send()
                .await
                .unwrap_or_else(|e| panic!("SQS at {}: {e:?} (start moto_server)", sqs_server()));
            urls.push(created.queue_url.unwrap());
        }
        Sqs {
            client,
            queue,
            dlq,
            dlq_url: urls.pop().unwrap(),
            queue_url: urls.pop().unwrap(),
        }
    }

    /// `payload` with `message_id` in the Oncely-Message-Id attribute, as the relay sends it.
    async fn publish(&self, message_id: &str, payload: &[u8]) {
        let id = aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(message_id)
            .build()
            .unwrap();
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(std::str::from_utf8(payload).unwrap())
            .message_attributes(oncely::sqs::MESSAGE_ID_ATTRIBUTE, id)
            .send()
            .await
            .unwrap();
    }

    /// True once the queue holds no message, visible or in flight: every one deleted (acked).
    async fn drained(&self) -> bool {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let answer = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let attributes = answer.attributes.unwrap_or_default();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .all(|name| attributes.get(name).map(String::as_str) == Some("0"))
    }

    /// The dead letters, taken for good: their String attributes as headers, the
    /// Oncely-Message-Id attribute as the message id.
    async fn dead_letters(&self) -> Vec<Message> {
        let mut letters = Vec::new();
        loop {
            let received = self
                .client
                .receive_message()
                .queue_url(&self.dlq_url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default();
            if received.is_empty() {
                return letters;
            }
            for got in received {
                let body = got.body.clone().unwrap_or_default().into_bytes();
                let mut letter = Message::new(body, &self.dlq);
                for (name, value) in got.message_attributes.clone().unwrap_or_default() {
                    let text = value.string_value().unwrap_or_default();
                    if name == oncely::sqs::MESSAGE_ID_ATTRIBUTE {
                        letter = letter.with_message_id(text);
                    }
                    letter = letter.with_header(name, text);
                }
                letters.push(letter);
                self.client
                    .delete_message()
                    .queue_url(&self.dlq_url)
                    .receipt_handle(got.receipt_handle.unwrap_or_default())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    async fn delete(&self) {
        for url in [&self.queue_url, &self.dlq_url] {
            self.client.delete_queue().queue_url(url).send().await.ok();
        }
    }
}

#[test]
fn sqs_each_key_is_posted_once_and_the_failing_one_is_dead_lettered() {
    let rt = runtime();
    let sqs = rt.block_on(Sqs::new());
    let handler = Handler::start();
    let dir = tempfile::tempdir().unwrap();

    // One at a time (--concurrency 1), in the order sent (a standard queue on moto keeps it):
    // each duplicate comes after its original settled.
    let bodies: HashMap<&str, Vec<u8>> = [
        ("a", order("a", 1)),
        ("b", order("b", 2)),
        (FAILING, order(FAILING, 3)),
        ("c", order("c", 4)),
        ("last", order("last", 5)),
    ]
    .into_iter()
    .collect();
    let sequence = ["a", "b", "a", FAILING, "c", "b", "last"];
    rt.block_on(async {
        for (i, key) in sequence.iter().enumerate() {
            sqs.publish(&format!("m-{i}"), &bodies[key]).await;
        }
    });

    let from = format!("{}/{}?wait=1s", sqs_server(), sqs.queue);
    let child = spawn_consume(
        dir.path(),
        &[
            "--from",
            &from,
            "--key",
            "/id",
            "--deliver",
            &handler.url,
            "--dlq",
            &sqs.dlq,
            "--max-attempts",
            "3",
            "--timeout",
            "5s",
        ],
    );
    wait_for("every message deleted from the queue", || {
        handler.per_key().contains_key("last") && rt.block_on(sqs.drained())
    });
    let letters = rt.block_on(sqs.dead_letters());
    let output = terminate(child);
    rt.block_on(sqs.delete());
    assert_summary_and_exit_0(
        &output,
        "consumed 7: done 4, duplicates 2, redelivered 0, dead-lettered 1",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("(scope {})", sqs.queue)),
        "the default scope is the queue: {stderr}"
    );

    assert_each_key_posted_once(&handler, &bodies, 3);
    let first_a = handler
        .received()
        .into_iter()
        .find(|r| r.key() == "a")
        .unwrap();
    assert_eq!(first_a.header("content-type"), Some("application/json"));
    assert_eq!(first_a.header("oncely-message-id"), Some("m-0"));
    assert_eq!(first_a.header("oncely-source"), Some(sqs.queue.as_str()));

    assert_eq!(letters.len(), 1, "dead letters on {}: {letters:?}", sqs.dlq);
    let letter = &letters[0];
    assert_eq!(letter.payload(), bodies[FAILING].as_slice());
    assert_eq!(
        letter.message_id(),
        Some("m-3"),
        "the original's attributes"
    );
    assert_eq!(letter.header(KEY_HEADER), Some(FAILING));
    assert_eq!(letter.header(ATTEMPTS_HEADER), Some("3"));
    assert_eq!(letter.header(SOURCE_HEADER), Some(sqs.queue.as_str()));
    assert_eq!(
        letter.header(ERROR_HEADER),
        Some("handler answered 500 Internal Server Error: boom: always-fails cannot be handled")
    );
}

/// What the outbox relay sends (the row's id in the Oncely-Message-Id attribute), with rows
/// sent twice as a relay killed between the send and marking them sent does (on a standard
/// queue, which keeps every copy): `--key message-id` POSTs each row once.
#[test]
fn sqs_rows_sent_twice_by_the_relay_are_posted_once_by_message_id() {
    let rt = runtime();
    let sqs = rt.block_on(Sqs::new());
    let handler = Handler::start();
    let dir = tempfile::tempdir().unwrap();

    let rows = [
        ("order-1", "o-1", "created"),
        ("order-2", "o-2", "created"),
        ("order-1", "o-3", "paid"),
        ("order-1", "o-3", "paid"),
        ("order-2", "o-4", "paid"),
        ("order-3", "o-5", "created"),
        ("order-2", "o-4", "paid"),
    ];
    rt.block_on(async {
        for (aggregate, id, event) in rows {
            let payload = format!(r#"{{"order":"{aggregate}","event":"{event}"}}"#);
            sqs.publish(id, payload.as_bytes()).await;
        }
    });

    // The dead-letter queue is the default one, QUEUE-dlq: it must exist.
    let dlq = format!("{}-dlq", sqs.queue);
    let dlq_url = rt.block_on(async {
        let created = sqs.client.create_queue().queue_name(&dlq).send().await;
        created.unwrap().queue_url.unwrap()
    });
    let from = format!("{}/{}?wait=1s", sqs_server(), sqs.queue);
    let child = spawn_consume(
        dir.path(),
        &[
            "--from",
            &from,
            "--key",
            "message-id",
            "--deliver",
            &handler.url,
        ],
    );
    wait_for("every message deleted from the queue", || {
        rt.block_on(sqs.drained())
    });
    let output = terminate(child);
    rt.block_on(async {
        sqs.delete().await;
        sqs.client
            .delete_queue()
            .queue_url(&dlq_url)
            .send()
            .await
            .ok();
    });
    assert_summary_and_exit_0(
        &output,
        "consumed 7: done 5, duplicates 2, redelivered 0, dead-lettered 0",
    );
    let per_key = handler.per_key();
    assert_eq!(per_key.len(), 5, "{per_key:?}");
    assert!(per_key.values().all(|n| *n == 1), "{per_key:?}");
}

// ---------------------------------------------------------------------------------------------
// Refusals: one line, non-zero, before anything is consumed.

#[test]
fn https_handlers_and_unknown_brokers_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let amqp = format!("{}/q", amqp_server());
    for (args, needle) in [
        (
            vec![
                "--from",
                &amqp,
                "--key",
                "/id",
                "--deliver",
                "https://example.com/hook",
            ],
            "https is not supported",
        ),
        (
            vec![
                "--from",
                &amqp,
                "--key",
                "/id",
                "--deliver",
                "localhost:8080",
            ],
            "use http://",
        ),
        (
            vec![
                "--from",
                "pulsar://127.0.0.1:6650/orders",
                "--key",
                "/id",
                "--deliver",
                "http://127.0.0.1:9/h",
            ],
            "no broker for `pulsar://127.0.0.1:6650/orders`",
        ),
        (
            vec![
                "--from",
                "kafka://127.0.0.1:9092/orders",
                "--key",
                "/id",
                "--deliver",
                "http://127.0.0.1:9/h",
            ],
            "no consumer group: add ?group=NAME",
        ),
        (
            vec![
                "--from",
                "amqp://h/q?dlq=x",
                "--dlq",
                "y",
                "--key",
                "/id",
                "--deliver",
                "http://127.0.0.1:9/h",
            ],
            "give it once",
        ),
    ] {
        let output = run_to_end(dir.path(), &args);
        assert_one_clear_error(&output, needle);
    }
    assert!(
        !dir.path().join("o.db").exists(),
        "a refused run opened the store"
    );
}

#[test]
fn unreachable_brokers_and_missing_queues_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("{}/{}", amqp_server(), unique("oncely.cli.missing."));
    let missing_topic = format!(
        "kafka://{}/{}?group=g",
        kafka_brokers(),
        unique("oncely.cli.missing.")
    );
    let missing_sqs_queue = unique("oncely-cli-missing-");
    let missing_sqs = format!("{}/{missing_sqs_queue}", sqs_server());
    let endpoint = sqs_server().replacen("sqs+http://", "http://", 1);
    let missing_sqs_needle = format!("no queue {missing_sqs_queue} at {endpoint}: create it");
    for (from, needle) in [
        (
            "amqp://guest:guest@127.0.0.1:1/q",
            "cannot connect to RabbitMQ",
        ),
        ("nats://127.0.0.1:1/S/C", "NATS server unreachable"),
        (missing.as_str(), "does not exist"),
        (
            "kafka://127.0.0.1:1/t?group=g",
            "Kafka unreachable at 127.0.0.1:1",
        ),
        (missing_topic.as_str(), "no Kafka topic oncely.cli.missing."),
        (
            "sqs+http://127.0.0.1:1/q",
            "SQS at http://127.0.0.1:1: looking up the queue q: dispatch failure: io error",
        ),
        (missing_sqs.as_str(), missing_sqs_needle.as_str()),
    ] {
        let args = [
            "--from",
            from,
            "--key",
            "/id",
            "--deliver",
            "http://127.0.0.1:9/h",
        ];
        let output = run_to_end(dir.path(), &args);
        assert_one_clear_error(&output, needle);
    }
}

/// A handler that is down fails its attempts (the key released after each); one that takes
/// the request and never answers holds its key, so with one attempt it is dead-lettered at once
/// (the others would find the key held: see `a_handler_that_answers_too_late_...` below).
#[test]
fn a_handler_that_is_down_or_silent_fails_its_attempts_and_the_error_says_which() {
    let rt = runtime();
    let down = Handler::down();
    let silent = Handler::silent();
    let cases = [
        (
            down.as_str(),
            "1s",
            "2",
            format!("handler at {down} unreachable: tcp connect error: "),
        ),
        (
            silent.as_str(),
            "300ms",
            "1",
            format!(
                "handler at {silent} did not answer within 300ms (--timeout); outcome unknown, \
                 so the key stays held until its lease ends"
            ),
        ),
    ];
    let runs: Vec<_> = cases
        .iter()
        .map(|(url, timeout, attempts, _)| deliver_one(&rt, "k", url, attempts, timeout))
        .collect();
    for ((rabbit, _dir, child), (_, _, attempts, error)) in runs.into_iter().zip(&cases) {
        let letters = rt.block_on(async {
            let deadline = Instant::now() + PATIENCE;
            loop {
                let letters = rabbit.dead_letters().await;
                if !letters.is_empty() || Instant::now() > deadline {
                    return letters;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let output = terminate(child);
        assert_summary_and_exit_0(
            &output,
            "consumed 1: done 0, duplicates 0, redelivered 0, dead-lettered 1",
        );
        assert_eq!(letters.len(), 1);
        let got = letters[0].header(ERROR_HEADER).unwrap_or_default();
        assert!(
            got.starts_with(error.as_str()),
            "{got:?} is not {error:?}..."
        );
        assert_eq!(letters[0].header(ATTEMPTS_HEADER), Some(*attempts));
    }
}

/// Publishes one order keyed `key` to a fresh queue, then starts `oncely consume` delivering it
/// to `url` with `--max-attempts attempts` and `--timeout timeout`.
fn deliver_one(
    rt: &tokio::runtime::Runtime,
    key: &str,
    url: &str,
    attempts: &str,
    timeout: &str,
) -> (Rabbit, tempfile::TempDir, Child) {
    let rabbit = rt.block_on(async {
        let rabbit = Rabbit::new().await;
        rabbit.publish("m-0", &order(key, 1)).await;
        rabbit
    });
    let dir = tempfile::tempdir().unwrap();
    let from = format!("{}/{}?dlq={}", amqp_server(), rabbit.queue, rabbit.dlq);
    let args = [
        "--from",
        &from,
        "--key",
        "/id",
        "--deliver",
        url,
        "--max-attempts",
        attempts,
        "--timeout",
        timeout,
    ];
    let child = spawn_consume(dir.path(), &args);
    (rabbit, dir, child)
}

/// A handler in this process that records each request as it arrives, then does `then` with
/// the connection (answer late, hang up, ...).
fn receiving_handler(
    listener: TcpListener,
    then: impl Fn(TcpStream) + Send + Sync + 'static,
) -> Arc<Mutex<Vec<(Instant, Received)>>> {
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    let then = Arc::new(then);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (log, then) = (log.clone(), then.clone());
            std::thread::spawn(move || {
                if let Some(request) = read_request(&stream) {
                    log.lock().unwrap().push((Instant::now(), request));
                    then(stream);
                }
            });
        }
    });
    received
}

/// Answers 200 `ok` on `stream` after `delay`.
fn answer_after(delay: Duration) -> impl Fn(TcpStream) + Send + Sync + 'static {
    move |mut stream| {
        std::thread::sleep(delay);
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    }
}

/// The counts of a summary line, `consumed N: done N, duplicates N, redelivered N,
/// dead-lettered N`, by name.
fn summary_counts(output: &Output) -> HashMap<String, u64> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    let counts = last
        .split([':', ','])
        .filter_map(|part| part.trim().rsplit_once(' '))
        .filter_map(|(name, n)| Some((name.to_owned(), n.parse().ok()?)))
        .collect::<HashMap<_, _>>();
    assert_eq!(counts.len(), 5, "not a summary: {last:?}\n{stderr}");
    counts
}

/// SIGKILLs a child that a failing check would leave running; disarmed once it was waited for.
struct KillOnPanic(Option<i32>);

impl KillOnPanic {
    fn new(child: &Child) -> Self {
        KillOnPanic(Some(i32::try_from(child.id()).unwrap()))
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if let (Some(pid), true) = (self.0, std::thread::panicking()) {
            // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A POST that reached the handler and got no answer in time (the handler answers after
/// `--timeout`), or lost its connection (the handler hangs up without answering), may have
/// had its effect: the key stays held until its lease (--timeout + 30s) ends. In the seconds
/// after it, the message keeps coming back and is given back each time (the key in progress),
/// neither POSTed again nor dead-lettered, though `--max-attempts` is 2.
#[test]
fn a_handler_that_answers_too_late_or_hangs_up_is_posted_once_while_its_key_is_held() {
    let rt = runtime();
    let late = TcpListener::bind("127.0.0.1:0").unwrap();
    let hangs_up = TcpListener::bind("127.0.0.1:0").unwrap();
    let urls = [&late, &hangs_up].map(|l| format!("http://{}/hook", l.local_addr().unwrap()));
    let handlers = [
        receiving_handler(late, answer_after(Duration::from_millis(1500))),
        receiving_handler(hangs_up, drop),
    ];
    let mut runs = Vec::new();
    for url in &urls {
        let (rabbit, dir, child) = deliver_one(&rt, "slow", url, "2", "300ms");
        runs.push((rabbit, dir, KillOnPanic::new(&child), child));
    }
    for received in &handlers {
        wait_for("the first POST", || !received.lock().unwrap().is_empty());
    }
    // The late answer comes 1.5 s after the POST; the lease ends 30.3 s after it at the soonest
    // (20.2 s had it been renewed at the last moment).
    std::thread::sleep(Duration::from_secs(5));

    // Every process stopped before any check, so a failing one leaves none running.
    let ended: Vec<_> = runs
        .into_iter()
        .map(|(rabbit, _dir, guard, child)| {
            let letters = rt.block_on(rabbit.dead_letters());
            let output = terminate(child);
            guard.disarm();
            (letters, output)
        })
        .collect();
    for ((letters, output), received) in ended.into_iter().zip(&handlers) {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let received = received.lock().unwrap().clone();
        assert_eq!(received.len(), 1, "POSTed again within the lease: {stderr}");
        assert_eq!(received[0].1.key(), "slow");
        assert!(letters.is_empty(), "dead-lettered: {letters:?}\n{stderr}");
        let counts = summary_counts(&output);
        assert_eq!(counts["done"], 0, "{stderr}");
        assert_eq!(counts["dead-lettered"], 0, "{stderr}");
        // Each return found the key in progress and went back to the broker.
        assert!(counts["redelivered"] >= 2, "{stderr}");
    }
}

/// A handler that refuses connections (it is not up yet) is sent nothing: the key is released
/// and the retry POSTs it as soon as the handler is up, well within the key's lease.
#[test]
fn a_handler_that_refuses_connections_at_first_gets_the_message_once_it_is_up() {
    let rt = runtime();
    let rabbit = rt.block_on(async {
        let rabbit = Rabbit::new().await;
        rabbit.publish("m-0", &order("early", 1)).await;
        rabbit
    });
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{port}/hook");
    let dir = tempfile::tempdir().unwrap();
    let from = format!("{}/{}?dlq={}", amqp_server(), rabbit.queue, rabbit.dlq);
    let store = format!("sqlite:{}", dir.path().join("o.db").display());
    let mut child = Command::new(BIN)
        .args(["--store", &store, "consume"])
        .args(["--from", &from, "--key", "/id", "--deliver", &url])
        .args(["--max-attempts", "10", "--timeout", "1s"])
        .current_dir(dir.path())
        .env_remove("ONCELY_STORE")
        // The runner's log of each failed attempt.
        .env("RUST_LOG", "oncely_consumer=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnPanic::new(&child);
    let log = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (log, stderr) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line.unwrap_or_default());
                log.push('\n');
            }
        })
    };
    wait_for("a refused attempt", || {
        log.lock()
            .unwrap()
            .contains("unreachable: tcp connect error")
    });
    let received = receiving_handler(
        TcpListener::bind(port).unwrap(),
        answer_after(Duration::ZERO),
    );
    // The key's lease is 31 s: a key held by the refused attempt would not be POSTed in this.
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM lets the delivery in flight finish: it is acked once the handler's answer is in.
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    guard.disarm();
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(
        !received.lock().unwrap().is_empty(),
        "not POSTed 10 s after the handler came up (the key held?):\n{log}"
    );
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(
        log.lines().last(),
        Some("consumed 1: done 1, duplicates 0, redelivered 0, dead-lettered 0"),
        "{log}"
    );
    let received = received.lock().unwrap();
    assert_eq!(received.len(), 1, "{log}");
    assert_eq!(received[0].1.key(), "early");
    assert!(rt.block_on(rabbit.dead_letters()).is_empty(), "{log}");
}

#[test]
fn a_store_that_cannot_open_is_one_clear_line_after_the_broker_connects() {
    let rt = runtime();
    let rabbit = rt.block_on(Rabbit::new());
    let dir = tempfile::tempdir().unwrap();
    let from = format!("{}/{}", amqp_server(), rabbit.queue);
    let args = [
        "--from",
        &from,
        "--key",
        "/id",
        "--deliver",
        "http://127.0.0.1:9/h",
    ];
    let output = wait_to_end(spawn_consume_on("nope:x", dir.path(), &args));
    assert_one_clear_error(&output, "nope:x");
}
