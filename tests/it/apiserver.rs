//! A STAND-IN for the Kubernetes API server, for the kubernetes target's tests. It is not
//! Kubernetes: it serves, on 127.0.0.1, just what gitopsd uses, in the API's own wire format.
//!
//! Modelled: discovery (`/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`, with custom
//! resources served once their CRD is applied); LIST across namespaces with equality and existence label
//! selectors; GET; server-side apply (`PATCH` with `application/apply-patch+yaml`) with a field
//! manager, conflicts when another manager applied the object and `force` is off, `dryRun=All`,
//! uid/resourceVersion/generation/creationTimestamp/managedFields, a few server defaults
//! (Deployment strategy and revisionHistoryLimit, Service type and clusterIP) so defaulted
//! fields exist; DELETE; `Status` errors; injected failures (any code, for a number of
//! requests); a count of requests by method and resource; a number of seats, past which
//! requests are refused with 429 as priority and fairness refuses them, and a latency for
//! every request, with the peak of requests in flight.
//!
//! Watches: a watch is answered with a stream that stays open and sends nothing (the store
//! does not push changes; a relist sees them), or, when injected, with one ERROR event (410
//! Gone: the client must list again).
//!
//! Not modelled: field-level ownership merges (an apply replaces the object's fields), watch
//! events of changes, admission, validation beyond JSON shape, namespace existence and finalizers, garbage
//! collection, authentication, and controllers — except that Deployments, StatefulSets and
//! DaemonSets report themselves fully rolled out as soon as they are applied, and CRDs become
//! Established (and their types served) at once or, with `delay_crds`, after a few GETs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// A served type.
#[derive(Debug, Clone, PartialEq)]
struct Resource {
    group: String,
    version: String,
    kind: String,
    plural: String,
    namespaced: bool,
}

fn builtin() -> Vec<Resource> {
    let r = |group: &str, version: &str, kind: &str, plural: &str, namespaced: bool| Resource {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        namespaced,
    };
    vec![
        r("", "v1", "Namespace", "namespaces", false),
        r("", "v1", "ConfigMap", "configmaps", true),
        r("", "v1", "Secret", "secrets", true),
        r("", "v1", "Service", "services", true),
        r("", "v1", "ServiceAccount", "serviceaccounts", true),
        r("", "v1", "Pod", "pods", true),
        r("apps", "v1", "Deployment", "deployments", true),
        r("apps", "v1", "StatefulSet", "statefulsets", true),
        r("apps", "v1", "DaemonSet", "daemonsets", true),
        r("batch", "v1", "Job", "jobs", true),
        r(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        ),
    ]
}

/// Objects by (group, plural, namespace, name).
type Key = (String, String, Option<String>, String);

#[derive(Debug, Default)]
struct Store {
    resources: Vec<Resource>,
    objects: BTreeMap<Key, Value>,
    /// Injected failures: (method, path fragment, status code, requests left).
    failures: Vec<(Method, String, u16, usize)>,
    /// Requests by "METHOD plural".
    requests: BTreeMap<String, usize>,
    /// GETs an applied CRD answers before it is Established (its types are served from then).
    crd_delay: usize,
    /// CRDs not Established yet: name → GETs left.
    pending_crds: BTreeMap<String, usize>,
    next_resource_version: u64,
    /// Injected watch answers: (path fragment, ERROR event code, watches left).
    watch_failures: Vec<(String, u16, usize)>,
    /// Turns true when the server stops: open watches end.
    closing: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Requests in flight, and what the server does when there are too many.
#[derive(Debug, Default)]
struct Seats {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    /// Past this many in flight, a request is refused with 429 (0: no limit).
    limit: AtomicUsize,
    throttled: AtomicUsize,
    latency_ms: AtomicU64,
}

/// One request's seat; given back when the answer is ready.
struct Seat<'a>(&'a Seats);

impl Seats {
    fn take(&self) -> (Seat<'_>, usize) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        (Seat(self), now)
    }
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers one request within the seats, after the latency.
async fn seated(seats: &Seats, answer: impl FnOnce() -> Response) -> Response {
    let (_seat, in_flight) = seats.take();
    let limit = seats.limit.load(Ordering::SeqCst);
    if limit > 0 && in_flight > limit {
        seats.throttled.fetch_add(1, Ordering::SeqCst);
        return status(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.".into(),
        );
    }
    let latency = seats.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        // Part of the scenario: a slow API server, as slow as the test asks.
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    answer()
}

/// The running stand-in; dropping it stops the server.
pub struct ApiServerStandIn {
    pub address: SocketAddr,
    store: Arc<Mutex<Store>>,
    seats: Arc<Seats>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    closing: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServerStandIn {
    pub fn start() -> Self {
        let (closing, closed) = tokio::sync::watch::channel(false);
        let store = Arc::new(Mutex::new(Store {
            resources: builtin(),
            next_resource_version: 1,
            closing: Some(closed),
            ..Store::default()
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind stand-in");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("address");
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = store.clone();
        let seats = Arc::new(Seats::default());
        let shared_seats = seats.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = axum::Router::new().fallback(
                    move |method: Method,
                          uri: Uri,
                          Query(params): Query<BTreeMap<String, String>>,
                          headers: HeaderMap,
                          body: Bytes| {
                        let store = shared.clone();
                        let seats = shared_seats.clone();
                        async move {
                            seated(&seats, || {
                                handle(&store, method, uri, &params, headers, body)
                            })
                            .await
                        }
                    },
                );
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Self {
            address,
            store,
            seats,
            shutdown: Some(shutdown),
            closing,
            thread: Some(thread),
        }
    }

    /// A kubeconfig pointing at the stand-in, with context `stand-in`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: http://{}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: nobody\nusers:\n- name: nobody\n  user: {{}}\ncurrent-context: stand-in\n",
            self.address
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().expect("stand-in store")
    }

    /// Requests counted for "METHOD plural" (e.g. "PATCH deployments", "LIST configmaps"), or
    /// "DISCOVERY path" (e.g. "DISCOVERY /api/v1").
    pub fn count(&self, what: &str) -> usize {
        self.lock().requests.get(what).copied().unwrap_or(0)
    }

    /// Every request count whose key starts with `method` ("PATCH", "LIST", …).
    pub fn count_method(&self, method: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|(key, _)| key.starts_with(&format!("{method} ")))
            .map(|(_, count)| count)
            .sum()
    }

    /// Refuses requests past `seats` in flight with 429, like priority and fairness.
    pub fn limit_seats(&self, seats: usize) {
        self.seats.limit.store(seats, Ordering::SeqCst);
    }

    /// Every request waits this long before it is answered.
    pub fn set_latency(&self, latency: std::time::Duration) {
        let millis = u64::try_from(latency.as_millis()).expect("a short latency");
        self.seats.latency_ms.store(millis, Ordering::SeqCst);
    }

    /// The most requests that were in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.seats.peak.load(Ordering::SeqCst)
    }

    /// Requests refused with 429 for want of a seat.
    pub fn throttled(&self) -> usize {
        self.seats.throttled.load(Ordering::SeqCst)
    }

    pub fn reset_counts(&self) {
        self.lock().requests.clear();
    }

    /// Applied CRDs answer `gets` GETs before they are Established and their types served,
    /// like a real API server that needs a moment to accept new names.
    pub fn delay_crds(&self, gets: usize) {
        self.lock().crd_delay = gets;
    }

    /// The next `times` requests of `method` whose path contains `fragment` fail with `code`.
    pub fn fail(&self, method: Method, fragment: &str, code: u16, times: usize) {
        self.lock()
            .failures
            .push((method, fragment.to_string(), code, times));
    }

    /// The next `times` watches whose path contains `fragment` are answered with one ERROR
    /// event of `code` (410: the resource version is too old, list again).
    pub fn fail_watches(&self, fragment: &str, code: u16, times: usize) {
        self.lock()
            .watch_failures
            .push((fragment.to_string(), code, times));
    }

    /// An object, if stored.
    pub fn get(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.lock()
            .objects
            .get(&(
                group.into(),
                plural.into(),
                namespace.map(str::to_string),
                name.into(),
            ))
            .cloned()
    }

    /// Stores an object as another field manager (or a human) would.
    pub fn put(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        body: Value,
        manager: &str,
    ) {
        let mut store = self.lock();
        let name = body["metadata"]["name"].as_str().expect("name").to_string();
        let mut body = body;
        body["metadata"]["managedFields"] = json!([{ "manager": manager, "operation": "Apply" }]);
        store.objects.insert(
            (
                group.into(),
                plural.into(),
                namespace.map(str::to_string),
                name,
            ),
            body,
        );
    }

    /// Names of stored objects of a type.
    pub fn names(&self, group: &str, plural: &str) -> Vec<String> {
        self.lock()
            .objects
            .keys()
            .filter(|(g, p, _, _)| g == group && p == plural)
            .map(|(_, _, _, name)| name.clone())
            .collect()
    }
}

impl Drop for ApiServerStandIn {
    fn drop(&mut self) {
        let _ = self.closing.send(true);
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A watch: one injected ERROR event, or a stream that stays open until the server stops.
fn watch(store: &mut Store, path: &str) -> Response {
    let injected = store
        .watch_failures
        .iter_mut()
        .find(|(fragment, _, left)| *left > 0 && path.contains(fragment.as_str()));
    if let Some(failure) = injected {
        failure.2 -= 1;
        let event = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": failure.1}});
        return (StatusCode::OK, format!("{event}\n")).into_response();
    }
    let Some(mut closing) = store.closing.clone() else {
        return status(500, "InternalError", "no server to watch with".into());
    };
    let open = futures_util::stream::once(async move {
        let _ = closing.wait_for(|closed| *closed).await;
    })
    .filter_map(|()| async { None::<Result<Bytes, std::convert::Infallible>> });
    (StatusCode::OK, axum::body::Body::from_stream(open)).into_response()
}

fn status(code: u16, reason: &str, message: String) -> Response {
    status_with_details(code, reason, message, json!({}))
}

/// A failure as the real API server words it, `details` included (what a client reads the
/// missing object or the conflicting managers from).
fn status_with_details(code: u16, reason: &str, message: String, details: Value) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
        "details": details,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

fn not_found(plural: &str, name: &str) -> Response {
    status_with_details(
        404,
        "NotFound",
        format!("{plural} \"{name}\" not found"),
        json!({"name": name, "kind": plural}),
    )
}

fn ok(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn matches_selector(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        match term.split_once('=') {
            Some((key, value)) => {
                object["metadata"]["labels"][key].as_str() == Some(value.trim_start_matches('='))
            }
            // `key` alone: the label exists.
            None => object["metadata"]["labels"][term].is_string(),
        }
    })
}

fn discovery(store: &Store, path: &str) -> Option<Response> {
    if path == "/api" {
        return Some(ok(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        ));
    }
    if path == "/apis" {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for resource in store.resources.iter().filter(|r| !r.group.is_empty()) {
            let versions = groups.entry(resource.group.clone()).or_default();
            if !versions.contains(&resource.version) {
                versions.push(resource.version.clone());
            }
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(name, versions)| {
                let versions: Vec<Value> = versions
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                    .collect();
                json!({"name": name, "versions": versions.clone(), "preferredVersion": versions[0]})
            })
            .collect();
        return Some(ok(
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
        ));
    }
    let (group, version) = if let Some(version) = path.strip_prefix("/api/") {
        ("", version)
    } else {
        let rest = path.strip_prefix("/apis/")?;
        rest.split_once('/')?
    };
    if version.contains('/') {
        return None;
    }
    let resources: Vec<Value> = store
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            json!({
                "name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
                "kind": r.kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            })
        })
        .collect();
    if resources.is_empty() {
        return Some(status(
            404,
            "NotFound",
            format!("the server could not find {path}"),
        ));
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(ok(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    ))
}

/// Server defaults and controller results, so live objects differ from what was applied the
/// way real ones do.
fn complete(object: &mut Value, resource: &Resource, generation: i64) {
    let replicas = object["spec"]["replicas"].as_i64().unwrap_or(1);
    match resource.kind.as_str() {
        "Deployment" => {
            if object["spec"]["strategy"].is_null() {
                object["spec"]["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}});
            }
            if object["spec"]["revisionHistoryLimit"].is_null() {
                object["spec"]["revisionHistoryLimit"] = json!(10);
            }
            object["status"] = json!({"observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas});
        }
        "StatefulSet" => {
            object["status"] = json!({"observedGeneration": generation, "replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas, "currentRevision": "r", "updateRevision": "r"});
        }
        "DaemonSet" => {
            object["status"] = json!({"observedGeneration": generation, "desiredNumberScheduled": 1, "updatedNumberScheduled": 1, "numberAvailable": 1});
        }
        "Service" => {
            if object["spec"]["type"].is_null() {
                object["spec"]["type"] = json!("ClusterIP");
            }
            if object["spec"]["clusterIP"].is_null() {
                object["spec"]["clusterIP"] = json!("10.96.0.10");
            }
        }
        "CustomResourceDefinition" => {
            object["status"] = json!({"conditions": [{"type": "Established", "status": "True"}]});
        }
        _ => {}
    }
}

/// Serves the types a CRD defines.
fn serve_crd(store: &mut Store, crd: &Value) {
    let spec = &crd["spec"];
    for version in spec["versions"].as_array().cloned().unwrap_or_default() {
        let served = Resource {
            group: spec["group"].as_str().unwrap_or("").into(),
            version: version["name"].as_str().unwrap_or("").into(),
            kind: spec["names"]["kind"].as_str().unwrap_or("").into(),
            plural: spec["names"]["plural"].as_str().unwrap_or("").into(),
            namespaced: spec["scope"].as_str() == Some("Namespaced"),
        };
        if !store.resources.contains(&served) {
            store.resources.push(served);
        }
    }
}

fn handle(
    store: &Mutex<Store>,
    method: Method,
    uri: Uri,
    params: &BTreeMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut store = store.lock().expect("stand-in store");
    let path = uri.path().trim_end_matches('/').to_string();
    if method == Method::GET
        && let Some(response) = discovery(&store, &path)
    {
        *store
            .requests
            .entry(format!("DISCOVERY {path}"))
            .or_default() += 1;
        return response;
    }
    // /api/v1/... or /apis/{group}/{version}/...
    let (group, version, rest): (String, String, Vec<String>) = {
        let segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        match segments.first().map(String::as_str) {
            Some("api") if segments.len() >= 3 => {
                (String::new(), segments[1].clone(), segments[2..].to_vec())
            }
            Some("apis") if segments.len() >= 4 => (
                segments[1].clone(),
                segments[2].clone(),
                segments[3..].to_vec(),
            ),
            _ => return status(404, "NotFound", format!("the server could not find {path}")),
        }
    };
    let (namespace, plural, name) =
        if rest.first().map(String::as_str) == Some("namespaces") && rest.len() >= 3 {
            (Some(rest[1].clone()), rest[2].clone(), rest.get(3).cloned())
        } else {
            (None, rest[0].clone(), rest.get(1).cloned())
        };
    let Some(resource) = store
        .resources
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
        .cloned()
    else {
        return status(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        );
    };
    let watching = params
        .get("watch")
        .is_some_and(|watch| watch == "true" || watch == "1");
    let verb = match (&method, &name) {
        (&Method::GET, None) if watching => "WATCH",
        (&Method::GET, None) => "LIST",
        (&Method::GET, Some(_)) => "GET",
        (&Method::PATCH, _) => "PATCH",
        (&Method::DELETE, _) => "DELETE",
        _ => "OTHER",
    };
    *store
        .requests
        .entry(format!("{verb} {plural}"))
        .or_default() += 1;
    if let Some(failure) = store.failures.iter_mut().find(|(m, fragment, _, left)| {
        *m == method && *left > 0 && path.contains(fragment.as_str())
    }) {
        failure.3 -= 1;
        let code = failure.2;
        return status(
            code,
            "InjectedFailure",
            format!("injected failure {code} for {path}"),
        );
    }
    match (verb, name) {
        ("WATCH", None) => watch(&mut store, &path),
        ("LIST", None) => {
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|((g, p, ns, _), _)| {
                    *g == group && *p == plural && (namespace.is_none() || *ns == namespace)
                })
                .filter(|(_, object)| matches_selector(object, params.get("labelSelector")))
                .map(|(_, object)| {
                    let mut item = object.clone();
                    // Like the real API server, list items leave out their type.
                    if let Some(map) = item.as_object_mut() {
                        map.remove("apiVersion");
                        map.remove("kind");
                    }
                    item
                })
                .collect();
            let list_version = if group.is_empty() {
                version.clone()
            } else {
                format!("{group}/{version}")
            };
            ok(
                json!({"kind": format!("{}List", resource.kind), "apiVersion": list_version, "metadata": {"resourceVersion": store.next_resource_version.to_string()}, "items": items}),
            )
        }
        ("GET", Some(name))
            if resource.kind == "CustomResourceDefinition"
                && store.pending_crds.contains_key(&name) =>
        {
            let left = store.pending_crds.get(&name).copied().unwrap_or(0);
            let key = (group.clone(), plural.clone(), None, name.clone());
            if left <= 1 {
                store.pending_crds.remove(&name);
                if let Some(mut object) = store.objects.get(&key).cloned() {
                    serve_crd(&mut store, &object);
                    object["status"] =
                        json!({"conditions": [{"type": "Established", "status": "True"}]});
                    store.objects.insert(key.clone(), object);
                }
            } else {
                store.pending_crds.insert(name.clone(), left - 1);
            }
            match store.objects.get(&key) {
                Some(object) => ok(object.clone()),
                None => not_found(&plural, &name),
            }
        }
        ("GET", Some(name)) => match store.objects.get(&(
            group.clone(),
            plural.clone(),
            namespace.clone(),
            name.clone(),
        )) {
            Some(object) => ok(object.clone()),
            None => not_found(&plural, &name),
        },
        ("DELETE", Some(name)) => match store.objects.remove(&(
            group.clone(),
            plural.clone(),
            namespace.clone(),
            name.clone(),
        )) {
            Some(object) => {
                if resource.kind == "CustomResourceDefinition" {
                    let served = object["spec"]["names"]["plural"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    store
                        .resources
                        .retain(|r| r.plural != served || r.kind == "CustomResourceDefinition");
                }
                ok(json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}))
            }
            None => not_found(&plural, &name),
        },
        ("PATCH", Some(name)) => {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !content_type.starts_with("application/apply-patch") {
                return status(
                    415,
                    "UnsupportedMediaType",
                    format!("the stand-in only serves server-side apply, not {content_type}"),
                );
            }
            let Ok(mut applied) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest", "the apply body is not JSON".into());
            };
            let manager = params.get("fieldManager").cloned().unwrap_or_default();
            if manager.is_empty() {
                return status(
                    422,
                    "Invalid",
                    "fieldManager is required for apply patches".into(),
                );
            }
            if applied["metadata"]["name"].as_str() != Some(name.as_str()) {
                return status(
                    400,
                    "BadRequest",
                    "the name in the body does not match the URL".into(),
                );
            }
            if applied["spec"]["replicas"].as_i64().is_some_and(|r| r < 0) {
                return status(
                    422,
                    "Invalid",
                    format!(
                        "{} \"{name}\" is invalid: spec.replicas: must be non-negative",
                        resource.kind
                    ),
                );
            }
            let key = (
                group.clone(),
                plural.clone(),
                namespace.clone(),
                name.clone(),
            );
            let existing = store.objects.get(&key).cloned();
            let force = params.get("force").map(String::as_str) == Some("true");
            if let Some(existing) = &existing {
                let owner = existing["metadata"]["managedFields"][0]["manager"]
                    .as_str()
                    .unwrap_or("");
                if !owner.is_empty() && owner != manager && !force {
                    return status_with_details(
                        409,
                        "Conflict",
                        format!("Apply failed with 1 conflict: conflict with \"{owner}\": .spec"),
                        json!({"causes": [{
                            "reason": "FieldManagerConflict",
                            "message": format!("conflict with \"{owner}\""),
                            "field": ".spec",
                        }]}),
                    );
                }
            }
            let generation = match &existing {
                Some(existing) if existing["spec"] == applied["spec"] => {
                    existing["metadata"]["generation"].as_i64().unwrap_or(1)
                }
                Some(existing) => existing["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
                None => 1,
            };
            let resource_version = store.next_resource_version + 1;
            let metadata = &mut applied["metadata"];
            metadata["uid"] = existing.as_ref().map_or_else(
                || json!(format!("uid-{resource_version}")),
                |e| e["metadata"]["uid"].clone(),
            );
            metadata["resourceVersion"] = json!(resource_version.to_string());
            metadata["generation"] = json!(generation);
            metadata["creationTimestamp"] = existing.as_ref().map_or_else(
                || json!("2026-11-22T00:00:00Z"),
                |e| e["metadata"]["creationTimestamp"].clone(),
            );
            metadata["managedFields"] = json!([{ "manager": manager, "operation": "Apply" }]);
            if resource.namespaced {
                metadata["namespace"] =
                    json!(namespace.clone().unwrap_or_else(|| "default".into()));
            }
            complete(&mut applied, &resource, generation);
            let dry_run = params.get("dryRun").map(String::as_str) == Some("All");
            if !dry_run {
                store.next_resource_version = resource_version;
                if resource.kind == "CustomResourceDefinition" {
                    if store.crd_delay > 0 && existing.is_none() {
                        applied["status"] =
                            json!({"conditions": [{"type": "Established", "status": "False"}]});
                        let delay = store.crd_delay;
                        store.pending_crds.insert(name.clone(), delay);
                    } else {
                        serve_crd(&mut store, &applied);
                    }
                }
                store.objects.insert(key, applied.clone());
            }
            ok(applied)
        }
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{method} {path} is not served by the stand-in"),
        ),
    }
}
