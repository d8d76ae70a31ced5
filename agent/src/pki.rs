//! A topology's certificate authority: it signs the agents' server
//! certificates and the controller's client certificate, so an agent
//! accepts exactly the clients of its own topology (see crate::tls). The
//! provider makes one per topology and keeps its key where only root reads
//! it; agents only ever get their own certificate and the CA's.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct PkiError {
    what: String,
    #[source]
    source: rcgen::Error,
}

fn failed(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError { what: what.to_string(), source }
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Identity {
    pub certificate: String,
    pub key: String,
}

/// Who a certificate is for.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// An agent: a server named crate::tls::AGENT_NAME.
    Agent,
    /// The controller: a client.
    Controller,
    /// The gateway that forwards the controller's calls to the agents (see
    /// crate::gateway): a client of the agents, as the controller is.
    Gateway,
}

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's own certificate (what both sides trust), PEM.
    pub certificate: String,
}

/// The CA's parameters: the same for a topology every time, so an
/// authority rebuilt from its stored key signs certificates that chain to
/// the certificate made when it was created.
fn authority_params(topology: &str) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed("CA parameters"))?;
    params.distinguished_name.push(DnType::CommonName, format!("merak {topology} agents CA"));
    params.distinguished_name.push(DnType::OrganizationName, "terraform-provider-merak");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

impl Authority {
    /// A new CA for `topology`, with its key (PEM) to keep.
    pub fn create(topology: &str) -> Result<(Self, String), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(failed("generating the CA key"))?;
        let params = authority_params(topology)?;
        let certificate = params.self_signed(&key).map_err(failed("self-signing the CA"))?.pem();
        let key_pem = key.serialize_pem();
        Ok((Authority { issuer: Issuer::new(params, key), certificate }, key_pem))
    }

    /// The CA of `topology` again, from its certificate and key (PEM).
    pub fn load(topology: &str, certificate: &str, key: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key).map_err(failed("reading the CA key"))?;
        Ok(Authority { issuer: Issuer::new(authority_params(topology)?, key), certificate: certificate.to_string() })
    }

    /// A fresh key and a certificate for `role`, signed by this CA.
    pub fn issue(&self, role: Role) -> Result<Identity, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(failed("generating a key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed("certificate parameters"))?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        match role {
            Role::Agent => {
                params.distinguished_name.push(DnType::CommonName, crate::tls::AGENT_NAME);
                params.subject_alt_names =
                    vec![SanType::DnsName(crate::tls::AGENT_NAME.try_into().map_err(failed("the agent's name"))?)];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Role::Controller | Role::Gateway => {
                let name = if matches!(role, Role::Gateway) { "merak gateway" } else { "merak controller" };
                params.distinguished_name.push(DnType::CommonName, name);
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        let certificate = params.signed_by(&key, &self.issuer).map_err(failed("signing a certificate"))?;
        Ok(Identity { certificate: certificate.pem(), key: key.serialize_pem() })
    }
}
