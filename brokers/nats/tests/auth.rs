//! Authentication to NATS: user and password, or a token, in the URL (the NATS client's own
//! convention), against a `nats-server` with JetStream this binary starts on a free port with
//! that authentication required. A wrong secret is refused in one line that never shows it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oncely_nats::async_nats::jetstream;
use oncely_nats::{NatsPublisher, NatsSource};

/// A `nats-server -js` on a free loopback port with `auth` arguments; killed on drop.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(auth: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .args(auth)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            port,
            _dir: dir,
        }
    }

    /// Creates the stream `ORDERS` on subject `orders.in`, connecting with `url`.
    async fn create_stream(&self, url: &str) {
        let client = oncely_nats::connect(url).await.unwrap();
        jetstream::new(client)
            .create_stream(jetstream::stream::Config {
                name: "ORDERS".into(),
                subjects: vec!["orders.in".into()],
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `url` must be refused in one line that never shows `secret`.
async fn refused_without_showing(url: &str, secret: &str) {
    let error = match NatsSource::connect(url).await {
        Ok(_) => panic!("a wrong secret is refused"),
        Err(e) => e.to_string(),
    };
    eprintln!("{error}");
    assert!(!error.contains('\n'), "one line: {error}");
    assert!(!error.contains(secret), "the secret is not shown: {error}");
}

#[tokio::test]
async fn user_and_password_in_the_url_connect_and_a_wrong_password_is_refused() {
    let server = Server::start(&["--user", "app", "--pass", "s3cret-pass"]);
    let base = format!("nats://app:s3cret-pass@127.0.0.1:{}", server.port);
    server.create_stream(&base).await;
    NatsSource::connect(&format!("{base}/ORDERS/billing"))
        .await
        .expect("user and password");
    NatsPublisher::connect(&format!("{base}/orders.in"))
        .await
        .expect("the publisher too");
    let wrong = format!(
        "nats://app:wr0ng-pass@127.0.0.1:{}/ORDERS/billing",
        server.port
    );
    refused_without_showing(&wrong, "wr0ng-pass").await;
    let none = format!("nats://127.0.0.1:{}/ORDERS/billing", server.port);
    assert!(NatsSource::connect(&none).await.is_err(), "no credentials");
}

#[tokio::test]
async fn a_token_in_the_url_connects_and_a_wrong_token_is_refused_unshown() {
    let server = Server::start(&["--auth", "t0ken-s3cret"]);
    let base = format!("nats://t0ken-s3cret@127.0.0.1:{}", server.port);
    server.create_stream(&base).await;
    NatsSource::connect(&format!("{base}/ORDERS/billing"))
        .await
        .expect("the token");
    let wrong = format!(
        "nats://wr0ng-t0ken@127.0.0.1:{}/ORDERS/billing",
        server.port
    );
    refused_without_showing(&wrong, "wr0ng-t0ken").await;
}
