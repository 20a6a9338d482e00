use std::io::Write;

use anyhow::{Context, anyhow};
use clap::Subcommand;
use flotilla_types::*;
use futures::StreamExt;

use crate::client::Client;
use crate::monitor;
use crate::table;

/// `flotilla job …`
#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Submit a jobspec and follow it until its allocations run and are healthy.
    Run {
        /// The HCL jobspec.
        file: std::path::PathBuf,
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
        #[arg(long)]
        json: bool,
    },
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
}

/// `flotilla node …`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes, or show one node (id, unique prefix or name).
    Status {
        id: Option<String>,
        #[arg(long)]
        json: bool,
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

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
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

/// Parse a jobspec file, printing located diagnostics. `None` when it has errors.
fn parse_file(path: &std::path::Path) -> anyhow::Result<Result<flotilla_jobspec::Parsed, String>> {
    let src =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    Ok(flotilla_jobspec::parse(&src, &name).map_err(|e| e.to_string()))
}

pub async fn run_job(client: &Client, cmd: JobCmd) -> anyhow::Result<i32> {
    match cmd {
        JobCmd::Validate { file, json } => {
            let parsed = parse_file(&file)?;
            match parsed {
                Ok(p) => {
                    let mut job = p.job;
                    job.canonicalize();
                    let diags: Vec<_> = flotilla_jobspec::validate(&job);
                    let warnings: Vec<String> = p
                        .warnings
                        .iter()
                        .chain(diags.iter())
                        .map(|d| d.to_string())
                        .collect();
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
            detach,
            timeout,
            json,
        } => {
            let parsed = parse_file(&file)?;
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
            let (job, _): (Job, _) = client.get(&format!("/v1/job/{id}"), None).await?;
            let (allocs, _): (Vec<AllocListStub>, _) = client
                .get(&format!("/v1/job/{id}/allocations"), None)
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
                .delete(&format!("/v1/job/{id}"), &[("purge", purge.to_string())])
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
        NodeCmd::Status { id: None, json } => {
            let (nodes, _): (Vec<NodeListStub>, _) = client.get("/v1/nodes", None).await?;
            if json {
                return print_json(&nodes).map(|_| 0);
            }
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    vec![
                        short_id(&n.id).to_string(),
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
        NodeCmd::Status { id: Some(id), json } => {
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
            ]);
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
    }
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
