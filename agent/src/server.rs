//! The agent's gRPC service: reports the EPM and converges its underlay.

use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;

use merak_proto::agent::agent_server::Agent;
use merak_proto::agent::{
    ApplyReply, EpmInfo, GetInfoRequest, HealthReply, HealthRequest, Interface, ProbeNetemReply, ProbeNetemRequest,
    RouterGoal, SuperviseGoal, SupervisedReply, SupervisedRequest, SwitchGoal, UnderlayGoal,
};
use tonic::{Request, Response, Status};

use crate::netdev::{self, NetdevError, Netlink};
use crate::supervisor::Supervisor;

/// Where an agent's netlink connection into its EPM comes from.
#[derive(Clone)]
pub enum EpmNamespace {
    /// One connection for the agent's life (a standalone agent, or a test).
    Held(Netlink),
    /// A connection opened per request inside the namespace mounted at this
    /// path: a host of many EPMs keeps one descriptor per EPM (its socket),
    /// since the open-file limit cannot be raised everywhere (20,000 on some
    /// hosts), and never keeps a deleted EPM's namespace alive.
    At(std::path::PathBuf),
}

impl EpmNamespace {
    async fn netlink(&self) -> Result<Netlink, Status> {
        match self {
            EpmNamespace::Held(netlink) => Ok(netlink.clone()),
            EpmNamespace::At(path) => crate::netns::open_path(path)
                .await
                .map(|(netlink, _)| netlink)
                .map_err(|e| Status::unavailable(e.to_string())),
        }
    }
}

pub struct AgentService {
    epm: String,
    namespace: EpmNamespace,
    supervisor: Arc<Supervisor>,
    /// Whether the kernel has netem, once probed (it does not change).
    netem: tokio::sync::OnceCell<Result<(), String>>,
}

impl AgentService {
    pub fn new(epm: String, netlink: Netlink) -> Self {
        Self::in_namespace(epm, EpmNamespace::Held(netlink))
    }

    pub fn in_namespace(epm: String, namespace: EpmNamespace) -> Self {
        let netns = match &namespace {
            EpmNamespace::Held(_) => None,
            EpmNamespace::At(path) => Some(path.clone()),
        };
        AgentService {
            epm,
            namespace,
            supervisor: Arc::new(Supervisor::new(netns)),
            netem: tokio::sync::OnceCell::new(),
        }
    }

    /// The processes this agent supervises (to stop them when it stops).
    pub fn supervisor(&self) -> Arc<Supervisor> {
        self.supervisor.clone()
    }

    async fn converge(&self, goal: &UnderlayGoal) -> Result<Vec<String>, Status> {
        let (ip, prefix_len) = parse_cidr(&goal.address)
            .ok_or_else(|| Status::invalid_argument(format!("bad address {:?}", goal.address)))?;
        let mac =
            netdev::parse_mac(&goal.mac).ok_or_else(|| Status::invalid_argument(format!("bad MAC {:?}", goal.mac)))?;
        let mut actions = Vec::new();
        let netlink = self.namespace.netlink().await?;

        if let Some(lo) = netlink.link("lo").await.map_err(internal)?
            && !lo.up
        {
            netlink.set_link(lo.index, None, None).await.map_err(internal)?;
            actions.push("lo up".to_string());
        }

        if let Some(tunnel) = &goal.tunnel {
            let (_, action) =
                crate::underlay::ensure_tunnel(&netlink, &goal.interface, tunnel).await.map_err(overlay_status)?;
            actions.extend(action);
        }
        let link = netlink
            .link(&goal.interface)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::failed_precondition(format!("interface {} does not exist", goal.interface)))?;
        let mac_differs = link.mac != Some(mac);
        let mut up = link.up;
        if mac_differs || (!up && !goal.held_down) {
            netlink.set_link(link.index, None, mac_differs.then_some(mac)).await.map_err(internal)?;
            if mac_differs {
                actions.push(format!("{} mac {}", goal.interface, goal.mac));
            }
            if !up {
                actions.push(format!("{} up", goal.interface));
            }
            up = true;
        }
        if goal.held_down && up {
            netlink.set_link_down(link.index).await.map_err(internal)?;
            actions.push(format!("{} held down", goal.interface));
        }

        // A routed fabric: the way out is the edge switch's port, for
        // everything or (a pod, which keeps its own default route) for the
        // data plane. A route over a NIC held down is refused; it comes
        // with the NIC.
        if !goal.gateway.is_empty() && !goal.held_down {
            let gateway: std::net::Ipv4Addr = goal
                .gateway
                .parse()
                .map_err(|_| Status::invalid_argument(format!("bad gateway {:?}", goal.gateway)))?;
            let (destination, prefix_len) = match goal.routed_prefix.as_str() {
                "" => (std::net::Ipv4Addr::UNSPECIFIED, 0),
                prefix => crate::overlay::parse_cidr(prefix).map_err(overlay_status)?,
            };
            let hop = merak_netdev::routes::Hop { index: link.index, gateway: Some(gateway) };
            let routes = netlink.routes_v4().await.map_err(internal)?;
            let present =
                routes.iter().any(|r| r.destination == destination && r.prefix_len == prefix_len && r.hops == [hop]);
            if !present {
                netlink.replace_route(destination, prefix_len, &[hop]).await.map_err(internal)?;
                let routed =
                    if prefix_len == 0 { "default".to_string() } else { format!("{destination}/{prefix_len}") };
                actions.push(format!("{routed} via {gateway} dev {}", goal.interface));
            }
        }

        if let Some(shaping) = &goal.shaping {
            let shaped = crate::shaping::apply(&netlink, &[(goal.interface.as_str(), shaping)]).await;
            actions.extend(shaped.map_err(overlay_status)?);
        }

        // A system under test may have moved the address onto a device of
        // its own that took the NIC as a port (an Open vSwitch bridge does,
        // for its userspace tunnels): the EPM keeps its address, so leave it.
        for other in netlink.links().await.map_err(internal)?.iter().filter(|l| l.index != link.index && l.up) {
            if netlink.addresses(other.index).await.map_err(internal)?.contains(&(ip, prefix_len)) {
                return Ok(actions);
            }
        }
        let present = netlink.addresses(link.index).await.map_err(internal)?;
        for (other, other_len) in present.iter().filter(|(a, _)| a.is_ipv4()) {
            if (*other, *other_len) != (ip, prefix_len) {
                netlink.delete_address(link.index, *other, *other_len).await.map_err(internal)?;
                actions.push(format!("{} del {other}/{other_len}", goal.interface));
            }
        }
        if !present.contains(&(ip, prefix_len)) {
            netlink.add_address(link.index, ip, prefix_len).await.map_err(internal)?;
            actions.push(format!("{} add {}", goal.interface, goal.address));
        }
        Ok(actions)
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthReply>, Status> {
        Ok(Response::new(HealthReply {
            epm: self.epm.clone(),
            pid: std::process::id(),
            build_id: crate::build::current().to_string(),
        }))
    }

    async fn get_info(&self, _: Request<GetInfoRequest>) -> Result<Response<EpmInfo>, Status> {
        let netlink = self.namespace.netlink().await?;
        let links = netlink.links().await.map_err(internal)?;
        let roots = netlink.root_qdiscs().await.map_err(internal)?;
        let mut interfaces = Vec::with_capacity(links.len());
        for link in links {
            let addresses = netlink
                .addresses(link.index)
                .await
                .map_err(internal)?
                .into_iter()
                .map(|(ip, len)| format!("{ip}/{len}"))
                .collect();
            interfaces.push(Interface {
                name: link.name,
                index: link.index,
                mac: link.mac.as_ref().map(netdev::format_mac).unwrap_or_default(),
                up: link.up,
                mtu: link.mtu,
                addresses,
                controller: link.controller.unwrap_or(0),
                tunnel_remote: link.vxlan.and_then(|v| v.remote).map(|ip| ip.to_string()).unwrap_or_default(),
                root_qdisc: roots.get(&link.index).map(crate::shaping::report),
            });
        }
        Ok(Response::new(EpmInfo { epm: self.epm.clone(), interfaces }))
    }

    async fn apply_underlay(&self, request: Request<UnderlayGoal>) -> Result<Response<ApplyReply>, Status> {
        let goal = request.into_inner();
        let actions = self.converge(&goal).await?;
        if !actions.is_empty() {
            tracing::info!(epm = %self.epm, ?actions, "underlay converged");
        }
        Ok(Response::new(ApplyReply { changed: !actions.is_empty(), actions }))
    }

    async fn apply_switch(&self, request: Request<SwitchGoal>) -> Result<Response<ApplyReply>, Status> {
        let goal = request.into_inner();
        crate::goal::switch(&goal).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let netlink = self.namespace.netlink().await?;
        let actions = crate::underlay::apply_switch(&netlink, &goal).await.map_err(overlay_status)?;
        if !actions.is_empty() {
            tracing::info!(vswitch = %self.epm, ?actions, "vswitch converged");
        }
        Ok(Response::new(ApplyReply { changed: !actions.is_empty(), actions }))
    }

    async fn apply_router(&self, request: Request<RouterGoal>) -> Result<Response<ApplyReply>, Status> {
        let goal = request.into_inner();
        // A router's settings are its namespace's, set from the agent's own
        // threads: the agent must run in it (a pod's agent does).
        let EpmNamespace::Held(netlink) = &self.namespace else {
            return Err(Status::failed_precondition("a router's agent runs in the router's own namespace"));
        };
        let actions = crate::router::apply_router(netlink, &goal).await.map_err(overlay_status)?;
        if !actions.is_empty() {
            tracing::info!(router = %self.epm, ?actions, "router converged");
        }
        Ok(Response::new(ApplyReply { changed: !actions.is_empty(), actions }))
    }

    async fn probe_netem(&self, _: Request<ProbeNetemRequest>) -> Result<Response<ProbeNetemReply>, Status> {
        let probed = self
            .netem
            .get_or_try_init(|| async {
                let netlink = self.namespace.netlink().await?;
                crate::shaping::probe_netem(&netlink).await.map_err(overlay_status)
            })
            .await?;
        Ok(Response::new(ProbeNetemReply {
            available: probed.is_ok(),
            why: probed.as_ref().err().cloned().unwrap_or_default(),
        }))
    }

    async fn supervise(&self, request: Request<SuperviseGoal>) -> Result<Response<SupervisedReply>, Status> {
        let processes = self
            .supervisor
            .apply(request.into_inner().processes)
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(SupervisedReply { processes }))
    }

    async fn supervised(&self, _: Request<SupervisedRequest>) -> Result<Response<SupervisedReply>, Status> {
        Ok(Response::new(SupervisedReply { processes: self.supervisor.status().await }))
    }
}

fn internal(error: NetdevError) -> Status {
    Status::internal(error.to_string())
}

fn overlay_status(error: crate::error::OverlayError) -> Status {
    match error {
        crate::error::OverlayError::Invalid(message) => Status::invalid_argument(message),
        other => Status::internal(other.to_string()),
    }
}

fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = text.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

/// Pings one agent runs at once.
const PINGS_IN_FLIGHT: usize = 2;

/// The agent's tenant-network service.
pub struct OverlayService {
    /// The EPM served (for logs: one process may host many).
    epm: String,
    namespace: EpmNamespace,
    /// One change at a time: bridges for new EVM ports are chosen from a
    /// dump of the router namespace, and two batches at once would both
    /// count the same free ports.
    changing: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl OverlayService {
    pub fn new(epm: String, netlink: Netlink) -> Self {
        Self::in_namespace(epm, EpmNamespace::Held(netlink))
    }

    pub fn in_namespace(epm: String, namespace: EpmNamespace) -> Self {
        OverlayService { epm, namespace, changing: std::sync::Arc::default() }
    }

    /// Runs a change to its end, one at a time, in a task of its own: a
    /// client that goes away (a provider killed mid-apply) cancels only its
    /// wait for the answer, never the change half-way through, which would
    /// leave half-built devices behind.
    async fn change<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> Result<T, Status> {
        let changing = std::sync::Arc::clone(&self.changing).lock_owned().await;
        tokio::spawn(async move {
            let _changing = changing;
            work.await
        })
        .await
        .map_err(|e| Status::internal(format!("the change failed: {e}")))
    }
}

#[tonic::async_trait]
impl merak_proto::agent::overlay_server::Overlay for OverlayService {
    async fn apply_overlay(
        &self,
        request: Request<merak_proto::agent::OverlayGoal>,
    ) -> Result<Response<ApplyReply>, Status> {
        let goal = request.into_inner();
        let started = std::time::Instant::now();
        let netlink = self.namespace.netlink().await?;
        crate::goal::overlay(&goal).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let actions = self
            .change(async move { crate::overlay::apply(&netlink, &goal).await })
            .await?
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::debug!(epm = %self.epm, elapsed = ?started.elapsed(), "overlay applied");
        if !actions.is_empty() {
            tracing::info!(epm = %self.epm, ?actions, "overlay converged");
        }
        Ok(Response::new(ApplyReply { changed: !actions.is_empty(), actions }))
    }

    async fn apply_evms(
        &self,
        request: Request<merak_proto::agent::EvmBatch>,
    ) -> Result<Response<merak_proto::agent::EvmReply>, Status> {
        let batch = request.into_inner();
        crate::goal::batch(&batch).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let started = std::time::Instant::now();
        // The overlay's MTU, read once per batch: the data-plane NIC's less
        // the VXLAN header (its subnet's VXLAN device has exactly that).
        let mtu = match batch.create.is_empty() {
            true => None,
            false => {
                let netlink = self.namespace.netlink().await?;
                netlink
                    .link(crate::underlay::DATA_NIC)
                    .await
                    .map_err(internal)?
                    .map(|nic| nic.mtu.saturating_sub(crate::netdev::VXLAN_OVERHEAD))
            }
        };
        let reply = self.change(async move { crate::evm::apply(&batch, mtu).await }).await?;
        tracing::info!(
            epm = %self.epm,
            created = reply.created,
            existing = reply.existing,
            deleted = reply.deleted,
            failed = reply.failures.len(),
            elapsed = ?started.elapsed(),
            "EVM batch"
        );
        Ok(Response::new(reply))
    }

    async fn whole_evms(
        &self,
        request: Request<merak_proto::agent::EvmBatch>,
    ) -> Result<Response<merak_proto::agent::WholeEvmsReply>, Status> {
        let batch = request.into_inner();
        crate::goal::batch(&batch).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let specs: Vec<&merak_proto::agent::EvmSpec> =
            batch.create.iter().filter(|spec| crate::netns::exists(&spec.namespace)).collect();
        let namespaces = crate::evm::whole(&specs).await.into_iter().collect();
        Ok(Response::new(merak_proto::agent::WholeEvmsReply { namespaces }))
    }

    async fn apply_firewalls(
        &self,
        request: Request<merak_proto::agent::FirewallGoal>,
    ) -> Result<Response<ApplyReply>, Status> {
        let goal = request.into_inner();
        crate::goal::firewalls(&goal).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(missing) = goal.vpcs.iter().find(|vpc| !crate::netns::exists(&vpc.namespace)) {
            return Err(Status::failed_precondition(format!("{} is not made yet", missing.namespace)));
        }
        let started = std::time::Instant::now();
        let actions = self
            .change(async move {
                let mut actions = Vec::with_capacity(goal.vpcs.len());
                for vpc in goal.vpcs {
                    let Some(firewall) = vpc.firewall else { continue };
                    crate::firewall::apply(&vpc.namespace, &firewall).await?;
                    actions.push(format!("{}: security groups replaced", vpc.namespace));
                }
                Ok::<_, crate::error::OverlayError>(actions)
            })
            .await?
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::debug!(epm = %self.epm, elapsed = ?started.elapsed(), "firewalls applied");
        Ok(Response::new(ApplyReply { changed: !actions.is_empty(), actions }))
    }

    async fn ping(
        &self,
        request: Request<merak_proto::agent::PingRequest>,
    ) -> Result<Response<merak_proto::agent::PingReply>, Status> {
        let request = request.into_inner();
        crate::goal::ping(&request).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let timeout = std::time::Duration::from_millis(u64::from(request.timeout_ms.clamp(10, 10_000)));
        let payload = if request.full_size {
            crate::ping::Payload::FullSize
        } else {
            crate::ping::Payload::Bytes(request.payload_bytes)
        };
        // A few at a time: every first ping of a pair floods an ARP request
        // to all EPMs of the subnet, and a burst of hundreds overflows the
        // kernel's per-CPU backlog, dropping packets that then look like
        // broken connectivity.
        let probes = request.probes.into_iter().map(|probe| {
            tokio::task::spawn_blocking(move || {
                let to = probe.to.parse().map_err(|_| format!("bad address {:?}", probe.to))?;
                let started = std::time::Instant::now();
                let result = crate::ping::ping(&probe.from_namespace, to, payload, timeout).map_err(|e| format!("{}: {e}", probe.from_namespace));
                tracing::debug!(from = %probe.from_namespace, to = %probe.to, ?result, elapsed = ?started.elapsed(), "ping");
                result
            })
        });
        let results: Vec<_> = futures::stream::iter(probes).buffered(PINGS_IN_FLIGHT).collect().await;
        let mut reply = merak_proto::agent::PingReply::default();
        for result in results {
            let (reached, error) = match result {
                Ok(Ok(reached)) => (reached, String::new()),
                // One EVM gone (drift) must not hide the other probes' results.
                Ok(Err(error)) => (false, error),
                Err(e) => return Err(Status::internal(e.to_string())),
            };
            reply.reached.push(reached);
            reply.errors.push(error);
        }
        Ok(Response::new(reply))
    }
}
