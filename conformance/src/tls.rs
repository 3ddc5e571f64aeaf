//! Certificates and TLS configurations for the TLS cases, made at test
//! time (never fetched): a CA, a server certificate it signs for
//! `localhost` and `127.0.0.1`, and a self-signed one nobody trusts.

use std::sync::{Arc, OnceLock};

use loop_api::ssl::SslContext;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The test PKI.
pub struct Pki {
    /// The CA's certificate (DER).
    pub ca: CertificateDer<'static>,
    /// The CA's certificate (PEM), for peers that read files.
    pub ca_pem: String,
    /// The server's certificate (DER), for `localhost` and `127.0.0.1`.
    pub server_cert: CertificateDer<'static>,
    /// Its key (PKCS#8 DER).
    pub server_key: Vec<u8>,
    /// The server's certificate and key (PEM).
    pub server_cert_pem: String,
    /// The key, PEM.
    pub server_key_pem: String,
    /// A client certificate the CA signed (for servers that ask for one).
    pub client_cert: CertificateDer<'static>,
    /// Its key.
    pub client_key: Vec<u8>,
    /// A self-signed certificate for `localhost` that no CA vouches for.
    pub untrusted_cert: CertificateDer<'static>,
    /// Its key.
    pub untrusted_key: Vec<u8>,
}

/// The test PKI, made once per process.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "conformance test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        // CPython 3.13's default context is X.509-strict: it wants the
        // authority key identifier.
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server = params.signed_by(&server_key, &issuer).expect("server cert");

        let client_key = KeyPair::generate().expect("client key");
        let mut cparams = CertificateParams::new(Vec::<String>::new()).expect("client params");
        cparams
            .distinguished_name
            .push(DnType::CommonName, "conformance test client");
        cparams.use_authority_key_identifier_extension = true;
        cparams.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        cparams.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client = cparams
            .signed_by(&client_key, &issuer)
            .expect("client cert");

        let untrusted_key = KeyPair::generate().expect("untrusted key");
        let untrusted = CertificateParams::new(vec!["localhost".to_string()])
            .expect("untrusted params")
            .self_signed(&untrusted_key)
            .expect("untrusted cert");

        Pki {
            ca: ca.der().clone(),
            ca_pem: ca.pem(),
            server_cert: server.der().clone(),
            server_key: server_key.serialize_der(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert: client.der().clone(),
            client_key: client_key.serialize_der(),
            untrusted_cert: untrusted.der().clone(),
            untrusted_key: untrusted_key.serialize_der(),
        }
    })
}

fn key(der: &[u8]) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec()))
}

/// A client that trusts the test CA.
pub fn client() -> SslContext {
    SslContext::client_trusting(&[pki().ca.clone()]).expect("client config")
}

/// A server presenting the CA-signed certificate.
pub fn server() -> SslContext {
    let p = pki();
    SslContext::server(vec![p.server_cert.clone()], key(&p.server_key)).expect("server config")
}

/// A server presenting the self-signed certificate.
pub fn untrusted_server() -> SslContext {
    let p = pki();
    SslContext::server(vec![p.untrusted_cert.clone()], key(&p.untrusted_key))
        .expect("server config")
}

/// A rustls server configuration for a test's own peer (a thread driving
/// rustls over a blocking socket).
pub fn server_config() -> Arc<rustls::ServerConfig> {
    match server() {
        SslContext::Server(c) => c,
        SslContext::Client(_) => unreachable!(),
    }
}

/// A rustls client configuration trusting the test CA.
pub fn client_config() -> Arc<rustls::ClientConfig> {
    match client() {
        SslContext::Client(c) => c,
        SslContext::Server(_) => unreachable!(),
    }
}

/// Configurations with ALPN: the client offers `protocols`, the server
/// accepts them.
pub fn with_alpn(protocols: &[&[u8]]) -> (SslContext, SslContext) {
    let alpn: Vec<Vec<u8>> = protocols.iter().map(|p| p.to_vec()).collect();
    let mut c = (*client_config()).clone();
    c.alpn_protocols = alpn.clone();
    let mut s = (*server_config()).clone();
    s.alpn_protocols = alpn;
    (
        SslContext::client_config(Arc::new(c)),
        SslContext::server_config(Arc::new(s)),
    )
}
