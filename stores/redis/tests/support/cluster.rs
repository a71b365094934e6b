//! A real three-node Redis Cluster on free loopback ports, plain or over TLS, and the trials of
//! what only a cluster shows: a batch whose scopes live on different nodes.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use oncely_conformance::libtest_mimic::{Failed, Trial};
use oncely_conformance::servers;
use oncely_core::{ClaimOutcome, ClaimRequest, Clock, Key, ManualClock, Oncely, Scope, Store};
use oncely_redis::RedisStore;

use super::{Node, ServerTls, free_ports, missing};

const NODES: usize = 3;

/// Three cluster nodes running as children of this process; dropping it stops them.
///
/// Each node has a plain port, which the test itself uses to watch and inspect the cluster; with
/// TLS it has a TLS port too, the only one the store under test is given.
pub struct Cluster {
    _nodes: Vec<Node>,
    /// The nodes' plain ports.
    pub ports: Vec<u16>,
    /// The nodes' TLS ports, and the CA their certificate chains to.
    tls: Option<(Vec<u16>, PathBuf)>,
    // Last, so the nodes stop before their directory goes.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the nodes and joins them into a cluster, over TLS (bus included) when `tls` is
    /// given: the nodes then tell TLS clients their TLS ports.
    pub fn start(tls: Option<&ServerTls>) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut ports = free_ports(2 * NODES);
        let tls_ports = ports.split_off(NODES);
        let mut nodes = Vec::new();
        for (&port, &tls_port) in ports.iter().zip(&tls_ports) {
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            let mut args = vec![
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                conf.to_str().expect("UTF-8 temporary path").to_owned(),
            ];
            if let Some(tls) = tls {
                args.extend(tls.args(tls_port));
                args.extend(["--tls-cluster".to_owned(), "yes".to_owned()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            nodes.push(Node::start(dir.path(), port, &args));
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| missing("redis-cli", "redis-tools", e));
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        for node in &nodes {
            node.wait_for("to report cluster_state:ok", |conn| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(conn)
                    .is_ok_and(|info| {
                        info.contains("cluster_state:ok")
                            && info.contains(&format!("cluster_known_nodes:{NODES}"))
                    })
            });
        }
        Cluster {
            _nodes: nodes,
            ports,
            tls: tls.map(|tls| (tls_ports, tls.ca.clone())),
            _dir: dir,
        }
    }

    /// A store URL for the cluster (its TLS ports and CA when it has TLS); every node is
    /// listed, though one would do.
    pub fn url(&self, prefix: &str) -> String {
        let list = |ports: &[u16]| {
            let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            nodes.join(",")
        };
        match &self.tls {
            None => format!("redis+cluster://{}/?prefix={prefix}", list(&self.ports)),
            Some((tls_ports, ca)) => format!(
                "rediss+cluster://{}/?prefix={prefix}&cacert={}",
                list(tls_ports),
                ca.display()
            ),
        }
    }

    /// [`url`](Self::url) with `cacert=` left out.
    pub fn url_without_cacert(&self, prefix: &str) -> String {
        let url = self.url(prefix);
        match url.split_once("&cacert=") {
            Some((rest, _)) => rest.to_owned(),
            None => url,
        }
    }

    /// The TLS ports as a plain `redis+cluster://` URL: what a client that forgot TLS uses.
    pub fn plain_url_to_tls_ports(&self, prefix: &str) -> String {
        self.url_without_cacert(prefix)
            .replacen("rediss+cluster://", "redis+cluster://", 1)
    }

    /// Which node (by plain port) serves `key`.
    pub fn node_of(&self, key: &str) -> u16 {
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

type ClusterTest = fn(Arc<Cluster>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// The trials of what only a cluster shows, named under `kind`.
pub fn trials(cluster: &Arc<Cluster>, kind: &str) -> Vec<Trial> {
    vec![
        trial(
            cluster,
            kind,
            "the_suites_scopes_live_on_several_nodes",
            the_suites_scopes_live_on_several_nodes,
        ),
        trial(
            cluster,
            kind,
            "multi_scope_batch_spans_nodes_and_answers_in_request_order",
            multi_scope_batch_spans_nodes_and_answers_in_request_order,
        ),
    ]
}

fn trial(cluster: &Arc<Cluster>, kind: &str, name: &str, test: ClusterTest) -> Trial {
    let cluster = cluster.clone();
    Trial::test(format!("{kind}::{name}"), move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move { tokio::spawn(test(cluster)).await })
            .map_err(|e| Failed::from(e.to_string()))
    })
    .with_kind(kind)
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
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
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
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let scopes = scopes_on_every_node(&cluster);
        let prefix = servers::fresh_name("oncely_cluster");
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
