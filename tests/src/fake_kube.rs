//! A small, stateful Kubernetes API server for tests: no API server can run on this machine,
//! so this one speaks enough of the real wire protocol for the real `kube` client inside the
//! agent: HTTPS with a bearer token, `Status` errors with their reason and code, a resource
//! version bumped on every change, list and watch (with selectors, replay from a resource
//! version, timeouts), server-side apply (`application/apply-patch+yaml`, a field manager,
//! server-owned fields kept, a generation bumped when the spec changes), delete, pod logs, and
//! a controller loop standing in for the controller manager and the kubelet: controllers get
//! pods from their template (rolling: old pods go once the new ones are ready), pods start and
//! become ready, an image whose name contains `unpullable` never pulls, StatefulSets get their
//! claims, and controller status says where the rollout is.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, broadcast};

const TOKEN: &str = "fake-cluster-token";
const HISTORY: usize = 20_000;
/// How long a pod takes to be created, then to start.
const POD_STEP_MS: u64 = 150;

struct Kind {
    plural: &'static str,
    group_version: &'static str,
    kind: &'static str,
    namespaced: bool,
}

const KINDS: &[Kind] = &[
    Kind { plural: "namespaces", group_version: "v1", kind: "Namespace", namespaced: false },
    Kind { plural: "secrets", group_version: "v1", kind: "Secret", namespaced: true },
    Kind { plural: "configmaps", group_version: "v1", kind: "ConfigMap", namespaced: true },
    Kind { plural: "persistentvolumeclaims", group_version: "v1", kind: "PersistentVolumeClaim", namespaced: true },
    Kind { plural: "services", group_version: "v1", kind: "Service", namespaced: true },
    Kind { plural: "pods", group_version: "v1", kind: "Pod", namespaced: true },
    Kind { plural: "deployments", group_version: "apps/v1", kind: "Deployment", namespaced: true },
    Kind { plural: "statefulsets", group_version: "apps/v1", kind: "StatefulSet", namespaced: true },
    Kind { plural: "daemonsets", group_version: "apps/v1", kind: "DaemonSet", namespaced: true },
];

const CONTROLLERS: &[&str] = &["deployments", "statefulsets", "daemonsets"];

fn kind(group_version: &str, plural: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.group_version == group_version && k.plural == plural)
}

fn kind_of(plural: &str) -> &'static Kind {
    KINDS.iter().find(|k| k.plural == plural).unwrap_or(&KINDS[0])
}

/// `secrets "x"` or `deployments.apps "x"`: how the API names a missing object.
fn qualified(kind: &Kind) -> String {
    match kind.group_version.split_once('/') {
        Some((group, _)) => format!("{}.{group}", kind.plural),
        None => kind.plural.to_owned(),
    }
}

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    plural: &'static str,
    namespace: String,
    event: &'static str,
    object: Value,
}

type Key = (&'static str, String, String);

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    requests: Vec<String>,
    sequence: u64,
    /// When each pod was created (test-clock milliseconds), for its lifecycle.
    pod_born: BTreeMap<Key, u64>,
}

struct Cluster {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Change>,
    wake: Notify,
    started: std::time::Instant,
}

impl Cluster {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Stores `object` (a new resource version) and tells watchers.
    fn put(&self, inner: &mut Inner, plural: &'static str, namespace: &str, mut object: Value, event: &'static str) {
        inner.rv += 1;
        object["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        inner.objects.insert((plural, namespace.to_owned(), name), object.clone());
        self.record(inner, plural, namespace, event, object);
    }

    fn delete(&self, inner: &mut Inner, key: &Key) -> Option<Value> {
        let mut object = inner.objects.remove(key)?;
        inner.pod_born.remove(key);
        inner.rv += 1;
        object["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        object["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        self.record(inner, key.0, &key.1, "DELETED", object.clone());
        Some(object)
    }

    fn record(&self, inner: &mut Inner, plural: &'static str, namespace: &str, event: &'static str, object: Value) {
        let change = Change { rv: inner.rv, plural, namespace: namespace.to_owned(), event, object };
        inner.history.push(change.clone());
        if inner.history.len() > HISTORY {
            inner.history.drain(..HISTORY / 2);
        }
        let _ = self.changes.send(change);
        self.wake.notify_one();
    }
}

/// A running fake cluster; stops when dropped.
pub struct FakeCluster {
    pub url: String,
    /// A kubeconfig for it: HTTPS with its own CA, a bearer token.
    pub kubeconfig: PathBuf,
    cluster: Arc<Cluster>,
    handle: axum_server::Handle<SocketAddr>,
    controller: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.handle.shutdown();
        self.controller.abort();
    }
}

impl FakeCluster {
    pub async fn start(dir: &Path) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "fake-cluster-ca");
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("params");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        let tls =
            axum_server::tls_rustls::RustlsConfig::from_pem(cert.pem().into_bytes(), key.serialize_pem().into_bytes())
                .await
                .expect("TLS config");

        let (changes, _) = broadcast::channel(4096);
        let cluster = Arc::new(Cluster {
            inner: Mutex::new(Inner::default()),
            changes,
            wake: Notify::new(),
            started: std::time::Instant::now(),
        });
        let app = axum::Router::new().fallback(handle).with_state(cluster.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("address");
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(listener, tls).expect("server").handle(handle.clone());
        tokio::spawn(server.serve(app.into_make_service()));
        let controller = tokio::spawn(control(cluster.clone()));

        let url = format!("https://{address}");
        let kubeconfig = dir.join("fake-kubeconfig.yaml");
        let ca_data = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ca_cert.pem());
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca_data}\nusers:\n- name: windflow\n  user:\n    token: {TOKEN}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: windflow\n    namespace: default\ncurrent-context: fake\n"
        );
        std::fs::write(&kubeconfig, config).expect("kubeconfig");
        Self { url, kubeconfig, cluster, handle, controller }
    }

    /// The objects of a kind (`deployments`, `pods`…) in a namespace, or everywhere.
    pub fn objects(&self, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        let inner = self.cluster.lock();
        inner
            .objects
            .iter()
            .filter(|((p, ns, _), _)| *p == plural && namespace.is_none_or(|n| n == ns))
            .map(|(_, object)| object.clone())
            .collect()
    }

    pub fn object(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let plural = kind_of(plural).plural;
        self.cluster.lock().objects.get(&(plural, namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Deletes an object as `kubectl delete` would (its pods follow through the controller loop).
    pub fn remove(&self, plural: &str, namespace: &str, name: &str) -> bool {
        let plural = kind_of(plural).plural;
        let mut inner = self.cluster.lock();
        self.cluster.delete(&mut inner, &(plural, namespace.to_owned(), name.to_owned())).is_some()
    }

    /// What the requests so far needed, as RBAC would see them: (API group, resource, verb).
    pub fn access(&self) -> std::collections::BTreeSet<(String, String, String)> {
        self.requests()
            .iter()
            .filter_map(|request| {
                let (method, target) = request.split_once(' ')?;
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let group = if path.starts_with("/apis/apps/") { "apps" } else { "" };
                let (resource, verb) = match (method, parse(path)?) {
                    ("GET", Target::Collection { kind, .. })
                        if query.contains("watch=true") || query.contains("watch=1") =>
                    {
                        (kind.plural.to_owned(), "watch")
                    }
                    ("GET", Target::Collection { kind, .. }) => (kind.plural.to_owned(), "list"),
                    ("GET", Target::Object { kind, .. }) => (kind.plural.to_owned(), "get"),
                    ("GET", Target::Log { .. }) => ("pods/log".to_owned(), "get"),
                    ("PATCH", Target::Object { kind, .. }) => (kind.plural.to_owned(), "patch"),
                    ("DELETE", Target::Object { kind, .. }) => (kind.plural.to_owned(), "delete"),
                    _ => return None,
                };
                Some((group.to_owned(), resource, verb.to_owned()))
            })
            .collect()
    }

    /// Every request so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.cluster.lock().requests.clone()
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn status(code: StatusCode, reason: &str, message: impl Into<String>, details: Option<Value>) -> Response {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code.as_u16(),
    });
    if let Some(details) = details {
        body["details"] = details;
    }
    (code, [("content-type", "application/json")], body.to_string()).into_response()
}

fn ok(code: StatusCode, body: &Value) -> Response {
    (code, [("content-type", "application/json")], body.to_string()).into_response()
}

enum Target {
    Version,
    Collection { kind: &'static Kind, namespace: Option<String> },
    Object { kind: &'static Kind, namespace: String, name: String },
    Log { namespace: String, name: String },
}

fn parse(path: &str) -> Option<Target> {
    if path == "/version" {
        return Some(Target::Version);
    }
    let (group_version, rest) = path
        .strip_prefix("/api/v1/")
        .map(|r| ("v1", r))
        .or_else(|| path.strip_prefix("/apis/apps/v1/").map(|r| ("apps/v1", r)))?;
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        [plural] => Some(Target::Collection { kind: kind(group_version, plural)?, namespace: None }),
        ["namespaces", namespace, "pods", name, "log"] => {
            Some(Target::Log { namespace: (*namespace).to_owned(), name: (*name).to_owned() })
        }
        ["namespaces", namespace, plural] => {
            Some(Target::Collection { kind: kind(group_version, plural)?, namespace: Some((*namespace).to_owned()) })
        }
        ["namespaces", namespace, plural, name] => Some(Target::Object {
            kind: kind(group_version, plural)?,
            namespace: (*namespace).to_owned(),
            name: (*name).to_owned(),
        }),
        [plural, name] => {
            let kind = kind(group_version, plural).filter(|k| !k.namespaced)?;
            Some(Target::Object { kind, namespace: String::new(), name: (*name).to_owned() })
        }
        _ => None,
    }
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=b,c!=d,e`: equality, inequality and existence, as the API takes them.
fn selects(selector: Option<&String>, labels: &Value) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else { return true };
    selector.split(',').all(|term| {
        if let Some((key, value)) = term.split_once("!=") {
            labels[key.trim()].as_str() != Some(value.trim())
        } else if let Some((key, value)) = term.split_once('=') {
            labels[key.trim().trim_end_matches('=')].as_str() == Some(value.trim().trim_start_matches('='))
        } else {
            !labels[term.trim()].is_null()
        }
    })
}

fn fields_select(selector: Option<&String>, object: &Value) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else { return true };
    selector.split(',').all(|term| match term.split_once('=') {
        Some(("metadata.name", value)) => object["metadata"]["name"].as_str() == Some(value.trim_start_matches('=')),
        Some(("metadata.namespace", value)) => {
            object["metadata"]["namespace"].as_str() == Some(value.trim_start_matches('='))
        }
        _ => false,
    })
}

async fn handle(
    State(cluster): State<Arc<Cluster>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    cluster.lock().requests.push(format!("{method} {}", uri.path_and_query().map_or("", |p| p.as_str())));
    let authorised = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"));
    if !authorised {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized", None);
    }
    let params = query(&uri);
    let Some(target) = parse(uri.path()) else {
        return status(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource", None);
    };
    match (method, target) {
        (Method::GET, Target::Version) => ok(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-windflow-fake", "gitCommit": "", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
        ),
        (Method::GET, Target::Collection { kind, namespace }) => {
            if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
                watch(&cluster, kind, namespace, &params)
            } else {
                list(&cluster, kind, namespace.as_deref(), &params)
            }
        }
        (Method::GET, Target::Object { kind, namespace, name }) => {
            match cluster.lock().objects.get(&(kind.plural, namespace, name.clone())) {
                Some(object) => ok(StatusCode::OK, object),
                None => not_found(kind, &name),
            }
        }
        (Method::PATCH, Target::Object { kind, namespace, name }) => {
            apply(&cluster, kind, &namespace, &name, &headers, &params, &body)
        }
        (Method::DELETE, Target::Object { kind, namespace, name }) => {
            let mut inner = cluster.lock();
            let key = (kind.plural, namespace.clone(), name.clone());
            match cluster.delete(&mut inner, &key) {
                Some(object) => {
                    if kind.plural == "namespaces" {
                        let inside: Vec<Key> = inner.objects.keys().filter(|(_, ns, _)| *ns == name).cloned().collect();
                        for key in inside {
                            cluster.delete(&mut inner, &key);
                        }
                    }
                    ok(StatusCode::OK, &object)
                }
                None => not_found(kind, &name),
            }
        }
        (Method::GET, Target::Log { namespace, name }) => logs(&cluster, &namespace, &name, &params),
        (method, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
            None,
        ),
    }
}

fn not_found(kind: &Kind, name: &str) -> Response {
    let details = json!({"name": name, "kind": kind.plural});
    status(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", qualified(kind)), Some(details))
}

fn list(
    cluster: &Cluster,
    kind: &'static Kind,
    namespace: Option<&str>,
    params: &BTreeMap<String, String>,
) -> Response {
    let inner = cluster.lock();
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|((plural, ns, _), object)| {
            *plural == kind.plural
                && namespace.is_none_or(|n| n == ns)
                && selects(params.get("labelSelector"), &object["metadata"]["labels"])
                && fields_select(params.get("fieldSelector"), object)
        })
        .map(|(_, object)| object.clone())
        .collect();
    let list = json!({
        "apiVersion": kind.group_version, "kind": format!("{}List", kind.kind),
        "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items,
    });
    ok(StatusCode::OK, &list)
}

fn watch(
    cluster: &Arc<Cluster>,
    kind: &'static Kind,
    namespace: Option<String>,
    params: &BTreeMap<String, String>,
) -> Response {
    let from: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = params.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(290u64);
    let (labels, fields) = (params.get("labelSelector").cloned(), params.get("fieldSelector").cloned());
    let matches = move |change: &Change| {
        change.plural == kind.plural
            && namespace.as_ref().is_none_or(|n| *n == change.namespace)
            && selects(labels.as_ref(), &change.object["metadata"]["labels"])
            && fields_select(fields.as_ref(), &change.object)
    };
    let (backlog, receiver) = {
        let inner = cluster.lock();
        let receiver = cluster.changes.subscribe();
        let backlog: Vec<Change> = if from == 0 {
            inner
                .objects
                .iter()
                .filter(|((plural, _, _), _)| *plural == kind.plural)
                .map(|((plural, ns, _), object)| Change {
                    rv: inner.rv,
                    plural,
                    namespace: ns.clone(),
                    event: "ADDED",
                    object: object.clone(),
                })
                .filter(&matches)
                .collect()
        } else {
            inner.history.iter().filter(|c| c.rv > from && matches(c)).cloned().collect()
        };
        (backlog, receiver)
    };
    let last = backlog.last().map_or(from, |c| c.rv);
    let live = futures_util::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(change) => return Some((change, receiver)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .filter(move |c| std::future::ready(c.rv > last && matches(c)));
    let events = futures_util::stream::iter(backlog)
        .chain(live)
        .map(|change| {
            let line = json!({"type": change.event, "object": change.object}).to_string() + "\n";
            Ok::<_, std::convert::Infallible>(Bytes::from(line))
        })
        .take_until(tokio::time::sleep(Duration::from_secs(timeout)));
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(events))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn is_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

fn apply(
    cluster: &Cluster,
    kind: &'static Kind,
    namespace: &str,
    name: &str,
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
    body: &[u8],
) -> Response {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if content_type != "application/apply-patch+yaml" {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/apply-patch+yaml (got {content_type})"
            ),
            None,
        );
    }
    let Some(manager) = params.get("fieldManager").filter(|m| !m.is_empty()) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "fieldManager is required for apply requests", None);
    };
    let applied: Value = match serde_yaml::from_slice(body) {
        Ok(value) => value,
        Err(error) => {
            return status(StatusCode::BAD_REQUEST, "BadRequest", format!("error decoding YAML: {error}"), None);
        }
    };
    if applied["apiVersion"].as_str() != Some(kind.group_version) || applied["kind"].as_str() != Some(kind.kind) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "the API version and kind in the data ({} {}) do not match the expected {} {}",
                applied["apiVersion"], applied["kind"], kind.group_version, kind.kind
            ),
            None,
        );
    }
    if applied["metadata"]["name"].as_str() != Some(name) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                applied["metadata"]["name"]
            ),
            None,
        );
    }
    if !is_subdomain(name) {
        let message = format!(
            "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        );
        let details = json!({"name": name, "kind": kind.kind, "causes": [{"reason": "FieldValueInvalid", "message": message, "field": "metadata.name"}]});
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{} \"{name}\" is invalid: metadata.name: {message}", kind.kind),
            Some(details),
        );
    }
    let mut inner = cluster.lock();
    if kind.namespaced && !inner.objects.contains_key(&("namespaces", String::new(), namespace.to_owned())) {
        return not_found(kind_of("namespaces"), namespace);
    }
    let key = (kind.plural, namespace.to_owned(), name.to_owned());
    let managed = json!([{"manager": manager, "operation": "Apply", "apiVersion": kind.group_version,
        "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": {}}]);
    let mut object = applied.clone();
    if kind.namespaced {
        object["metadata"]["namespace"] = json!(namespace);
    }
    match inner.objects.get(&key).cloned() {
        Some(existing) => {
            // One field manager: its intent replaces what it applied before; what the server
            // owns (identity, status, allocated addresses) stays.
            for field in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
                object["metadata"][field] = existing["metadata"][field].clone();
            }
            object["metadata"]["managedFields"] = managed;
            object["status"] = existing["status"].clone();
            if kind.plural == "services" {
                for field in ["clusterIP", "clusterIPs"] {
                    object["spec"][field] = existing["spec"][field].clone();
                }
            }
            if object["spec"] != existing["spec"] {
                let generation = existing["metadata"]["generation"].as_i64().unwrap_or(1);
                object["metadata"]["generation"] = json!(generation + 1);
            }
            let unchanged = {
                let mut a = object.clone();
                let mut b = existing.clone();
                a["metadata"]["managedFields"] = Value::Null;
                b["metadata"]["managedFields"] = Value::Null;
                a == b
            };
            if unchanged {
                return ok(StatusCode::OK, &existing);
            }
            cluster.put(&mut inner, kind.plural, namespace, object.clone(), "MODIFIED");
            let stored = inner.objects.get(&key).cloned().unwrap_or(object);
            ok(StatusCode::OK, &stored)
        }
        None => {
            inner.sequence += 1;
            object["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
            object["metadata"]["creationTimestamp"] = json!(now_rfc3339());
            object["metadata"]["generation"] = json!(1);
            object["metadata"]["managedFields"] = managed;
            match kind.plural {
                "namespaces" => object["status"] = json!({"phase": "Active"}),
                "persistentvolumeclaims" => object["status"] = json!({"phase": "Bound"}),
                "services" => {
                    let ip = format!("10.96.{}.{}", inner.sequence / 250, inner.sequence % 250 + 1);
                    object["spec"]["clusterIP"] = json!(ip);
                    object["spec"]["clusterIPs"] = json!([ip]);
                    object["status"] = json!({"loadBalancer": {}});
                }
                _ => object["status"] = json!({}),
            }
            cluster.put(&mut inner, kind.plural, namespace, object, "ADDED");
            ok(StatusCode::CREATED, inner.objects.get(&key).unwrap_or(&Value::Null))
        }
    }
}

fn logs(cluster: &Arc<Cluster>, namespace: &str, name: &str, params: &BTreeMap<String, String>) -> Response {
    let Some(pod) = cluster.lock().objects.get(&("pods", namespace.to_owned(), name.to_owned())).cloned() else {
        return not_found(kind_of("pods"), name);
    };
    let container = &pod["spec"]["containers"][0];
    let mut lines = vec![
        format!(
            "started {} from {}",
            container["name"].as_str().unwrap_or_default(),
            container["image"].as_str().unwrap_or_default()
        ),
        format!(
            "args: {}",
            container["args"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        ),
        "ready".to_owned(),
    ];
    if let Some(tail) = params.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
        lines = lines.split_off(lines.len().saturating_sub(tail));
    }
    let stamped = params.get("timestamps").is_some_and(|t| t == "true");
    let stamp = move |line: String| {
        let line = if stamped { format!("{} {line}", now_rfc3339()) } else { line };
        Ok::<_, std::convert::Infallible>(Bytes::from(line + "\n"))
    };
    let first = futures_util::stream::iter(lines.into_iter().map(stamp));
    let body = if params.get("follow").is_some_and(|f| f == "true") {
        let (cluster, key) = (cluster.clone(), ("pods", namespace.to_owned(), name.to_owned()));
        let ticks = futures_util::stream::unfold(0u64, move |n| {
            let (cluster, key) = (cluster.clone(), key.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                cluster.lock().objects.contains_key(&key).then(|| (format!("tick {n}"), n + 1))
            }
        })
        .map(stamp);
        Body::from_stream(first.chain(ticks))
    } else {
        Body::from_stream(first)
    };
    Response::builder()
        .header("content-type", "text/plain")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The controller manager and the kubelet, every 50 ms or when something changed.
async fn control(cluster: Arc<Cluster>) {
    loop {
        tokio::select! {
            () = cluster.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let mut inner = cluster.lock();
        reconcile(&cluster, &mut inner);
    }
}

fn template_hash(template: &Value) -> String {
    hex::encode(Sha256::digest(template.to_string()))[..10].to_owned()
}

fn reconcile(cluster: &Cluster, inner: &mut Inner) {
    let now = cluster.now_ms();
    // The kubelet: pods start, or fail to pull their image.
    let pods: Vec<(Key, Value)> =
        inner.objects.iter().filter(|((p, _, _), _)| *p == "pods").map(|(k, v)| (k.clone(), v.clone())).collect();
    for (key, pod) in &pods {
        let age = now.saturating_sub(inner.pod_born.get(key).copied().unwrap_or(now));
        let image = pod["spec"]["containers"][0]["image"].as_str().unwrap_or_default();
        let container = pod["spec"]["containers"][0]["name"].clone();
        let probed = !pod["spec"]["containers"][0]["readinessProbe"].is_null();
        let state = if age < POD_STEP_MS {
            json!({"waiting": {"reason": "ContainerCreating"}})
        } else if image.contains("unpullable") {
            let reason = if age < 3 * POD_STEP_MS { "ErrImagePull" } else { "ImagePullBackOff" };
            json!({"waiting": {"reason": reason, "message": format!("Back-off pulling image \"{image}\": not found")}})
        } else {
            json!({"running": {"startedAt": now_rfc3339()}})
        };
        let running = !state["running"].is_null();
        let ready = running && (!probed || age >= 2 * POD_STEP_MS);
        let was = &pod["status"]["containerStatuses"][0];
        let same_state = was["state"].as_object().map(|o| o.keys().collect::<Vec<_>>())
            == state.as_object().map(|o| o.keys().collect::<Vec<_>>())
            && was["state"]["waiting"]["reason"] == state["waiting"]["reason"];
        if same_state && was["ready"].as_bool() == Some(ready) {
            continue;
        }
        let mut pod = pod.clone();
        pod["status"] = json!({
            "phase": if running { "Running" } else { "Pending" },
            "podIP": "10.244.0.10",
            "containerStatuses": [{"name": container, "image": image, "imageID": "", "ready": ready,
                "restartCount": 0, "state": state}],
        });
        cluster.put(inner, "pods", &key.1, pod, "MODIFIED");
    }
    // Garbage collection: pods whose controller is gone.
    let uids: Vec<String> = inner
        .objects
        .iter()
        .filter(|((p, _, _), _)| CONTROLLERS.contains(p))
        .filter_map(|(_, o)| o["metadata"]["uid"].as_str().map(str::to_owned))
        .collect();
    for (key, pod) in &pods {
        let owner = pod["metadata"]["ownerReferences"][0]["uid"].as_str().unwrap_or_default();
        if !uids.iter().any(|u| u == owner) && inner.objects.contains_key(key) {
            cluster.delete(inner, key);
        }
    }
    // The controllers.
    let controllers: Vec<(Key, Value)> = inner
        .objects
        .iter()
        .filter(|((p, _, _), _)| CONTROLLERS.contains(p))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, controller) in controllers {
        reconcile_controller(cluster, inner, &key, &controller, now);
    }
}

fn reconcile_controller(cluster: &Cluster, inner: &mut Inner, key: &Key, controller: &Value, now: u64) {
    let (plural, namespace, name) = key;
    let template = &controller["spec"]["template"];
    let hash = template_hash(template);
    let desired = if *plural == "daemonsets" { 1 } else { controller["spec"]["replicas"].as_u64().unwrap_or(1) };
    let uid = controller["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let owned: Vec<(Key, Value)> = inner
        .objects
        .iter()
        .filter(|((p, ns, _), pod)| {
            *p == "pods"
                && ns == namespace
                && pod["metadata"]["ownerReferences"][0]["uid"].as_str() == Some(uid.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let is_new = |pod: &Value| pod["metadata"]["labels"]["pod-template-hash"].as_str() == Some(hash.as_str());
    let is_ready = |pod: &Value| pod["status"]["containerStatuses"][0]["ready"].as_bool() == Some(true);
    let new: Vec<&(Key, Value)> = owned.iter().filter(|(_, p)| is_new(p)).collect();
    let old: Vec<&(Key, Value)> = owned.iter().filter(|(_, p)| !is_new(p)).collect();
    let new_ready = new.iter().filter(|(_, p)| is_ready(p)).count() as u64;

    // A StatefulSet replaces pods in place; the others surge, then retire the old pods once
    // the new ones are ready.
    if *plural == "statefulsets" {
        for (old_key, _) in &old {
            cluster.delete(inner, old_key);
        }
        for claim in controller["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten() {
            for ordinal in 0..desired {
                let claim_name = format!("{}-{name}-{ordinal}", claim["metadata"]["name"].as_str().unwrap_or("data"));
                let claim_key: Key = ("persistentvolumeclaims", namespace.clone(), claim_name.clone());
                if !inner.objects.contains_key(&claim_key) {
                    let mut object = claim.clone();
                    object["apiVersion"] = json!("v1");
                    object["kind"] = json!("PersistentVolumeClaim");
                    object["metadata"]["name"] = json!(claim_name);
                    object["metadata"]["namespace"] = json!(namespace);
                    object["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
                    object["status"] = json!({"phase": "Bound"});
                    cluster.put(inner, "persistentvolumeclaims", namespace, object, "ADDED");
                }
            }
        }
    } else if new_ready >= desired {
        for (old_key, _) in &old {
            cluster.delete(inner, old_key);
        }
    }
    let new_names: Vec<String> = new.iter().map(|(k, _)| k.2.clone()).collect();
    let mut count = new.len() as u64;
    let mut ordinal = 0;
    while count < desired {
        inner.sequence += 1;
        let pod_name = match *plural {
            "statefulsets" => loop {
                let candidate = format!("{name}-{ordinal}");
                ordinal += 1;
                if !new_names.contains(&candidate) {
                    break candidate;
                }
            },
            "deployments" => format!("{name}-{}-{:05}", &hash[..8], inner.sequence),
            _ => format!("{name}-{:05}", inner.sequence),
        };
        let mut labels = template["metadata"]["labels"].clone();
        labels["pod-template-hash"] = json!(hash);
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod_name, "namespace": namespace, "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": now_rfc3339(), "labels": labels,
                "annotations": template["metadata"]["annotations"].clone(),
                "ownerReferences": [{"apiVersion": controller["apiVersion"], "kind": controller["kind"], "name": name, "uid": uid, "controller": true}],
            },
            "spec": template["spec"].clone(),
            "status": {"phase": "Pending"},
        });
        let pod_key: Key = ("pods", namespace.clone(), pod_name);
        inner.pod_born.insert(pod_key, now);
        cluster.put(inner, "pods", namespace, pod, "ADDED");
        count += 1;
    }
    // Scaled down: the newest extra pods go.
    for (extra, _) in new.iter().skip(usize::try_from(desired).unwrap_or(usize::MAX)) {
        cluster.delete(inner, extra);
    }

    let remaining_old = if *plural != "statefulsets" && new_ready < desired { old.len() as u64 } else { 0 };
    let old_ready = if remaining_old > 0 { old.iter().filter(|(_, p)| is_ready(p)).count() as u64 } else { 0 };
    let total = desired.min(count) + remaining_old;
    let generation = controller["metadata"]["generation"].clone();
    let status = match *plural {
        "deployments" => json!({
            "observedGeneration": generation, "replicas": total, "updatedReplicas": new.len().min(desired as usize),
            "readyReplicas": new_ready + old_ready, "availableReplicas": new_ready + old_ready,
        }),
        "statefulsets" => {
            let revision = format!("{name}-{hash}");
            let current = if new_ready >= desired { revision.clone() } else { format!("{name}-previous") };
            json!({
                "observedGeneration": generation, "replicas": desired.min(count), "updatedReplicas": new.len().min(desired as usize),
                "readyReplicas": new_ready, "currentRevision": current, "updateRevision": revision,
            })
        }
        _ => json!({
            "observedGeneration": generation, "desiredNumberScheduled": 1, "currentNumberScheduled": 1,
            "numberMisscheduled": 0, "updatedNumberScheduled": new.len().min(1), "numberReady": new_ready.min(1),
            "numberAvailable": new_ready.min(1),
        }),
    };
    if controller["status"] != status {
        let mut updated = controller.clone();
        updated["status"] = status;
        cluster.put(inner, plural, namespace, updated, "MODIFIED");
    }
}
