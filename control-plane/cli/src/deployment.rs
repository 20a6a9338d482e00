//! `flotilla deployment …`: list, inspect and follow rollouts, and the operator's verbs on them
//! (promote canaries, pause, resume, fail), as Nomad's `nomad deployment …`.

use anyhow::anyhow;
use clap::Subcommand;
use flotilla_types::*;

use crate::client::{Client, seg};
use crate::commands::print_json;
use crate::monitor;
use crate::table;

/// `flotilla deployment …`
#[derive(Debug, Subcommand)]
pub enum DeploymentCmd {
    /// List deployments, newest first.
    List {
        /// Print the deployments as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a deployment and its task groups; with -monitor, follow it until it ends. Exit
    /// code with -monitor: 0 successful or waiting for manual promotion, 1 failed or
    /// cancelled.
    Status {
        /// Deployment ID or unique prefix.
        id: String,
        /// Print the deployment as JSON.
        #[arg(long, conflicts_with = "monitor")]
        json: bool,
        /// Follow the deployment live until it succeeds, fails or needs promotion.
        #[arg(long)]
        monitor: bool,
        /// With -monitor: give up after this long (the deployment keeps going).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Promote a deployment's canaries (every group, or each -group given) once they are
    /// healthy: the rest of the new version then rolls out.
    Promote {
        /// Deployment ID or unique prefix.
        id: String,
        /// A task group to promote; repeatable. Default: every group with canaries.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Mark a running or paused deployment failed. Groups with `auto_revert` take the job
    /// back to its latest stable version.
    Fail {
        /// Deployment ID or unique prefix.
        id: String,
    },
    /// Pause a deployment: no further allocations are replaced until it is resumed.
    Pause {
        /// Deployment ID or unique prefix.
        id: String,
    },
    /// Resume a paused deployment.
    Resume {
        /// Deployment ID or unique prefix.
        id: String,
    },
}

/// A deployment by full id or unique prefix; an ambiguous prefix is an error naming the
/// matches.
pub async fn resolve(client: &Client, wanted: &str) -> anyhow::Result<Deployment> {
    let list: Vec<Deployment> = client
        .get_query("/v1/deployments", &[("prefix", wanted.to_string())])
        .await?;
    if let Some(d) = list.iter().find(|d| d.id == wanted) {
        return Ok(d.clone());
    }
    match list.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(anyhow!("no deployment with id or prefix {wanted:?}")),
        many => Err(anyhow!(
            "deployment id prefix {wanted:?} matches {} deployments: {}",
            many.len(),
            many.iter()
                .map(|d| format!(
                    "{} (job {:?} version {}, {})",
                    d.id, d.job_id, d.job_version, d.status
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// How far a deployment is, as the monitor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Still rolling out (or paused).
    InProgress,
    Successful,
    /// Failed or cancelled.
    Failed,
    /// Running, every unpromoted group has all its canaries placed and healthy, and at least
    /// one of them waits for `deployment promote` (no `auto_promote`).
    NeedsPromotion,
}

pub fn outcome(d: &Deployment) -> Outcome {
    match d.status.as_str() {
        DEPLOYMENT_STATUS_SUCCESSFUL => return Outcome::Successful,
        DEPLOYMENT_STATUS_FAILED | DEPLOYMENT_STATUS_CANCELLED => return Outcome::Failed,
        DEPLOYMENT_STATUS_RUNNING => {}
        _ => return Outcome::InProgress,
    }
    let waiting: Vec<&DeploymentState> = d
        .task_groups
        .iter()
        .filter(|(g, _)| d.awaiting_promotion(g))
        .map(|(_, s)| s)
        .collect();
    let canaries_healthy = waiting.iter().all(|s| {
        s.placed_canaries.len() >= s.desired_canaries as usize
            && s.healthy_allocs >= s.desired_canaries
    });
    if !waiting.is_empty() && canaries_healthy && waiting.iter().any(|s| !s.auto_promote) {
        Outcome::NeedsPromotion
    } else {
        Outcome::InProgress
    }
}

/// The deployment's summary and one line per task group, as `deployment status` prints it
/// (and the monitor redraws). Nothing in it depends on the clock, so equal text means no
/// change.
pub fn render_status(d: &Deployment) -> String {
    let mut out = table::render_kv(&[
        ("ID", d.short_id().to_string()),
        ("Job ID", d.job_id.clone()),
        ("Job Version", d.job_version.to_string()),
        ("Status", d.status.clone()),
        ("Description", d.status_description.clone()),
    ]);
    out.push_str("\nDeployed\n");
    out.push_str(&render_groups(d));
    out
}

/// One line per task group: Desired, Canaries (placed/desired), Placed, Healthy, Unhealthy
/// and Progress Deadline, with Auto Revert and Promoted when any group uses them.
pub fn render_groups(d: &Deployment) -> String {
    let auto_revert = d.task_groups.values().any(|s| s.auto_revert);
    let canaries = d.task_groups.values().any(|s| s.desired_canaries > 0);
    let mut header = vec!["Task Group"];
    if auto_revert {
        header.push("Auto Revert");
    }
    if canaries {
        header.push("Promoted");
    }
    header.extend([
        "Desired",
        "Canaries",
        "Placed",
        "Healthy",
        "Unhealthy",
        "Progress Deadline",
    ]);
    let rows: Vec<Vec<String>> = d
        .task_groups
        .iter()
        .map(|(name, s)| {
            let mut row = vec![name.clone()];
            if auto_revert {
                row.push(s.auto_revert.to_string());
            }
            if canaries {
                row.push(if s.desired_canaries > 0 {
                    s.promoted.to_string()
                } else {
                    "N/A".to_string()
                });
            }
            row.extend([
                s.desired_total.to_string(),
                if s.desired_canaries > 0 {
                    format!("{}/{}", s.placed_canaries.len(), s.desired_canaries)
                } else {
                    "0".to_string()
                },
                s.placed_allocs.to_string(),
                s.healthy_allocs.to_string(),
                s.unhealthy_allocs.to_string(),
                if s.require_progress_by > 0 {
                    table::timestamp(s.require_progress_by)
                } else {
                    "N/A".to_string()
                },
            ]);
            row
        })
        .collect();
    table::render(&header, &rows)
}

pub async fn run_deployment(client: &Client, cmd: DeploymentCmd) -> anyhow::Result<i32> {
    match cmd {
        DeploymentCmd::List { json } => {
            let (list, _): (Vec<Deployment>, _) = client.get("/v1/deployments", None).await?;
            if json {
                return print_json(&list).map(|_| 0);
            }
            if list.is_empty() {
                println!("No deployments found");
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|d| {
                    vec![
                        d.short_id().to_string(),
                        d.job_id.clone(),
                        d.job_version.to_string(),
                        d.status.clone(),
                        d.status_description.clone(),
                    ]
                })
                .collect();
            table::print(
                &["ID", "Job ID", "Job Version", "Status", "Description"],
                &rows,
            );
            Ok(0)
        }
        DeploymentCmd::Status {
            id,
            json,
            monitor,
            timeout,
        } => {
            let d = resolve(client, &id).await?;
            if monitor {
                return monitor::deployment(client, &d.id, std::time::Instant::now() + timeout)
                    .await;
            }
            if json {
                return print_json(&d).map(|_| 0);
            }
            print!("{}", render_status(&d));
            Ok(0)
        }
        DeploymentCmd::Promote { id, groups } => {
            let d = resolve(client, &id).await?;
            let body = DeploymentPromoteRequest {
                deployment_id: d.id.clone(),
                all: groups.is_empty(),
                groups,
            };
            let resp: DeploymentUpdateResponse = client
                .post(&format!("/v1/deployment/promote/{}", seg(&d.id)), &body)
                .await?;
            println!(
                "Deployment {:?} promoted; evaluation {:?}",
                d.short_id(),
                short_id(&resp.eval_id)
            );
            Ok(0)
        }
        DeploymentCmd::Fail { id } => {
            let d = resolve(client, &id).await?;
            let body = DeploymentFailRequest {
                deployment_id: d.id.clone(),
            };
            let resp: DeploymentUpdateResponse = client
                .post(&format!("/v1/deployment/fail/{}", seg(&d.id)), &body)
                .await?;
            match resp.reverted_job_version {
                Some(v) => println!(
                    "Deployment {:?} failed. Auto-reverted job {:?} to version {v}.",
                    d.short_id(),
                    d.job_id
                ),
                None => println!("Deployment {:?} failed", d.short_id()),
            }
            Ok(0)
        }
        DeploymentCmd::Pause { id } => pause(client, &id, true).await,
        DeploymentCmd::Resume { id } => pause(client, &id, false).await,
    }
}

async fn pause(client: &Client, id: &str, pause: bool) -> anyhow::Result<i32> {
    let d = resolve(client, id).await?;
    let body = DeploymentPauseRequest {
        deployment_id: d.id.clone(),
        pause,
    };
    let _: DeploymentUpdateResponse = client
        .post(&format!("/v1/deployment/pause/{}", seg(&d.id)), &body)
        .await?;
    println!(
        "Deployment {:?} {}",
        d.short_id(),
        if pause { "paused" } else { "resumed" }
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(status: &str, canaries: u32, healthy: u32, auto_promote: bool) -> Deployment {
        Deployment {
            id: "0b23b149-aaaa-bbbb-cccc-000000000000".into(),
            job_id: "web".into(),
            job_version: 2,
            status: status.into(),
            status_description: DEPLOYMENT_DESC_RUNNING.into(),
            task_groups: [(
                "web".to_string(),
                DeploymentState {
                    auto_promote,
                    desired_canaries: canaries,
                    placed_canaries: (0..canaries).map(|i| format!("c{i}")).collect(),
                    desired_total: 3,
                    placed_allocs: canaries,
                    healthy_allocs: healthy,
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn resolves_ids_and_prefixes() {
        let named = |id: &str| {
            let mut d = deployment(DEPLOYMENT_STATUS_RUNNING, 0, 0, false);
            d.id = id.into();
            serde_json::to_value(d).unwrap()
        };
        // The fake ignores `?prefix=`: each answer is what the server would have matched.
        let base = crate::fake_api::serve(vec![(
            "/v1/deployments".into(),
            vec![
                serde_json::json!([named("ab12"), named("ab34")]),
                serde_json::json!([named("ab"), named("ab34")]),
                serde_json::json!([named("ab34")]),
                serde_json::json!([]),
            ],
        )])
        .await;
        let client = Client::new(&base).unwrap();
        let err = resolve(&client, "ab").await.unwrap_err().to_string();
        assert!(
            err.contains("matches 2 deployments") && err.contains("ab12") && err.contains("ab34"),
            "{err}"
        );
        assert_eq!(resolve(&client, "ab").await.unwrap().id, "ab");
        assert_eq!(resolve(&client, "ab3").await.unwrap().id, "ab34");
        let err = resolve(&client, "zz").await.unwrap_err().to_string();
        assert!(
            err.contains("no deployment with id or prefix \"zz\""),
            "{err}"
        );
    }

    #[test]
    fn outcomes() {
        use Outcome::*;
        let run = DEPLOYMENT_STATUS_RUNNING;
        assert_eq!(outcome(&deployment(run, 1, 0, false)), InProgress);
        assert_eq!(outcome(&deployment(run, 1, 1, false)), NeedsPromotion);
        assert_eq!(outcome(&deployment(run, 1, 1, true)), InProgress);
        assert_eq!(outcome(&deployment(run, 0, 3, false)), InProgress);
        let mut promoted = deployment(run, 1, 1, false);
        if let Some(s) = promoted.task_groups.get_mut("web") {
            s.promoted = true;
        }
        assert_eq!(outcome(&promoted), InProgress);
        // The description alone is not enough: the canary must be healthy.
        let mut told = deployment(run, 1, 0, false);
        told.status_description = DEPLOYMENT_DESC_NEEDS_PROMOTION.into();
        assert_eq!(outcome(&told), InProgress);
        // Two groups: one auto-promotes, the other waits for the operator.
        let mut two = deployment(run, 1, 1, true);
        two.task_groups.insert(
            "api".into(),
            DeploymentState {
                desired_canaries: 1,
                placed_canaries: vec!["c9".into()],
                healthy_allocs: 0,
                ..Default::default()
            },
        );
        assert_eq!(outcome(&two), InProgress, "api's canary is not healthy yet");
        if let Some(s) = two.task_groups.get_mut("api") {
            s.healthy_allocs = 1;
        }
        assert_eq!(outcome(&two), NeedsPromotion);
        assert_eq!(
            outcome(&deployment(DEPLOYMENT_STATUS_PAUSED, 1, 1, false)),
            InProgress
        );
        assert_eq!(
            outcome(&deployment(DEPLOYMENT_STATUS_SUCCESSFUL, 0, 3, false)),
            Successful
        );
        assert_eq!(
            outcome(&deployment(DEPLOYMENT_STATUS_FAILED, 0, 0, false)),
            Failed
        );
        assert_eq!(
            outcome(&deployment(DEPLOYMENT_STATUS_CANCELLED, 0, 0, false)),
            Failed
        );
    }

    #[test]
    fn status_block() {
        let mut d = deployment(DEPLOYMENT_STATUS_RUNNING, 1, 1, false);
        if let Some(s) = d.task_groups.get_mut("web") {
            s.require_progress_by = 1_700_000_000_000_000_000;
        }
        d.task_groups.insert(
            "api".into(),
            DeploymentState {
                desired_total: 2,
                placed_allocs: 1,
                unhealthy_allocs: 1,
                ..Default::default()
            },
        );
        assert_eq!(
            render_status(&d),
            "ID          = 0b23b149
Job ID      = web
Job Version = 2
Status      = running
Description = Deployment is running

Deployed
Task Group  Promoted  Desired  Canaries  Placed  Healthy  Unhealthy  Progress Deadline
api         N/A       2        0         1       0        1          N/A
web         false     3        1/1       1       1        0          2023-11-14T22:13:20Z
"
        );
        let plain = deployment(DEPLOYMENT_STATUS_RUNNING, 0, 2, false);
        assert_eq!(
            render_groups(&plain),
            "Task Group  Desired  Canaries  Placed  Healthy  Unhealthy  Progress Deadline
web         3        0         0       2        0          N/A
"
        );
    }
}
