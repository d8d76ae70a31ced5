//! The resources the fake serves, and the discovery documents clients read
//! to find them (`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`).
//! Anything not listed here gets the API server's own 404.

use serde_json::{Value, json};

#[derive(Debug)]
pub struct Resource {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Subresources served, besides the object itself.
    pub subresources: &'static [&'static str],
    /// Created and answered, never stored (reviews).
    pub virtual_only: bool,
}

const CRUD: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

pub const RESOURCES: &[Resource] = &[
    core("namespaces", "namespace", "Namespace", false, &["ns"], &["status"]),
    core("nodes", "node", "Node", false, &["no"], &["status"]),
    core("pods", "pod", "Pod", true, &["po"], &["status", "log", "portforward"]),
    core("configmaps", "configmap", "ConfigMap", true, &["cm"], &[]),
    core("secrets", "secret", "Secret", true, &[], &[]),
    core("events", "event", "Event", true, &["ev"], &[]),
    core("serviceaccounts", "serviceaccount", "ServiceAccount", true, &["sa"], &[]),
    apps("deployments", "deployment", "Deployment", &["deploy"], &["status", "scale"]),
    apps("replicasets", "replicaset", "ReplicaSet", &["rs"], &["status", "scale"]),
    Resource {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
        namespaced: false,
        short_names: &[],
        subresources: &[],
        virtual_only: true,
    },
];

const fn core(
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    subresources: &'static [&'static str],
) -> Resource {
    Resource {
        group: "",
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short_names,
        subresources,
        virtual_only: false,
    }
}

/// A namespaced kind of `apps/v1`.
const fn apps(
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    short_names: &'static [&'static str],
    subresources: &'static [&'static str],
) -> Resource {
    Resource {
        group: "apps",
        version: "v1",
        plural,
        singular,
        kind,
        namespaced: true,
        short_names,
        subresources,
        virtual_only: false,
    }
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The name objects are stored under: `pods`, `deployments.apps`.
    pub fn key(&self) -> String {
        if self.group.is_empty() { self.plural.to_string() } else { format!("{}.{}", self.plural, self.group) }
    }

    fn verbs(&self) -> &'static [&'static str] {
        if self.virtual_only { &["create"] } else { CRUD }
    }

    /// The categories discovery lists (`kubectl get all` reads them).
    fn categories(&self) -> &'static [&'static str] {
        match (self.group, self.plural) {
            ("", "pods") | ("apps", "deployments") | ("apps", "replicasets") => &["all"],
            _ => &[],
        }
    }

    /// The workload kinds of apps/v1, which get a generation, defaults and
    /// a controller.
    pub fn is_workload(&self) -> bool {
        self.group == "apps" && matches!(self.plural, "deployments" | "replicasets")
    }
}

/// The resource of an object's `apiVersion` and `kind` (as an owner
/// reference names it).
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| !r.virtual_only && r.kind == kind && r.api_version() == api_version)
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn by_key(key: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.key() == key)
}

fn groups() -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&str, &str)> =
        RESOURCES.iter().filter(|r| !r.group.is_empty()).map(|r| (r.group, r.version)).collect();
    groups.dedup();
    groups
}

/// `GET /api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `GET /apis`.
pub fn group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|(group, version)| {
            let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
            json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /api/v1` or `GET /apis/<group>/<version>`; None when no such group.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Resource> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in served {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
            "shortNames": r.short_names,
        });
        if !r.categories().is_empty() {
            entry["categories"] = json!(r.categories());
        }
        resources.push(entry);
        for sub in r.subresources {
            let (kind, verbs): (&str, &[&str]) = match *sub {
                "portforward" => ("PodPortForwardOptions", &["create", "get"]),
                "log" => ("Pod", &["get"]),
                _ => (r.kind, &["get", "patch", "update"]),
            };
            let mut entry = json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs});
            if *sub == "scale" {
                // The scale subresource speaks autoscaling/v1 Scale, whatever the group.
                entry["kind"] = json!("Scale");
                entry["group"] = json!("autoscaling");
                entry["version"] = json!("v1");
            }
            resources.push(entry);
        }
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_every_resource_of_a_group_and_no_other() {
        let core = resource_list("", "v1").expect("the core group");
        let names: Vec<&str> =
            core["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"pods") && names.contains(&"pods/log") && names.contains(&"configmaps"));
        assert!(!names.contains(&"selfsubjectaccessreviews"));
        assert_eq!(resource_list("apps", "v2"), None);
        let list = group_list();
        let groups: Vec<&str> =
            list["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
        assert_eq!(groups, ["apps", "authorization.k8s.io"]);
    }

    #[test]
    fn apps_serves_deployments_and_replicasets_with_status_and_scale() {
        let apps = resource_list("apps", "v1").expect("the apps group");
        assert_eq!(apps["groupVersion"], "apps/v1");
        let entries = apps["resources"].as_array().unwrap();
        let entry = |name: &str| entries.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(entry("deployments")["shortNames"], json!(["deploy"]));
        assert_eq!(entry("replicasets")["shortNames"], json!(["rs"]));
        assert_eq!(entry("deployments")["categories"], json!(["all"]));
        assert_eq!(entry("deployments/status")["kind"], "Deployment");
        assert_eq!(
            (entry("replicasets/scale")["kind"].as_str(), entry("replicasets/scale")["group"].as_str()),
            (Some("Scale"), Some("autoscaling"))
        );
        assert_eq!(by_kind("apps/v1", "ReplicaSet").unwrap().key(), "replicasets.apps");
        assert!(by_kind("v1", "ReplicaSet").is_none());
    }

    #[test]
    fn keys_name_the_group() {
        assert_eq!(find("", "v1", "pods").unwrap().key(), "pods");
        assert_eq!(by_key("selfsubjectaccessreviews.authorization.k8s.io").unwrap().kind, "SelfSubjectAccessReview");
    }
}
