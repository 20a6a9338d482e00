//! `flotilla`: parse the command line and hand over to the library.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use flotilla::{agent, dev, proxy, server};

/// Flotilla: a container orchestrator with a built-in service mesh.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a server: the control plane (API, state, scheduler, catalog, discovery).
    Server(server::ServerArgs),
    /// Run a node: the agent that runs allocations, and its node proxy.
    Agent(agent::AgentArgs),
    /// Run a node proxy alone, with static config from a bootstrap file.
    Proxy(proxy::ProxyArgs),
    /// Run a one-process dev cluster, optionally with jobs.
    Dev(dev::DevArgs),
    /// Submit, inspect, stop and revert jobs.
    Job(JobArgs),
    /// Inspect and control rollouts: promote canaries, pause, resume, fail.
    Deployment(DeploymentArgs),
    /// Inspect allocations and read their logs.
    Alloc(AllocArgs),
    /// Inspect nodes.
    Node(NodeArgs),
    /// Inspect the service catalog.
    Service(ServiceArgs),
    /// Inspect evaluations.
    Eval(EvalArgs),
    /// Allow or deny service-to-service connections in the mesh.
    Intention(IntentionArgs),
    /// Inspect and rotate the mesh's certificate authority.
    Ca(CaArgs),
    /// Write, read, list and delete the mesh's L7 config entries (service-defaults,
    /// service-router, service-splitter, service-resolver).
    Config(ConfigArgs),
    /// The example workload: an HTTP, WebSocket and gRPC server answering with its allocation
    /// id and node.
    ///
    /// Endpoints (one port, HTTP/1.1 and h2c): `GET /health` (the check); `POST /echo` (the
    /// body back); `GET /upstream/NAME/PATH` (calls PATH on a Connect upstream);
    /// `/fail-once/KEY` (503 the first time KEY is asked for, 200 after); `GET /ws` (WebSocket
    /// echo, first sending `hello from ALLOC_ID`); gRPC `flotilla.demo.v1.Echo` (`Say`,
    /// `Count`, `Chat`) for requests with `content-type: application/grpc`; any other path
    /// answers `hello from allocation ALLOC_ID on node NODE`.
    DemoApp(DemoArgs),
}

// `flotilla proxy`'s arguments parsed on their own, without the rest of the command tree.
//
// The node proxy runs on every node for as long as the node does. Building `Cli` runs the
// argument definitions of every command, and the pages of code that runs stay mapped in the
// process: about 0.3 MB of the proxy's idle RSS with 1,000 services (measured 14.8-15.1 MB
// before, 14.3-14.7 MB after). `flotilla --help` still lists `proxy` through `Cli`; the test
// `proxy_parsed_alone_has_the_same_help` keeps the two renderings the same. (The doc comment
// below is clap's `about`, the same as on `Command::Proxy`.)
/// Run a node proxy alone, with static config from a bootstrap file.
#[derive(Debug, Parser)]
#[command(name = "flotilla-proxy", bin_name = "flotilla proxy")]
struct ProxyCli {
    #[command(flatten)]
    args: proxy::ProxyArgs,
}

/// The command `args` (the whole command line, program name first) asks for; exits with
/// clap's message on bad arguments, `--help` and `--version`.
fn parse_command(args: Vec<String>) -> Command {
    if args.get(1).is_some_and(|a| a == "proxy") {
        // Named as the full tree names the subcommand: the program's file name, then `proxy`.
        let bin = args
            .first()
            .and_then(|a| std::path::Path::new(a).file_name())
            .map_or_else(|| "flotilla".into(), |n| n.to_string_lossy());
        let matches = ProxyCli::command()
            .bin_name(format!("{bin} proxy"))
            .get_matches_from(args.iter().skip(1));
        return Command::Proxy(
            ProxyCli::from_arg_matches(&matches)
                .unwrap_or_else(|e| e.exit())
                .args,
        );
    }
    Cli::parse_from(args).command
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Address to listen on.
    #[arg(long, env = "DEMO_LISTEN")]
    listen: std::net::SocketAddr,
    /// Node name to report.
    #[arg(long, default_value = "unknown")]
    node: String,
    /// Allocation id to report.
    #[arg(long, env = "NOMAD_ALLOC_ID", default_value = "unknown")]
    alloc_id: String,
    /// Application version: added to the hello answer (` version V`) and sent as the
    /// `x-app-version` header of every response. Empty: none.
    #[arg(long, env = "DEMO_APP_VERSION", default_value = "")]
    app_version: String,
    /// `GET /health` answers 503 until this long after start (e.g. `3s`), then 200.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    healthy_after: std::time::Duration,
    /// `GET /health` always answers 500 (a broken release, for failed deployments).
    #[arg(long)]
    unhealthy: bool,
    /// Every request but `GET /health` answers this HTTP status (200-599, e.g. 500), gRPC and
    /// WebSocket included: a broken instance whose health check passes (outlier detection).
    #[arg(long, env = "DEMO_FAIL_STATUS", value_parser = flotilla_demo_app::parse_fail_status)]
    fail_status: Option<flotilla_demo_app::StatusCode>,
}

macro_rules! verb_args {
    ($name:ident, $cmd:ty) => {
        #[derive(Debug, clap::Args)]
        struct $name {
            #[command(flatten)]
            connect: flotilla_cli::ConnectArgs,
            #[command(subcommand)]
            cmd: $cmd,
        }
    };
}
verb_args!(JobArgs, flotilla_cli::JobCmd);
verb_args!(DeploymentArgs, flotilla_cli::DeploymentCmd);
verb_args!(AllocArgs, flotilla_cli::AllocCmd);
verb_args!(NodeArgs, flotilla_cli::NodeCmd);
verb_args!(ServiceArgs, flotilla_cli::ServiceCmd);
verb_args!(EvalArgs, flotilla_cli::EvalCmd);
verb_args!(IntentionArgs, flotilla_cli::IntentionCmd);
verb_args!(CaArgs, flotilla_cli::CaCmd);
verb_args!(ConfigArgs, flotilla_cli::ConfigCmd);

fn main() -> std::process::ExitCode {
    let command = parse_command(flotilla_cli::normalize_args(std::env::args()));
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Proxy(proxy::ProxyArgs {
        workers: Some(n), ..
    }) = &command
    {
        builder.worker_threads(usize::from(*n));
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flotilla: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<i32> = runtime.block_on(async move {
        match command {
            Command::Server(a) => {
                flotilla::init_logging("info");
                server::run(a).await.map(|_| 0)
            }
            Command::Agent(a) => {
                flotilla::init_logging("info");
                agent::run(a).await.map(|_| 0)
            }
            Command::Proxy(a) => {
                flotilla::init_logging("info");
                proxy::run(a).await.map(|_| 0)
            }
            Command::Dev(a) => {
                flotilla::init_logging("warn");
                dev::run(a).await.map(|_| 0)
            }
            Command::DemoApp(a) => {
                flotilla_demo_app::serve(
                    a.listen,
                    flotilla_demo_app::Config {
                        alloc_id: a.alloc_id,
                        node: a.node,
                        version: a.app_version,
                        healthy_after: a.healthy_after,
                        unhealthy: a.unhealthy,
                        fail_status: a.fail_status,
                        ..flotilla_demo_app::Config::default()
                    },
                )
                .await?;
                Ok(0)
            }
            Command::Job(a) => {
                flotilla_cli::run_job(&flotilla_cli::Client::new(&a.connect.address)?, a.cmd).await
            }
            Command::Deployment(a) => {
                flotilla_cli::run_deployment(&flotilla_cli::Client::new(&a.connect.address)?, a.cmd)
                    .await
            }
            Command::Alloc(a) => {
                flotilla_cli::run_alloc(&flotilla_cli::Client::new(&a.connect.address)?, a.cmd)
                    .await
            }
            Command::Node(a) => {
                flotilla_cli::run_node(&flotilla_cli::Client::new(&a.connect.address)?, a.cmd).await
            }
            Command::Eval(a) => {
                flotilla_cli::run_eval(&flotilla_cli::Client::new(&a.connect.address)?, a.cmd).await
            }
            Command::Service(a) => {
                flotilla_cli::run_service(&flotilla_cli::Client::new(&a.connect.address)?, a.cmd)
                    .await
            }
            Command::Intention(a) => {
                flotilla_cli::run_intention(&flotilla_cli::Client::new(&a.connect.address)?, a.cmd)
                    .await
            }
            Command::Ca(a) => {
                flotilla_cli::run_ca(&flotilla_cli::Client::new(&a.connect.address)?, a.cmd).await
            }
            Command::Config(a) => {
                flotilla_cli::run_config(&flotilla_cli::Client::new(&a.connect.address)?, a.cmd)
                    .await
            }
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_parsed_alone_has_the_same_help() {
        let mut full = Cli::command();
        full.build();
        let sub = full
            .find_subcommand_mut("proxy")
            .expect("flotilla has a proxy command");
        let mut alone = ProxyCli::command();
        assert_eq!(
            alone.render_long_help().to_string(),
            sub.render_long_help().to_string()
        );
        assert_eq!(
            alone.render_help().to_string(),
            sub.render_help().to_string()
        );
        assert_eq!(
            alone.render_usage().to_string(),
            sub.render_usage().to_string()
        );
    }

    #[test]
    fn proxy_is_parsed_alone_and_other_commands_by_the_full_tree() {
        let argv = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let Command::Proxy(p) = parse_command(argv(
            "flotilla proxy --bootstrap b.json --workers 3 --worker-affinity none",
        )) else {
            panic!("not the proxy command");
        };
        assert_eq!(p.bootstrap, std::path::PathBuf::from("b.json"));
        assert_eq!(p.workers, Some(3));
        assert_eq!(p.worker_affinity, proxy::WorkerAffinity::None);
        assert!(matches!(
            parse_command(argv("flotilla demo-app --listen 127.0.0.1:1")),
            Command::DemoApp(_)
        ));
        let bad = ProxyCli::try_parse_from(argv("flotilla-proxy --bootstrap b.json --bogus"))
            .expect_err("an unknown flag is an error");
        assert!(bad.to_string().contains("--bogus"), "{bad}");
        assert!(bad.to_string().contains("flotilla proxy"), "{bad}");
    }
}
