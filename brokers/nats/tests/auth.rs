//! Authentication to NATS: user and password, or a token, in the URL (the NATS client's own
//! convention), against a `nats-server` with JetStream this binary starts on a free port with
//! that authentication required. A wrong secret is refused in one line that never shows it.

use std::process::Command;
use std::time::Duration;

use oncely_conformance::process::{TestServer, free_port};
use oncely_nats::async_nats::jetstream;
use oncely_nats::{NatsPublisher, NatsSource};

/// A `nats-server -js` on a free loopback port with `auth` arguments; killed on drop.
struct Server {
    _process: TestServer,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(auth: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut command = Command::new("nats-server");
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .args(auth);
        let log = dir.path().join("nats-server.log");
        let process =
            TestServer::start("nats-server", command, &log, port, Duration::from_secs(10));
        Server {
            _process: process,
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

#[tokio::test]
async fn an_nkey_seed_file_connects_and_a_seed_the_server_does_not_know_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let user = nkeys::KeyPair::new_user();
    let config = dir.path().join("nkey.conf");
    std::fs::write(
        &config,
        format!(
            "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let server = Server::start(&["-c", config.to_str().unwrap()]);
    let seed_file = dir.path().join("user.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().unwrap())).unwrap();
    let host = format!("nats://127.0.0.1:{}", server.port);
    let nkey = format!("nkey={}", seed_file.display());
    server.create_stream(&format!("{host}?{nkey}")).await;
    NatsSource::connect(&format!("{host}/ORDERS/billing?batch=8&{nkey}"))
        .await
        .expect("the nkey seed");
    NatsPublisher::connect(&format!("{host}/orders.in?{nkey}"))
        .await
        .expect("the publisher too");

    let stranger = nkeys::KeyPair::new_user();
    let stranger_seed = stranger.seed().unwrap();
    let stranger_file = dir.path().join("stranger.nk");
    std::fs::write(&stranger_file, &stranger_seed).unwrap();
    let url = format!("{host}/ORDERS/billing?nkey={}", stranger_file.display());
    refused_without_showing(&url, &stranger_seed).await;
    assert!(
        NatsSource::connect(&format!("{host}/ORDERS/billing"))
            .await
            .is_err(),
        "no credentials"
    );
    let missing = format!("{host}/ORDERS/billing?nkey=/no/such.nk");
    let error = NatsSource::connect(&missing)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("/no/such.nk"), "names the file: {error}");
}

/// A NATS JWT (`ed25519-nkey`) with `claims`, issued and signed by `issuer`, for `subject`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine as _;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("oncely{}", subject.len() + name.len()),
        "iat": 1_700_000_000,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let claims = encode(claims.to_string().as_bytes());
    let signed = format!("{header}.{claims}");
    let signature = encode(&issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{signature}")
}

#[tokio::test]
async fn a_credentials_file_connects_in_operator_mode_and_one_for_an_unknown_account_is_refused() {
    // What `nsc` makes: an operator, an account it signed (JetStream on), a user the account
    // signed; the server trusts the operator and knows the account.
    let dir = tempfile::tempdir().unwrap();
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    // JetStream needs a system account.
    let system = nkeys::KeyPair::new_account();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "op",
        serde_json::json!({"type": "operator", "version": 2,
                           "system_account": system.public_key()}),
    );
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "app",
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let user_claims = serde_json::json!({
        "type": "user", "version": 2, "pub": {}, "sub": {},
        "subs": -1, "data": -1, "payload": -1,
    });
    let user_jwt = jwt(&account, &user.public_key(), "billing", user_claims.clone());
    let operator_file = dir.path().join("op.jwt");
    std::fs::write(&operator_file, &operator_jwt).unwrap();
    let config = dir.path().join("operator.conf");
    std::fs::write(
        &config,
        format!(
            "operator: {}\nsystem_account: {}\nresolver: MEMORY\n\
             resolver_preload: {{ {}: {}, {}: {} }}\n",
            operator_file.display(),
            system.public_key(),
            account.public_key(),
            account_jwt,
            system.public_key(),
            system_jwt
        ),
    )
    .unwrap();
    let server = Server::start(&["-c", config.to_str().unwrap()]);
    let creds = |name: &str, jwt: &str, seed: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        )
        .unwrap();
        format!("creds={}", path.display())
    };
    let host = format!("nats://127.0.0.1:{}", server.port);
    let billing = creds("billing.creds", &user_jwt, &user.seed().unwrap());
    server.create_stream(&format!("{host}?{billing}")).await;
    NatsSource::connect(&format!("{host}/ORDERS/billing?{billing}"))
        .await
        .expect("the credentials file");
    NatsPublisher::connect(&format!("{host}/orders.in?{billing}"))
        .await
        .expect("the publisher too");

    // A user of an account the server does not know.
    let stranger = nkeys::KeyPair::new_user();
    let stranger_seed = stranger.seed().unwrap();
    let unknown_account = nkeys::KeyPair::new_account();
    let stranger_jwt = jwt(&unknown_account, &stranger.public_key(), "x", user_claims);
    let stranger_creds = creds("stranger.creds", &stranger_jwt, &stranger_seed);
    refused_without_showing(
        &format!("{host}/ORDERS/billing?{stranger_creds}"),
        &stranger_seed,
    )
    .await;
}
