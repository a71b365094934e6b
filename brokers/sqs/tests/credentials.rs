//! Where an SQS client's credentials come from: the AWS SDKs' standard chain, through
//! [`oncely_sqs::credentials`], for an `sqs://` (HTTPS) endpoint. Each case runs in a process of
//! its own (this binary again) with only the environment it names, so none sees another's
//! variables, nor the machine's `~/.aws`. Finding credentials contacts no AWS service: the
//! container endpoint is a Python server in another process that the test starts.
//!
//! Not shown here: web identity (it calls STS, which is not on this machine) and the instance
//! metadata service (no EC2).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use aws_sdk_sqs::config::ProvideCredentials;
use oncely_sqs::SqsOptions;

const ENDPOINT: &str = "sqs://sqs.eu-west-1.amazonaws.com/orders?region=eu-west-1";
/// The variables every case clears first, so that only its own count.
const AWS_VARIABLES: [&str; 10] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
];

/// Runs this binary as `case` with `env` alone (and no instance metadata); what it printed, and
/// whether it succeeded.
fn run_case(case: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--case", case]);
    for name in AWS_VARIABLES {
        command.env_remove(name);
    }
    let home = tempfile::tempdir().unwrap();
    let output = command
        // Not the machine's ~/.aws.
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// In the child: the access key id the chain found, or the error.
fn print_what_was_found() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options: SqsOptions = ENDPOINT.parse().unwrap();
        match oncely_sqs::credentials(&options).await {
            Ok(provider) => {
                let found = provider.provide_credentials().await.unwrap();
                println!("found {}", found.access_key_id());
            }
            Err(error) => {
                println!("error {error}");
                std::process::exit(1);
            }
        }
    });
}

fn a_shared_profile_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s1\n\n\
         [billing]\naws_access_key_id = AKIDBILLING\naws_secret_access_key = s2\n",
    )
    .unwrap();
    let config = dir.path().join("config");
    std::fs::write(&config, "").unwrap();
    let files = [
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
    ];
    let (ok, text) = run_case("found", &files);
    assert!(ok && text.contains("found AKIDDEFAULT"), "{text}");
    let mut named = files.to_vec();
    named.push(("AWS_PROFILE", "billing"));
    let (ok, text) = run_case("found", &named);
    assert!(ok && text.contains("found AKIDBILLING"), "{text}");
    // The environment comes first.
    named.push(("AWS_ACCESS_KEY_ID", "AKIDENV"));
    named.push(("AWS_SECRET_ACCESS_KEY", "s3"));
    let (ok, text) = run_case("found", &named);
    assert!(ok && text.contains("found AKIDENV"), "{text}");
}

/// The ECS container endpoint, served by Python in another process: it answers temporary
/// credentials and prints the authorization it was sent.
const CONTAINER_ENDPOINT: &str = r#"
import http.server, json, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("authorization", self.headers.get("Authorization"), flush=True)
        body = json.dumps({"AccessKeyId": "AKIDCONTAINER", "SecretAccessKey": "s",
                           "Token": "t", "Expiration": "2099-01-01T00:00:00Z"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print("port", server.server_address[1], flush=True)
server.serve_forever()
"#;

fn the_container_endpoint_is_used_with_its_token() {
    let mut server = Command::new("python3")
        .args(["-c", CONTAINER_ENDPOINT])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let port = first.strip_prefix("port ").expect("the port");
    let uri = format!("http://127.0.0.1:{port}/v2/credentials");
    let (ok, text) = run_case(
        "found",
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "task-token"),
        ],
    );
    // Stopped first, so that reading what it printed ends even if it was never asked.
    let _ = server.kill();
    let _ = server.wait();
    let asked = lines.next().and_then(Result::ok);
    assert!(ok && text.contains("found AKIDCONTAINER"), "{text}");
    assert_eq!(asked.as_deref(), Some("authorization task-token"));
}

fn no_credentials_anywhere_is_one_line_saying_where_it_looked() {
    let (ok, text) = run_case("found", &[]);
    assert!(!ok, "{text}");
    let line = text.trim();
    assert!(!line.contains('\n'), "one line: {line}");
    assert!(
        line.contains("credentials") && line.contains("shared profile"),
        "says where it looked: {line}"
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--case") {
        return print_what_was_found();
    }
    let arguments = libtest_mimic::Arguments::from_args();
    let trial = |name: &str, test: fn()| {
        libtest_mimic::Trial::test(name, move || {
            test();
            Ok(())
        })
    };
    let tests = vec![
        trial("a_shared_profile_is_used", a_shared_profile_is_used),
        trial(
            "the_container_endpoint_is_used_with_its_token",
            the_container_endpoint_is_used_with_its_token,
        ),
        trial(
            "no_credentials_anywhere_is_one_line_saying_where_it_looked",
            no_credentials_anywhere_is_one_line_saying_where_it_looked,
        ),
    ];
    libtest_mimic::run(&arguments, tests).exit()
}
