//! AutoMTLS, go-plugin's scheme: the host passes its client certificate in
//! `PLUGIN_CLIENT_CERT`; the plugin answers with a fresh self-signed server
//! certificate in the handshake line. We pin the client to exactly that
//! certificate.
//!
//! go-plugin's client certificates are ECDSA P-521, which ring cannot verify,
//! so P-521 signatures are checked with the pure-Rust `p521` crate.

use std::sync::{Arc, LazyLock};

use anyhow::Context;
use rustls::DigitallySignedStruct;
use rustls::DistinguishedName;
use rustls::SignatureScheme;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{
    CertificateDer, InvalidSignature, PrivateKeyDer, SignatureVerificationAlgorithm, UnixTime, alg_id,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

/// A server certificate for `localhost` and its key.
pub struct ServerIdentity {
    pub certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    pub fn generate() -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a TLS key")?;
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).context("certificate parameters")?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "terraform-provider-merak");
        let certificate = params.self_signed(&key).context("self-signing the TLS certificate")?;
        Ok(ServerIdentity {
            certificate: certificate.der().clone(),
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        })
    }

    /// The server's TLS configuration; clients that present a certificate must
    /// present `client` (the host's, from PLUGIN_CLIENT_CERT).
    pub fn server_config(&self, client: Option<CertificateDer<'static>>) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match client {
            Some(expected) => builder.with_client_cert_verifier(Arc::new(PinnedClient { expected })),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(vec![self.certificate.clone()], self.key.clone_key())
            .context("installing the server certificate")?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// Parses the PEM certificate from PLUGIN_CLIENT_CERT.
pub fn parse_client_certificate(pem: &str) -> anyhow::Result<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).context("PLUGIN_CLIENT_CERT is not a PEM certificate")
}

/// Accepts exactly one client certificate, byte for byte. Client auth stays
/// optional, as go-plugin's hosts expect.
#[derive(Debug)]
struct PinnedClient {
    expected: CertificateDer<'static>,
}

impl ClientCertVerifier for PinnedClient {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_ref() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General("client certificate is not the one in PLUGIN_CLIENT_CERT".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &ALGORITHMS)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ALGORITHMS)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ALGORITHMS.supported_schemes()
    }
}

/// ring's signature algorithms plus ECDSA P-521 with SHA-512. The tables must
/// be 'static; they are built once per process.
static ALGORITHMS: LazyLock<WebPkiSupportedAlgorithms> = LazyLock::new(|| {
    static P521: &dyn SignatureVerificationAlgorithm = &EcdsaP521Sha512;
    let ring = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let mut all = ring.all.to_vec();
    all.push(P521);
    let mut mapping = ring.mapping.to_vec();
    mapping.push((SignatureScheme::ECDSA_NISTP521_SHA512, std::slice::from_ref(&P521)));
    WebPkiSupportedAlgorithms { all: Vec::leak(all), mapping: Vec::leak(mapping) }
});

#[derive(Debug)]
struct EcdsaP521Sha512;

impl SignatureVerificationAlgorithm for EcdsaP521Sha512 {
    fn verify_signature(&self, public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), InvalidSignature> {
        use p521::ecdsa::signature::Verifier;
        let key = p521::ecdsa::VerifyingKey::from_sec1_bytes(public_key).map_err(|_| InvalidSignature)?;
        let signature = p521::ecdsa::Signature::from_der(signature).map_err(|_| InvalidSignature)?;
        key.verify(message, &signature).map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> rustls::pki_types::AlgorithmIdentifier {
        alg_id::ECDSA_P521
    }

    fn signature_alg_id(&self) -> rustls::pki_types::AlgorithmIdentifier {
        alg_id::ECDSA_SHA512
    }
}
