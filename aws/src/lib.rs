//! # oncely-aws
//!
//! What oncely's AWS crates share (`oncely-sqs`, `oncely-dynamodb`): the HTTPS client their
//! SDK clients and the credential providers use ([`https_client`]: rustls with ring, the
//! system's roots), and credentials found as the AWS SDKs find them ([`credentials`]).

#![warn(missing_docs)]

use aws_config::Region;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

/// No credential source had credentials (or one failed): where it looked, and why.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0} (looked in: the environment, the shared profile, web identity, the container \
     endpoint, the instance metadata)"
)]
pub struct NoCredentials(pub String);

/// The HTTP client of the SDK clients and of the credential providers: rustls with ring, the
/// system's roots.
pub fn https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// The credentials a client of `endpoint` in `region` signs with, found as the AWS SDKs find
/// them (the standard chain, in order): `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
/// (`AWS_SESSION_TOKEN`); the shared profile (`AWS_PROFILE`, `~/.aws/credentials` and
/// `~/.aws/config`, or the files `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE` name; role
/// assumption, SSO and `credential_process` profiles included); web identity
/// (`AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN`, as on EKS); the container endpoint
/// (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `..._FULL_URI`, as on ECS); the instance
/// metadata service (EC2). Temporary credentials are refreshed before they expire.
///
/// For a plain-HTTP endpoint (an emulator on `http://`) only the environment is asked, and
/// without `AWS_ACCESS_KEY_ID` the credentials are `test`/`test` (emulators take any).
///
/// Asks once now, so that missing credentials stop a `connect` with the reason rather than
/// the first request.
pub async fn credentials(
    endpoint: &str,
    region: &str,
) -> Result<SharedCredentialsProvider, NoCredentials> {
    let emulator = endpoint.starts_with("http://");
    let environment = aws_config::environment::EnvironmentVariableCredentialsProvider::new();
    let provider = if emulator {
        match environment.provide_credentials().await {
            Ok(found) => SharedCredentialsProvider::new(found),
            Err(_) => SharedCredentialsProvider::new(Credentials::new(
                "test", "test", None, None, "emulator",
            )),
        }
    } else {
        let config = aws_config::provider_config::ProviderConfig::default()
            .with_http_client(https_client())
            .with_region(Some(Region::new(region.to_owned())));
        let chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
            .configure(config)
            .build()
            .await;
        SharedCredentialsProvider::new(chain)
    };
    provider
        .provide_credentials()
        .await
        .map_err(|e| NoCredentials(describe(&e)))?;
    Ok(provider)
}

/// `error` and its causes on one line (`dispatch failure: io error: ... Connection refused`):
/// the SDK's own message is only the first of them.
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = error.source();
    }
    line
}
