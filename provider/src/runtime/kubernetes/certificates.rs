//! The topology's certificates: a CA per topology in a Secret, the agents'
//! and the gateway's identities signed by it, and the controller's TLS
//! connector to them (kept per topology).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use merak_agent::pki::{Authority, Role};
use tokio_rustls::TlsConnector;

use super::cluster::{DELETE, POST, is_conflict, retrying};
use super::objects::{AGENT_TLS, Access, CONTROLLER_TLS, GATEWAY_TLS, namespace_name};
use super::{KubernetesRuntime, api, objects};
use crate::runtime::RuntimeError;

impl KubernetesRuntime {
    /// The topology's certificates: made once, kept in two Secrets (the
    /// agents mount one; the CA's key and the controller's identity are in
    /// the other, which only the provider reads). Returns the connector.
    pub(super) async fn ensure_tls(&self, topology: &str) -> Result<TlsConnector, RuntimeError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace_name(topology));
        if retrying("reading a secret", || secrets.get_opt(CONTROLLER_TLS))
            .await
            .map_err(|e| api("reading the topology's certificates", e))?
            .is_none()
        {
            let pki = |e: merak_agent::pki::PkiError| {
                RuntimeError::Unavailable(format!("making the certificates of {topology}: {e}"))
            };
            let (authority, authority_key) = Authority::create(topology).map_err(pki)?;
            let agent = authority.issue(Role::Agent).map_err(pki)?;
            let controller = authority.issue(Role::Controller).map_err(pki)?;
            let agent_secret = objects::tls_secret(
                topology,
                AGENT_TLS,
                &[("ca.pem", &authority.certificate), ("agent.pem", &agent.certificate), ("agent.key", &agent.key)],
            );
            let controller_secret = objects::tls_secret(
                topology,
                CONTROLLER_TLS,
                &[
                    ("ca.pem", &authority.certificate),
                    ("ca.key", &authority_key),
                    ("controller.pem", &controller.certificate),
                    ("controller.key", &controller.key),
                ],
            );
            // The agents' first: the controller's completes the set. A
            // leftover agents' Secret (a kill in between) is replaced.
            for secret in [agent_secret, controller_secret] {
                let secret = secret.map_err(RuntimeError::Unavailable)?;
                let name = secret.metadata.name.clone().unwrap_or_default();
                match retrying("creating a secret", || secrets.create(&POST, &secret)).await {
                    Ok(_) => {}
                    Err(e) if is_conflict(&e) && name == AGENT_TLS => {
                        let _ = retrying("deleting a secret", || secrets.delete(&name, &DELETE)).await;
                        retrying("creating a secret", || secrets.create(&POST, &secret))
                            .await
                            .map_err(|e| api("storing the certificates", e))?;
                    }
                    Err(e) => return Err(api("storing the certificates", e)),
                }
            }
        }
        if self.access == Access::PortForward
            && retrying("reading a secret", || secrets.get_opt(GATEWAY_TLS))
                .await
                .map_err(|e| api("reading the gateway's certificates", e))?
                .is_none()
        {
            self.make_gateway_identity(topology, &secrets).await?;
        }
        self.connector(topology).await
    }

    /// The gateway's Secret: a server identity as an agent's (the provider
    /// checks it as one) and a client identity the agents accept, both
    /// issued by the topology's CA, whose key stays in the provider's Secret.
    pub(super) async fn make_gateway_identity(
        &self,
        topology: &str,
        secrets: &Api<Secret>,
    ) -> Result<(), RuntimeError> {
        let data = self.controller_files(topology).await?;
        let text = |name: &str| {
            data.get(name)
                .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
                .ok_or_else(|| RuntimeError::Unavailable(format!("secret {CONTROLLER_TLS} has no {name}")))
        };
        let pki = |e: merak_agent::pki::PkiError| {
            RuntimeError::Unavailable(format!("making the gateway's certificates of {topology}: {e}"))
        };
        let authority = Authority::load(topology, &text("ca.pem")?, &text("ca.key")?).map_err(pki)?;
        let server = authority.issue(Role::Agent).map_err(pki)?;
        let client = authority.issue(Role::Gateway).map_err(pki)?;
        let secret = objects::tls_secret(
            topology,
            GATEWAY_TLS,
            &[
                ("ca.pem", &authority.certificate),
                ("agent.pem", &server.certificate),
                ("agent.key", &server.key),
                ("gateway.pem", &client.certificate),
                ("gateway.key", &client.key),
            ],
        )
        .map_err(RuntimeError::Unavailable)?;
        match retrying("creating a secret", || secrets.create(&POST, &secret)).await {
            // Made meanwhile by another run: the same CA signed it.
            Err(e) if is_conflict(&e) => Ok(()),
            other => other.map(drop).map_err(|e| api("storing the gateway's certificates", e)),
        }
    }

    pub(super) async fn controller_files(
        &self,
        topology: &str,
    ) -> Result<BTreeMap<String, k8s_openapi::ByteString>, RuntimeError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace_name(topology));
        let secret = retrying("reading a secret", || secrets.get(CONTROLLER_TLS))
            .await
            .map_err(|e| api(format!("reading secret {}/{CONTROLLER_TLS}", namespace_name(topology)), e))?;
        Ok(secret.data.unwrap_or_default())
    }

    pub(super) async fn connector(&self, topology: &str) -> Result<TlsConnector, RuntimeError> {
        if let Some(connector) = self.connectors.lock().ok().and_then(|c| c.get(topology).cloned()) {
            return Ok(connector);
        }
        let data = self.controller_files(topology).await?;
        let file = |name: &str| {
            data.get(name)
                .map(|bytes| bytes.0.clone())
                .ok_or_else(|| RuntimeError::Unavailable(format!("secret {CONTROLLER_TLS} has no {name}")))
        };
        let connector =
            merak_agent::tls::connector(&file("ca.pem")?, &file("controller.pem")?, &file("controller.key")?)
                .map_err(|e| RuntimeError::Unavailable(format!("the controller's certificate of {topology}: {e}")))?;
        if let Ok(mut connectors) = self.connectors.lock() {
            connectors.insert(topology.to_string(), connector.clone());
        }
        Ok(connector)
    }
}
