//! The API server's HTTP surface: routing of `/api` and `/apis` paths,
//! the verbs (get, list, watch, create, update, patch, delete), Status
//! errors, Tables for kubectl, bearer-token authentication, RBAC denials
//! configured for tests, and injected faults (latency, 429, 500).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::Cluster;
use crate::admission::{
    MAX_DATA, admit_update, check_data_size, check_revision, data_size, default_pod, default_workload, generate_name,
    invalid, is_dns_subdomain, keep_metadata,
};
use crate::meta::{self, merge_patch};
use crate::resources::{self, Resource};
use crate::select::Selector;
use crate::store::ApiError;
use crate::table;

pub type Body = BoxBody<Bytes, Infallible>;

/// The API server refuses bodies over 3 MiB; so does the fake.
const MAX_BODY: usize = 3 * 1024 * 1024;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

fn error_response(error: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(code, &error.status());
    if error.code == 429 {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

/// Where a request points.
#[derive(Debug)]
enum Route {
    Version,
    CoreVersions,
    Groups,
    ResourceList(Value),
    Objects { resource: &'static Resource, namespace: Option<String>, name: Option<String>, sub: Option<String> },
}

fn route(path: &str) -> Result<Route, ApiError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let not_found = || ApiError::new(404, "NotFound", "the server could not find the requested resource");
    let (group, version, rest) = match parts.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["api"] => return Ok(Route::CoreVersions),
        ["apis"] => return Ok(Route::Groups),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    if rest.is_empty() {
        return resources::resource_list(group, version).map(Route::ResourceList).ok_or_else(not_found);
    }
    let namespaced = rest.len() >= 3
        && rest[0] == "namespaces"
        && resources::find(group, version, rest[2]).is_some_and(|r| r.namespaced);
    let (namespace, tail) = if namespaced { (Some(rest[1].to_string()), &rest[2..]) } else { (None, rest) };
    let resource = resources::find(group, version, tail[0]).ok_or_else(not_found)?;
    if tail.len() > 3 {
        return Err(not_found());
    }
    let sub = tail.get(2).map(|s| s.to_string());
    if let Some(sub) = &sub
        && !resource.subresources.contains(&sub.as_str())
    {
        return Err(not_found());
    }
    Ok(Route::Objects { resource, namespace, name: tail.get(1).map(|s| s.to_string()), sub })
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true") | Some("1"))
    }
    fn selector(&self, key: &str) -> Result<Selector, ApiError> {
        Selector::parse(self.get(key).unwrap_or_default())
    }
}

/// The RBAC verb of a request.
fn verb_of(method: &Method, name: Option<&str>, query: &Query) -> &'static str {
    match (method.as_str(), name) {
        ("GET", None) if query.flag("watch") => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", None) => "deletecollection",
        ("DELETE", Some(_)) => "delete",
        _ => "unknown",
    }
}

pub async fn handle(cluster: Arc<Cluster>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = match serve(&cluster, request).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    Ok(response)
}

async fn serve(cluster: &Arc<Cluster>, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| token == cluster.token);
    if !authorized {
        return Err(ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    let route = route(request.uri().path())?;
    let Route::Objects { resource, namespace, name, sub } = route else {
        return Ok(match route {
            Route::Version => json_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-merak-fake", "platform": "linux/amd64"}),
            ),
            Route::CoreVersions => json_response(StatusCode::OK, &resources::core_versions(&cluster.address)),
            Route::Groups => json_response(StatusCode::OK, &resources::group_list()),
            Route::ResourceList(list) => json_response(StatusCode::OK, &list),
            Route::Objects { .. } => unreachable!("handled below"),
        });
    };
    let query = Query(query_pairs(request.uri().query().unwrap_or_default()));
    let method = request.method().clone();
    if !cluster.config.latency.is_zero() {
        tokio::time::sleep(cluster.config.latency).await;
    }
    cluster.inject_fault()?;
    let verb = verb_of(&method, name.as_deref(), &query);
    let rbac_name = match &sub {
        Some(sub) => format!("{}/{sub}", resource.key()),
        None => resource.key(),
    };
    if !cluster.allowed(verb, &rbac_name) {
        return Err(forbidden(verb, resource, namespace.as_deref()));
    }
    if sub.as_deref() == Some("portforward") {
        let pod =
            cluster.store.get("pods", namespace.as_deref().unwrap_or_default(), name.as_deref().unwrap_or_default());
        let pod = pod.ok_or_else(|| ApiError::not_found("pods", name.as_deref().unwrap_or_default()))?;
        return crate::portforward::upgrade(cluster, request, &pod);
    }
    let wants_table =
        request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("as=Table"));
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body = read_body(request).await?;
    if !body.is_empty() && !content_type.is_empty() && !content_type.contains("json") {
        // Protobuf and CBOR are not spoken here; clients fall back to JSON on 415.
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        ));
    }
    let target = Target { resource, namespace: namespace.unwrap_or_default() };
    let ns = target.namespace.as_str();
    match (method.as_str(), name.as_deref(), sub.as_deref()) {
        ("GET", None, None) if query.flag("watch") => watch(cluster, &target, &query),
        ("GET", None, None) => {
            let scope = if resource.namespaced && !ns.is_empty() { Some(ns) } else { None };
            let (items, revision) = cluster.store.list(
                &resource.key(),
                scope,
                &query.selector("labelSelector")?,
                &query.selector("fieldSelector")?,
            );
            Ok(if wants_table {
                json_response(StatusCode::OK, &table::table(resource, &items, revision, query.get("includeObject")))
            } else {
                json_response(StatusCode::OK, &list_of(resource, items, revision))
            })
        }
        ("GET", Some(name), None | Some("status")) => {
            let object = target.get(cluster, name)?;
            Ok(if wants_table {
                let revision = cluster.store.revision();
                json_response(
                    StatusCode::OK,
                    &table::table(resource, std::slice::from_ref(&object), revision, query.get("includeObject")),
                )
            } else {
                json_response(StatusCode::OK, &object)
            })
        }
        ("GET", Some(name), Some("log")) => {
            target.get(cluster, name)?;
            let log = cluster.pod_log(ns, name, query.get("container"));
            let mut response = Response::new(full(log));
            response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
            Ok(response)
        }
        ("POST", None, None) => {
            let object = parse_json(&body)?;
            if resource.virtual_only {
                return Ok(json_response(StatusCode::CREATED, &cluster.review(object)));
            }
            let created = create(cluster, &target, object)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        ("GET", Some(name), Some("scale")) => Ok(json_response(StatusCode::OK, &scale_of(&target.get(cluster, name)?))),
        ("PUT" | "PATCH", Some(name), Some("scale")) => {
            let given = parse_json(&body)?;
            let scaled = scale(cluster, &target, name, method == Method::PATCH, &given)?;
            Ok(json_response(StatusCode::OK, &scale_of(&scaled)))
        }
        ("PUT", Some(name), sub @ (None | Some("status"))) => {
            let object = parse_json(&body)?;
            let updated = replace(cluster, &target, name, sub.is_some(), object)?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        ("PATCH", Some(name), sub @ (None | Some("status"))) => {
            if !content_type.starts_with("application/merge-patch+json")
                && !content_type.starts_with("application/strategic-merge-patch+json")
            {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
                    ),
                ));
            }
            let patch = parse_json(&body)?;
            let updated = patch_object(cluster, &target, name, sub.is_some(), &patch)?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        ("DELETE", Some(name), None) => {
            let options = if body.is_empty() { Value::Null } else { parse_json(&body)? };
            let options = DeleteOptions::from_request(&query, &options)?;
            let answer = cluster.delete_with(resource, ns, name, &options)?;
            Ok(json_response(StatusCode::OK, &answer))
        }
        ("DELETE", None, None) => {
            let options = if body.is_empty() { Value::Null } else { parse_json(&body)? };
            let options =
                DeleteOptions { preconditions: Value::Null, ..DeleteOptions::from_request(&query, &options)? };
            let (items, _) = cluster.store.list(
                &resource.key(),
                Some(ns),
                &query.selector("labelSelector")?,
                &query.selector("fieldSelector")?,
            );
            let mut deleted = Vec::new();
            for item in &items {
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                if cluster.delete_with(resource, ns, name, &options).is_ok() {
                    deleted.push(item.clone());
                }
            }
            Ok(json_response(StatusCode::OK, &list_of(resource, deleted, cluster.store.revision())))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )),
    }
}

fn forbidden(verb: &str, resource: &Resource, namespace: Option<&str>) -> ApiError {
    let scope = match namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".to_string(),
    };
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "{} is forbidden: User \"merak-fake-admin\" cannot {verb} resource \"{}\" in API group \"{}\"{scope}",
            resource.key(),
            resource.plural,
            resource.group
        ),
    )
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => {
            Err(ApiError::new(413, "RequestEntityTooLarge", "the request body is too large (the limit is 3 MiB)"))
        }
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body of the request is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    Ok(value)
}

fn list_of(resource: &Resource, mut items: Vec<Value>, revision: u64) -> Value {
    // A real server leaves kind and apiVersion off a list's items.
    for item in &mut items {
        if let Value::Object(fields) = item {
            fields.remove("kind");
            fields.remove("apiVersion");
        }
    }
    json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version(),
        "metadata": {"resourceVersion": revision.to_string()},
        "items": items,
    })
}

/// A resource and the namespace of the request ("" when cluster-scoped).
pub struct Target {
    pub resource: &'static Resource,
    pub namespace: String,
}

impl Target {
    fn get(&self, cluster: &Cluster, name: &str) -> Result<Value, ApiError> {
        cluster
            .store
            .get(&self.resource.key(), &self.namespace, name)
            .ok_or_else(|| ApiError::not_found(&self.resource.key(), name))
    }
}

/// Admission for a create: the metadata the server owns, and the defaults
/// a real server fills in for the kinds the provider makes.
pub fn create(cluster: &Cluster, target: &Target, mut object: Value) -> Result<Value, ApiError> {
    let resource = target.resource;
    if let Some(kind) = object["kind"].as_str()
        && kind != resource.kind
    {
        return Err(ApiError::bad_request(format!("the kind of the body ({kind}) is not {}", resource.kind)));
    }
    object["kind"] = json!(resource.kind);
    object["apiVersion"] = json!(resource.api_version());
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    let generated = object["metadata"]["name"].as_str().is_none_or(str::is_empty)
        && object["metadata"]["generateName"].as_str().is_some_and(|p| !p.is_empty());
    if generated {
        object["metadata"]["name"] =
            json!(generate_name(object["metadata"]["generateName"].as_str().unwrap_or_default()));
    }
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if name.is_empty() {
        return Err(invalid(resource.kind, "", "metadata.name", "Required value: name or generateName is required"));
    }
    if !is_dns_subdomain(&name) {
        return Err(invalid(
            resource.kind,
            &name,
            "metadata.name",
            &format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ));
    }
    if resource.namespaced {
        let ns = target.namespace.as_str();
        match object["metadata"]["namespace"].as_str() {
            Some(given) if !given.is_empty() && given != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => object["metadata"]["namespace"] = json!(ns),
        }
        let namespace = cluster.store.get("namespaces", "", ns).ok_or_else(|| ApiError::not_found("namespaces", ns))?;
        if !namespace["metadata"]["deletionTimestamp"].is_null() {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    resource.key()
                ),
            ));
        }
    } else if let Value::Object(metadata) = &mut object["metadata"] {
        metadata.remove("namespace");
    }
    for owned in ["deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"] {
        if let Value::Object(metadata) = &mut object["metadata"] {
            metadata.remove(owned);
        }
    }
    object["metadata"]["uid"] = json!(meta::uid());
    object["metadata"]["creationTimestamp"] = json!(meta::now());
    match resource.plural {
        "namespaces" => {
            object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            object["spec"] = json!({"finalizers": ["kubernetes"]});
            object["status"] = json!({"phase": "Active"});
        }
        "pods" => default_pod(&mut object, &name)?,
        "deployments" | "replicasets" if resource.is_workload() => {
            default_workload(resource, &mut object, &name)?;
            object["metadata"]["generation"] = json!(1);
            object["status"] = json!({});
        }
        "secrets" => {
            if object["type"].is_null() {
                object["type"] = json!("Opaque");
            }
            if let Some(strings) = object["stringData"].as_object().cloned() {
                use base64::Engine;
                for (key, value) in strings {
                    object["data"][key] =
                        json!(base64::engine::general_purpose::STANDARD.encode(value.as_str().unwrap_or_default()));
                }
                if let Value::Object(fields) = &mut object {
                    fields.remove("stringData");
                }
            }
        }
        _ => {}
    }
    if matches!(resource.plural, "configmaps" | "secrets") && data_size(&object) > MAX_DATA {
        return Err(invalid(resource.kind, &name, "[]", &format!("Too long: must have at most {MAX_DATA} bytes")));
    }
    let key = resource.key();
    let mut created = cluster.store.create(&key, &target.namespace, &key, object.clone());
    // A generated name that is taken is generated again (as RetryGenerateName does).
    for _ in 0..7 {
        match &created {
            Err(e) if generated && e.code == 409 => {
                object["metadata"]["name"] =
                    json!(generate_name(object["metadata"]["generateName"].as_str().unwrap_or_default()));
                created = cluster.store.create(&key, &target.namespace, &key, object.clone());
            }
            _ => break,
        }
    }
    created
}

/// An object being deleted goes once its last finalizer is removed.
fn remove_if_finalized(
    cluster: &Cluster,
    resource: &Resource,
    namespace: &str,
    object: Value,
) -> Result<Value, ApiError> {
    let deleting = !object["metadata"]["deletionTimestamp"].is_null();
    let finalized = object["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
    if deleting && finalized && !matches!(resource.plural, "pods" | "namespaces") {
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let _ = cluster.store.remove(&resource.key(), namespace, &name, &resource.key());
    }
    Ok(object)
}

/// The autoscaling/v1 Scale of a Deployment or ReplicaSet.
fn scale_of(object: &Value) -> Value {
    let metadata = &object["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": metadata["name"], "namespace": metadata["namespace"], "uid": metadata["uid"], "resourceVersion": metadata["resourceVersion"], "creationTimestamp": metadata["creationTimestamp"]},
        "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": object["status"]["replicas"].as_i64().unwrap_or(0), "selector": crate::select::label_selector_string(&object["spec"]["selector"]).unwrap_or_default()},
    })
}

/// PUT or PATCH of `<object>/scale`: sets spec.replicas.
fn scale(cluster: &Cluster, target: &Target, name: &str, patch: bool, given: &Value) -> Result<Value, ApiError> {
    let resource = target.resource;
    let key = resource.key();
    let updated = cluster.store.update(&key, &target.namespace, name, &key, |current| {
        check_revision(resource, name, given, current)?;
        let replicas = if patch {
            let mut scale = scale_of(current);
            merge_patch(&mut scale, given);
            scale["spec"]["replicas"].clone()
        } else {
            given["spec"]["replicas"].clone()
        };
        let replicas = replicas.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
            invalid(
                "Scale",
                name,
                "spec.replicas",
                &format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            )
        })?;
        let old = current.clone();
        current["spec"]["replicas"] = json!(replicas);
        admit_update(resource, name, &old, current)
    })?;
    Ok(updated)
}

fn replace(
    cluster: &Cluster,
    target: &Target,
    name: &str,
    status_only: bool,
    object: Value,
) -> Result<Value, ApiError> {
    let resource = target.resource;
    if object["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
    }
    let updated = cluster.store.update(&resource.key(), &target.namespace, name, &resource.key(), |current| {
        check_revision(resource, name, &object, current)?;
        if status_only {
            current["status"] = object["status"].clone();
        } else {
            let old = current.clone();
            let status = current["status"].clone();
            let deletion = current["metadata"]["deletionTimestamp"].clone();
            let (kind, api_version) = (current["kind"].clone(), current["apiVersion"].clone());
            *current = object.clone();
            keep_metadata(current, &old, "generation");
            admit_update(resource, name, &old, current)?;
            current["kind"] = kind;
            current["apiVersion"] = api_version;
            if !status.is_null() {
                current["status"] = status;
            }
            if !deletion.is_null() {
                current["metadata"]["deletionTimestamp"] = deletion;
            }
            if resource.namespaced {
                current["metadata"]["namespace"] = json!(target.namespace);
            }
        }
        check_data_size(resource, name, current)
    })?;
    remove_if_finalized(cluster, resource, &target.namespace, updated)
}

fn patch_object(
    cluster: &Cluster,
    target: &Target,
    name: &str,
    status_only: bool,
    patch: &Value,
) -> Result<Value, ApiError> {
    let resource = target.resource;
    let updated = cluster.store.update(&resource.key(), &target.namespace, name, &resource.key(), |current| {
        check_revision(resource, name, patch, current)?;
        if status_only {
            merge_patch(&mut current["status"], &patch["status"]);
        } else {
            let old = current.clone();
            let status = current["status"].clone();
            merge_patch(current, patch);
            current["status"] = status;
            for field in ["generation", "deletionTimestamp", "deletionGracePeriodSeconds"] {
                keep_metadata(current, &old, field);
            }
            admit_update(resource, name, &old, current)?;
        }
        check_data_size(resource, name, current)
    })?;
    remove_if_finalized(cluster, resource, &target.namespace, updated)
}

/// `?watch=true`: newline-delimited watch events until the timeout, or
/// until the watcher falls too far behind (then it must list again).
fn watch(cluster: &Arc<Cluster>, target: &Target, query: &Query) -> Result<Response<Body>, ApiError> {
    let labels = query.selector("labelSelector")?;
    let fields = query.selector("fieldSelector")?;
    let key = target.resource.key();
    let namespace =
        if target.resource.namespaced && !target.namespace.is_empty() { Some(target.namespace.clone()) } else { None };
    let from = match query.get("resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(text) => {
            Some(text.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version {text:?}")))?)
        }
    };
    let subscription = cluster.store.subscribe(from)?;
    let mut first: Vec<Value> = Vec::new();
    let mut last_sent = from.unwrap_or(0);
    if from.is_none() {
        let (items, revision) = cluster.store.list(&key, namespace.as_deref(), &labels, &fields);
        first.extend(items.into_iter().map(|object| json!({"type": "ADDED", "object": object})));
        last_sent = revision;
    }
    let matches = move |resource: &str, ns: &str, object: &Value| {
        resource == key
            && namespace.as_deref().is_none_or(|n| n == ns)
            && labels.matches_labels(object)
            && fields.matches_fields(object)
    };
    let matches = Arc::new(matches);
    for event in &subscription.replay {
        if event.revision > last_sent && matches(&event.resource, &event.namespace, &event.object) {
            first.push(json!({"type": event.change.as_str(), "object": event.object}));
        }
    }
    if let Some(last) = subscription.replay.last() {
        last_sent = last_sent.max(last.revision);
    }
    let timeout = Duration::from_secs(query.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(1800));
    let initial = futures::stream::iter(first.into_iter().map(|event| frame(&event)));
    let live = futures::stream::unfold(subscription.live, move |mut live| {
        let matches = matches.clone();
        async move {
            loop {
                match live.recv().await {
                    Ok(event) => {
                        if event.revision > last_sent && matches(&event.resource, &event.namespace, &event.object) {
                            let line = json!({"type": event.change.as_str(), "object": event.object});
                            return Some((frame(&line), live));
                        }
                    }
                    // Fell behind, or the server is stopping: end the watch.
                    Err(_) => return None,
                }
            }
        }
    });
    let deadline = tokio::time::sleep(timeout);
    let stream = initial.chain(live).take_until(deadline);
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    Ok(response)
}

fn frame(event: &Value) -> Result<Frame<Bytes>, Infallible> {
    let mut line = event.to_string();
    line.push('\n');
    Ok(Frame::data(Bytes::from(line)))
}

/// How dependents go with their owner (`propagationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// The owner goes at once; the garbage collector deletes its dependents after.
    #[default]
    Background,
    /// The owner stays (with the `foregroundDeletion` finalizer) until the
    /// garbage collector has deleted every dependent that blocks it.
    Foreground,
    /// The owner stays (with the `orphan` finalizer) until the garbage
    /// collector has taken its references off every dependent.
    Orphan,
}

/// What a DELETE asks (query or body): DeleteOptions.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace: Option<u64>,
    pub propagation: Propagation,
    /// `preconditions.uid` and `preconditions.resourceVersion`.
    pub preconditions: Value,
}

impl DeleteOptions {
    fn from_request(query: &Query, body: &Value) -> Result<DeleteOptions, ApiError> {
        let grace = query
            .get("gracePeriodSeconds")
            .and_then(|g| g.parse::<u64>().ok())
            .or_else(|| body["gracePeriodSeconds"].as_u64());
        let policy = query
            .get("propagationPolicy")
            .map(str::to_string)
            .or_else(|| body["propagationPolicy"].as_str().map(str::to_string));
        let orphan = query.get("orphanDependents").map(|o| o == "true").or_else(|| body["orphanDependents"].as_bool());
        let propagation = match (policy.as_deref(), orphan) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "DeleteOptions",
                    "",
                    "propagationPolicy",
                    "Invalid value: \"orphanDependents\": orphanDependents and propagationPolicy cannot both be set",
                ));
            }
            (Some("Background"), None) | (None, Some(false)) | (None, None) => Propagation::Background,
            (Some("Foreground"), None) => Propagation::Foreground,
            (Some("Orphan"), None) | (None, Some(true)) => Propagation::Orphan,
            (Some(other), None) => {
                return Err(invalid(
                    "DeleteOptions",
                    "",
                    "propagationPolicy",
                    &format!(
                        "Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                    ),
                ));
            }
        };
        Ok(DeleteOptions { grace, propagation, preconditions: body["preconditions"].clone() })
    }
}

impl Cluster {
    /// Deletes with the defaults (background propagation, the object's own
    /// grace period).
    pub fn delete(
        &self,
        resource: &Resource,
        namespace: &str,
        name: &str,
        grace: Option<u64>,
    ) -> Result<Value, ApiError> {
        self.delete_with(resource, namespace, name, &DeleteOptions { grace, ..DeleteOptions::default() })
    }

    /// Deletes as a real server does: pods on a node and namespaces only get
    /// a deletionTimestamp (the kubelet and the namespace controller finish
    /// the job); an object with finalizers (the garbage collector's for
    /// Foreground and Orphan propagation among them) gets a deletionTimestamp
    /// and goes when the last is removed; everything else goes at once (its
    /// dependents after it, by the garbage collector).
    pub fn delete_with(
        &self,
        resource: &Resource,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let key = resource.key();
        let current = self.store.get(&key, namespace, name).ok_or_else(|| ApiError::not_found(&key, name))?;
        let conflict = |what: &str, given: &str, actual: &Value| {
            ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {key} \"{name}\": Precondition failed: {what} in precondition: {given}, {what} in object meta: {}",
                    actual.as_str().unwrap_or_default()
                ),
            )
        };
        if let Some(uid) = options.preconditions["uid"].as_str().filter(|u| *u != current["metadata"]["uid"]) {
            return Err(conflict("UID", uid, &current["metadata"]["uid"]));
        }
        if let Some(version) =
            options.preconditions["resourceVersion"].as_str().filter(|v| *v != current["metadata"]["resourceVersion"])
        {
            return Err(conflict("ResourceVersion", version, &current["metadata"]["resourceVersion"]));
        }
        let graceful = match resource.plural {
            "pods" => current["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()),
            "namespaces" => true,
            _ => false,
        };
        if graceful {
            return self.store.update(&key, namespace, name, &key, |object| {
                if object["metadata"]["deletionTimestamp"].is_null() {
                    object["metadata"]["deletionTimestamp"] = json!(meta::now());
                    let default_grace = object["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
                    object["metadata"]["deletionGracePeriodSeconds"] = json!(options.grace.unwrap_or(default_grace));
                    if resource.plural == "namespaces" {
                        object["status"]["phase"] = json!("Terminating");
                    }
                }
                Ok(())
            });
        }
        let finalizer = match options.propagation {
            // Pods have no dependents here; they go as pods go.
            _ if resource.plural == "pods" => None,
            Propagation::Background => None,
            Propagation::Foreground => Some("foregroundDeletion"),
            Propagation::Orphan => Some("orphan"),
        };
        let has_finalizers = current["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if finalizer.is_none() && !has_finalizers {
            let removed = self.store.remove(&key, namespace, name, &key)?;
            let mut details = json!({"name": name, "kind": resource.plural, "uid": removed["metadata"]["uid"]});
            if !resource.group.is_empty() {
                details["group"] = json!(resource.group);
            }
            return Ok(
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
            );
        }
        self.store.update(&key, namespace, name, &key, |object| {
            if object["metadata"]["deletionTimestamp"].is_null() {
                object["metadata"]["deletionTimestamp"] = json!(meta::now());
                object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                if let Some(finalizer) = finalizer {
                    let mut finalizers = object["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
                    if !finalizers.iter().any(|f| f == finalizer) {
                        finalizers.push(json!(finalizer));
                    }
                    object["metadata"]["finalizers"] = json!(finalizers);
                }
            }
            Ok(())
        })
    }

    /// Takes `finalizer` off an object being deleted, and removes the
    /// object when it was the last (what a controller's update does).
    pub fn remove_finalizer(
        &self,
        resource: &Resource,
        namespace: &str,
        name: &str,
        finalizer: &str,
    ) -> Result<(), ApiError> {
        let key = resource.key();
        let updated = self.store.update(&key, namespace, name, &key, |object| {
            if let Some(finalizers) = object["metadata"]["finalizers"].as_array_mut() {
                finalizers.retain(|f| f != finalizer);
                if finalizers.is_empty()
                    && let Value::Object(metadata) = &mut object["metadata"]
                {
                    metadata.remove("finalizers");
                }
            }
            Ok(())
        })?;
        remove_if_finalized(self, resource, namespace, updated).map(drop)
    }

    /// Answers a SelfSubjectAccessReview from the configured denials.
    fn review(&self, mut review: Value) -> Value {
        let attributes = &review["spec"]["resourceAttributes"];
        let group = attributes["group"].as_str().unwrap_or_default();
        let plural = attributes["resource"].as_str().unwrap_or_default();
        let mut resource = if group.is_empty() { plural.to_string() } else { format!("{plural}.{group}") };
        if let Some(sub) = attributes["subresource"].as_str().filter(|s| !s.is_empty()) {
            resource = format!("{resource}/{sub}");
        }
        let verb = attributes["verb"].as_str().unwrap_or_default();
        let allowed = self.allowed(verb, &resource);
        review["kind"] = json!("SelfSubjectAccessReview");
        review["apiVersion"] = json!("authorization.k8s.io/v1");
        review["metadata"]["creationTimestamp"] = Value::Null;
        review["status"] = if allowed {
            json!({"allowed": true, "reason": "the fake cluster allows it"})
        } else {
            json!({"allowed": false, "denied": true, "reason": "denied by the fake cluster's --deny"})
        };
        review
    }

    pub(crate) fn allowed(&self, verb: &str, resource: &str) -> bool {
        !self.config.deny.iter().any(|rule| match rule.split_once(':') {
            Some((v, r)) => (v == "*" || v == verb) && (r == "*" || r == resource),
            None => false,
        })
    }

    /// Every `fail_every`-th resource request fails, alternately with 429
    /// Too Many Requests and 500 Internal Server Error.
    fn inject_fault(&self) -> Result<(), ApiError> {
        let Some(every) = self.config.fail_every else { return Ok(()) };
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if !n.is_multiple_of(every) {
            return Ok(());
        }
        if (n / every) % 2 == 1 {
            Err(ApiError::new(429, "TooManyRequests", "the fake cluster is throttling this request (injected)"))
        } else {
            Err(ApiError::new(500, "InternalError", "Internal error occurred: injected by the fake cluster"))
        }
    }

    /// What `kubectl logs` shows: the container's output, as the kubelet kept it.
    fn pod_log(&self, namespace: &str, name: &str, container: Option<&str>) -> Vec<u8> {
        let path = self.log_path(namespace, name, container.unwrap_or_default());
        std::fs::read(path).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_resources_and_namespaces() {
        let Route::Objects { resource, namespace, name, sub } = route("/api/v1/namespaces/a/pods/b/status").unwrap()
        else {
            panic!("not an object route")
        };
        assert_eq!(
            (resource.plural, namespace.as_deref(), name.as_deref(), sub.as_deref()),
            ("pods", Some("a"), Some("b"), Some("status"))
        );
        let Route::Objects { resource, namespace, name, .. } = route("/api/v1/namespaces/a").unwrap() else {
            panic!("not an object route")
        };
        assert_eq!((resource.plural, namespace, name.as_deref()), ("namespaces", None, Some("a")));
        let Route::Objects { resource, namespace, .. } = route("/api/v1/pods").unwrap() else {
            panic!("not an object route")
        };
        assert_eq!((resource.plural, namespace), ("pods", None));
        assert_eq!(route("/api/v1/namespaces/a/pods/b/exec").unwrap_err().code, 404);
        let Route::Objects { resource, namespace, name, sub } =
            route("/apis/apps/v1/namespaces/a/deployments/gw/scale").unwrap()
        else {
            panic!("not an object route")
        };
        assert_eq!(
            (resource.key(), namespace.as_deref(), name.as_deref(), sub.as_deref()),
            ("deployments.apps".to_string(), Some("a"), Some("gw"), Some("scale"))
        );
        assert_eq!(route("/apis/apps/v1/namespaces/a/deployments/gw/log").unwrap_err().code, 404);
        assert_eq!(route("/apis/apps/v1/statefulsets").unwrap_err().code, 404);
        assert!(matches!(route("/apis/authorization.k8s.io/v1").unwrap(), Route::ResourceList(_)));
    }

    #[test]
    fn queries_are_percent_decoded() {
        let pairs = query_pairs("labelSelector=app%3Dmerak%2Ctier+in+%28epm%29&watch=1");
        assert_eq!(pairs[0], ("labelSelector".to_string(), "app=merak,tier in (epm)".to_string()));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn names_must_be_dns_subdomains() {
        assert!(is_dns_subdomain("merak-t1.epm-0"));
        assert!(!is_dns_subdomain("Merak"));
        assert!(!is_dns_subdomain("-a"));
        assert!(!is_dns_subdomain(""));
    }
}
