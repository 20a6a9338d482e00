use std::io::Write;

use anyhow::{Context, anyhow};
use clap::Subcommand;
use flotilla_types::*;
use futures::StreamExt;

use crate::client::{Client, seg};
use crate::diff;
use crate::monitor;
use crate::table;
use flotilla_types::JobDiff;

/// `flotilla job …`
#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Submit a jobspec and follow it until its allocations run and are healthy.
    Run {
        /// The HCL jobspec.
        file: std::path::PathBuf,
        #[command(flatten)]
        vars: VarArgs,
        /// Return as soon as the job is submitted.
        #[arg(long)]
        detach: bool,
        /// Give up monitoring after this long (the job keeps going).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Print the submission's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, or show one job with its allocations.
    Status {
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop a job: its allocations are stopped; with -purge it is forgotten too.
    Stop {
        id: String,
        #[arg(long)]
        purge: bool,
        #[arg(long)]
        detach: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check a jobspec without submitting it.
    Validate {
        file: std::path::PathBuf,
        #[command(flatten)]
        vars: VarArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show what submitting a jobspec would change: a diff against the running version and
    /// the scheduler's dry run. Exit code 0: no changes; 1: changes; 255: error.
    Plan {
        file: std::path::PathBuf,
        #[command(flatten)]
        vars: VarArgs,
        #[arg(long)]
        json: bool,
    },
    /// Print the job as the server stores it (JSON).
    Inspect { id: String },
    /// Show a job's kept versions: Version, Stable, Submit Date; with -p, what each version
    /// changed from the one before it.
    History {
        /// The job ID.
        id: String,
        /// Show the diff between each version and the previous one.
        #[arg(short = 'p')]
        diffs: bool,
        /// Print the versions (and diffs) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register a kept version of a job again (as its next version), then follow it like
    /// `job run`: the evaluation, then the deployment or the allocations.
    Revert {
        /// The job ID.
        id: String,
        /// The version to go back to (see `job history`).
        version: u64,
        /// Return as soon as the revert is submitted.
        #[arg(long)]
        detach: bool,
        /// Give up monitoring after this long (the job keeps going).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Run an instance of a parameterized job.
    Dispatch {
        id: String,
        /// A file whose content is the payload; `-` reads standard input.
        payload: Option<std::path::PathBuf>,
        /// Metadata for the dispatched job, KEY=VALUE; repeatable.
        #[arg(long = "meta", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
        #[arg(long)]
        detach: bool,
    },
    /// Periodic jobs.
    #[command(subcommand)]
    Periodic(PeriodicCmd),
}

/// `flotilla job periodic …`
#[derive(Debug, Subcommand)]
pub enum PeriodicCmd {
    /// Launch a periodic job's child now.
    Force {
        id: String,
        #[arg(long)]
        detach: bool,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

/// `flotilla alloc …`
#[derive(Debug, Subcommand)]
pub enum AllocCmd {
    /// Show an allocation (id or unique prefix) with its task states and events.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a task's stdout (or stderr) log.
    Logs {
        /// Allocation id or unique prefix.
        alloc: String,
        /// The task; optional when the allocation has one task.
        task: Option<String>,
        /// Show stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// Keep streaming new output.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Restart an allocation's tasks in place (or one task).
    Restart { alloc: String, task: Option<String> },
    /// Stop an allocation; the scheduler places a replacement.
    Stop {
        alloc: String,
        #[arg(long)]
        detach: bool,
    },
}

/// `flotilla eval …`
#[derive(Debug, Subcommand)]
pub enum EvalCmd {
    /// Show an evaluation (id or unique prefix), with placement failures.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

/// `flotilla node …`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes, or show one node (id, unique prefix or name).
    Status {
        id: Option<String>,
        #[arg(long)]
        json: bool,
        /// Full ids, attributes and meta.
        #[arg(long)]
        verbose: bool,
    },
    /// Move allocations off a node (-enable) or end a drain (-disable).
    Drain {
        node: String,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        /// Time allowed before remaining allocations are stopped (e.g. 1h); -1s forces now.
        #[arg(long, default_value = "1h", allow_hyphen_values = true)]
        deadline: String,
        /// Leave system jobs' allocations on the node.
        #[arg(long)]
        ignore_system: bool,
        /// With -disable: leave the node ineligible.
        #[arg(long)]
        keep_ineligible: bool,
        /// Do not wait for the drain to finish.
        #[arg(long)]
        detach: bool,
        /// Do not ask for confirmation (the CLI never prompts; accepted for Nomad scripts).
        #[arg(long)]
        yes: bool,
    },
    /// Allow (-enable) or forbid (-disable) new placements on a node.
    Eligibility {
        node: String,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
    },
}

/// `flotilla service …`
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// List services in the catalog.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show the instances of one service with their health.
    Info {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn ago(nanos: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default();
    let secs = ((now - nanos) / 1_000_000_000).max(0);
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m{}s ago", s / 60, s % 60),
        s => format!("{}h{}m ago", s / 3600, (s % 3600) / 60),
    }
}

/// `-var` and `-var-file` flags of the commands that read a jobspec.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VarArgs {
    /// Set a variable, NAME=VALUE; repeatable. `NOMAD_VAR_<name>` environment variables are read too.
    #[arg(long = "var", value_parser = parse_kv)]
    pub vars: Vec<(String, String)>,
    /// Read variables from an HCL file (`name = value` lines); repeatable.
    #[arg(long = "var-file")]
    pub var_files: Vec<std::path::PathBuf>,
}

/// Parse a jobspec file. `Err(text)` holds the located diagnostics.
fn parse_file(
    path: &std::path::Path,
    vars: &VarArgs,
) -> anyhow::Result<Result<flotilla_jobspec::Parsed, String>> {
    let src =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    // NOMAD_VAR_x from the environment first, so flags win.
    let mut all: Vec<(String, String)> = std::env::vars()
        .filter_map(|(k, v)| k.strip_prefix("NOMAD_VAR_").map(|n| (n.to_string(), v)))
        .collect();
    all.extend(vars.vars.iter().cloned());
    let opts = flotilla_jobspec::ParseOptions {
        vars: all,
        var_files: vars.var_files.clone(),
        base_dir: path.parent().map(|p| p.to_path_buf()),
    };
    Ok(flotilla_jobspec::parse_with(&src, &name, &opts).map_err(|e| e.to_string()))
}

pub async fn run_job(client: &Client, cmd: JobCmd) -> anyhow::Result<i32> {
    match cmd {
        JobCmd::Validate { file, vars, json } => {
            let parsed = parse_file(&file, &vars)?;
            match parsed {
                Ok(p) => {
                    // `parse` already ran the semantic validation; its warnings are located.
                    let warnings: Vec<String> = p.warnings.iter().map(|d| d.to_string()).collect();
                    if json {
                        print_json(&serde_json::json!({"Valid": true, "Warnings": warnings}))?;
                    } else {
                        for w in &warnings {
                            eprintln!("{w}");
                        }
                        println!("Job validation successful");
                    }
                    Ok(0)
                }
                Err(errors) => {
                    if json {
                        print_json(
                            &serde_json::json!({"Valid": false, "Errors": errors.lines().collect::<Vec<_>>()}),
                        )?;
                    } else {
                        eprintln!("Job validation errors:\n{errors}");
                    }
                    Ok(1)
                }
            }
        }
        JobCmd::Run {
            file,
            vars,
            detach,
            timeout,
            json,
        } => {
            let parsed = parse_file(&file, &vars)?;
            let p = match parsed {
                Ok(p) => p,
                Err(errors) => {
                    eprintln!("Error parsing job file {}:\n{errors}", file.display());
                    return Ok(1);
                }
            };
            for w in &p.warnings {
                eprintln!("{w}");
            }
            let job = p.job;
            let resp: JobRegisterResponse = client
                .post("/v1/jobs", &JobRegisterRequest { job: job.clone() })
                .await
                .with_context(|| format!("submitting job {:?} from {}", job.id, file.display()))?;
            if json {
                print_json(&resp)?;
            }
            if detach {
                if !json {
                    println!(
                        "Job registration successful\nEvaluation ID: {}",
                        resp.eval_id
                    );
                }
                return Ok(0);
            }
            monitor::run(
                client,
                &job.namespace_or_default(),
                &job.id,
                &resp.eval_id,
                timeout,
            )
            .await
        }
        JobCmd::Plan { file, vars, json } => match plan(client, &file, &vars, json).await {
            Ok(code) => Ok(code),
            Err(e) => {
                eprintln!("Error: {e:#}");
                Ok(255)
            }
        },
        JobCmd::History { id, diffs, json } => history(client, &id, diffs, json).await,
        JobCmd::Revert {
            id,
            version,
            detach,
            timeout,
        } => {
            let (job, _): (Job, _) = client.get(&format!("/v1/job/{}", seg(&id)), None).await?;
            let body = JobRevertRequest {
                job_id: id.clone(),
                job_version: version,
                enforce_prior_version: Some(job.version),
            };
            let resp: JobRegisterResponse = client
                .post(&format!("/v1/job/{}/revert", seg(&id)), &body)
                .await?;
            println!(
                "Job {id:?} reverted to version {version} (now version {})",
                job.version + 1
            );
            if detach {
                println!("Evaluation ID: {}", resp.eval_id);
                return Ok(0);
            }
            monitor::run(client, &job.namespace, &id, &resp.eval_id, timeout).await
        }
        JobCmd::Inspect { id } => {
            let (job, _): (serde_json::Value, _) =
                client.get(&format!("/v1/job/{}", seg(&id)), None).await?;
            print_json(&serde_json::json!({ "Job": job }))?;
            Ok(0)
        }
        JobCmd::Dispatch {
            id,
            payload,
            meta,
            detach,
        } => {
            use base64::Engine as _;
            let bytes = match payload {
                None => Vec::new(),
                Some(p) if p.as_os_str() == "-" => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                        .context("reading the payload from stdin")?;
                    buf
                }
                Some(p) => {
                    std::fs::read(&p).with_context(|| format!("reading payload {}", p.display()))?
                }
            };
            let body = serde_json::json!({
                "Payload": base64::engine::general_purpose::STANDARD.encode(&bytes),
                "Meta": meta.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            });
            let resp: serde_json::Value = client
                .post(&format!("/v1/job/{}/dispatch", seg(&id)), &body)
                .await?;
            let child = resp["DispatchedJobID"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let eval = resp["EvalID"].as_str().unwrap_or_default().to_string();
            println!(
                "Dispatched Job ID = {child}\nEvaluation ID     = {}",
                short_id(&eval)
            );
            if detach {
                return Ok(0);
            }
            monitor::run(
                client,
                DEFAULT_NAMESPACE,
                &child,
                &eval,
                std::time::Duration::from_secs(300),
            )
            .await
        }
        JobCmd::Periodic(PeriodicCmd::Force { id, detach }) => {
            let resp: serde_json::Value = client
                .post(
                    &format!("/v1/job/{}/periodic/force", seg(&id)),
                    &serde_json::json!({}),
                )
                .await?;
            let eval = resp["EvalID"].as_str().unwrap_or_default().to_string();
            println!("Evaluation ID: {}", short_id(&eval));
            if detach {
                return Ok(0);
            }
            let (e, _): (Evaluation, _) =
                client.get(&format!("/v1/evaluation/{eval}"), None).await?;
            monitor::run(
                client,
                DEFAULT_NAMESPACE,
                &e.job_id,
                &eval,
                std::time::Duration::from_secs(300),
            )
            .await
        }
        JobCmd::Status { id: None, json } => {
            let (jobs, _): (Vec<JobListStub>, _) = client.get("/v1/jobs", None).await?;
            if json {
                return print_json(&jobs).map(|_| 0);
            }
            if jobs.is_empty() {
                println!("No running jobs");
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = jobs
                .iter()
                .map(|j| {
                    vec![
                        j.id.clone(),
                        j.job_type.clone(),
                        j.priority.to_string(),
                        j.status.clone(),
                        ago(j.submit_time),
                    ]
                })
                .collect();
            table::print(&["ID", "Type", "Priority", "Status", "Submit Date"], &rows);
            Ok(0)
        }
        JobCmd::Status { id: Some(id), json } => {
            let (job, _): (Job, _) = client.get(&format!("/v1/job/{}", seg(&id)), None).await?;
            let (allocs, _): (Vec<AllocListStub>, _) = client
                .get(&format!("/v1/job/{}/allocations", seg(&id)), None)
                .await?;
            if json {
                return print_json(&serde_json::json!({"Job": job, "Allocations": allocs}))
                    .map(|_| 0);
            }
            table::print_kv(&[
                ("ID", job.id.clone()),
                ("Name", job.name.clone()),
                ("Type", job.job_type.clone()),
                ("Priority", job.priority.to_string()),
                ("Datacenters", job.datacenters.join(",")),
                ("Namespace", job.namespace.clone()),
                ("Status", job.status.clone()),
                ("Version", job.version.to_string()),
            ]);
            println!("\nAllocations");
            let rows: Vec<Vec<String>> = allocs
                .iter()
                .map(|a| {
                    vec![
                        short_id(&a.id).to_string(),
                        short_id(&a.node_id).to_string(),
                        a.task_group.clone(),
                        a.job_version.to_string(),
                        a.desired_status.clone(),
                        a.client_status.clone(),
                        ago(a.create_time),
                    ]
                })
                .collect();
            table::print(
                &[
                    "ID",
                    "Node ID",
                    "Task Group",
                    "Version",
                    "Desired",
                    "Status",
                    "Created",
                ],
                &rows,
            );
            Ok(0)
        }
        JobCmd::Stop {
            id,
            purge,
            detach,
            json,
        } => {
            let resp: JobRegisterResponse = client
                .delete(
                    &format!("/v1/job/{}", seg(&id)),
                    &[("purge", purge.to_string())],
                )
                .await?;
            if json {
                print_json(&resp)?;
            }
            if detach {
                if !json {
                    println!("Evaluation ID: {}", resp.eval_id);
                }
                return Ok(0);
            }
            monitor::stop(client, &id, &resp.eval_id, purge).await
        }
    }
}

trait NamespaceOrDefault {
    fn namespace_or_default(&self) -> String;
}
impl NamespaceOrDefault for Job {
    fn namespace_or_default(&self) -> String {
        if self.namespace.is_empty() {
            DEFAULT_NAMESPACE.to_string()
        } else {
            self.namespace.clone()
        }
    }
}

pub async fn run_alloc(client: &Client, cmd: AllocCmd) -> anyhow::Result<i32> {
    match cmd {
        AllocCmd::Status { id, json } => {
            let (a, _): (Allocation, _) = client.get(&format!("/v1/allocation/{id}"), None).await?;
            if json {
                return print_json(&a).map(|_| 0);
            }
            table::print_kv(&[
                ("ID", a.id.clone()),
                ("Eval ID", short_id(&a.eval_id).to_string()),
                ("Name", a.name.clone()),
                ("Node ID", short_id(&a.node_id).to_string()),
                ("Node Name", a.node_name.clone()),
                ("Job ID", a.job_id.clone()),
                (
                    "Job Version",
                    a.job
                        .as_ref()
                        .map(|j| j.version)
                        .unwrap_or_default()
                        .to_string(),
                ),
                ("Client Status", a.client_status.clone()),
                ("Client Description", a.client_description.clone()),
                ("Desired Status", a.desired_status.clone()),
                ("Desired Description", a.desired_description.clone()),
                ("Created", ago(a.create_time)),
                ("Modified", ago(a.modify_time)),
            ]);
            if !a.allocated_resources.shared.ports.is_empty() {
                println!("\nAllocation Addresses:");
                let rows: Vec<Vec<String>> = a
                    .allocated_resources
                    .shared
                    .ports
                    .iter()
                    .map(|p| {
                        vec![
                            p.label.clone(),
                            format!("{}:{}", p.host_ip, p.value),
                            p.to.to_string(),
                        ]
                    })
                    .collect();
                table::print(&["Label", "Host Address", "Mapped Port"], &rows);
            }
            for (task, state) in &a.task_states {
                println!("\nTask \"{task}\" is \"{}\"", state.state);
                println!("Recent Events:");
                let rows: Vec<Vec<String>> = state
                    .events
                    .iter()
                    .rev()
                    .take(10)
                    .map(|e| vec![ago(e.time), e.event_type.clone(), e.display_message.clone()])
                    .collect();
                table::print(&["Time", "Type", "Description"], &rows);
            }
            Ok(0)
        }
        AllocCmd::Restart { alloc, task } => {
            let (a, _): (Allocation, _) =
                client.get(&format!("/v1/allocation/{alloc}"), None).await?;
            let body = match &task {
                Some(t) => serde_json::json!({ "TaskName": t }),
                None => serde_json::json!({}),
            };
            let _: serde_json::Value = client
                .post(&format!("/v1/client/allocation/{}/restart", a.id), &body)
                .await?;
            println!("Restart of allocation {} requested", a.short_id());
            Ok(0)
        }
        AllocCmd::Stop { alloc, detach } => {
            let (a, _): (Allocation, _) =
                client.get(&format!("/v1/allocation/{alloc}"), None).await?;
            let resp: serde_json::Value = client
                .post(
                    &format!("/v1/allocation/{}/stop", a.id),
                    &serde_json::json!({}),
                )
                .await?;
            let eval = resp["EvalID"].as_str().unwrap_or_default().to_string();
            println!(
                "Allocation {} stopping; evaluation {}",
                a.short_id(),
                short_id(&eval)
            );
            if detach {
                return Ok(0);
            }
            monitor::run(
                client,
                &a.namespace,
                &a.job_id,
                &eval,
                std::time::Duration::from_secs(300),
            )
            .await
        }
        AllocCmd::Logs {
            alloc,
            task,
            stderr,
            follow,
        } => {
            let (a, _): (Allocation, _) =
                client.get(&format!("/v1/allocation/{alloc}"), None).await?;
            let tasks: Vec<String> = a
                .group()
                .map(|g| g.tasks.iter().map(|t| t.name.clone()).collect())
                .unwrap_or_default();
            let task = match task {
                Some(t) => {
                    if !tasks.is_empty() && !tasks.contains(&t) {
                        return Err(anyhow!(
                            "allocation {} has no task {t:?} (tasks: {})",
                            a.short_id(),
                            tasks.join(", ")
                        ));
                    }
                    t
                }
                None if tasks.len() == 1 => tasks[0].clone(),
                None => {
                    return Err(anyhow!(
                        "allocation {} has several tasks; name one of: {}",
                        a.short_id(),
                        tasks.join(", ")
                    ));
                }
            };
            let kind = if stderr { "stderr" } else { "stdout" };
            let resp = client
                .stream(
                    &format!("/v1/client/fs/logs/{}", a.id),
                    &[
                        ("task", task),
                        ("type", kind.to_string()),
                        ("follow", follow.to_string()),
                        ("origin", "start".to_string()),
                        ("offset", "0".to_string()),
                        ("plain", "true".to_string()),
                    ],
                )
                .await?;
            let mut body = resp.bytes_stream();
            let mut out = std::io::stdout();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.context("reading the log stream")?;
                out.write_all(&chunk)?;
                out.flush()?;
            }
            Ok(0)
        }
    }
}

pub async fn run_node(client: &Client, cmd: NodeCmd) -> anyhow::Result<i32> {
    match cmd {
        NodeCmd::Status {
            id: None,
            json,
            verbose,
        } => {
            let (nodes, _): (Vec<NodeListStub>, _) = client.get("/v1/nodes", None).await?;
            if json {
                return print_json(&nodes).map(|_| 0);
            }
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    vec![
                        if verbose {
                            n.id.clone()
                        } else {
                            short_id(&n.id).to_string()
                        },
                        n.datacenter.clone(),
                        n.name.clone(),
                        if n.node_class.is_empty() {
                            "<none>".into()
                        } else {
                            n.node_class.clone()
                        },
                        n.address.clone(),
                        n.drain.to_string(),
                        n.scheduling_eligibility.clone(),
                        n.status.clone(),
                    ]
                })
                .collect();
            table::print(
                &[
                    "ID",
                    "DC",
                    "Name",
                    "Class",
                    "Address",
                    "Drain",
                    "Eligibility",
                    "Status",
                ],
                &rows,
            );
            Ok(0)
        }
        NodeCmd::Status {
            id: Some(id),
            json,
            verbose,
        } => {
            // Accept a name too.
            let (nodes, _): (Vec<NodeListStub>, _) = client.get("/v1/nodes", None).await?;
            let id = nodes
                .iter()
                .find(|n| n.name == id)
                .map(|n| n.id.clone())
                .unwrap_or(id);
            let (node, _): (Node, _) = client.get(&format!("/v1/node/{id}"), None).await?;
            let (allocs, _): (Vec<Allocation>, _) = client
                .get(&format!("/v1/node/{}/allocations", node.id), None)
                .await?;
            if json {
                return print_json(&serde_json::json!({"Node": node, "Allocations": allocs}))
                    .map(|_| 0);
            }
            let drivers: Vec<String> = node
                .drivers
                .iter()
                .filter(|(_, d)| d.detected)
                .map(|(n, d)| {
                    if d.healthy {
                        n.clone()
                    } else {
                        format!("{n} (unhealthy)")
                    }
                })
                .collect();
            table::print_kv(&[
                ("ID", node.id.clone()),
                ("Name", node.name.clone()),
                ("Class", node.node_class.clone()),
                ("DC", node.datacenter.clone()),
                ("Address", node.address.clone()),
                ("Proxy", node.proxy_addr.clone()),
                ("Drain", node.drain.to_string()),
                ("Eligibility", node.scheduling_eligibility.clone()),
                ("Status", node.status.clone()),
                ("CPU (MHz)", node.node_resources.cpu.cpu_shares.to_string()),
                (
                    "Memory (MB)",
                    node.node_resources.memory.memory_mb.to_string(),
                ),
                ("Drivers", drivers.join(",")),
                ("Status Description", node.status_description.clone()),
            ]);
            if verbose {
                println!("\nAttributes");
                let attrs: Vec<(&str, String)> = node
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.clone()))
                    .collect();
                table::print_kv(&attrs);
                if !node.meta.is_empty() {
                    println!("\nMeta");
                    let meta: Vec<(&str, String)> = node
                        .meta
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.clone()))
                        .collect();
                    table::print_kv(&meta);
                }
                if !node.host_volumes.is_empty() {
                    println!("\nHost Volumes");
                    let rows: Vec<Vec<String>> = node
                        .host_volumes
                        .values()
                        .map(|v| vec![v.name.clone(), v.path.clone(), v.read_only.to_string()])
                        .collect();
                    table::print(&["Name", "Path", "ReadOnly"], &rows);
                }
            }
            println!("\nAllocations");
            let rows: Vec<Vec<String>> = allocs
                .iter()
                .filter(|a| !a.terminal())
                .map(|a| {
                    vec![
                        short_id(&a.id).to_string(),
                        a.job_id.clone(),
                        a.task_group.clone(),
                        a.desired_status.clone(),
                        a.client_status.clone(),
                    ]
                })
                .collect();
            table::print(&["ID", "Job ID", "Task Group", "Desired", "Status"], &rows);
            Ok(0)
        }
        NodeCmd::Drain {
            node,
            enable,
            disable,
            deadline,
            ignore_system,
            keep_ineligible,
            detach,
            yes: _,
        } => {
            if enable == disable {
                return Err(anyhow!(
                    "node drain: give exactly one of -enable or -disable"
                ));
            }
            let node = resolve_node(client, &node).await?;
            let body = if enable {
                let d = parse_signed_duration(&deadline)
                    .with_context(|| format!("-deadline {deadline:?}"))?;
                serde_json::json!({"DrainSpec": {"Deadline": d, "IgnoreSystemJobs": ignore_system}})
            } else {
                serde_json::json!({"DrainSpec": null, "MarkEligible": !keep_ineligible})
            };
            let _: serde_json::Value = client
                .post(&format!("/v1/node/{}/drain", node.id), &body)
                .await?;
            if disable {
                println!("Node {:?} drain disabled", node.name);
                return Ok(0);
            }
            println!("Node {:?} drain strategy set", node.name);
            if detach {
                return Ok(0);
            }
            let mut index = None;
            loop {
                let (n, i): (Node, u64) =
                    client.get(&format!("/v1/node/{}", node.id), index).await?;
                index = Some(i);
                if !n.drain {
                    println!(
                        "Node {:?} has marked all allocations for migration; drain complete",
                        n.name
                    );
                    return Ok(0);
                }
            }
        }
        NodeCmd::Eligibility {
            node,
            enable,
            disable,
        } => {
            if enable == disable {
                return Err(anyhow!(
                    "node eligibility: give exactly one of -enable or -disable"
                ));
            }
            let node = resolve_node(client, &node).await?;
            let value = if enable {
                NODE_ELIGIBLE
            } else {
                NODE_INELIGIBLE
            };
            let _: serde_json::Value = client
                .post(
                    &format!("/v1/node/{}/eligibility", node.id),
                    &serde_json::json!({"Eligibility": value}),
                )
                .await?;
            println!(
                "Node {:?} scheduling eligibility set: {value} for scheduling",
                node.name
            );
            Ok(0)
        }
    }
}

/// A node by name, id or unique id prefix.
async fn resolve_node(client: &Client, wanted: &str) -> anyhow::Result<NodeListStub> {
    let (nodes, _): (Vec<NodeListStub>, _) = client.get("/v1/nodes", None).await?;
    if let Some(n) = nodes.iter().find(|n| n.name == wanted || n.id == wanted) {
        return Ok(n.clone());
    }
    let matches: Vec<&NodeListStub> = nodes.iter().filter(|n| n.id.starts_with(wanted)).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(anyhow!("no node named or with id {wanted:?}")),
        many => Err(anyhow!(
            "node id prefix {wanted:?} matches {} nodes: {}",
            many.len(),
            many.iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// "1h" → nanoseconds; "-1s" → negative (force now).
fn parse_signed_duration(s: &str) -> anyhow::Result<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let d = humantime::parse_duration(body)?;
    let n = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    Ok(if neg { -n } else { n })
}

pub async fn run_eval(client: &Client, cmd: EvalCmd) -> anyhow::Result<i32> {
    match cmd {
        EvalCmd::Status { id, json } => {
            let (e, _): (Evaluation, _) = client.get(&format!("/v1/evaluation/{id}"), None).await?;
            if json {
                return print_json(&e).map(|_| 0);
            }
            table::print_kv(&[
                ("ID", e.id.clone()),
                ("Create Time", ago(e.create_time)),
                ("Modify Time", ago(e.modify_time)),
                ("Status", e.status.clone()),
                ("Status Description", e.status_description.clone()),
                ("Type", e.eval_type.clone()),
                ("TriggeredBy", e.triggered_by.clone()),
                ("Job ID", e.job_id.clone()),
                ("Node ID", e.node_id.clone()),
                ("Priority", e.priority.to_string()),
                (
                    "Placement Failures",
                    (!e.failed_tg_allocs.is_empty()).to_string(),
                ),
                ("Previous Eval", e.previous_eval.clone()),
                ("Blocked Eval", e.blocked_eval.clone()),
            ]);
            for (group, m) in &e.failed_tg_allocs {
                println!(
                    "\nFailed Placements\nTask Group {group:?} (failed to place {} allocation(s)):",
                    m.coalesced_failures + 1
                );
                println!("  * {}", m.describe());
            }
            Ok(0)
        }
    }
}

/// `job plan`: print the diff and the dry run; 0 = no change, 1 = changes.
async fn plan(
    client: &Client,
    file: &std::path::Path,
    vars: &VarArgs,
    json: bool,
) -> anyhow::Result<i32> {
    let p = match parse_file(file, vars)? {
        Ok(p) => p,
        Err(errors) => return Err(anyhow!("parsing job file {}:\n{errors}", file.display())),
    };
    let job = p.job;
    let resp: serde_json::Value = client
        .post(
            &format!("/v1/job/{}/plan", seg(&job.id)),
            &serde_json::json!({"Job": job, "Diff": true}),
        )
        .await?;
    if json {
        print_json(&resp)?;
    }
    let diff: JobDiff =
        serde_json::from_value(resp["Diff"].clone()).context("decoding the plan's Diff")?;
    if !json {
        println!("{}", diff::render(&diff));
        let rollouts: Vec<(&String, &str)> = resp["Deployment"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(g, r)| (g, r["Description"].as_str().unwrap_or_default()))
            .collect();
        if !rollouts.is_empty() {
            println!("Deployment:");
            for (group, description) in rollouts {
                println!("- Task Group {group:?}: {description}");
            }
            println!();
        }
        println!("Scheduler dry-run:");
        let failed = resp["FailedTGAllocs"].as_object().filter(|m| !m.is_empty());
        match failed {
            None => println!("- All tasks successfully allocated."),
            Some(m) => {
                for (group, metric) in m {
                    let metric: AllocMetric =
                        serde_json::from_value(metric.clone()).unwrap_or_default();
                    println!(
                        "- WARNING: Failed to place all allocations.\n  Task Group {group:?}: {}",
                        metric.describe()
                    );
                }
            }
        }
        println!("\nJob Modify Index: {}", resp["JobModifyIndex"]);
    }
    Ok(if diff.changed() { 1 } else { 0 })
}

/// Nomad's `JobVersionsResponse` with its `Diffs` (asked for with `?diffs=true`).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Versions {
    versions: Vec<Job>,
    /// `Diffs[i]` is what `Versions[i]` changed from `Versions[i + 1]`.
    #[serde(default)]
    diffs: Vec<JobDiff>,
}

/// `job history`: a table of the kept versions, or with `-p` one block per version with what
/// it changed from the previous one.
async fn history(client: &Client, id: &str, diffs: bool, json: bool) -> anyhow::Result<i32> {
    let path = format!("/v1/job/{}/versions?diffs={diffs}", seg(id));
    let (resp, _): (serde_json::Value, _) = client.get(&path, None).await?;
    if json {
        return print_json(&resp).map(|_| 0);
    }
    let Versions {
        versions,
        diffs: changes,
    } = serde_json::from_value(resp).with_context(|| format!("decoding the answer of {path}"))?;
    if !diffs {
        let rows: Vec<Vec<String>> = versions
            .iter()
            .map(|j| {
                vec![
                    j.version.to_string(),
                    j.stable.to_string(),
                    table::timestamp(j.submit_time),
                ]
            })
            .collect();
        table::print(&["Version", "Stable", "Submit Date"], &rows);
        return Ok(0);
    }
    for (i, j) in versions.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let mut kv = vec![
            ("Version", j.version.to_string()),
            ("Stable", j.stable.to_string()),
            ("Submit Date", table::timestamp(j.submit_time)),
        ];
        let diff = changes.get(i);
        if diff.is_some() {
            kv.push(("Diff", String::new()));
        }
        table::print_kv(&kv);
        if let Some(d) = diff {
            print!("{}", diff::render(d));
        }
    }
    Ok(0)
}

pub async fn run_service(client: &Client, cmd: ServiceCmd) -> anyhow::Result<i32> {
    match cmd {
        ServiceCmd::List { json } => {
            let (list, _): (Vec<ServiceListStub>, _) = client.get("/v1/services", None).await?;
            if json {
                return print_json(&list).map(|_| 0);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .flat_map(|ns| {
                    ns.services.iter().map(move |s| {
                        vec![
                            s.service_name.clone(),
                            ns.namespace.clone(),
                            format!("[{}]", s.tags.join(",")),
                        ]
                    })
                })
                .collect();
            if rows.is_empty() {
                println!("No services found");
                return Ok(0);
            }
            table::print(&["Service Name", "Namespace", "Tags"], &rows);
            Ok(0)
        }
        ServiceCmd::Info { name, json } => {
            let (regs, _): (Vec<ServiceRegistration>, _) =
                client.get(&format!("/v1/service/{name}"), None).await?;
            if json {
                return print_json(&regs).map(|_| 0);
            }
            let rows: Vec<Vec<String>> = regs
                .iter()
                .map(|r| {
                    vec![
                        r.job_id.clone(),
                        format!("{}:{}", r.address, r.port),
                        short_id(&r.node_id).to_string(),
                        short_id(&r.alloc_id).to_string(),
                        r.status.clone(),
                        format!("[{}]", r.tags.join(",")),
                    ]
                })
                .collect();
            table::print(
                &["Job", "Address", "Node ID", "Alloc ID", "Health", "Tags"],
                &rows,
            );
            Ok(0)
        }
    }
}
