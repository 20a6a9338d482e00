//! Following a submission until it is done: the evaluation, then the allocations.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use flotilla_types::*;

use crate::client::{Client, seg};

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
