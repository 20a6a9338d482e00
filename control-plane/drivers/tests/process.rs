//! Drivers against real processes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_drivers::{Driver, DriverError, Drivers, RecoverState, Signal, TaskSpec};
use serde_json::json;

fn spec(dir: &Path, config: serde_json::Value) -> TaskSpec {
    let task_dir = dir.join("task");
    std::fs::create_dir_all(&task_dir).unwrap();
    TaskSpec {
        name: "test/task".into(),
        config,
        env: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
        task_dir,
        stdout_path: dir.join("logs/task.stdout.0"),
        stderr_path: dir.join("logs/task.stderr.0"),
        alloc_id: "alloc-1".into(),
        task_name: "task".into(),
        ..Default::default()
    }
}

fn raw_exec() -> std::sync::Arc<dyn Driver> {
    Drivers::builtin().get("raw_exec").unwrap()
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp …; comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            found.push(pid);
        }
    }
    found
}

async fn eventually(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exit_code_and_stdout_are_captured() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(
        dir.path(),
        json!({"command": "sh", "args": ["-c", "echo $GREETING; echo oops >&2; pwd; exit 3"]}),
    );
    let handle = raw_exec().start(s.clone()).await.unwrap();
    assert!(handle.id().starts_with("pid:"));
    let exit = tokio::time::timeout(Duration::from_secs(10), handle.wait())
        .await
        .unwrap();
    assert_eq!(exit.exit_code, 3);
    assert_eq!(exit.signal, 0);
    assert!(!exit.successful());
    let out = std::fs::read_to_string(&s.stdout_path).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hi"));
    let cwd = std::fs::canonicalize(lines.next().unwrap()).unwrap();
    assert_eq!(cwd, std::fs::canonicalize(&s.task_dir).unwrap());
    assert_eq!(std::fs::read_to_string(&s.stderr_path).unwrap(), "oops\n");
    // wait() may be called again and gives the same answer.
    assert_eq!(handle.wait().await, exit);
}

#[tokio::test]
async fn logs_are_appended_across_starts() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(
        dir.path(),
        json!({"command": "sh", "args": ["-c", "echo run"]}),
    );
    for _ in 0..2 {
        let h = raw_exec().start(s.clone()).await.unwrap();
        assert!(h.wait().await.successful());
    }
    assert_eq!(
        std::fs::read_to_string(&s.stdout_path).unwrap(),
        "run\nrun\n"
    );
}

#[tokio::test]
async fn environment_is_only_what_the_agent_gives() {
    // set_var needs unsafe in edition 2024 (forbidden here), so use a variable cargo sets for
    // every test run: CARGO is in the agent's environment but must not reach the task.
    assert!(std::env::var_os("CARGO").is_some());
    let dir = tempfile::tempdir().unwrap();
    let s = spec(
        dir.path(),
        json!({"command": "sh", "args": ["-c", "echo \"cargo=${CARGO:-unset} path=${PATH:+set}\""]}),
    );
    let h = raw_exec().start(s.clone()).await.unwrap();
    assert!(h.wait().await.successful());
    assert_eq!(
        std::fs::read_to_string(&s.stdout_path).unwrap(),
        "cargo=unset path=set\n"
    );
}

#[tokio::test]
async fn stop_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(
        dir.path(),
        json!({"command": "sh", "args": ["-c", "trap '' TERM; sleep 1000 & sleep 1000"]}),
    );
    let handle = raw_exec().start(s).await.unwrap();
    let pgid = handle.pid().unwrap() as i32;
    eventually("the shell and both sleeps", Duration::from_secs(10), || {
        group_members(pgid).len() >= 3
    })
    .await;
    // The shell ignores SIGTERM, so this goes all the way to SIGKILL.
    let started = Instant::now();
    let exit = handle
        .stop(Signal::SIGTERM, Duration::from_millis(300))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(exit.signal, Signal::SIGKILL as i32, "{exit:?}");
    eventually(
        "no process left in the group",
        Duration::from_secs(10),
        || group_members(pgid).is_empty(),
    )
    .await;
}

#[tokio::test]
async fn graceful_stop_uses_the_signal() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(
        dir.path(),
        json!({"command": "sh", "args": ["-c", "sleep 1000 & sleep 1000"]}),
    );
    let handle = raw_exec().start(s).await.unwrap();
    let pgid = handle.pid().unwrap() as i32;
    // Both sleeps exec'd (a fork still running the shell's code may handle SIGINT its own way).
    eventually("the group", Duration::from_secs(10), || {
        group_members(pgid)
            .iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
            .count()
            >= 2
    })
    .await;
    let exit = handle.stop(Signal::SIGINT, Duration::from_secs(20)).await;
    assert_eq!(exit.signal, Signal::SIGINT as i32, "{exit:?}");
    eventually(
        "no process left in the group",
        Duration::from_secs(10),
        || group_members(pgid).is_empty(),
    )
    .await;
}

#[tokio::test]
async fn leftovers_die_when_the_main_process_exits() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("child-pid");
    let s = spec(
        dir.path(),
        json!({"command": "sh", "args": ["-c", format!("sleep 1000 & echo $! > {}", marker.display())]}),
    );
    let handle = raw_exec().start(s).await.unwrap();
    let pgid = handle.pid().unwrap() as i32;
    assert!(handle.wait().await.successful());
    eventually(
        "the background sleep to be killed",
        Duration::from_secs(10),
        || group_members(pgid).is_empty(),
    )
    .await;
}

#[tokio::test]
async fn a_dropped_handle_leaves_the_task_to_be_recovered_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(
        dir.path(),
        json!({"command": "sh", "args": ["-c", "sleep 1000 & sleep 1000"]}),
    );
    let handle = raw_exec().start(s.clone()).await.unwrap();
    let pgid = handle.pid().unwrap() as i32;
    let state = handle.recover_state();
    assert_eq!(state.driver, "raw_exec");
    assert_eq!(state.pid, Some(pgid as u32));
    eventually("the shell and both sleeps", Duration::from_secs(10), || {
        group_members(pgid).len() >= 3
    })
    .await;
    // What an agent restart does to the handle: the task must survive it.
    drop(handle);
    // The persisted form is what the next agent reads.
    let state: RecoverState =
        serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    let recovered = raw_exec().recover(&state, &s).await.unwrap();
    assert_eq!(recovered.id(), state.id);
    assert_eq!(recovered.pid(), Some(pgid as u32));
    assert_eq!(recovered.recover_state(), state);
    assert!(
        group_members(pgid).len() >= 3,
        "the task died with its handle"
    );
    assert!(recovered.try_exit().is_none());

    let exit = recovered
        .stop(Signal::SIGTERM, Duration::from_secs(10))
        .await;
    assert!(
        exit.error
            .as_deref()
            .is_some_and(|e| e.contains("exit status unknown")),
        "{exit:?}"
    );
    assert!(!exit.successful());
    eventually(
        "no process left in the group",
        Duration::from_secs(10),
        || group_members(pgid).is_empty(),
    )
    .await;
    // It is gone now, and says so.
    let err = raw_exec().recover(&state, &s).await.err().unwrap();
    assert!(matches!(err, DriverError::Gone { .. }), "{err:?}");
}

#[tokio::test]
async fn a_recovered_task_reports_its_own_exit() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(
        dir.path(),
        json!({"command": "sh", "args": ["-c", "while [ ! -e done ]; do sleep 0.05; done; echo finished"]}),
    );
    let handle = raw_exec().start(s.clone()).await.unwrap();
    let state = handle.recover_state();
    drop(handle);
    let recovered = raw_exec().recover(&state, &s).await.unwrap();
    std::fs::write(s.task_dir.join("done"), "").unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), recovered.wait())
        .await
        .unwrap();
    assert_eq!(
        exit.error.as_deref(),
        Some("exit status unknown: task was recovered after an agent restart")
    );
    // The child wrote to its log files all along.
    assert_eq!(
        std::fs::read_to_string(&s.stdout_path).unwrap(),
        "finished\n"
    );
}

#[tokio::test]
async fn a_reused_pid_is_not_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), json!({"command": "sleep", "args": ["1000"]}));
    let handle = raw_exec().start(s.clone()).await.unwrap();
    let state = handle.recover_state();
    let gone = |r: Result<Box<dyn flotilla_drivers::TaskHandle>, DriverError>| match r {
        Err(DriverError::Gone { .. }) => {}
        Err(e) => panic!("expected Gone, got {e:?}"),
        Ok(_) => panic!("a process with another start time was adopted"),
    };

    // Same pid, but recorded for a process that started an hour earlier.
    let mut earlier = state.clone();
    earlier.started_at_unix_nanos -= 3_600_000_000_000;
    gone(raw_exec().recover(&earlier, &s).await);

    // Same pid, another start tick count.
    let mut other_ticks = state.clone();
    let ticks: u64 = other_ticks.extra["start_ticks"].parse().unwrap();
    other_ticks
        .extra
        .insert("start_ticks".into(), (ticks + 7).to_string());
    gone(raw_exec().recover(&other_ticks, &s).await);

    // Without a tick count, the wall-clock start time decides.
    let mut no_ticks = state.clone();
    no_ticks.extra.remove("start_ticks");
    no_ticks.started_at_unix_nanos += 5_000_000_000;
    gone(raw_exec().recover(&no_ticks, &s).await);

    // Another boot.
    let mut rebooted = state.clone();
    rebooted
        .extra
        .insert("boot_id".into(), "another-boot".into());
    gone(raw_exec().recover(&rebooted, &s).await);

    // Another driver's state is refused outright.
    let mut docker = state.clone();
    docker.driver = "docker".into();
    let err = raw_exec().recover(&docker, &s).await.err().unwrap();
    assert!(
        matches!(err, DriverError::InvalidRecoverState { .. }),
        "{err:?}"
    );

    // The true state still works.
    let recovered = raw_exec().recover(&state, &s).await.unwrap();
    drop(handle);
    let exit = recovered.kill().await;
    assert!(exit.error.is_some(), "{exit:?}");
}

#[tokio::test]
async fn raw_exec_reaps_nothing() {
    let reaped = raw_exec()
        .reap_unowned(&std::collections::BTreeSet::new())
        .await
        .unwrap();
    assert!(reaped.is_empty());
}

#[tokio::test]
async fn tasks_run_as_their_user() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), json!({"command": "id", "args": ["-u"]}));
    s.user = Some("no-such-user-flotilla".into());
    let err = raw_exec().start(s.clone()).await.err().unwrap();
    assert!(matches!(err, DriverError::User { .. }), "{err:?}");
    assert!(!err.is_recoverable());
    assert_eq!(
        err.to_string(),
        "user \"no-such-user-flotilla\": no such user on this node"
    );

    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping the switch to another user: the tests do not run as root");
        return;
    }
    s.user = Some("nobody".into());
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let h = raw_exec().start(s.clone()).await.unwrap();
    assert!(h.wait().await.successful());
    assert_eq!(
        std::fs::read_to_string(&s.stdout_path).unwrap(),
        format!("{}\n", nobody.uid)
    );
}

#[tokio::test]
async fn missing_command_names_it_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(
        dir.path(),
        json!({"command": "no-such-program-flotilla", "args": []}),
    );
    s.env
        .insert("PATH".into(), "/nonexistent/bin:/usr/bin".into());
    let err = match raw_exec().start(s).await {
        Err(e) => e,
        Ok(_) => panic!("a missing command must not start"),
    };
    assert!(
        matches!(err, DriverError::CommandNotFound { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("no-such-program-flotilla"), "{msg}");
    assert!(msg.contains("PATH=/nonexistent/bin:/usr/bin"), "{msg}");
    assert!(msg.contains("the agent's directory"), "{msg}");
}

#[tokio::test]
async fn relative_commands_are_relative_to_the_task_dir() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), json!({"command": "./run.sh"}));
    let script = s.task_dir.join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho from-script\n").unwrap();
    let h = match raw_exec().start(s.clone()).await {
        Err(DriverError::NotExecutable { .. }) => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            raw_exec().start(s.clone()).await.unwrap()
        }
        other => panic!(
            "a non-executable script must be refused, got {:?}",
            other.err()
        ),
    };
    assert!(h.wait().await.successful());
    assert_eq!(
        std::fs::read_to_string(&s.stdout_path).unwrap(),
        "from-script\n"
    );
}

#[tokio::test]
async fn bad_config_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), json!({"command": "sh", "args": "-c true"}));
    let err = raw_exec().start(s).await.err().unwrap();
    assert!(
        err.to_string()
            .starts_with("config.args: expected a list of strings"),
        "{err}"
    );
}

#[tokio::test]
async fn fingerprints() {
    for d in Drivers::builtin().iter() {
        let fp = d.fingerprint().await;
        if d.name() == "docker" && !Path::new("/var/run/docker.sock").exists() {
            assert!(!fp.detected, "{fp:?}");
            continue;
        }
        if cfg!(target_os = "linux") {
            assert!(fp.detected && fp.healthy, "{}: {fp:?}", d.name());
        }
    }
}
