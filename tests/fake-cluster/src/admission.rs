//! Admission, as the API server does it before an object is stored:
//! names checked (DNS subdomains, generateName), defaults filled in for
//! pods and the workloads that make them, updates that may not change
//! what they change refused, resourceVersion conflicts, and the size
//! limit on ConfigMap and Secret data.

use serde_json::{Value, json};

use crate::meta;
use crate::resources::Resource;
use crate::store::ApiError;

/// ConfigMaps and Secrets hold at most 1 MiB of data (etcd's object limit).
pub(crate) const MAX_DATA: usize = 1024 * 1024;

pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && name.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
}

pub(crate) fn invalid(kind: &str, name: &str, field: &str, detail: &str) -> ApiError {
    ApiError::new(422, "Invalid", format!("{kind} \"{name}\" is invalid: {field}: {detail}"))
}

pub(crate) fn data_size(object: &Value) -> usize {
    ["data", "binaryData", "stringData"]
        .iter()
        .filter_map(|f| object[f].as_object())
        .flat_map(|m| m.iter())
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum()
}

/// `metadata.generateName` made a name: the prefix, cut to leave room,
/// and five random characters (the API server's SimpleNameGenerator).
pub(crate) fn generate_name(prefix: &str) -> String {
    const MAX_PREFIX: usize = 63 - 5;
    let cut = prefix.char_indices().nth(MAX_PREFIX).map_or(prefix.len(), |(i, _)| i);
    format!("{}{}", &prefix[..cut], meta::name_suffix())
}

pub(crate) fn default_pod(pod: &mut Value, name: &str) -> Result<(), ApiError> {
    default_pod_spec(&mut pod["spec"], "Pod", name, "spec")?;
    let spec = &mut pod["spec"];
    for (field, value) in
        [("serviceAccountName", json!("default")), ("enableServiceLinks", json!(true)), ("priority", json!(0))]
    {
        if spec[field].is_null() {
            spec[field] = value;
        }
    }
    pod["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
    Ok(())
}

/// The defaults of a pod spec, in a pod or a pod template (the service
/// account, service links and priority are the pod's, from admission).
pub(crate) fn default_pod_spec(spec: &mut Value, kind: &str, name: &str, path: &str) -> Result<(), ApiError> {
    let containers = spec["containers"]
        .as_array_mut()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| invalid(kind, name, &format!("{path}.containers"), "Required value"))?;
    for (index, container) in containers.iter_mut().enumerate() {
        let image = container["image"].as_str().unwrap_or_default().to_string();
        if image.is_empty() {
            return Err(invalid(kind, name, &format!("{path}.containers[{index}].image"), "Required value"));
        }
        if container["imagePullPolicy"].is_null() {
            let latest = !image.rsplit('/').next().unwrap_or_default().contains(':') || image.ends_with(":latest");
            container["imagePullPolicy"] = json!(if latest { "Always" } else { "IfNotPresent" });
        }
        if container["terminationMessagePath"].is_null() {
            container["terminationMessagePath"] = json!("/dev/termination-log");
            container["terminationMessagePolicy"] = json!("File");
        }
    }
    for (field, value) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
    ] {
        if spec[field].is_null() {
            spec[field] = value;
        }
    }
    Ok(())
}

/// What the API server's defaulting and validation do to a Deployment or a
/// ReplicaSet (apps/v1) on every write.
pub(crate) fn default_workload(resource: &Resource, object: &mut Value, name: &str) -> Result<(), ApiError> {
    let kind = resource.kind;
    let spec = &mut object["spec"];
    if !spec.is_object() {
        *spec = json!({});
    }
    if spec["replicas"].is_null() {
        spec["replicas"] = json!(1);
    }
    match spec["replicas"].as_i64() {
        Some(n) if n >= 0 && n <= i64::from(i32::MAX) => {}
        Some(n) => {
            return Err(invalid(
                kind,
                name,
                "spec.replicas",
                &format!("Invalid value: {n}: must be greater than or equal to 0"),
            ));
        }
        None => {
            return Err(ApiError::bad_request(format!(
                "{kind} in version \"v1\" cannot be handled as a {kind}: spec.replicas: expected an integer"
            )));
        }
    }
    if kind == "Deployment" {
        if spec["strategy"]["type"].is_null() {
            spec["strategy"]["type"] = json!("RollingUpdate");
        }
        match spec["strategy"]["type"].as_str() {
            Some("RollingUpdate") => {
                for field in ["maxUnavailable", "maxSurge"] {
                    if spec["strategy"]["rollingUpdate"][field].is_null() {
                        spec["strategy"]["rollingUpdate"][field] = json!("25%");
                    }
                }
            }
            Some("Recreate") => {
                if !spec["strategy"]["rollingUpdate"].is_null() {
                    return Err(invalid(
                        kind,
                        name,
                        "spec.strategy.rollingUpdate",
                        "Forbidden: may not be specified when strategy `type` is 'Recreate'",
                    ));
                }
            }
            other => {
                let other = other.map_or_else(|| spec["strategy"]["type"].to_string(), str::to_string);
                return Err(invalid(
                    kind,
                    name,
                    "spec.strategy.type",
                    &format!("Unsupported value: \"{other}\": supported values: \"Recreate\", \"RollingUpdate\""),
                ));
            }
        }
        if spec["revisionHistoryLimit"].is_null() {
            spec["revisionHistoryLimit"] = json!(10);
        }
        if spec["progressDeadlineSeconds"].is_null() {
            spec["progressDeadlineSeconds"] = json!(600);
        }
    }
    if spec["selector"].is_null() {
        return Err(invalid(kind, name, "spec.selector", "Required value"));
    }
    let selector = crate::select::label_selector_string(&spec["selector"])
        .map_err(|e| invalid(kind, name, "spec.selector", &e))?;
    if selector.is_empty() {
        return Err(invalid(
            kind,
            name,
            "spec.selector",
            &format!("Invalid value: {}: empty selector is invalid for {}", spec["selector"], kind.to_lowercase()),
        ));
    }
    let labels = &spec["template"]["metadata"]["labels"];
    let matches =
        crate::select::from_label_selector(&spec["selector"]).is_some_and(|s| s.matches_labels(&spec["template"]));
    if !matches {
        return Err(invalid(
            kind,
            name,
            "spec.template.metadata.labels",
            &format!("Invalid value: {labels}: `selector` does not match template `labels`"),
        ));
    }
    default_pod_spec(&mut spec["template"]["spec"], kind, name, "spec.template.spec")?;
    let template = &mut spec["template"]["spec"];
    if template["securityContext"].is_null() {
        template["securityContext"] = json!({});
    }
    if let Some(policy) = template["restartPolicy"].as_str().filter(|p| *p != "Always") {
        return Err(invalid(
            kind,
            name,
            "spec.template.spec.restartPolicy",
            &format!("Unsupported value: \"{policy}\": supported values: \"Always\""),
        ));
    }
    Ok(())
}

/// What a write of the object itself (not its status) may change of a
/// Deployment or ReplicaSet, and the generation it then has: the old one,
/// or one more when the spec changed.
pub(crate) fn admit_update(resource: &Resource, name: &str, old: &Value, new: &mut Value) -> Result<(), ApiError> {
    if !resource.is_workload() {
        return Ok(());
    }
    if new["spec"]["selector"] != old["spec"]["selector"] {
        return Err(invalid(
            resource.kind,
            name,
            "spec.selector",
            &format!("Invalid value: {}: field is immutable", new["spec"]["selector"]),
        ));
    }
    default_workload(resource, new, name)?;
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    new["metadata"]["generation"] = json!(if new["spec"] != old["spec"] { generation + 1 } else { generation });
    Ok(())
}

/// Keeps a metadata field the server owns as it was (absent if it was).
pub(crate) fn keep_metadata(object: &mut Value, old: &Value, field: &str) {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    if let Value::Object(metadata) = &mut object["metadata"] {
        match old["metadata"].get(field) {
            Some(value) => metadata.insert(field.to_string(), value.clone()),
            None => metadata.remove(field),
        };
    }
}

pub(crate) fn check_revision(resource: &Resource, name: &str, given: &Value, current: &Value) -> Result<(), ApiError> {
    let given = given["metadata"]["resourceVersion"].as_str().unwrap_or_default();
    if !given.is_empty() && given != current["metadata"]["resourceVersion"].as_str().unwrap_or_default() {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                resource.key()
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_data_size(resource: &Resource, name: &str, object: &Value) -> Result<(), ApiError> {
    if matches!(resource.plural, "configmaps" | "secrets") && data_size(object) > MAX_DATA {
        return Err(invalid(resource.kind, name, "[]", &format!("Too long: must have at most {MAX_DATA} bytes")));
    }
    Ok(())
}
