//! The gateway listening with TLS (`oncely serve --tls-cert --tls-key`): rustls, HTTP/1.1.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The certificate chain and private key the gateway [listens](super::GatewayOptions::tls) with.
///
/// ```no_run
/// use oncely_http::gateway::{GatewayOptions, ServerTls};
///
/// let mut options = GatewayOptions::new("http://127.0.0.1:3000");
/// options.tls = Some(ServerTls::from_pem_files(
///     "/etc/oncely/fullchain.pem".as_ref(),
///     "/etc/oncely/privkey.pem".as_ref(),
/// )?);
/// # Ok::<(), oncely_http::gateway::GatewayError>(())
/// ```
#[derive(Clone)]
pub struct ServerTls {
    pub(super) acceptor: TlsAcceptor,
}

impl ServerTls {
    /// From PEM files: `certificate` holds the server's certificate then any intermediates (a
    /// "fullchain" file), `key` its private key (PKCS#8, PKCS#1 or SEC1). Fails, naming the file
    /// and the reason, if a file cannot be read, holds no certificate or key, or the key does not
    /// match the certificate.
    pub fn from_pem_files(
        certificate: &Path,
        key: &Path,
    ) -> Result<ServerTls, super::GatewayError> {
        let failed = |path: &Path, reason: String| super::GatewayError::Tls {
            file: path.display().to_string(),
            reason,
        };
        let chain = CertificateDer::pem_file_iter(certificate)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| failed(certificate, e.to_string()))?;
        if chain.is_empty() {
            return Err(failed(certificate, "no PEM certificate in it".into()));
        }
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| failed(key, format!("no private key: {e}")))?;
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| failed(key, format!("does not go with the certificate: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// Compares by identity: two values are equal when one is a clone of the other.
impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(self.acceptor.config(), other.acceptor.config())
    }
}

impl Eq for ServerTls {}
