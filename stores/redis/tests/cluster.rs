//! The shared conformance suite and model test through a real three-node Redis Cluster, which
//! this binary starts itself on free loopback ports and stops at the end, plus tests of what
//! only a cluster shows: a batch whose scopes live on different nodes.
//!
//! Needs `redis-server` and `redis-cli` on PATH (Debian: `redis-server` and `redis-tools`).

mod support;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oncely_conformance::libtest_mimic::{Failed, Trial};
use oncely_core::{ClaimOutcome, ClaimRequest, Clock, Key, ManualClock, Oncely, Scope, Store};
use oncely_redis::RedisStore;

/// Three cluster nodes running as children of this process; dropping it stops them.
struct Cluster {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    ports: Vec<u16>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const NODES: usize = 3;

impl Cluster {
    fn start() -> Cluster {
        let mut cluster = Cluster {
            dir: tempfile::tempdir().expect("temporary directory"),
            children: Vec::new(),
            ports: free_ports(NODES),
        };
        for port in cluster.ports.clone() {
            let child = cluster.spawn_node(port);
            cluster.children.push(child);
        }
        for &port in &cluster.ports {
            cluster.wait_for(port, "to answer PING", |conn| {
                redis::cmd("PING").query::<String>(conn).is_ok()
            });
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| missing("redis-cli", "redis-tools", e));
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        for &port in &cluster.ports {
            cluster.wait_for(port, "to report cluster_state:ok", |conn| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(conn)
                    .is_ok_and(|info| {
                        info.contains("cluster_state:ok")
                            && info.contains(&format!("cluster_known_nodes:{NODES}"))
                    })
            });
        }
        cluster
    }

    fn spawn_node(&self, port: u16) -> Child {
        let dir = self.dir.path();
        let log = std::fs::File::create(dir.join(format!("redis-{port}.log"))).expect("log file");
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(dir.join(format!("nodes-{port}.conf")))
            .arg("--dir")
            .arg(dir)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        // If this process dies without running Drop (killed, aborted), the kernel stops the
        // node too, so no run leaves servers behind.
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.spawn()
            .unwrap_or_else(|e| missing("redis-server", "redis-server", e))
    }

    fn wait_for(&self, port: u16, what: &str, ready: impl Fn(&mut redis::Connection) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("node URL");
        loop {
            if let Ok(mut conn) = client.get_connection()
                && ready(&mut conn)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster node 127.0.0.1:{port} did not come up {what} within 30 s; its log:\n{}",
                std::fs::read_to_string(self.dir.path().join(format!("redis-{port}.log")))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A store URL for the cluster; every node is listed, though one would do.
    fn url(&self, prefix: &str) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}/?prefix={prefix}", nodes.join(","))
    }

    /// Which node (by port) serves `key`.
    fn node_of(&self, key: &str) -> u16 {
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{}", self.ports[0])).expect("URL");
        let mut conn = client.get_connection().expect("connection");
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .expect("CLUSTER KEYSLOT");
        let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut conn)
            .expect("CLUSTER SLOTS");
        // Each range: start, end, then the primary as [host, port, id, ...].
        let int = |v: &redis::Value| match v {
            redis::Value::Int(i) => *i,
            other => panic!("CLUSTER SLOTS: {other:?} is not an integer"),
        };
        let port = ranges
            .iter()
            .find(|range| (int(&range[0])..=int(&range[1])).contains(&slot))
            .map(|range| match &range[2] {
                redis::Value::Array(primary) => int(&primary[1]),
                other => panic!("CLUSTER SLOTS: {other:?} is not a node"),
            })
            .expect("every slot is served");
        port as u16
    }
}

fn missing(program: &str, package: &str, e: std::io::Error) -> ! {
    panic!(
        "cannot run `{program}` ({e}): the Redis Cluster tests start their own cluster and need \
         `redis-server` and `redis-cli` on PATH (Debian: apt-get install {package})"
    )
}

/// Ports free for a node and for its cluster bus (port + 10000).
fn free_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    while ports.len() < n {
        let port = fastrand::u16(20_000..55_000);
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !ports.contains(&port) && free(port) && free(port + 10_000) {
            ports.push(port);
        }
    }
    ports
}

fn main() {
    let cluster = Arc::new(Cluster::start());
    let conclusion = {
        let factory_cluster = cluster.clone();
        let factory = move || {
            let url = factory_cluster.url(&support::fresh_prefix());
            async move {
                Arc::new(
                    RedisStore::connect(&url)
                        .await
                        .unwrap_or_else(|e| panic!("{e}")),
                ) as Arc<dyn Store>
            }
        };
        let extra = vec![
            trial(
                &cluster,
                "the_suites_scopes_live_on_several_nodes",
                the_suites_scopes_live_on_several_nodes,
            ),
            trial(
                &cluster,
                "multi_scope_batch_spans_nodes_and_answers_in_request_order",
                multi_scope_batch_spans_nodes_and_answers_in_request_order,
            ),
        ];
        oncely_conformance::run("redis-cluster", factory, extra)
    };
    // The trials hold clones of the cluster; they are done, so this is the last one.
    drop(cluster);
    conclusion.exit()
}

type ClusterTest =
    fn(Arc<Cluster>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn trial(cluster: &Arc<Cluster>, name: &str, test: ClusterTest) -> Trial {
    let cluster = cluster.clone();
    Trial::test(format!("redis-cluster::{name}"), move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move { tokio::spawn(test(cluster)).await })
            .map_err(|e| Failed::from(e.to_string()))
    })
    .with_kind("redis-cluster")
}

/// The record key of (scope, key) under `prefix`, as the store lays it out.
fn record_key(prefix: &str, scope: &str, key: &str) -> String {
    format!("{prefix}:{{{scope}}}:r:{key}")
}

/// Scopes whose slots are served by every node of the cluster, two per node.
fn scopes_on_every_node(cluster: &Cluster) -> Vec<(Scope, u16)> {
    let mut picked = Vec::new();
    for &port in &cluster.ports {
        let mut n = 0;
        for i in 0.. {
            let name = format!("tenant-{i}");
            if cluster.node_of(&record_key("p", &name, "k")) == port {
                picked.push((Scope::new(name).unwrap(), port));
                n += 1;
                if n == 2 {
                    break;
                }
            }
        }
    }
    picked
}

fn the_suites_scopes_live_on_several_nodes(
    cluster: Arc<Cluster>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async move {
        // The scopes the shared suite and model test use: if they all hashed to one node, the
        // runs above would prove nothing about the cluster.
        let nodes: BTreeSet<u16> = [
            "default",
            "tenant-a",
            "tenant-b",
            "scope-0",
            "scope-1",
            oncely_core::PURGE_SCOPE,
        ]
        .iter()
        .map(|s| cluster.node_of(&record_key("p", s, "k")))
        .collect();
        assert!(nodes.len() >= 2, "all suite scopes on one node: {nodes:?}");
    })
}

fn multi_scope_batch_spans_nodes_and_answers_in_request_order(
    cluster: Arc<Cluster>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async move {
        let scopes = scopes_on_every_node(&cluster);
        let prefix = support::fresh_prefix();
        let store: Arc<dyn Store> =
            Arc::new(RedisStore::connect(&cluster.url(&prefix)).await.unwrap());
        let clock = ManualClock::default();
        let oncely = Oncely::new(store.clone()).with_clock(clock.clone());

        // Scopes interleaved, each key twice: New the first time, InProgress the second.
        let key = |i: usize| Key::new(format!("evt-{i}")).unwrap();
        let mut requests = Vec::new();
        for _ in 0..2 {
            for (i, (scope, _)) in scopes.iter().enumerate() {
                requests.push(ClaimRequest::new(
                    scope.clone(),
                    key(i),
                    None,
                    Duration::from_secs(30),
                ));
            }
        }
        let outcomes = store.claim_many(&requests, clock.now()).await.unwrap();
        assert_eq!(outcomes.len(), requests.len());
        let half = scopes.len();
        for (i, outcome) in outcomes.iter().enumerate() {
            match (i < half, outcome) {
                (true, ClaimOutcome::New(claim)) => {
                    assert_eq!(
                        (&claim.scope, &claim.key),
                        (&requests[i].scope, &requests[i].key)
                    );
                    assert_eq!(claim.token, requests[i].token);
                }
                (false, ClaimOutcome::InProgress { .. }) => {}
                (_, other) => panic!("request {i}: unexpected {other:?}"),
            }
        }

        // Each record is on the node its scope hashes to.
        for (i, (scope, port)) in scopes.iter().enumerate() {
            let on = cluster.node_of(&record_key(&prefix, scope.as_str(), key(i).as_str()));
            assert_eq!(on, *port);
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
            let mut conn = client.get_connection().unwrap();
            let exists: bool = redis::cmd("EXISTS")
                .arg(record_key(&prefix, scope.as_str(), key(i).as_str()))
                .query(&mut conn)
                .unwrap();
            assert!(exists, "record of {scope} not on node {port}");
        }

        // Complete each with its own outcome; a second batch replays them, in order.
        for (i, outcome) in outcomes.into_iter().take(half).enumerate() {
            let claim = outcome.into_new().unwrap();
            oncely
                .complete(&claim, format!("out-{i}").as_bytes())
                .await
                .unwrap();
        }
        let replays = store
            .claim_many(&requests[..half], clock.now())
            .await
            .unwrap();
        for (i, outcome) in replays.iter().enumerate() {
            match outcome {
                ClaimOutcome::Duplicate(rec) => {
                    assert_eq!(rec.outcome(), Some(format!("out-{i}").as_bytes()))
                }
                other => panic!("replay {i}: unexpected {other:?}"),
            }
        }

        // Stats and purge reach every node's scopes.
        let stats = oncely.stats().await.unwrap();
        assert_eq!((stats.records, stats.completed), (half as u64, half as u64));
        clock.advance(oncely_core::DEFAULT_RETENTION + Duration::from_secs(1));
        assert_eq!(oncely.purge(Duration::ZERO, 1000).await.unwrap(), half);
        assert_eq!(oncely.stats().await.unwrap().records, 0);
    })
}
