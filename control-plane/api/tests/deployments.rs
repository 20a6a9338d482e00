//! Deployments, job versions and reverts through the HTTP API: the real router over a
//! `MemStore`, on a loopback port.

use std::sync::Arc;

use flotilla_api::{ApiState, router};
use flotilla_store::{MemStore, Op, Store};
use flotilla_types::*;
use serde_json::{Value, json};

struct Api {
    base: String,
    store: Arc<MemStore>,
    http: reqwest::Client,
}

impl Api {
    async fn start(store: Arc<MemStore>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(ApiState {
            store: store.clone(),
            rpc_addr: addr,
            http: reqwest::Client::new(),
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base: format!("http://{addr}"),
            store,
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POST a body; the answer as JSON, or as a string when it is not JSON (errors).
    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn state(&self) -> Arc<flotilla_store::State> {
        self.store.snapshot()
    }

    fn deployment(&self, id: &str) -> Deployment {
        (**self.state().deployment(id).unwrap()).clone()
    }

    fn apply(&self, ops: Vec<Op>) {
        self.store.apply(ops).unwrap();
    }
}

fn job(version: u64, image: &str, auto_revert: bool) -> Job {
    let mut j = Job {
        id: "web".into(),
        version,
        stable: version == 0,
        meta: [("image".to_string(), image.to_string())].into(),
        task_groups: vec![TaskGroup {
            name: "web".into(),
            count: 2,
            update: Some(UpdateStrategy {
                max_parallel: 1,
                canary: 1,
                auto_revert,
                ..Default::default()
            }),
            tasks: vec![Task {
                name: "server".into(),
                driver: "raw_exec".into(),
                config: [("command".to_string(), json!("/bin/true"))].into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    j.canonicalize();
    j
}

const DEPLOYMENT: &str = "d1000000-0000-0000-0000-000000000000";
const CANARY: &str = "a1000000-0000-0000-0000-000000000000";

fn deployment(auto_revert: bool) -> Deployment {
    Deployment {
        id: DEPLOYMENT.into(),
        namespace: DEFAULT_NAMESPACE.into(),
        job_id: "web".into(),
        job_version: 1,
        status: DEPLOYMENT_STATUS_RUNNING.into(),
        status_description: DEPLOYMENT_DESC_NEEDS_PROMOTION.into(),
        task_groups: [(
            "web".to_string(),
            DeploymentState {
                auto_revert,
                desired_canaries: 1,
                desired_total: 2,
                placed_canaries: vec![CANARY.into()],
                placed_allocs: 1,
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    }
}

fn canary(healthy: Option<bool>) -> Allocation {
    Allocation {
        id: CANARY.into(),
        namespace: DEFAULT_NAMESPACE.into(),
        job_id: "web".into(),
        task_group: "web".into(),
        name: "web.web[0]".into(),
        desired_status: ALLOC_DESIRED_RUN.into(),
        client_status: ALLOC_CLIENT_RUNNING.into(),
        deployment_id: DEPLOYMENT.into(),
        deployment_status: Some(AllocDeploymentStatus {
            healthy,
            canary: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Job `web` at versions 0 (stable) and 1, a running deployment of version 1 with one
/// canary placed (health not decided yet).
async fn cluster(auto_revert: bool) -> Api {
    let store = Arc::new(MemStore::new());
    store
        .apply(vec![Op::PutJob(job(0, "v0", auto_revert))])
        .unwrap();
    store
        .apply(vec![
            Op::PutJob(job(1, "v1", auto_revert)),
            Op::PutDeployment(deployment(auto_revert)),
            Op::PutAlloc(canary(None)),
        ])
        .unwrap();
    Api::start(store).await
}

fn eval_of(api: &Api, resp: &Value) -> Evaluation {
    let id = resp["EvalID"].as_str().unwrap();
    (**api
        .state()
        .eval(id)
        .unwrap_or_else(|| panic!("no evaluation {id}")))
    .clone()
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[tokio::test]
async fn reads_deployments_by_id_job_and_list() {
    let api = cluster(false).await;
    let (status, d) = api.get(&format!("/v1/deployment/{DEPLOYMENT}")).await;
    assert_eq!(status, 200);
    assert_eq!(d["JobVersion"], 1);
    assert_eq!(d["TaskGroups"]["web"]["DesiredCanaries"], 1);
    // A unique prefix works too.
    assert_eq!(api.get("/v1/deployment/d1000").await.1["ID"], DEPLOYMENT);

    let (status, body) = api.get("/v1/deployment/nope").await;
    assert_eq!(status, 404);
    assert!(text(&body).contains("\"nope\""), "{body}");

    // A newer deployment is listed first.
    let mut newer = deployment(false);
    newer.id = "d2000000-0000-0000-0000-000000000000".into();
    newer.status = DEPLOYMENT_STATUS_SUCCESSFUL.into();
    api.apply(vec![Op::PutDeployment(newer)]);
    let (_, list) = api.get("/v1/deployments").await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["ID"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec!["d2000000-0000-0000-0000-000000000000", DEPLOYMENT]
    );
    assert_eq!(
        api.get("/v1/deployments?prefix=d1").await.1[0]["ID"],
        DEPLOYMENT
    );
    assert_eq!(
        api.get("/v1/deployments?namespace=other")
            .await
            .1
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert_eq!(
        api.get("/v1/job/web/deployments").await.1[1]["ID"],
        DEPLOYMENT
    );
    assert_eq!(
        api.get("/v1/job/web/deployment").await.1["ID"],
        "d2000000-0000-0000-0000-000000000000"
    );
    assert_eq!(api.get("/v1/job/nope/deployment").await.0, 404);

    // A job with no deployment: null.
    let mut other = job(0, "x", false);
    other.id = "other".into();
    api.apply(vec![Op::PutJob(other)]);
    let (status, latest) = api.get("/v1/job/other/deployment").await;
    assert_eq!((status, latest), (200, Value::Null));

    let (status, allocs) = api
        .get(&format!("/v1/deployment/allocations/{DEPLOYMENT}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(allocs[0]["ID"], CANARY);
    assert_eq!(allocs.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn promote_refuses_until_canaries_are_healthy() {
    let api = cluster(false).await;
    let path = format!("/v1/deployment/promote/{DEPLOYMENT}");

    let (status, body) = api.post(&path, r#"{"All": true}"#).await;
    assert_eq!(status, 400);
    assert!(
        text(&body).contains("task group \"web\" has 0/1 healthy canaries")
            && text(&body).contains(DEPLOYMENT),
        "{body}"
    );
    let (status, body) = api.post(&path, r#"{"Groups": ["api"]}"#).await;
    assert_eq!(status, 400);
    assert!(text(&body).contains("no task group \"api\""), "{body}");
    let (status, body) = api.post(&path, r#"{}"#).await;
    assert_eq!(status, 400);
    assert!(text(&body).contains("Groups"), "{body}");
    let (status, body) = api.post(&path, r#"{"Groups": "web"}"#).await;
    assert_eq!(status, 400);
    assert!(text(&body).contains("Groups"), "{body}");
    let (status, body) = api
        .post(&path, r#"{"DeploymentID": "other", "All": true}"#)
        .await;
    assert_eq!(status, 400);
    assert!(text(&body).contains("DeploymentID"), "{body}");

    // An unhealthy canary does not count; nor does a healthy one that stopped.
    api.apply(vec![Op::PutAlloc(canary(Some(false)))]);
    assert_eq!(api.post(&path, r#"{"All": true}"#).await.0, 400);
    let mut stopped = canary(Some(true));
    stopped.desired_status = ALLOC_DESIRED_STOP.into();
    api.apply(vec![Op::PutAlloc(stopped)]);
    assert_eq!(api.post(&path, r#"{"All": true}"#).await.0, 400);

    // A paused deployment is not promoted.
    api.apply(vec![Op::PutAlloc(canary(Some(true)))]);
    let mut paused = api.deployment(DEPLOYMENT);
    paused.status = DEPLOYMENT_STATUS_PAUSED.into();
    api.apply(vec![Op::PutDeployment(paused)]);
    let (status, body) = api.post(&path, r#"{"All": true}"#).await;
    assert_eq!(status, 400);
    assert!(text(&body).contains("is paused"), "{body}");
    let mut running = api.deployment(DEPLOYMENT);
    running.status = DEPLOYMENT_STATUS_RUNNING.into();
    api.apply(vec![Op::PutDeployment(running)]);

    let (status, resp) = api.post(&path, r#"{"Groups": ["web"]}"#).await;
    assert_eq!(status, 200, "{resp}");
    let d = api.deployment(DEPLOYMENT);
    assert!(d.task_groups["web"].promoted);
    assert_eq!(d.status_description, DEPLOYMENT_DESC_RUNNING);
    let eval = eval_of(&api, &resp);
    assert_eq!(eval.triggered_by, TRIGGER_DEPLOYMENT_WATCHER);
    assert_eq!(eval.status, EVAL_STATUS_PENDING);
    assert_eq!(eval.job_id, "web");
    // The deployment and its evaluation were written together.
    assert_eq!(d.modify_index, eval.create_index);
    assert_eq!(resp["DeploymentModifyIndex"], d.modify_index);

    // Nothing is left to promote.
    let (status, body) = api.post(&path, r#"{"All": true}"#).await;
    assert_eq!(status, 400);
    assert!(
        text(&body).contains("no canaries awaiting promotion"),
        "{body}"
    );
}

#[tokio::test]
async fn promote_refuses_groups_without_canaries() {
    let api = cluster(false).await;
    let mut d = api.deployment(DEPLOYMENT);
    if let Some(s) = d.task_groups.get_mut("web") {
        s.desired_canaries = 0;
        s.placed_canaries.clear();
    }
    api.apply(vec![Op::PutDeployment(d)]);
    let path = format!("/v1/deployment/promote/{DEPLOYMENT}");
    let (status, body) = api.post(&path, r#"{"Groups": ["web"]}"#).await;
    assert_eq!(status, 400);
    assert!(
        text(&body).contains("task group \"web\" has no canaries"),
        "{body}"
    );
    let (status, body) = api.post(&path, r#"{"All": true}"#).await;
    assert_eq!(status, 400);
    assert!(
        text(&body).contains("no canaries awaiting promotion"),
        "{body}"
    );
}

#[tokio::test]
async fn pause_and_resume() {
    let api = cluster(false).await;
    let path = format!("/v1/deployment/pause/{DEPLOYMENT}");
    let (status, resp) = api.post(&path, r#"{"Pause": true}"#).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["EvalID"], "");
    let d = api.deployment(DEPLOYMENT);
    assert_eq!(d.status, DEPLOYMENT_STATUS_PAUSED);
    assert_eq!(d.status_description, DEPLOYMENT_DESC_PAUSED);

    let (status, resp) = api.post(&path, r#"{"Pause": false}"#).await;
    assert_eq!(status, 200, "{resp}");
    let d = api.deployment(DEPLOYMENT);
    assert_eq!(d.status, DEPLOYMENT_STATUS_RUNNING);
    assert_eq!(d.status_description, DEPLOYMENT_DESC_RUNNING);
    assert_eq!(
        eval_of(&api, &resp).triggered_by,
        TRIGGER_DEPLOYMENT_WATCHER
    );

    let (status, body) = api.post(&path, r#"{"Pause": "yes"}"#).await;
    assert_eq!(status, 400);
    assert!(text(&body).contains("Pause"), "{body}");
    let (status, _) = api.post(&path, "").await;
    assert_eq!(status, 400);

    // Only active deployments.
    let mut done = api.deployment(DEPLOYMENT);
    done.status = DEPLOYMENT_STATUS_SUCCESSFUL.into();
    api.apply(vec![Op::PutDeployment(done)]);
    let (status, body) = api.post(&path, r#"{"Pause": true}"#).await;
    assert_eq!(status, 400);
    assert!(
        text(&body).contains("is successful") && text(&body).contains(DEPLOYMENT),
        "{body}"
    );
}

#[tokio::test]
async fn fail_without_auto_revert_keeps_the_job() {
    let api = cluster(false).await;
    let (status, resp) = api
        .post(&format!("/v1/deployment/fail/{DEPLOYMENT}"), "")
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["RevertedJobVersion"], Value::Null);
    let d = api.deployment(DEPLOYMENT);
    assert_eq!(d.status, DEPLOYMENT_STATUS_FAILED);
    assert_eq!(d.status_description, DEPLOYMENT_DESC_FAILED_BY_USER);
    assert_eq!(
        eval_of(&api, &resp).triggered_by,
        TRIGGER_DEPLOYMENT_WATCHER
    );
    assert_eq!(
        api.state().job(DEFAULT_NAMESPACE, "web").unwrap().version,
        1
    );

    // A failed deployment cannot fail again.
    let (status, body) = api
        .post(&format!("/v1/deployment/fail/{DEPLOYMENT}"), "{}")
        .await;
    assert_eq!(status, 400);
    assert!(text(&body).contains("is failed"), "{body}");
}

#[tokio::test]
async fn fail_with_auto_revert_goes_back_to_the_stable_version() {
    let api = cluster(true).await;
    let (status, resp) = api
        .post(
            &format!("/v1/deployment/fail/{DEPLOYMENT}"),
            &json!({ "DeploymentID": DEPLOYMENT }).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["RevertedJobVersion"], 0);
    let d = api.deployment(DEPLOYMENT);
    assert_eq!(d.status, DEPLOYMENT_STATUS_FAILED);
    assert_eq!(
        d.status_description,
        format!("{DEPLOYMENT_DESC_FAILED_BY_USER} - rolling back to job version 0")
    );
    let state = api.state();
    let job = state.job(DEFAULT_NAMESPACE, "web").unwrap();
    assert_eq!(job.version, 2);
    assert_eq!(job.meta["image"], "v0");
    assert!(!job.stable);
    assert_eq!(eval_of(&api, &resp).triggered_by, TRIGGER_JOB_REVERT);
}

#[tokio::test]
async fn revert_checks_the_version_then_registers_it_again() {
    let api = cluster(false).await;
    let path = "/v1/job/web/revert";
    let cases = [
        (r#"{"JobVersion": 7}"#, "no version 7"),
        (r#"{"JobVersion": 1}"#, "already at version 1"),
        (
            r#"{"JobVersion": 0, "EnforcePriorVersion": 0}"#,
            "EnforcePriorVersion",
        ),
        (r#"{"JobVersion": "zero"}"#, "JobVersion"),
        (r#"{"JobID": "api", "JobVersion": 0}"#, "JobID"),
    ];
    for (body, want) in cases {
        let (status, resp) = api.post(path, body).await;
        assert_eq!(status, 400, "{body}: {resp}");
        assert!(text(&resp).contains(want), "{body}: {resp}");
    }
    let (status, resp) = api.post(path, r#"{"JobVersion": 7}"#).await;
    assert_eq!(status, 400);
    assert!(
        text(&resp).contains("job \"web\"") && text(&resp).contains("kept versions: 1, 0"),
        "{resp}"
    );
    assert_eq!(
        api.post("/v1/job/nope/revert", r#"{"JobVersion": 0}"#)
            .await
            .0,
        404
    );

    let (status, resp) = api
        .post(path, r#"{"JobVersion": 0, "EnforcePriorVersion": 1}"#)
        .await;
    assert_eq!(status, 200, "{resp}");
    let state = api.state();
    let job = state.job(DEFAULT_NAMESPACE, "web").unwrap();
    assert_eq!(job.version, 2);
    assert_eq!(job.meta["image"], "v0");
    let eval = eval_of(&api, &resp);
    assert_eq!(eval.triggered_by, TRIGGER_JOB_REVERT);
    assert_eq!(resp["JobModifyIndex"], job.job_modify_index);
}

#[tokio::test]
async fn versions_newest_first_with_diffs() {
    let api = cluster(false).await;
    let (status, resp) = api.get("/v1/job/web/versions").await;
    assert_eq!(status, 200);
    let versions: Vec<(u64, bool)> = resp["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["Version"].as_u64().unwrap(),
                j["Stable"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(versions, vec![(1, false), (0, true)]);
    assert!(resp.get("Diffs").is_none());

    let (_, resp) = api.get("/v1/job/web/versions?diffs=true").await;
    let diffs = resp["Diffs"].as_array().unwrap();
    assert_eq!(diffs.len(), 1);
    assert_eq!(diffs[0]["Type"], "Edited");
    assert_eq!(
        diffs[0]["Fields"],
        json!([{"Type": "Edited", "Name": "Meta.image", "Old": "v0", "New": "v1"}])
    );
    assert_eq!(diffs[0]["TaskGroups"][0]["Type"], "None");
    assert_eq!(api.get("/v1/job/nope/versions").await.0, 404);
}

#[tokio::test]
async fn registering_the_same_job_keeps_its_stability() {
    let api = cluster(false).await;
    let mut stable = (**api.state().job(DEFAULT_NAMESPACE, "web").unwrap()).clone();
    stable.stable = true;
    api.apply(vec![Op::PutJob(stable.clone())]);
    let body = json!({ "Job": job(0, "v1", false) }).to_string();
    let (status, resp) = api.post("/v1/jobs", &body).await;
    assert_eq!(status, 200, "{resp}");
    let state = api.state();
    let job_now = state.job(DEFAULT_NAMESPACE, "web").unwrap();
    assert_eq!((job_now.version, job_now.stable), (1, true));

    // A change is a new version, not stable yet.
    let body = json!({ "Job": job(0, "v3", false) }).to_string();
    assert_eq!(api.post("/v1/jobs", &body).await.0, 200);
    let state = api.state();
    let job_now = state.job(DEFAULT_NAMESPACE, "web").unwrap();
    assert_eq!((job_now.version, job_now.stable), (2, false));
}

#[tokio::test]
async fn plan_shows_the_diff_and_the_rollout() {
    let api = cluster(false).await;
    let mut next = job(0, "v1", false);
    next.task_groups[0].tasks[0].driver = "exec".into();
    let body = json!({ "Job": next, "Diff": true }).to_string();
    let (status, resp) = api.post("/v1/job/web/plan", &body).await;
    assert_eq!(status, 200, "{resp}");
    let diff = &resp["Diff"];
    assert_eq!(diff["Type"], "Edited");
    assert_eq!(diff["Fields"], json!([]));
    let group = &diff["TaskGroups"][0];
    assert_eq!(group["Type"], "Edited");
    assert_eq!(
        group["Tasks"][0]["Fields"],
        json!([{"Type": "Edited", "Name": "Driver", "Old": "raw_exec", "New": "exec"}])
    );
    assert_eq!(resp["Deployment"]["web"]["Strategy"], "canary");
    assert_eq!(resp["Deployment"]["web"]["Canaries"], 1);

    // Nothing changes: no diff, no deployment.
    let body = json!({ "Job": job(0, "v1", false), "Diff": true }).to_string();
    let (_, resp) = api.post("/v1/job/web/plan", &body).await;
    assert_eq!(resp["Diff"]["Type"], "None");
    assert_eq!(resp["Deployment"], json!({}));
}
