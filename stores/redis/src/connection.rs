//! The connection: one server (reconnecting on failure) or a cluster, behind one type.

use std::path::Path;
use std::time::Duration;

use oncely_core::url::unreachable_hint;
use oncely_core::{Error, Result};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::options::Target;

/// How long a command may take before it is reported as unavailable. Generous: a 1 MiB outcome
/// on a busy two-core machine is well under it, a dead server is well over it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One server (reconnecting on failure) or a cluster: both behind the redis crate's
/// connection trait, so every command and script is written once.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

impl Connection {
    /// Connects to `target`; `shown` (its URL without the password) names it in errors.
    ///
    /// A server that cannot be reached is reported at once as [`Error::Unavailable`].
    /// `tls_root`, with a `rediss://` target, replaces the system's roots (see
    /// [`Options::tls_root`](crate::options::Options::tls_root)).
    pub(crate) async fn open(
        target: &Target,
        tls_root: Option<&Path>,
        shown: &str,
    ) -> Result<Self> {
        let invalid = |e: RedisError| Error::InvalidUrl {
            url: shown.to_owned(),
            reason: e.to_string(),
        };
        let unavailable = |e: RedisError| Error::Unavailable {
            store: shown.to_owned(),
            source: format!("{e} {}", unreachable_hint(&e.to_string(), "Redis")).into(),
        };
        let conn = match target {
            Target::Single(url) => {
                let client = match roots(tls_root, shown)? {
                    None => redis::Client::open(url.as_str()),
                    Some(certificates) => redis::Client::build_with_tls(url.as_str(), certificates),
                }
                .map_err(invalid)?;
                // One direct connection first: a refused connection or a bad password is then
                // reported at once and as itself, not after the manager's reconnect backoff.
                let mut probe = client
                    .get_multiplexed_async_connection_with_config(
                        &AsyncConnectionConfig::new()
                            .set_connection_timeout(Some(CONNECT_TIMEOUT))
                            .set_response_timeout(Some(CONNECT_TIMEOUT)),
                    )
                    .await
                    .map_err(unavailable)?;
                redis::cmd("PING")
                    .query_async::<()>(&mut probe)
                    .await
                    .map_err(unavailable)?;
                drop(probe);
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(3);
                Connection::Single(
                    ConnectionManager::new_with_config(client, config)
                        .await
                        .map_err(unavailable)?,
                )
            }
            Target::Cluster(nodes) => {
                let mut builder = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(3);
                // TLS itself comes from the nodes' rediss:// URLs; this only replaces the roots.
                if let Some(certificates) = roots(tls_root, shown)? {
                    builder = builder.certs(certificates);
                }
                let client = builder.build().map_err(invalid)?;
                let mut conn = client.get_async_connection().await.map_err(unavailable)?;
                redis::cmd("PING")
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(unavailable)?;
                Connection::Cluster(conn)
            }
        };
        Ok(conn)
    }
}

/// One node to walk with `SCAN`: on a cluster, the primary that serves a slot (named by that
/// slot); a single server holds every key. A `SCAN` cursor is only valid on the node that gave
/// it, so a walk keeps to one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Node(Option<u16>);

impl Connection {
    /// Every node that holds keys: the server, or each primary of the cluster (named by the
    /// first slot it serves).
    pub(crate) async fn nodes(&self) -> Result<Vec<Node>, RedisError> {
        if let Connection::Single(_) = self {
            return Ok(vec![Node(None)]);
        }
        // Each entry: start slot, end slot, then the primary as [host, port, ...], replicas.
        let ranges: Vec<Vec<Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut self.clone())
            .await?;
        let mut first_slot: std::collections::BTreeMap<(String, u16), u16> = Default::default();
        for range in ranges {
            let (Some(start), Some(primary)) = (range.first(), range.get(2)) else {
                continue;
            };
            let start: u16 = redis::from_redis_value(start.clone())?;
            let primary: Vec<Value> = redis::from_redis_value(primary.clone())?;
            let (Some(host), Some(port)) = (primary.first(), primary.get(1)) else {
                continue;
            };
            let at = (
                redis::from_redis_value::<String>(host.clone())?,
                redis::from_redis_value::<u16>(port.clone())?,
            );
            let slot = first_slot.entry(at).or_insert(start);
            *slot = (*slot).min(start);
        }
        Ok(first_slot.into_values().map(|s| Node(Some(s))).collect())
    }

    /// One page of `SCAN` on `node`: the string keys matching `pattern` from `cursor` on, and
    /// the cursor to go on from (0 at the end).
    pub(crate) async fn scan_strings(
        &self,
        node: Node,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<Vec<u8>>), RedisError> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .arg("TYPE")
            .arg("string");
        match (self, node.0) {
            (Connection::Cluster(c), Some(slot)) => {
                let route = Route::new(slot, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let page = c.clone().route_command(scan, routing).await?;
                Ok(redis::from_redis_value(page)?)
            }
            _ => scan.query_async(&mut self.clone()).await,
        }
    }
}

/// The roots `cacert=` names, read for the redis crate; `None` keeps the system's.
fn roots(tls_root: Option<&Path>, shown: &str) -> Result<Option<redis::TlsCertificates>> {
    let Some(path) = tls_root else {
        return Ok(None);
    };
    let root = std::fs::read(path).map_err(|e| Error::InvalidUrl {
        url: shown.to_owned(),
        reason: format!("cacert: cannot read {}: {e}", path.display()),
    })?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root),
    }))
}
