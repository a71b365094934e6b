//! The HTTP client the gateway forwards with (and `oncely consume --deliver` posts with):
//! `http://`, or `https://` over rustls, verified against the system's roots (`SSL_CERT_FILE`
//! and `SSL_CERT_DIR` replace them, as for OpenSSL).

use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::{ClientConfig, RootCertStore};

/// Connects over plain TCP for `http://` and over TLS for `https://`.
pub type Connector = HttpsConnector<HttpConnector>;

/// A [`Connector`]. With `https`, the system's roots are required: a machine without any is an
/// error here rather than a refused handshake later. Without it (every URL is `http://`), none
/// are needed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
///
/// let connector = oncely_http::gateway::client::connector(false).unwrap();
/// let client: Client<_, String> = Client::builder(TokioExecutor::new()).build(connector);
/// # let _ = client; }
/// ```
pub fn connector(https: bool) -> std::io::Result<Connector> {
    let config = match ClientConfig::builder().with_native_roots() {
        Ok(builder) => builder.with_no_client_auth(),
        Err(error) if https => {
            return Err(std::io::Error::new(
                error.kind(),
                format!(
                    "no trusted root certificates for https:// ({error}); install the system's \
                     CA certificates or name a PEM file in SSL_CERT_FILE"
                ),
            ));
        }
        Err(_) => ClientConfig::builder()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth(),
    };
    let mut http = HttpConnector::new();
    // The TLS layer wraps it: it sees https:// URLs too.
    http.enforce_http(false);
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}
