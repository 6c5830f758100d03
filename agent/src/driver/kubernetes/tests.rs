use std::pin::pin;

use http::{Request, Response};
use k8s_openapi::api::apps::v1::{DeploymentStatus, StatefulSetStatus};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

use super::rollout::{self, Rollout};
use super::*;

/// A driver whose requests come out of the returned handle, in order.
fn mocked() -> (KubernetesDriver, mock::Handle<Request<Body>, Response<Body>>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (KubernetesDriver::with_client(Client::new(service, "default")), handle)
}

fn answer(status: u16, body: &Value) -> Response<Body> {
    Response::builder().status(status).body(Body::from(serde_json::to_vec(body).expect("json"))).expect("response")
}

#[tokio::test]
async fn every_object_is_a_forced_server_side_apply_as_windflow() {
    let (driver, handle) = mocked();
    let cluster = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (request, reply) = handle.next_request().await.expect("a request");
        assert_eq!(request.method(), http::Method::PATCH);
        assert_eq!(request.uri().path(), "/api/v1/namespaces/shop/secrets/token");
        let query = request.uri().query().unwrap_or_default().to_owned();
        assert!(query.contains("fieldManager=windflow") && query.contains("force=true"), "{query}");
        let content_type = request.headers().get(http::header::CONTENT_TYPE).cloned();
        assert_eq!(content_type.as_ref().and_then(|v| v.to_str().ok()), Some("application/apply-patch+yaml"));
        let body: Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.expect("body")).expect("json");
        // A full intent, with its type: what server-side apply merges by field owner.
        assert_eq!((body["apiVersion"].as_str(), body["kind"].as_str()), (Some("v1"), Some("Secret")));
        assert_eq!(body["metadata"]["labels"][LABEL_MANAGED], "true");
        reply.send_response(answer(200, &body));
    });
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("token".into()),
            namespace: Some("shop".into()),
            labels: Some(BTreeMap::from([(LABEL_MANAGED.to_owned(), "true".to_owned())])),
            ..Default::default()
        },
        ..Default::default()
    };
    driver.apply_one(&driver.namespaced::<Secret>("shop"), &secret).await.expect("applied");
    cluster.await.expect("the cluster saw the request");
}

#[tokio::test]
async fn an_api_refusal_is_reported_with_the_clusters_own_message() {
    let (driver, handle) = mocked();
    tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (_, reply) = handle.next_request().await.expect("a request");
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422, "reason": "Invalid",
            "message": "Secret \"Token\" is invalid: metadata.name: Invalid value: \"Token\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters"
        });
        reply.send_response(answer(422, &status));
    });
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some("Token".into()), ..Default::default() },
        ..Default::default()
    };
    let error = driver.apply_one(&driver.namespaced::<Secret>("shop"), &secret).await.expect_err("refused");
    let message = error.to_string();
    assert!(message.starts_with("applying Secret Token: "), "{message}");
    assert!(message.contains("lowercase RFC 1123"), "{message}");
}

#[tokio::test]
async fn status_lists_the_deployments_services_and_pods_by_label() {
    let (driver, handle) = mocked();
    let deployment = Uuid::from_u128(9);
    tokio::spawn(async move {
        let mut handle = pin!(handle);
        let mut paths = Vec::new();
        while let Some((request, reply)) = handle.next_request().await {
            let query = request.uri().query().unwrap_or_default().to_owned();
            assert!(query.contains(&format!("labelSelector=io.windflow.deployment%3D{deployment}")), "{query}");
            let path = request.uri().path().to_owned();
            let items = match path.as_str() {
                "/apis/apps/v1/deployments" => {
                    json!([{ "metadata": { "name": "web", "labels": { LABEL_SERVICE: "web" } } }])
                }
                "/api/v1/pods" => json!([{
                    "metadata": { "name": "web-1", "uid": "u1", "labels": { LABEL_SERVICE: "web" },
                        "annotations": { ANNOTATION_CONFIG_HASH: "abc" } },
                    "spec": { "containers": [{ "name": "web", "readinessProbe": { "exec": { "command": ["true"] } } }] },
                    "status": { "containerStatuses": [{ "name": "web", "ready": true, "restartCount": 2, "image": "x",
                        "imageID": "", "state": { "running": {} } }] }
                }]),
                _ => json!([]),
            };
            paths.push(path);
            reply.send_response(answer(200, &json!({ "metadata": {}, "items": items })));
        }
    });
    let status = driver.status(deployment, "shop").await.expect("status");
    assert_eq!(status.services.len(), 1);
    let web = &status.services[0];
    assert_eq!(web.service, "web");
    let pod = &web.containers[0];
    assert_eq!(
        (pod.state.clone(), pod.health, pod.restart_count),
        (ContainerState::Running, Some(HealthState::Healthy), 2)
    );
    assert_eq!(pod.config_hash, "abc");
}

fn deployment(generation: i64, status: DeploymentStatus) -> Deployment {
    serde_json::from_value(json!({
        "metadata": { "name": "web", "generation": generation },
        "spec": { "replicas": 2, "selector": {}, "template": {} },
    }))
    .map(|mut d: Deployment| {
        d.status = Some(status);
        d
    })
    .expect("deployment")
}

#[test]
fn a_deployment_is_rolled_out_once_every_replica_is_new_and_available_and_the_old_ones_gone() {
    let generations = BTreeMap::from([("web".to_owned(), 2)]);
    let state = |status| BTreeMap::from([("web".to_owned(), rollout::of_deployment(&deployment(2, status)))]);
    let not_seen = DeploymentStatus { observed_generation: Some(1), ..Default::default() };
    assert_eq!(rollout::summary(&generations, &state(not_seen)), (0, "rollout: web waiting".to_owned()));
    let surging = DeploymentStatus {
        observed_generation: Some(2),
        replicas: Some(3),
        updated_replicas: Some(2),
        available_replicas: Some(3),
        ..Default::default()
    };
    assert_eq!(rollout::summary(&generations, &state(surging)).0, 0, "an old pod still runs");
    let done = DeploymentStatus {
        observed_generation: Some(2),
        replicas: Some(2),
        updated_replicas: Some(2),
        available_replicas: Some(2),
        ..Default::default()
    };
    assert_eq!(rollout::summary(&generations, &state(done)), (1, "rollout: web 2/2 ready".to_owned()));
}

#[test]
fn a_deployment_past_its_progress_deadline_is_a_failure_with_the_clusters_words() {
    let status: DeploymentStatus = serde_json::from_value(json!({
        "observedGeneration": 1,
        "conditions": [{ "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet \"web-5d\" has timed out progressing." }]
    }))
    .expect("status");
    let state = rollout::of_deployment(&deployment(1, status));
    assert_eq!(state.failure.as_deref(), Some("Deployment web: ReplicaSet \"web-5d\" has timed out progressing."));
}

#[test]
fn a_stateful_set_is_rolled_out_when_its_current_revision_is_the_update_revision() {
    let set = |current: &str| {
        let mut s: StatefulSet = serde_json::from_value(json!({
            "metadata": { "name": "db", "generation": 1 },
            "spec": { "replicas": 1, "selector": {}, "template": {} }
        }))
        .expect("set");
        s.status = Some(StatefulSetStatus {
            observed_generation: Some(1),
            replicas: 1,
            updated_replicas: Some(1),
            ready_replicas: Some(1),
            current_revision: Some(current.into()),
            update_revision: Some("db-2".into()),
            ..Default::default()
        });
        rollout::of_stateful_set(&s)
    };
    assert!(!set("db-1").is_done(1));
    assert!(set("db-2").is_done(1));
    assert_eq!(
        set("db-2"),
        Rollout {
            name: "db".into(),
            observed_generation: 1,
            desired: 1,
            updated: 1,
            ready: 1,
            failure: None,
            old_revision: false
        }
    );
}

#[test]
fn a_pod_that_cannot_pull_its_image_fails_the_deploy_and_one_starting_does_not() {
    let pod = |reason: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "web-1" },
            "status": { "containerStatuses": [{ "name": "web", "ready": false, "restartCount": 0, "image": "x",
                "imageID": "", "state": { "waiting": { "reason": reason, "message": "pull access denied" } } }] }
        }))
        .expect("pod")
    };
    assert_eq!(
        rollout::pod_failure(&pod("ImagePullBackOff")).as_deref(),
        Some("pod web-1: ImagePullBackOff: pull access denied")
    );
    assert_eq!(rollout::pod_failure(&pod("ContainerCreating")), None);
    let status = pod_status(&pod("ContainerCreating"));
    assert_eq!((status.state, status.health), (ContainerState::Other("ContainerCreating".into()), None));
}

#[test]
fn log_lines_keep_their_timestamp() {
    assert_eq!(split_timestamp("2024-05-01T10:00:00.5Z hello world"), (1_714_557_600_500, "hello world"));
    assert_eq!(split_timestamp("no stamp here"), (0, "no stamp here"));
}
