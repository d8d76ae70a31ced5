//! `meta.k8s.io/v1` Tables: what `kubectl get` asks for (`Accept:
//! application/json;as=Table;v=v1;g=meta.k8s.io`) and prints as columns.
//! The columns are the ones a real server prints for these kinds.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::resources::Resource;

/// Seconds since an RFC 3339 time written by crate::meta::rfc3339.
pub(crate) fn age_seconds(timestamp: &str) -> Option<u64> {
    let (date, time) = timestamp.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (year, month, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':').map(|p| p.parse::<i64>());
    let (hour, minute, second) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let then = days * 86_400 + hour * 3600 + minute * 60 + second;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(now.saturating_sub(then).max(0) as u64)
}

/// Ages as kubectl shows them: 45s, 12m, 3h, 2d.
fn human_age(object: &Value) -> String {
    match object["metadata"]["creationTimestamp"].as_str().and_then(age_seconds) {
        None => "<unknown>".to_string(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) if s < 172_800 => format!("{}h", s / 3600),
        Some(s) => format!("{}d", s / 86_400),
    }
}

fn column(name: &str, kind: &str, priority: u8) -> Value {
    json!({"name": name, "type": kind, "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": priority})
}

/// What `kubectl get pods` shows in STATUS.
fn pod_status(pod: &Value) -> String {
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating".to_string();
    }
    let waiting = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|c| c["state"]["waiting"]["reason"].as_str());
    waiting.or_else(|| pod["status"]["phase"].as_str()).unwrap_or("Pending").to_string()
}

fn columns_and_cells(resource: &Resource, object: &Value) -> (Vec<Value>, Vec<Value>) {
    let name = json!(object["metadata"]["name"]);
    let age = json!(human_age(object));
    match resource.plural {
        "pods" => {
            let statuses = object["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
            let total = object["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses.iter().filter(|c| c["ready"] == json!(true)).count();
            let restarts: u64 = statuses.iter().filter_map(|c| c["restartCount"].as_u64()).sum();
            let or_none = |v: &Value| json!(v.as_str().unwrap_or("<none>"));
            (
                vec![
                    column("Name", "string", 0),
                    column("Ready", "string", 0),
                    column("Status", "string", 0),
                    column("Restarts", "string", 0),
                    column("Age", "string", 0),
                    column("IP", "string", 1),
                    column("Node", "string", 1),
                ],
                vec![
                    name,
                    json!(format!("{ready}/{total}")),
                    json!(pod_status(object)),
                    json!(restarts.to_string()),
                    age,
                    or_none(&object["status"]["podIP"]),
                    or_none(&object["spec"]["nodeName"]),
                ],
            )
        }
        "namespaces" => (
            vec![column("Name", "string", 0), column("Status", "string", 0), column("Age", "string", 0)],
            vec![name, json!(object["status"]["phase"]), age],
        ),
        "nodes" => {
            let ready = object["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (
                vec![
                    column("Name", "string", 0),
                    column("Status", "string", 0),
                    column("Roles", "string", 0),
                    column("Age", "string", 0),
                    column("Version", "string", 0),
                ],
                vec![
                    name,
                    json!(if ready { "Ready" } else { "NotReady" }),
                    json!("<none>"),
                    age,
                    json!(object["status"]["nodeInfo"]["kubeletVersion"]),
                ],
            )
        }
        "configmaps" | "secrets" => {
            let count = object["data"].as_object().map_or(0, |d| d.len())
                + object["binaryData"].as_object().map_or(0, |d| d.len());
            let mut columns = vec![column("Name", "string", 0)];
            let mut cells = vec![name];
            if resource.plural == "secrets" {
                columns.push(column("Type", "string", 0));
                cells.push(json!(object["type"]));
            }
            columns.extend([column("Data", "integer", 0), column("Age", "string", 0)]);
            cells.extend([json!(count), age]);
            (columns, cells)
        }
        "events" => {
            let involved = &object["involvedObject"];
            let target = format!(
                "{}/{}",
                involved["kind"].as_str().unwrap_or_default().to_lowercase(),
                involved["name"].as_str().unwrap_or_default()
            );
            (
                vec![
                    column("Last Seen", "string", 0),
                    column("Type", "string", 0),
                    column("Reason", "string", 0),
                    column("Object", "string", 0),
                    column("Message", "string", 0),
                ],
                vec![age, json!(object["type"]), json!(object["reason"]), json!(target), json!(object["message"])],
            )
        }
        "deployments" | "replicasets" => {
            let (spec, status) = (&object["spec"], &object["status"]);
            let count = |v: &Value| json!(v.as_i64().unwrap_or(0));
            let containers = spec["template"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
            let joined =
                |field: &str| json!(containers.iter().filter_map(|c| c[field].as_str()).collect::<Vec<_>>().join(","));
            let selector = match crate::select::label_selector_string(&spec["selector"]) {
                Ok(text) if !text.is_empty() => text,
                _ => "<none>".to_string(),
            };
            let wide =
                [column("Containers", "string", 1), column("Images", "string", 1), column("Selector", "string", 1)];
            let wide_cells = [joined("name"), joined("image"), json!(selector)];
            let (mut columns, mut cells) = if resource.plural == "deployments" {
                let ready = format!(
                    "{}/{}",
                    status["readyReplicas"].as_i64().unwrap_or(0),
                    spec["replicas"].as_i64().unwrap_or(0)
                );
                (
                    vec![
                        column("Name", "string", 0),
                        column("Ready", "string", 0),
                        column("Up-to-date", "string", 0),
                        column("Available", "string", 0),
                        column("Age", "string", 0),
                    ],
                    vec![
                        name,
                        json!(ready),
                        count(&status["updatedReplicas"]),
                        count(&status["availableReplicas"]),
                        age,
                    ],
                )
            } else {
                (
                    vec![
                        column("Name", "string", 0),
                        column("Desired", "integer", 0),
                        column("Current", "integer", 0),
                        column("Ready", "integer", 0),
                        column("Age", "string", 0),
                    ],
                    vec![
                        name,
                        count(&spec["replicas"]),
                        count(&status["replicas"]),
                        count(&status["readyReplicas"]),
                        age,
                    ],
                )
            };
            columns.extend(wide);
            cells.extend(wide_cells);
            (columns, cells)
        }
        _ => (vec![column("Name", "string", 0), column("Age", "string", 0)], vec![name, age]),
    }
}

/// A Table of `objects`; each row carries the object as kubectl asked
/// (`includeObject=None|Metadata|Object`; Metadata when it did not say).
pub fn table(resource: &Resource, objects: &[Value], revision: u64, include: Option<&str>) -> Value {
    let mut columns = None;
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let (cols, cells) = columns_and_cells(resource, object);
            columns.get_or_insert(cols);
            let embedded = match include {
                Some("None") => Value::Null,
                Some("Object") => object.clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]}),
            };
            json!({"cells": cells, "object": embedded})
        })
        .collect();
    let columns = columns.unwrap_or_else(|| columns_and_cells(resource, &json!({"metadata": {}})).0);
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": revision.to_string()},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn pods_show_ready_status_and_restarts() {
        let pod = json!({
            "metadata": {"name": "epm-0", "creationTimestamp": crate::meta::now()},
            "spec": {"containers": [{"name": "agent"}], "nodeName": "node-1"},
            "status": {"phase": "Pending", "containerStatuses": [{"ready": false, "restartCount": 2, "state": {"waiting": {"reason": "ImagePullBackOff"}}}]},
        });
        let table = table(find("", "v1", "pods").unwrap(), &[pod], 7, None);
        let cells = &table["rows"][0]["cells"];
        assert_eq!(cells[1], "0/1");
        assert_eq!(cells[2], "ImagePullBackOff");
        assert_eq!(cells[3], "2");
        assert!(cells[4].as_str().unwrap().ends_with('s'));
        assert_eq!(cells[6], "node-1");
        assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn deployments_and_replica_sets_show_their_counts() {
        let template = json!({"metadata": {"labels": {"app": "gw"}}, "spec": {"containers": [{"name": "agent", "image": "merak-agent:1"}]}});
        let deployment = json!({
            "metadata": {"name": "gw", "creationTimestamp": crate::meta::now()},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "gw"}}, "template": template},
            "status": {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 1, "availableReplicas": 1},
        });
        let table = table(find("apps", "v1", "deployments").unwrap(), &[deployment], 3, None);
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["priority"] == 0)
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Ready", "Up-to-date", "Available", "Age"]);
        let cells = &table["rows"][0]["cells"];
        assert_eq!((cells[1].as_str(), cells[2].as_i64(), cells[3].as_i64()), (Some("1/2"), Some(2), Some(1)));
        assert_eq!(
            (cells[5].as_str(), cells[6].as_str(), cells[7].as_str()),
            (Some("agent"), Some("merak-agent:1"), Some("app=gw"))
        );

        let replica_set = json!({"metadata": {"name": "gw-5d4b6c7f8"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "gw", "pod-template-hash": "5d4b6c7f8"}}, "template": template}, "status": {"replicas": 1}});
        let table = super::table(find("apps", "v1", "replicasets").unwrap(), &[replica_set], 3, None);
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["priority"] == 0)
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Desired", "Current", "Ready", "Age"]);
        let cells = &table["rows"][0]["cells"];
        assert_eq!((cells[1].as_i64(), cells[2].as_i64(), cells[3].as_i64()), (Some(1), Some(1), Some(0)));
        assert_eq!(cells[7], "app=gw,pod-template-hash=5d4b6c7f8");
    }
}
