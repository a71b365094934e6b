//! The redrive proof, the same for every broker: dead letters moved back by redrive
//! *processes* killed with SIGKILL at random moments and run again reach their destination at
//! most once each, and every one not moved is reported uncertain.
//!
//! 30 messages are dead-lettered by a runner whose handler always fails. Redrive processes
//! (this test binary again, [`CHILD_FROM_ENV`] set) read the dead letters and publish them
//! back through the broker crate's publisher, claiming in PostgreSQL; each of the first
//! [`KILLS`] is killed a few milliseconds after one of its publishes was confirmed, which is
//! where a redrive that trusted a run-out claim would publish twice. A last run goes to the
//! end. Then a consumer counts what arrived: no message twice, and every one missing is among
//! those the last run reported uncertain.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oncely_consumer::Consumer;
use oncely_consumer::redrive::{Redrive, RedriveReport};
use oncely_core::consumer::{
    BrokerError, ERROR_HEADER, Handled, Handler, HandlerError, Message, Source,
};
use oncely_core::outbox::Publisher;
use oncely_core::redrive::REDRIVES_HEADER;
use oncely_core::{Key, Oncely, Scope, async_trait};

use crate::{Channel, Running, by_event_id, event, fast_retry, publish_all, until};

/// The environment variable that makes a suite test binary run as a redrive of this URL.
pub const CHILD_FROM_ENV: &str = "ONCELY_REDRIVE_FROM";
/// The publisher URL a redrive child publishes to.
pub const CHILD_TO_ENV: &str = "ONCELY_REDRIVE_TO";
/// The PostgreSQL a redrive child claims in.
pub const CHILD_STORE_ENV: &str = "ONCELY_REDRIVE_STORE";
/// How long a redrive child waits for one more dead letter, in milliseconds.
pub const CHILD_IDLE_ENV: &str = "ONCELY_REDRIVE_IDLE_MS";

/// Messages dead-lettered, then redriven.
const LETTERS: usize = 30;
/// Redrive processes killed before the last one runs to the end.
pub const KILLS: usize = 4;
/// The children's lease: a killed run's claim runs out this soon.
const LEASE: Duration = Duration::from_secs(2);
/// What a child prints once the broker confirmed a publish.
const PUBLISHED: &str = "published";

/// A redrive child: redrives `source` into `publisher`, claiming in the PostgreSQL at `store`;
/// prints `published` after each confirmed publish and `report ...` at the end.
pub async fn child<S: Source>(
    source: S,
    publisher: Box<dyn Publisher>,
    store: &str,
    idle: Duration,
) {
    let store = oncely_postgres::PostgresStore::connect(store)
        .await
        .expect("the redrive's store");
    let oncely = Oncely::new(Arc::new(store)).with_lease(LEASE);
    let scope = Scope::new("redrive").expect("a scope");
    let redrive = Redrive::new(oncely, scope, Announcing(publisher)).idle(idle);
    match redrive.run(source).await {
        Ok(report) => println!("report {}", numbers(&report)),
        Err(stopped) => {
            println!("stopped {stopped}");
            std::process::exit(1);
        }
    }
}

fn numbers(r: &RedriveReport) -> String {
    [
        r.read,
        r.redriven,
        r.already,
        r.filtered_out,
        r.uncertain,
        r.in_progress,
        r.failed,
    ]
    .map(|n| n.to_string())
    .join(" ")
}

/// The publisher, saying on stdout when the broker confirmed a publish.
struct Announcing(Box<dyn Publisher>);

#[async_trait]
impl Publisher for Announcing {
    async fn publish(
        &self,
        destination: Option<&str>,
        message: &Message,
    ) -> Result<(), BrokerError> {
        self.0.publish(destination, message).await?;
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{PUBLISHED}");
        let _ = out.flush();
        Ok(())
    }
}

/// Fails every attempt: everything it gets is dead-lettered.
struct AlwaysFails;

#[async_trait]
impl Handler for AlwaysFails {
    async fn handle(&self, _: &Key, _: &Message) -> Result<Handled, HandlerError> {
        Err(HandlerError::failed("the payment service said 503"))
    }
}

/// Counts what arrives per `Event-Id`, keeping each copy; fails each too if `fail`, so it is
/// dead-lettered again.
#[derive(Clone, Default)]
struct Arrivals {
    seen: Arc<Mutex<HashMap<String, Vec<Message>>>>,
    fail: bool,
}

#[async_trait]
impl Handler for Arrivals {
    async fn handle(&self, key: &Key, message: &Message) -> Result<Handled, HandlerError> {
        let mut seen = self.seen.lock().unwrap();
        seen.entry(key.to_string())
            .or_default()
            .push(message.clone());
        match self.fail {
            true => Err(HandlerError::failed("still 503")),
            false => Ok(Handled::Done),
        }
    }
}

/// What the proof saw.
#[derive(Debug)]
pub struct RedriveProofReport {
    /// Runs killed after one of their publishes.
    pub killed: usize,
    /// The last run's report: `read redriven already filtered_out uncertain in_progress failed`.
    pub last_run: String,
    /// Messages that arrived back.
    pub arrived: usize,
    /// The second round's run: the arrivals failed again and their new dead letters redriven.
    pub second_run: String,
}

/// Runs the proof on `channel`, redrive children claiming in `postgres`, each started by
/// `spawn(from, to, postgres)`.
pub async fn run<C: Channel>(
    channel: &C,
    postgres: &str,
    spawn: impl Fn(&str, &str, &str) -> Child,
) -> RedriveProofReport {
    // Each its own ordering key (a Kafka record key): on Kafka a letter left behind holds
    // back the later letters of its key, and records without a key are all one key. Each its
    // message id, as the outbox relay gives it: a broker's duplicate window must not take a
    // redriven message, or a second dead letter, for its first.
    let messages: Vec<Message> = (0..LETTERS)
        .map(|n| {
            event(&format!("r{n}"), n)
                .with_ordering_key(format!("r{n}"))
                .with_message_id(format!("m{n}"))
        })
        .collect();
    publish_all(channel, &messages).await;
    let failing = Consumer::new(AlwaysFails, by_event_id()).retry(fast_retry(1));
    let running = Running::spawn(&failing, channel.consumer().await.expect("a consumer"));
    until(&failing, "every message dead-lettered", |r| {
        r.dead_lettered == LETTERS as u64
    })
    .await;
    running.stop().await;

    let to = channel.publisher_url();
    let mut killed = 0;
    for _ in 0..KILLS {
        let child = spawn(&channel.dead_letter_source_url(), &to, postgres);
        let pid = child.id();
        let (_child, published) = tokio::task::spawn_blocking(move || first_publish(child))
            .await
            .expect("the child's output");
        if published {
            std::thread::sleep(Duration::from_millis(fastrand::u64(0..15)));
            // SIGKILL: nothing of the child runs after it.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            killed += 1;
        }
    }
    let (last_run, counts) =
        run_to_end(spawn(&channel.dead_letter_source_url(), &to, postgres)).await;
    let (uncertain, in_progress, failed) = (counts[4], counts[5], counts[6]);
    assert_eq!((in_progress, failed), (0, 0), "last run: {last_run}");
    assert!(
        uncertain as usize <= killed,
        "at most one uncertain dead letter per killed run: {last_run}"
    );

    // What came back: each at most once, and every one missing reported uncertain. Each
    // fails again, and is dead-lettered again.
    let at_least = LETTERS - uncertain as usize;
    let seen = arrivals(channel, at_least, true, &last_run).await;
    check(&seen, &messages, "1");
    let arrived = seen.len();

    // The second dead letters are new ones: they go back, once; the uncertain stay. (On
    // Kafka, an uncertain letter whose copy did arrive holds back its key's second letter.)
    let (second_run, counts) =
        run_to_end(spawn(&channel.dead_letter_source_url(), &to, postgres)).await;
    let redriven = counts[1] as usize;
    assert_eq!(counts[4], uncertain, "second run: {second_run}");
    assert!(
        (arrived - uncertain as usize..=arrived).contains(&redriven),
        "second run: {second_run}, {arrived} arrived"
    );
    let again = arrivals(channel, redriven, false, &second_run).await;
    check(&again, &messages, "2");
    assert_eq!(again.len(), redriven);
    RedriveProofReport {
        killed,
        last_run,
        arrived,
        second_run,
    }
}

/// Waits for a child to end by itself; its report, as text and as numbers.
async fn run_to_end(child: Child) -> (String, Vec<u64>) {
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("the run")
        .expect("the run's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the run: {stdout}");
    let report = stdout
        .lines()
        .find_map(|line| line.strip_prefix("report "))
        .unwrap_or_else(|| panic!("a report from the run: {stdout}"))
        .to_owned();
    let counts = report.split(' ').map(|n| n.parse().unwrap()).collect();
    (report, counts)
}

/// What arrives at the destination, once at least `at_least` keys did and two more seconds
/// passed (time for a second copy, if there were one); dead-lettered again if `fail`.
async fn arrivals<C: Channel>(
    channel: &C,
    at_least: usize,
    fail: bool,
    run: &str,
) -> HashMap<String, Vec<Message>> {
    let arrivals = Arrivals {
        fail,
        ..Arrivals::default()
    };
    let counter = Consumer::new(arrivals.clone(), by_event_id()).retry(fast_retry(1));
    let running = Running::spawn(&counter, channel.consumer().await.expect("a consumer"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.seen.lock().unwrap().len() < at_least {
        assert!(
            Instant::now() < deadline,
            "only {} of at least {at_least} redriven messages arrived (run: {run})",
            arrivals.seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let arrived = arrivals.seen.lock().unwrap().len() as u64;
    if fail {
        until(&counter, "the arrivals dead-lettered again", |r| {
            r.dead_lettered == arrived
        })
        .await;
    }
    running.stop().await;
    arrivals.seen.lock().unwrap().clone()
}

/// Each arrived once, as it first was (payload, message id, ordering key), its failure's
/// headers dropped, redriven `redrives` times.
fn check(seen: &HashMap<String, Vec<Message>>, messages: &[Message], redrives: &str) {
    assert!(seen.len() <= messages.len());
    for (key, copies) in seen {
        assert_eq!(copies.len(), 1, "{key} was redriven {} times", copies.len());
        let copy = &copies[0];
        let n: usize = key[1..].parse().unwrap();
        assert_eq!(copy.payload(), messages[n].payload(), "{key}'s payload");
        assert_eq!(copy.message_id(), messages[n].message_id(), "{key}'s id");
        if let Some(ordering) = copy.ordering_key() {
            assert_eq!(ordering, key.as_str(), "its ordering key kept");
        }
        assert_eq!(copy.header(ERROR_HEADER), None, "the failure is dropped");
        assert_eq!(copy.header(REDRIVES_HEADER), Some(redrives));
    }
}

/// Reads the child's stdout until its first confirmed publish (true) or its end (false).
fn first_publish(mut child: Child) -> (Child, bool) {
    let stdout = child.stdout.take().expect("the child's stdout, piped");
    let mut lines = BufReader::new(stdout).lines();
    let published = lines.any(|line| line.is_ok_and(|l| l == PUBLISHED));
    // The rest of its output is not read: a pipe it fills blocks nothing that matters here.
    std::mem::forget(lines);
    (child, published)
}

/// A redrive child: this test binary again, its stdout piped.
pub fn child_process(from: &str, to: &str, postgres: &str, idle: Duration) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("this test binary"));
    command
        .env(CHILD_FROM_ENV, from)
        .env(CHILD_TO_ENV, to)
        .env(CHILD_STORE_ENV, postgres)
        .env(CHILD_IDLE_ENV, idle.as_millis().to_string())
        .stdout(Stdio::piped());
    oncely_conformance::process::spawn_tied(command).expect("a redrive process")
}
