//! A TLS terminator in front of a plain server, as a managed service's load balancer is: a test
//! of TLS against a server that speaks none itself (tansu, the Kafka-protocol broker here).
//!
//! Each connection is accepted with TLS (rustls; with a client CA, only clients whose
//! certificate it signed get through) and its bytes copied both ways to the server's plain port.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A TLS port on 127.0.0.1 in front of a plain one; dropping it stops accepting (connections
/// already through end when either side closes).
pub struct TlsProxy {
    /// The TLS port.
    pub port: u16,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// Listens on a free loopback port (known before the server behind starts, so that it can
    /// advertise it) and forwards to `upstream` on 127.0.0.1, presenting `certificate` and `key`
    /// (PEM). With `client_ca`, a client must present a certificate that CA signed. Call from
    /// within a Tokio runtime.
    pub async fn start(
        upstream: u16,
        certificate: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> TlsProxy {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
            .and_then(|certs| certs.collect())
            .expect("the proxy's certificate");
        let key = PrivateKeyDer::from_pem_file(key).expect("the proxy's key");
        let builder = ServerConfig::builder();
        let config = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca).expect("the client CA") {
                    roots.add(cert.expect("the client CA")).expect("a CA");
                }
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .expect("a client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        }
        .with_single_cert(chain, key)
        .expect("the key goes with the certificate");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A failed handshake is the client's to report; the proxy drops it.
                    let Ok(mut client) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        TlsProxy { port, accepting }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}
