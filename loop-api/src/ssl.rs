//! TLS configurations, as asyncio's `ssl=` arguments take them (Python's
//! `ssl.SSLContext`): a rustls client or server configuration.
//!
//! Build one with rustls's own types ([`SslContext::client_config`],
//! [`SslContext::server_config`]), or with the helpers for the common
//! cases: a client that trusts the web PKI roots ([`SslContext::client`]),
//! or a given CA ([`SslContext::client_trusting`]); a server from PEM
//! files ([`SslContext::server_from_pem_files`]) or from DER values. ALPN
//! and every other TLS setting live in the rustls configuration.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::exceptions::{Error, Result};

/// A TLS configuration: the client or the server side.
#[derive(Clone)]
pub enum SslContext {
    /// Connects to servers (`create_connection(ssl=...)`, `start_tls` on
    /// the client side).
    Client(Arc<ClientConfig>),
    /// Serves clients (`create_server(ssl=...)`, `start_tls(server_side=True)`).
    Server(Arc<ServerConfig>),
}

impl fmt::Debug for SslContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslContext::Client(_) => "SslContext::Client",
            SslContext::Server(_) => "SslContext::Server",
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(e: rustls::Error) -> Error {
    Error::Ssl(e.to_string())
}

impl SslContext {
    /// A client that verifies servers against the web PKI roots
    /// (`webpki-roots`), as `ssl.create_default_context()` does against the
    /// system's.
    pub fn client() -> Result<SslContext> {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Self::client_with_roots(roots)
    }

    /// A client that trusts exactly the CA certificates (DER) given.
    pub fn client_trusting(cas: &[CertificateDer<'static>]) -> Result<SslContext> {
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca.clone()).map_err(tls_error)?;
        }
        Self::client_with_roots(roots)
    }

    /// A client that trusts the CA certificates of a PEM file.
    pub fn client_trusting_pem_file(path: impl AsRef<Path>) -> Result<SslContext> {
        let cas = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| Error::Ssl(format!("reading CA certificates: {e}")))?;
        Self::client_trusting(&cas)
    }

    fn client_with_roots(roots: RootCertStore) -> Result<SslContext> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(SslContext::Client(Arc::new(config)))
    }

    /// A client from a rustls configuration built by hand.
    pub fn client_config(config: Arc<ClientConfig>) -> SslContext {
        SslContext::Client(config)
    }

    /// A server presenting `chain` (leaf first, DER) with `key`.
    pub fn server(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<SslContext> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(tls_error)?;
        Ok(SslContext::Server(Arc::new(config)))
    }

    /// A server from PEM files: the certificate chain and the private key
    /// (asyncio's `ctx.load_cert_chain(certfile, keyfile)`).
    pub fn server_from_pem_files(
        certfile: impl AsRef<Path>,
        keyfile: impl AsRef<Path>,
    ) -> Result<SslContext> {
        let chain = CertificateDer::pem_file_iter(certfile)
            .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| Error::Ssl(format!("reading the certificate chain: {e}")))?;
        let key = PrivateKeyDer::from_pem_file(keyfile)
            .map_err(|e| Error::Ssl(format!("reading the private key: {e}")))?;
        Self::server(chain, key)
    }

    /// A server from a rustls configuration built by hand.
    pub fn server_config(config: Arc<ServerConfig>) -> SslContext {
        SslContext::Server(config)
    }

    /// True for a server configuration.
    pub fn is_server(&self) -> bool {
        matches!(self, SslContext::Server(_))
    }
}
