//! Following a submission until it is done: the evaluation, then the job's deployment (when
//! its groups roll out through one) or else its allocations.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use flotilla_types::*;

use crate::client::{Client, seg};
use crate::deployment::{Outcome, outcome, render_status};

/// The longest `job run` waits for the deployment of the version it registered to appear
/// once the evaluation is complete (the scheduler creates it with the evaluation's plan).
const FIND_DEPLOYMENT: Duration = Duration::from_secs(15);

fn stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}Z")
}

/// Wait for an evaluation to finish; returns it.
async fn wait_eval(
    client: &Client,
    eval_id: &str,
    deadline: Instant,
) -> anyhow::Result<Evaluation> {
    let mut index = None;
    loop {
        let (eval, i): (Evaluation, u64) = client
            .get(&format!("/v1/evaluation/{eval_id}"), index)
            .await?;
        if eval.terminal() {
            return Ok(eval);
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "timed out waiting for evaluation {} (status {:?})",
                short_id(eval_id),
                eval.status
            ));
        }
        index = Some(i);
    }
}

/// `job run`: follow the evaluation, then the allocations of the new version until every
/// group has `count` running and healthy instances. Exit code 0, 1 (failed or timed out) or 2
/// (placement failure).
pub async fn run(
    client: &Client,
    namespace: &str,
    job_id: &str,
    eval_id: &str,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let deadline = Instant::now() + timeout;
    println!(
        "==> {}: Monitoring evaluation \"{}\"",
        stamp(),
        short_id(eval_id)
    );
    let eval = wait_eval(client, eval_id, deadline).await?;
    println!("    {}: Evaluation triggered by job \"{job_id}\"", stamp());
    println!(
        "    {}: Evaluation status changed: \"pending\" -> \"{}\"",
        stamp(),
        eval.status
    );
    if !eval.failed_tg_allocs.is_empty() {
        for (group, metric) in &eval.failed_tg_allocs {
            println!(
                "==> {}: Placement failure for task group \"{group}\": {}",
                stamp(),
                metric.describe()
            );
        }
        println!(
            "==> {}: Evaluation \"{}\" finished with status \"{}\" but failed to place all allocations",
            stamp(),
            short_id(eval_id),
            eval.status
        );
        return Ok(2);
    }
    if eval.status != EVAL_STATUS_COMPLETE {
        println!(
            "==> {}: Evaluation \"{}\" {}: {}",
            stamp(),
            short_id(eval_id),
            eval.status,
            eval.status_description
        );
        return Ok(1);
    }
    println!(
        "==> {}: Evaluation \"{}\" finished with status \"complete\"",
        stamp(),
        short_id(eval_id)
    );

    let (job, _): (Job, u64) = client
        .get(
            &format!("/v1/job/{}?namespace={namespace}", seg(job_id)),
            None,
        )
        .await?;
    let rolling = job.job_type == JOB_TYPE_SERVICE
        && job.task_groups.iter().any(|g| g.rolling_update().is_some());
    if rolling {
        let wait = FIND_DEPLOYMENT.min(deadline.saturating_duration_since(Instant::now()));
        match find_deployment(client, namespace, job_id, job.version, wait).await? {
            Some(d) => {
                println!(
                    "==> {}: Monitoring deployment \"{}\" of job \"{job_id}\" version {}",
                    stamp(),
                    d.short_id(),
                    job.version
                );
                return deployment(client, &d.id, deadline).await;
            }
            None => println!(
                "    {}: No deployment of version {} yet; following the allocations",
                stamp(),
                job.version
            ),
        }
    }
    let mut index = None;
    let mut last_line = BTreeMap::new();
    loop {
        let (allocs, i): (Vec<AllocListStub>, u64) = client
            .get(
                &format!("/v1/job/{}/allocations?namespace={namespace}", seg(job_id)),
                index,
            )
            .await?;
        index = Some(i);
        let mut done = true;
        for group in &job.task_groups {
            let current: Vec<&AllocListStub> = allocs
                .iter()
                .filter(|a| {
                    a.task_group == group.name
                        && a.job_version == job.version
                        && a.desired_status == ALLOC_DESIRED_RUN
                })
                .collect();
            if let Some(failed) = current
                .iter()
                .find(|a| a.client_status == ALLOC_CLIENT_FAILED)
            {
                println!(
                    "==> {}: Allocation \"{}\" of group \"{}\" failed",
                    stamp(),
                    short_id(&failed.id),
                    group.name
                );
                for (task, st) in &failed.task_states {
                    for e in st.events.iter().rev().take(3).rev() {
                        println!(
                            "    task \"{task}\": {}: {}",
                            e.event_type, e.display_message
                        );
                    }
                }
                println!(
                    "    see `flotilla alloc status {}` and `flotilla alloc logs -stderr {}`",
                    short_id(&failed.id),
                    short_id(&failed.id)
                );
                return Ok(1);
            }
            let running: Vec<&&AllocListStub> = current
                .iter()
                .filter(|a| a.client_status == ALLOC_CLIENT_RUNNING)
                .collect();
            let healthy = count_healthy(client, group, &running).await?;
            let line = format!(
                "    {}: Group \"{}\": {} placed, {} running, {} healthy (want {})",
                stamp(),
                group.name,
                current.len(),
                running.len(),
                healthy,
                group.count
            );
            let key = (current.len(), running.len(), healthy);
            if last_line.get(&group.name) != Some(&key) {
                println!("{line}");
                last_line.insert(group.name.clone(), key);
            }
            if healthy < group.count as usize {
                done = false;
            }
        }
        if done {
            println!(
                "==> {}: Job \"{job_id}\" version {}: all allocations running and healthy",
                stamp(),
                job.version
            );
            return Ok(0);
        }
        if Instant::now() > deadline {
            println!(
                "==> {}: Timed out after {:?} waiting for allocations to be healthy; the job keeps being scheduled",
                stamp(),
                timeout
            );
            println!("    see `flotilla job status {job_id}`");
            return Ok(1);
        }
    }
}

/// The deployment of `version` of the job, waiting up to `wait` for it to appear.
async fn find_deployment(
    client: &Client,
    namespace: &str,
    job_id: &str,
    version: u64,
    wait: Duration,
) -> anyhow::Result<Option<Deployment>> {
    let deadline = Instant::now() + wait;
    let path = format!("/v1/job/{}/deployment?namespace={namespace}", seg(job_id));
    let mut index = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (d, i): (Option<Deployment>, u64) = client.get_wait(&path, index, left).await?;
        if let Some(d) = d.filter(|d| d.job_version == version) {
            return Ok(Some(d));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        index = Some(i);
    }
}

/// Text that replaces itself: on a terminal each new frame is drawn over the previous one;
/// otherwise each change is printed as a new block, and nothing when nothing changed.
#[derive(Debug, Default)]
pub(crate) struct LiveBlock {
    tty: bool,
    last: String,
}

impl LiveBlock {
    pub(crate) fn new(tty: bool) -> Self {
        Self {
            tty,
            last: String::new(),
        }
    }

    /// What to write to show `block`, or `None` when it is what is shown already.
    pub(crate) fn frame(&mut self, block: String) -> Option<String> {
        if block == self.last {
            return None;
        }
        let mut out = String::new();
        if !self.last.is_empty() {
            if self.tty {
                // Cursor up over the previous frame, then clear to the end of the screen.
                out.push_str(&format!("\x1b[{}A\x1b[J", self.last.lines().count()));
            } else {
                out.push('\n');
            }
        }
        out.push_str(&block);
        self.last = block;
        Some(out)
    }
}

/// Follow a deployment with a live view of its groups until it ends, needs promotion, or
/// `deadline` passes. Exit code 0: successful, or running and waiting for a manual
/// promotion; 1: failed, cancelled or timed out.
pub async fn deployment(client: &Client, id: &str, deadline: Instant) -> anyhow::Result<i32> {
    let mut live = LiveBlock::new(std::io::stdout().is_terminal());
    let mut index = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (d, i): (Deployment, u64) = client
            .get_wait(&format!("/v1/deployment/{}", seg(id)), index, left)
            .await?;
        index = Some(i);
        if let Some(frame) = live.frame(render_status(&d)) {
            let mut out = std::io::stdout();
            out.write_all(frame.as_bytes())?;
            out.flush()?;
        }
        match outcome(&d) {
            Outcome::Successful => {
                println!(
                    "\n==> {}: Deployment \"{}\" successful",
                    stamp(),
                    d.short_id()
                );
                return Ok(0);
            }
            Outcome::Failed => {
                println!(
                    "\n==> {}: Deployment \"{}\" {}: {}",
                    stamp(),
                    d.short_id(),
                    d.status,
                    d.status_description
                );
                return Ok(1);
            }
            Outcome::NeedsPromotion => {
                println!(
                    "\nDeployment \"{id}\" requires manual promotion: flotilla deployment promote {id}",
                    id = d.short_id()
                );
                return Ok(0);
            }
            Outcome::InProgress => {}
        }
        if Instant::now() >= deadline {
            println!(
                "\n==> {}: Timed out waiting for deployment \"{}\" ({}); it keeps going",
                stamp(),
                d.short_id(),
                d.status
            );
            println!("    see `flotilla deployment status {}`", d.short_id());
            return Ok(1);
        }
    }
}

/// Running allocations whose services are all registered and passing (or that have none).
async fn count_healthy(
    client: &Client,
    group: &TaskGroup,
    running: &[&&AllocListStub],
) -> anyhow::Result<usize> {
    let names: Vec<&str> = group.all_services().map(|s| s.name.as_str()).collect();
    if names.is_empty() {
        return Ok(running.len());
    }
    let mut regs = Vec::new();
    for name in names.iter().collect::<std::collections::BTreeSet<_>>() {
        let (r, _): (Vec<ServiceRegistration>, u64) =
            client.get(&format!("/v1/service/{name}"), None).await?;
        regs.extend(r);
    }
    let want = group.all_services().count();
    Ok(running
        .iter()
        .filter(|a| {
            regs.iter()
                .filter(|r| r.alloc_id == a.id && r.healthy())
                .count()
                >= want
        })
        .count())
}

/// `job stop`: wait until no allocation of the job runs.
pub async fn stop(
    client: &Client,
    job_id: &str,
    eval_id: &str,
    purged: bool,
) -> anyhow::Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(120);
    println!(
        "==> {}: Monitoring evaluation \"{}\"",
        stamp(),
        short_id(eval_id)
    );
    let eval = wait_eval(client, eval_id, deadline).await?;
    println!(
        "    {}: Evaluation status changed: \"pending\" -> \"{}\"",
        stamp(),
        eval.status
    );
    if purged {
        println!("==> {}: Job \"{job_id}\" purged", stamp());
        return Ok(0);
    }
    let mut index = None;
    loop {
        let (allocs, i): (Vec<AllocListStub>, u64) = client
            .get(&format!("/v1/job/{}/allocations", seg(job_id)), index)
            .await?;
        index = Some(i);
        let live = allocs
            .iter()
            .filter(|a| {
                !matches!(
                    a.client_status.as_str(),
                    ALLOC_CLIENT_COMPLETE | ALLOC_CLIENT_FAILED | ALLOC_CLIENT_LOST
                )
            })
            .count();
        if live == 0 {
            println!(
                "==> {}: Job \"{job_id}\" stopped: no allocation is running",
                stamp()
            );
            return Ok(0);
        }
        if Instant::now() > deadline {
            println!(
                "==> {}: {live} allocation(s) still stopping; see `flotilla job status {job_id}`",
                stamp()
            );
            return Ok(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_api;
    use serde_json::{Value, json};

    const ID: &str = "0b23b149-aaaa-bbbb-cccc-000000000000";

    fn dep(version: u64, status: &str, canaries: u32, healthy: u32) -> Value {
        serde_json::to_value(Deployment {
            id: ID.into(),
            job_id: "web".into(),
            job_version: version,
            status: status.into(),
            status_description: format!("{status} description"),
            task_groups: [(
                "web".to_string(),
                DeploymentState {
                    desired_canaries: canaries,
                    placed_canaries: (0..canaries).map(|i| format!("c{i}")).collect(),
                    desired_total: 2,
                    placed_allocs: healthy.max(canaries),
                    healthy_allocs: healthy,
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        })
        .unwrap()
    }

    async fn follow(answers: Vec<Value>) -> i32 {
        let base = fake_api::serve(vec![(format!("/v1/deployment/{ID}"), answers)]).await;
        let client = Client::new(&base).unwrap();
        deployment(&client, ID, Instant::now() + Duration::from_secs(10))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn deployment_monitor_exit_codes() {
        let running = DEPLOYMENT_STATUS_RUNNING;
        assert_eq!(
            follow(vec![
                dep(1, running, 0, 0),
                dep(1, running, 0, 1),
                dep(1, DEPLOYMENT_STATUS_SUCCESSFUL, 0, 2),
            ])
            .await,
            0
        );
        assert_eq!(
            follow(vec![
                dep(1, running, 0, 0),
                dep(1, DEPLOYMENT_STATUS_FAILED, 0, 0)
            ])
            .await,
            1
        );
        assert_eq!(
            follow(vec![dep(1, DEPLOYMENT_STATUS_CANCELLED, 0, 0)]).await,
            1
        );
        // Canaries healthy, manual promotion: done for now, successfully.
        assert_eq!(
            follow(vec![dep(1, running, 1, 0), dep(1, running, 1, 1)]).await,
            0
        );
    }

    fn job_run_api(
        update: bool,
        deployments: Vec<Value>,
        progress: Vec<Value>,
    ) -> Vec<(String, Vec<Value>)> {
        let job = Job {
            id: "web".into(),
            namespace: DEFAULT_NAMESPACE.into(),
            job_type: JOB_TYPE_SERVICE.into(),
            version: 2,
            task_groups: vec![TaskGroup {
                name: "web".into(),
                count: 2,
                update: update.then(|| UpdateStrategy {
                    max_parallel: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let eval = Evaluation {
            id: "e1".into(),
            status: EVAL_STATUS_COMPLETE.into(),
            ..Default::default()
        };
        let running = |id: &str| AllocListStub {
            id: id.into(),
            task_group: "web".into(),
            job_version: 2,
            desired_status: ALLOC_DESIRED_RUN.into(),
            client_status: ALLOC_CLIENT_RUNNING.into(),
            ..Default::default()
        };
        vec![
            ("/v1/evaluation/e1".into(), vec![json!(eval)]),
            ("/v1/job/web".into(), vec![json!(job)]),
            ("/v1/job/web/deployment".into(), deployments),
            (format!("/v1/deployment/{ID}"), progress),
            (
                "/v1/job/web/allocations".into(),
                vec![json!([running("a1"), running("a2")])],
            ),
        ]
    }

    async fn job_run(routes: Vec<(String, Vec<Value>)>) -> i32 {
        let client = Client::new(&fake_api::serve(routes).await).unwrap();
        run(
            &client,
            DEFAULT_NAMESPACE,
            "web",
            "e1",
            Duration::from_secs(10),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn job_run_follows_the_new_versions_deployment() {
        let running = DEPLOYMENT_STATUS_RUNNING;
        // The previous version's deployment is listed until the new one appears.
        let routes = job_run_api(
            true,
            vec![
                dep(1, DEPLOYMENT_STATUS_SUCCESSFUL, 0, 2),
                dep(2, running, 0, 0),
            ],
            vec![
                dep(2, running, 0, 1),
                dep(2, DEPLOYMENT_STATUS_FAILED, 0, 1),
            ],
        );
        assert_eq!(job_run(routes).await, 1);
        let routes = job_run_api(
            true,
            vec![dep(2, running, 0, 0)],
            vec![dep(2, DEPLOYMENT_STATUS_SUCCESSFUL, 0, 2)],
        );
        assert_eq!(job_run(routes).await, 0);
        // No update block: the allocations are followed as before.
        let routes = job_run_api(false, vec![Value::Null], vec![]);
        assert_eq!(job_run(routes).await, 0);
    }

    #[test]
    fn live_block_redraws_on_a_terminal() {
        let mut live = LiveBlock::new(true);
        assert_eq!(live.frame("a\nb\n".into()).as_deref(), Some("a\nb\n"));
        assert_eq!(live.frame("a\nb\n".into()), None);
        assert_eq!(
            live.frame("a\nc\n".into()).as_deref(),
            Some("\x1b[2A\x1b[Ja\nc\n")
        );
    }

    #[test]
    fn live_block_prints_changes_only_otherwise() {
        let mut live = LiveBlock::new(false);
        assert_eq!(live.frame("a\n".into()).as_deref(), Some("a\n"));
        assert_eq!(live.frame("a\n".into()), None);
        assert_eq!(live.frame("b\n".into()).as_deref(), Some("\nb\n"));
    }
}
