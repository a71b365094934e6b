//! Faults a test injects around the processes under test, with the real mechanisms: a store
//! server of the test's own that it stops, crashes and starts again while consumers use it
//! ([`PostgresServer`], [`MariaDbServer`], [`RedisServer`], each a [`Restartable`]), a broker
//! of its own to restart in the same way ([`NatsServer`], [`RabbitMqServer`],
//! [`TansuServer`], its data on an [`S3Server`]), and a TCP proxy whose link it sets
//! ([`FaultProxy`]).
//!
//! The machine's shared servers are never touched: other tests use them at the same time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use std::sync::Arc;

use oncely_core::{ClaimOutcome, Error, Key, Oncely, Scope, Store};

use crate::process::{TestServer, free_port};

/// How a server goes down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Its own orderly shutdown (PostgreSQL's "fast" mode: sessions are ended with an error,
    /// what is committed is written out).
    Graceful,
    /// SIGKILL of the server and everything it started: a crash, then crash recovery on the
    /// next start.
    Crash,
}

/// A server of the test's own (a store's or a broker's) that a test can take down and start
/// again.
pub trait Restartable: Send + 'static {
    /// The URL a client connects to it with.
    fn url(&self) -> String;

    /// Takes it down `how`; nothing if it is down already.
    fn stop(&mut self, how: Stop);

    /// Starts it on the same data and port; returns once it serves.
    fn start_again(&mut self);

    /// Stops it `how`, leaves it down for `down`, and starts it again.
    fn restart(&mut self, how: Stop, down: Duration) {
        self.stop(how);
        std::thread::sleep(down);
        self.start_again();
    }
}

/// The trial every store with a server runs against one of its own: while the server is down
/// (shut down, then crashed), a claim is [`Error::Unavailable`], never a failed or granted
/// claim; once it is back, the same store (not reconnected) works again and still has the
/// record claimed before. `connect` makes the store from [`Restartable::url`].
pub async fn a_restart_is_an_outage_and_the_store_works_again_after_it<S, F, Fut>(
    mut server: S,
    connect: F,
) where
    S: Restartable,
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    let oncely = Oncely::new(connect(server.url()).await);
    let scope = Scope::new("orders").expect("a scope");
    let key = |n: u32| Key::new(format!("o-{n}")).expect("a key");
    assert!(matches!(
        oncely
            .claim(&scope, &key(1), None)
            .await
            .expect("a first claim"),
        ClaimOutcome::New(_)
    ));
    for how in [Stop::Graceful, Stop::Crash] {
        server = blocking(move || {
            server.stop(how);
            server
        })
        .await;
        match oncely.claim(&scope, &key(2), None).await {
            Err(error @ Error::Unavailable { .. }) => eprintln!("{how:?}: {error}"),
            other => panic!("{how:?}: a claim while the server is down: {other:?}"),
        }
        server = blocking(move || {
            server.start_again();
            server
        })
        .await;
        // The connections died with the server; new ones are made.
        match oncely.claim(&scope, &key(1), None).await {
            Ok(ClaimOutcome::InProgress { .. }) => {}
            other => panic!("{how:?}: the record of before the restart: {other:?}"),
        }
    }
    drop(server);
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking step")
}

/// A fresh temporary directory for a server (or disk) of the test's own.
fn server_dir(kind: &str) -> PathBuf {
    let base = std::env::temp_dir().join(format!(
        "oncely-{kind}-{}-{}",
        std::process::id(),
        crate::servers::fresh_name(kind)
    ));
    std::fs::create_dir_all(&base).expect("the server's directory");
    base
}

/// Runs `command`, failing with its output if it fails.
fn run_to_end(what: &str, command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run it: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How long a server of the test's own may take to start: a RabbitMQ node on a busy machine
/// takes over a minute.
const STARTS_WITHIN: Duration = Duration::from_secs(180);

/// What every server of the test's own has: a directory, a port, and the process while it
/// runs. Dropping it kills the process and removes the directory.
struct OwnServer {
    kind: &'static str,
    base: PathBuf,
    port: u16,
    process: Option<TestServer>,
    starts: usize,
}

impl OwnServer {
    fn new(kind: &'static str) -> OwnServer {
        OwnServer {
            kind,
            base: server_dir(kind),
            port: free_port(),
            process: None,
            starts: 0,
        }
    }

    /// Takes it down `how`, `orderly` being the server's own signal for a clean shutdown.
    fn stop(&mut self, how: Stop, orderly: libc::c_int) {
        let Some(process) = self.process.take() else {
            return;
        };
        match how {
            Stop::Graceful => process.stop_with(orderly, Duration::from_secs(60)),
            Stop::Crash => drop(process),
        }
    }

    /// Starts `command` (its log in the directory) and waits until its port is open and then
    /// `serves` holds: the port opens before a server is ready (recovery, loading its data).
    fn launch(&mut self, command: Command, serves: &str, mut ready: impl FnMut() -> bool) {
        assert!(self.process.is_none(), "the server is running");
        self.starts += 1;
        let log = self.base.join(format!("{}-{}.log", self.kind, self.starts));
        let name = format!("{} (the test's own)", self.kind);
        let mut process = TestServer::start(&name, command, &log, self.port, STARTS_WITHIN);
        process.wait_until(serves, STARTS_WITHIN, |_| ready());
        self.process = Some(process);
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        drop(self.process.take());
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// A MariaDB server of the test's own (`mariadb-install-db` into a temporary directory, as
/// Debian's `mariadb-server` package installs it), on a free loopback port, user `root` without
/// a password, with a database `oncely`. Commits are durable as by default
/// (`innodb_flush_log_at_trx_commit=1`). Dropping it kills it and removes its files.
pub struct MariaDbServer {
    own: OwnServer,
}

impl MariaDbServer {
    /// Makes a new data directory and starts the server on it.
    pub fn start() -> MariaDbServer {
        let mut server = MariaDbServer {
            own: OwnServer::new("mariadb"),
        };
        std::fs::create_dir_all(server.tmp()).expect("the server's temporary directory");
        run_to_end(
            "mariadb-install-db (Debian: apt-get install mariadb-server)",
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", server.data().display()))
                .arg(format!("--tmpdir={}", server.tmp().display()))
                .args([
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ]),
        );
        server.start_again();
        run_to_end(
            "creating the test database",
            server.client().args(["-e", "CREATE DATABASE oncely"]),
        );
        server
    }

    fn data(&self) -> PathBuf {
        self.own.base.join("data")
    }

    /// The server's own temporary directory: a starting `mariadbd` removes every `#sql*` file
    /// in its tmpdir, so servers sharing `/tmp` delete each other's temporary tables (seen:
    /// `mariadb-install-db` failing with "Error on delete of '/tmp/#sql-temptable-...'").
    fn tmp(&self) -> PathBuf {
        self.own.base.join("tmp")
    }

    fn client(&self) -> Command {
        let mut client = Command::new("mariadb");
        client.args(["--no-defaults", "-h", "127.0.0.1", "-u", "root"]);
        client.arg(format!("--port={}", self.own.port));
        client
    }
}

impl Restartable for MariaDbServer {
    /// `mysql://root@127.0.0.1:PORT/oncely`.
    fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/oncely", self.own.port)
    }

    fn stop(&mut self, how: Stop) {
        // SIGTERM is mariadbd's orderly shutdown.
        self.own.stop(how, libc::SIGTERM);
    }

    fn start_again(&mut self) {
        // Debian puts it in /usr/sbin, which a user's PATH may not have.
        let sbin = Path::new("/usr/sbin/mariadbd");
        let mut command = Command::new(if sbin.exists() {
            sbin
        } else {
            Path::new("mariadbd")
        });
        let base = &self.own.base;
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.data().display()))
            .arg(format!("--tmpdir={}", self.tmp().display()))
            .arg(format!("--port={}", self.own.port))
            .arg(format!("--socket={}", base.join("sock").display()))
            .arg(format!("--pid-file={}", base.join("pid").display()))
            .args(["--bind-address=127.0.0.1", "--user=root", "--skip-log-bin"]);
        let mut ping = self.client();
        ping.args(["-e", "SELECT 1"]);
        self.own.launch(command, "answer a query", || {
            ping.output().is_ok_and(|out| out.status.success())
        });
    }
}

/// A Redis server of the test's own on a free loopback port, writing every command to its
/// append-only file before it answers (`appendfsync always`), so what it acknowledged survives a
/// crash. Dropping it kills it and removes its files.
pub struct RedisServer {
    own: OwnServer,
}

impl RedisServer {
    /// Starts it on an empty directory.
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            own: OwnServer::new("redis"),
        };
        server.start_again();
        server
    }
}

impl Restartable for RedisServer {
    /// `redis://127.0.0.1:PORT`.
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.own.port)
    }

    fn stop(&mut self, how: Stop) {
        // SIGTERM: Redis finishes writing its append-only file and exits.
        self.own.stop(how, libc::SIGTERM);
    }

    fn start_again(&mut self) {
        let port = self.own.port.to_string();
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &port])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.own.base);
        let mut ping = Command::new("redis-cli");
        ping.args(["-h", "127.0.0.1", "-p", &port, "PING"]);
        self.own.launch(command, "answer PING", || {
            ping.output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "PONG")
        });
    }
}

/// A NATS server with JetStream of the test's own on a free loopback port, its streams in files
/// (`-sd`) so they outlive a restart. Dropping it kills it and removes its files.
pub struct NatsServer {
    own: OwnServer,
}

impl NatsServer {
    /// Starts it on an empty directory.
    pub fn start() -> NatsServer {
        let mut server = NatsServer {
            own: OwnServer::new("nats"),
        };
        server.start_again();
        server
    }
}

impl Restartable for NatsServer {
    /// `nats://127.0.0.1:PORT`.
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.own.port)
    }

    fn stop(&mut self, how: Stop) {
        // SIGTERM: the server closes its clients and its stream files, then exits.
        self.own.stop(how, libc::SIGTERM);
    }

    fn start_again(&mut self) {
        let mut command = Command::new("nats-server");
        command
            .args(["-a", "127.0.0.1", "-p", &self.own.port.to_string(), "-js"])
            .arg("-sd")
            .arg(self.own.base.join("jetstream"));
        // JetStream has recovered its streams before the server takes clients.
        self.own.launch(command, "take clients", || true);
    }
}

/// A RabbitMQ node of the test's own on a free loopback port, with its own node name, Erlang
/// cookie, database and logs under a temporary directory, user `guest` allowed from anywhere.
/// Durable queues and persistent messages outlive a restart. Dropping it kills it and removes
/// its files.
pub struct RabbitMqServer {
    own: OwnServer,
    node: String,
    listeners: String,
}

/// The node's start script itself: the `rabbitmq-server` on PATH (Debian's wrapper) switches
/// to the `rabbitmq` user, who cannot read a test's files.
const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

impl RabbitMqServer {
    /// Starts a node with a plain AMQP listener.
    pub fn start() -> RabbitMqServer {
        Self::start_with(|port| format!("listeners.tcp.default = 127.0.0.1:{port}\n"))
    }

    /// Starts a node whose listeners are the `rabbitmq.conf` lines `listeners` gives for its
    /// port: a TLS listener alone, say.
    pub fn start_with(listeners: impl FnOnce(u16) -> String) -> RabbitMqServer {
        let own = OwnServer::new("rabbitmq");
        let mut server = RabbitMqServer {
            node: format!(
                "{}@localhost",
                own.base.file_name().expect("a name").display()
            ),
            listeners: listeners(own.port),
            own,
        };
        server.start_again();
        server
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.own.port
    }
}

impl Restartable for RabbitMqServer {
    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` (for a plain listener).
    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.own.port)
    }

    fn stop(&mut self, how: Stop) {
        // SIGTERM: the start script stops the node in order (`rabbitmqctl stop`).
        self.own.stop(how, libc::SIGTERM);
    }

    fn start_again(&mut self) {
        let base = &self.own.base;
        let file = |name: &str| base.join(name).display().to_string();
        let config = format!("{}loopback_users = none\n", self.listeners);
        std::fs::write(base.join("rabbitmq.conf"), config).expect("rabbitmq.conf");
        std::fs::write(base.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        std::fs::write(base.join("rabbitmq-env.conf"), "").expect("rabbitmq-env.conf");
        let script = Path::new(RABBITMQ_SERVER);
        let mut command = Command::new(if script.exists() {
            script
        } else {
            Path::new("rabbitmq-server")
        });
        command
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_CONFIG_FILE", file("rabbitmq.conf"))
            // Not the machine's, which names the machine's node.
            .env("RABBITMQ_CONF_ENV_FILE", file("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", file("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", file("mnesia"))
            .env("RABBITMQ_LOG_BASE", file("log"))
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            // The Erlang cookie is made in HOME.
            .env("HOME", base);
        // The listener opens once the node has recovered its queues.
        self.own.launch(command, "take clients", || true);
    }
}

/// A tansu broker (Kafka protocol) of the test's own on a free loopback port, its topics,
/// messages and consumer groups' offsets on an S3 server of its own so that they outlive a
/// restart ([`start_on_s3`](Self::start_on_s3)), or in memory behind a proxy
/// ([`start_advertising`](Self::start_advertising)). Needs tansu built with its `dynostore`
/// feature (README's test command installs it so). Dropping it kills it and removes its files.
pub struct TansuServer {
    own: OwnServer,
    advertised: Option<u16>,
    storage: String,
    /// The S3 server its `s3://` storage is on; dropped after the broker (field order).
    object_store: Option<S3Server>,
}

impl TansuServer {
    /// Starts it with its data in a bucket of an S3 server of its own ([`S3Server`], started
    /// here, not restarted with the broker): tansu's object-store engine (`--storage-engine
    /// s3://`, its `dynostore` feature), which writes a produce's records to the bucket before
    /// it answers. Its messages and offsets outlive a crash of the broker as they would on a
    /// disk, and unlike the SQLite engine it keeps serving when a client leaves during a
    /// request.
    pub fn start_on_s3() -> TansuServer {
        let object_store = S3Server::start();
        object_store.create_bucket("tansu");
        TansuServer::start_with(None, "s3://tansu/".into(), Some(object_store))
    }

    /// Starts it telling its clients to connect at `127.0.0.1:advertised`, not at its own port:
    /// a [`FaultProxy`] there ([`FaultProxy::start_on`]) then carries every connection a Kafka
    /// client makes after its first, which a proxy in front of the bootstrap address alone
    /// would not (the clients would go where the broker says it is).
    ///
    /// Its data is kept in memory: tansu 0.6's SQLite engine stops serving when a client leaves
    /// during a request, which a partition provokes, and this one is never restarted.
    pub fn start_advertising(advertised: u16) -> TansuServer {
        TansuServer::start_with(Some(advertised), "memory://tansu/".into(), None)
    }

    fn start_with(
        advertised: Option<u16>,
        storage: String,
        object_store: Option<S3Server>,
    ) -> TansuServer {
        let mut server = TansuServer {
            own: OwnServer::new("tansu"),
            advertised,
            storage,
            object_store,
        };
        server.start_again();
        server
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.own.port
    }
}

impl Restartable for TansuServer {
    /// `127.0.0.1:PORT`: Kafka clients take a list of bootstrap servers, not a URL.
    fn url(&self) -> String {
        format!("127.0.0.1:{}", self.own.port)
    }

    fn stop(&mut self, how: Stop) {
        // SIGTERM: the broker stops taking requests and closes its storage.
        self.own.stop(how, libc::SIGTERM);
    }

    fn start_again(&mut self) {
        let listener = format!("tcp://127.0.0.1:{}", self.own.port);
        let advertised = format!(
            "tcp://127.0.0.1:{}",
            self.advertised.unwrap_or(self.own.port)
        );
        let mut command = Command::new("tansu");
        command
            .arg("broker")
            .args(["--listener-url", &listener])
            // Clients connect where the broker says it is: not the default 9092.
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", &self.storage])
            .current_dir(&self.own.base);
        if let Some(object_store) = &self.object_store {
            // object_store's S3 client reads these (`AmazonS3Builder::from_env`).
            command
                .env("AWS_ENDPOINT", object_store.endpoint())
                .env("AWS_ALLOW_HTTP", "true")
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .env("AWS_DEFAULT_REGION", "us-east-1")
                .env("AWS_REGION", "us-east-1");
        }
        // It opens its storage before it listens.
        self.own.launch(command, "take clients", || true);
    }
}

/// An S3 server of the test's own on a free loopback port: moto's (PyPI `moto[server]`, which
/// README's test command installs for the SQS tests), serving from memory. It is the "disk" a
/// broker of the test's own keeps its data on ([`TansuServer::start_on_s3`]): the broker is
/// restarted, this is not. Dropping it kills it.
pub struct S3Server {
    own: OwnServer,
}

impl S3Server {
    /// Starts it.
    pub fn start() -> S3Server {
        let mut own = OwnServer::new("s3");
        let mut command = Command::new("python3");
        command
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(own.port.to_string());
        own.launch(command, "take requests", || true);
        S3Server { own }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.own.port)
    }

    /// Creates `bucket` (S3's `CreateBucket`: `PUT /bucket`; moto asks for no signature).
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.own.port))
            .expect("connecting to the S3 server");
        let request = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.own.port
        );
        stream.write_all(request.as_bytes()).expect("CreateBucket");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("CreateBucket's answer");
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "CreateBucket {bucket}: {response}"
        );
    }
}

/// A small filesystem of the test's own (a tmpfs of `bytes`, mounted on a fresh temporary
/// directory), for a store to fill. Unmounted and removed on drop. Mounting needs root (or
/// `CAP_SYS_ADMIN`); without it, [`mount`](Self::mount) fails saying so.
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes`.
    pub fn mount(bytes: u64) -> SmallDisk {
        let dir = server_dir("disk");
        run_to_end(
            "mounting a small tmpfs (the test needs root or CAP_SYS_ADMIN)",
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
                .arg(&dir),
        );
        SmallDisk { dir }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes a file of `bytes` zeros into it (taking space the test gives back by deleting it).
    pub fn fill(&self, name: &str, bytes: usize) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, vec![0u8; bytes]).expect("a filler file");
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL server of the test's own (`initdb` into a temporary directory), on a free
/// loopback port with trust authentication, that the test can stop and start again. Dropping
/// it kills it and removes its files.
///
/// PostgreSQL refuses to run as root: when the test runs as root, the server runs as the
/// `postgres` user (Debian's packages make it).
pub struct PostgresServer {
    own: OwnServer,
    bin: PathBuf,
    user: Option<(u32, u32)>,
}

impl PostgresServer {
    /// Makes a new cluster and starts it; fails, saying what is missing, if PostgreSQL's
    /// server programs are not installed.
    pub fn start() -> PostgresServer {
        let bin = postgres_bin();
        let own = OwnServer::new("postgres");
        let user = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_user())
        } else {
            None
        };
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&own.base, Some(uid), Some(gid)).expect("chown the directory");
        }
        let mut server = PostgresServer { own, bin, user };
        let mut initdb = server.command("initdb");
        initdb.arg("-D").arg(server.data()).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run_to_end("initdb", &mut initdb);
        server.start_again();
        server
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.own.port
    }

    /// Whether it is running.
    pub fn is_up(&self) -> bool {
        self.own.process.is_some()
    }

    fn data(&self) -> PathBuf {
        self.own.base.join("data")
    }

    /// `program` from PostgreSQL's server programs, as the server's user.
    fn command(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid).env("HOME", &self.own.base);
        }
        command.current_dir(&self.own.base);
        command
    }
}

impl Restartable for PostgresServer {
    /// The URL of its `postgres` database, as user `postgres`.
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.own.port)
    }

    fn stop(&mut self, how: Stop) {
        // SIGINT is PostgreSQL's fast shutdown.
        self.own.stop(how, libc::SIGINT);
    }

    fn start_again(&mut self) {
        let port = self.own.port.to_string();
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(self.data())
            .args(["-p", &port, "-k"])
            .arg(&self.own.base)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
            ]);
        // Up means pg_isready says it accepts sessions (not "the database system is starting
        // up" while it recovers).
        let mut ready = self.command("pg_isready");
        ready.args(["-q", "-h", "127.0.0.1", "-p", &port]);
        self.own
            .launch(command, "accept sessions (pg_isready)", || {
                ready.status().is_ok_and(|status| status.success())
            });
    }
}

/// The newest PostgreSQL's server programs (Debian: `/usr/lib/postgresql/<version>/bin`).
fn postgres_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root).ok().and_then(|versions| {
        versions
            .filter_map(|v| v.ok())
            .filter_map(|v| {
                let version: u32 = v.file_name().to_str()?.parse().ok()?;
                Some((version, v.path().join("bin")))
            })
            .filter(|(_, bin)| bin.join("initdb").exists())
            .max()
            .map(|(_, bin)| bin)
    });
    newest.unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server programs under {} (Debian: apt-get install postgresql): \
             this test starts a server of its own",
            root.display()
        )
    })
}

/// The `postgres` user's uid and gid.
fn postgres_user() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").expect("a C string");
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !entry.is_null(),
        "running as root, and there is no `postgres` user to run PostgreSQL as"
    );
    // SAFETY: non-null, as checked.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}

/// What a [`FaultProxy`] does to the traffic through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Bytes go through.
    Up,
    /// A partition: nothing goes through either way and new connections get no answer, but
    /// nothing is closed either - as when packets are dropped. When the link comes back up,
    /// connections that are still open go on where they stopped.
    Partitioned,
    /// Every connection is closed, and new ones are closed at once.
    Cut,
    /// Bytes go through `delay` late each way (a round trip of twice that), and of every
    /// hundred reads `loss_percent` are held a further 200-400 ms, as a lost segment is until
    /// TCP retransmits it (Linux waits at least 200 ms), with what follows it held behind.
    /// Network namespaces with `tc netem` would do this below TCP; where the kernel has no
    /// netem (this machine kind), the proxy does it above.
    Slow {
        /// One way.
        delay: Duration,
        /// Of 100 reads, how many are held as if lost once.
        loss_percent: u8,
    },
}

/// A TCP proxy on a free loopback port in front of `127.0.0.1:upstream`, whose [`Link`] the test
/// sets: a partition or a cut between the processes under test and a server, where network
/// namespaces are not needed. Call from within a Tokio runtime; dropping it closes everything.
pub struct FaultProxy {
    port: u16,
    link: tokio::sync::watch::Sender<Link>,
    accepting: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts it, with the link up.
    pub async fn start(upstream: u16) -> FaultProxy {
        FaultProxy::start_on(0, upstream).await
    }

    /// Starts it on `127.0.0.1:port` (0: a free one), with the link up: for a server told
    /// beforehand where its clients reach it ([`TansuServer::start_advertising`]).
    pub async fn start_on(port: u16, upstream: u16) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let (link, watching) = tokio::sync::watch::channel(Link::Up);
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, upstream, watching.clone()));
            }
        });
        FaultProxy {
            port,
            link,
            accepting,
        }
    }

    /// Its port on 127.0.0.1: give the processes under test this one.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets the link for every connection, open and new.
    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        // Open connections see the cut and close.
        self.link.send_replace(Link::Cut);
    }
}

/// One connection through the proxy: waits out a partition before it even reaches the server.
async fn forward(
    client: tokio::net::TcpStream,
    upstream: u16,
    mut link: tokio::sync::watch::Receiver<Link>,
) {
    if wait_while_partitioned(&mut link).await == Link::Cut {
        return;
    }
    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Either direction ending (a close, an error, a cut) ends both.
    tokio::select! {
        _ = pump(client_read, server_write, link.clone()) => {}
        _ = pump(server_read, client_write, link) => {}
    }
}

/// Copies `from` to `to` while the link is up; holds still while it is partitioned. Bytes go
/// through a delay line (a writer task), so that a slow link delays them without slowing the
/// reads behind them.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut link: tokio::sync::watch::Receiver<Link>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (line, mut due) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    // Answers whether the link was cut (else the other side closed: what is due is written).
    let reader = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        // In order: a chunk held as lost holds those behind it.
        let mut last_due = tokio::time::Instant::now();
        loop {
            if wait_while_partitioned(&mut link).await == Link::Cut {
                return true;
            }
            let read = tokio::select! {
                read = from.read(&mut buffer) => read,
                // A change of link interrupts the wait for bytes; the loop looks at it again.
                _ = link.changed() => continue,
            };
            let n = match read {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            // Bytes read just as a partition began are held until it ends.
            let now = wait_while_partitioned(&mut link).await;
            let mut at = tokio::time::Instant::now();
            match now {
                Link::Cut => return true,
                Link::Slow {
                    delay,
                    loss_percent,
                } => {
                    at += delay;
                    if fastrand::u8(..100) < loss_percent {
                        at += Duration::from_millis(fastrand::u64(200..400));
                    }
                }
                Link::Up | Link::Partitioned => {}
            }
            last_due = last_due.max(at);
            if line.send((last_due, buffer[..n].to_vec())).is_err() {
                return false;
            }
        }
    };
    tokio::pin!(writer);
    tokio::select! {
        _ = &mut writer => {}
        cut = reader => if !cut {
            // The reader is gone with its end of the line: the writer ends once it is written.
            writer.await;
        },
    }
}

/// Waits while the link is partitioned; answers what it is then (up or cut).
async fn wait_while_partitioned(link: &mut tokio::sync::watch::Receiver<Link>) -> Link {
    loop {
        let now = *link.borrow_and_update();
        if now != Link::Partitioned {
            return now;
        }
        if link.changed().await.is_err() {
            return Link::Cut;
        }
    }
}
