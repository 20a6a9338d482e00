//! Feasibility: every constraint operator, target interpolation, distinct_hosts,
//! distinct_property, and the strings placement failures report.

use flotilla_types::*;

use super::*;

/// A node with the attributes and meta the operator tests read.
fn rich_node(id: &str) -> Node {
    let mut n = node(id);
    n.node_class = "large".into();
    n.datacenter = "dc1".into();
    for (k, v) in [
        ("kernel.name", "linux"),
        ("kernel.version", "5.15.0-91-generic"),
        ("os.version", "22.04"),
        ("cpu.numcores", "8"),
        ("driver.docker.version", "24.0.7"),
        ("unique.hostname", "host-a"),
        ("cpu.arch", "amd64"),
    ] {
        n.attributes.insert(k.into(), v.into());
    }
    for (k, v) in [("rack", "r1"), ("tags", "ssd, gpu,fast")] {
        n.meta.insert(k.into(), v.into());
    }
    n
}

fn c(l: &str, op: &str, r: &str) -> Constraint {
    Constraint {
        l_target: l.into(),
        r_target: r.into(),
        operand: op.into(),
    }
}

/// Whether one instance with `constraint` at group level can go on `rich_node("a")`.
fn fits(constraint: Constraint) -> bool {
    let mut j = job(1, "raw_exec");
    j.task_groups[0].constraints.push(constraint);
    let store = store_with(vec![rich_node("a")], j);
    run(&store.snapshot(), &eval("e1")).place.len() == 1
}

#[test]
fn equality_operators_and_interpolation() {
    assert!(fits(c("${node.class}", "=", "large")));
    assert!(fits(c("${node.class}", "==", "large")));
    assert!(fits(c("${node.class}", "is", "large")));
    assert!(!fits(c("${node.class}", "=", "small")));
    assert!(fits(c("${node.class}", "!=", "small")));
    assert!(fits(c("${node.class}", "not", "small")));
    assert!(!fits(c("${node.class}", "!=", "large")));
    assert!(fits(c("${attr.kernel.name}", "=", "linux")));
    assert!(fits(c("${meta.rack}", "=", "r1")));
    assert!(fits(c("${node.unique.id}", "=", "a")));
    assert!(fits(c("${node.unique.name}", "=", "node-a")));
    assert!(fits(c("${node.datacenter}", "=", "dc1")));
    assert!(fits(c("${node.region}", "=", "global")));
    assert!(fits(c("${attr.unique.hostname}", "=", "host-a")));
    // Both sides may be interpolated.
    assert!(fits(c("${meta.rack}", "!=", "${node.class}")));
    // A missing attribute never equals anything, and differs from everything.
    assert!(!fits(c("${attr.nope}", "=", "x")));
    assert!(fits(c("${attr.nope}", "!=", "x")));
    assert!(!fits(c("${node.bogus}", "=", "")));
    // Unknown operators never match.
    assert!(!fits(c("${node.class}", "like", "large")));
}

#[test]
fn ordering_is_numeric_when_both_sides_are_numbers() {
    assert!(fits(c("${attr.cpu.numcores}", ">=", "8")));
    assert!(fits(c("${attr.cpu.numcores}", ">", "7")));
    // Numerically 8 < 10; lexically "8" > "10".
    assert!(fits(c("${attr.cpu.numcores}", "<", "10")));
    assert!(fits(c("${attr.cpu.numcores}", "<=", "8.0")));
    assert!(!fits(c("${attr.cpu.numcores}", ">", "8")));
    // Lexical otherwise.
    assert!(fits(c("${node.class}", "<", "medium")));
    assert!(fits(c("${node.class}", ">=", "large")));
    assert!(!fits(c("${attr.nope}", "<", "1")));
}

#[test]
fn regexp_version_and_semver() {
    assert!(fits(c("${attr.kernel.version}", "regexp", "^5\\.(1[0-9])")));
    assert!(!fits(c("${attr.kernel.version}", "regexp", "^4\\.")));
    assert!(!fits(c("${attr.kernel.version}", "regexp", "(unclosed")));
    assert!(fits(c(
        "${attr.kernel.version}",
        "version",
        ">= 5.4, < 6.0"
    )));
    assert!(!fits(c("${attr.kernel.version}", "version", ">= 6.1")));
    assert!(fits(c("${attr.os.version}", "version", "~> 22.0")));
    assert!(fits(c(
        "${attr.driver.docker.version}",
        "semver",
        ">= 20.10.0, < 25.0.0"
    )));
    assert!(!fits(c(
        "${attr.driver.docker.version}",
        "semver",
        "< 24.0.0"
    )));
    // Strict: "22.04" is not semver.
    assert!(!fits(c("${attr.os.version}", "semver", ">= 1.0.0")));
}

#[test]
fn regexp_with_an_interpolated_pattern() {
    let mut n = rich_node("a");
    n.meta.insert("arch_pattern".into(), "^amd".into());
    let mut j = job(1, "raw_exec");
    j.task_groups[0]
        .constraints
        .push(c("${attr.cpu.arch}", "regexp", "${meta.arch_pattern}"));
    let store = store_with(vec![n], j);
    assert_eq!(run(&store.snapshot(), &eval("e1")).place.len(), 1);
}

#[test]
fn set_operators_and_presence() {
    assert!(fits(c("${meta.tags}", "set_contains", "gpu,ssd")));
    assert!(fits(c("${meta.tags}", "set_contains_all", "fast")));
    assert!(!fits(c("${meta.tags}", "set_contains", "gpu,nvme")));
    assert!(fits(c("${meta.tags}", "set_contains_any", "nvme, gpu")));
    assert!(!fits(c("${meta.tags}", "set_contains_any", "nvme,hdd")));
    assert!(fits(c("${meta.rack}", "is_set", "")));
    assert!(!fits(c("${meta.zone}", "is_set", "")));
    assert!(fits(c("${meta.zone}", "is_not_set", "")));
    assert!(!fits(c("${meta.rack}", "is_not_set", "")));
}

#[test]
fn job_group_and_task_constraints_all_apply() {
    let run_with = |f: &dyn Fn(&mut Job)| {
        let mut j = job(1, "raw_exec");
        f(&mut j);
        let store = store_with(vec![rich_node("a")], j);
        run(&store.snapshot(), &eval("e1")).place.len()
    };
    assert_eq!(
        run_with(&|j| j.constraints.push(c("${node.class}", "=", "small"))),
        0
    );
    assert_eq!(
        run_with(&|j| j.task_groups[0].tasks[0]
            .constraints
            .push(c("${node.class}", "=", "small"))),
        0
    );
    assert_eq!(
        run_with(&|j| j.task_groups[0].tasks[0]
            .constraints
            .push(c("${node.class}", "=", "large"))),
        1
    );
}

#[test]
fn distinct_hosts_at_group_and_job_level() {
    // Group level: one instance of the group per node.
    let mut j = job(3, "raw_exec");
    j.task_groups[0]
        .constraints
        .push(c("", CONSTRAINT_DISTINCT_HOSTS, ""));
    let store = store_with(vec![node("a"), node("b")], j);
    let plan = run(&store.snapshot(), &eval("e1"));
    assert_eq!(plan.place.len(), 2);
    assert_ne!(plan.place[0].node_id, plan.place[1].node_id);
    let m = &plan.failed_tg_allocs["web"];
    assert_eq!(m.constraint_filtered["distinct_hosts"], 2);
    // A second eval still respects the placed ones.
    apply(&store, &plan);
    assert!(run(&store.snapshot(), &eval("e2")).place.is_empty());

    // `distinct_hosts = false` turns it off.
    let mut j = job(3, "raw_exec");
    j.task_groups[0]
        .constraints
        .push(c("", CONSTRAINT_DISTINCT_HOSTS, "false"));
    let store = store_with(vec![node("a"), node("b")], j);
    assert_eq!(run(&store.snapshot(), &eval("e1")).place.len(), 3);

    // Job level: no two allocations of the job, whatever the group, share a node.
    let mut j = job(1, "raw_exec");
    let mut second = j.task_groups[0].clone();
    second.name = "api".into();
    j.task_groups.push(second);
    j.constraints.push(c("", CONSTRAINT_DISTINCT_HOSTS, "true"));
    let store = store_with(vec![node("a"), node("b"), node("c")], j);
    let plan = run(&store.snapshot(), &eval("e1"));
    assert_eq!(plan.place.len(), 2);
    assert_ne!(plan.place[0].node_id, plan.place[1].node_id);
}

#[test]
fn distinct_property_with_a_limit() {
    let racked = |id: &str, rack: &str| {
        let mut n = node(id);
        n.meta.insert("rack".into(), rack.into());
        n
    };
    let nodes = || {
        vec![
            racked("a", "r1"),
            racked("b", "r1"),
            racked("c", "r2"),
            racked("d", "r2"),
            node("e"),
        ]
    };
    // Default limit 1: one instance per rack; the rack-less node is filtered.
    let mut j = job(4, "raw_exec");
    j.task_groups[0]
        .constraints
        .push(c("${meta.rack}", CONSTRAINT_DISTINCT_PROPERTY, ""));
    let store = store_with(nodes(), j);
    let plan = run(&store.snapshot(), &eval("e1"));
    assert_eq!(plan.place.len(), 2);
    let racks: std::collections::BTreeSet<_> = plan
        .place
        .iter()
        .map(|a| if a.node_id.as_str() < "c" { "r1" } else { "r2" })
        .collect();
    assert_eq!(racks.len(), 2);
    let m = &plan.failed_tg_allocs["web"];
    assert_eq!(
        m.constraint_filtered["missing property \"${meta.rack}\""],
        1
    );
    assert!(
        m.constraint_filtered
            .keys()
            .any(|k| k.starts_with("distinct_property: ${meta.rack}=r")
                && k.ends_with("used by 1 allocs")),
        "{m:?}"
    );

    // Limit 2: two per rack.
    let mut j = job(5, "raw_exec");
    j.constraints
        .push(c("${meta.rack}", CONSTRAINT_DISTINCT_PROPERTY, "2"));
    let store = store_with(nodes(), j);
    let plan = run(&store.snapshot(), &eval("e1"));
    assert_eq!(plan.place.len(), 4);
    apply(&store, &plan);
    // Existing allocations count in later evaluations.
    assert!(run(&store.snapshot(), &eval("e2")).place.is_empty());
}

#[test]
fn failure_metrics_name_the_reason() {
    let mut small = rich_node("s");
    small.node_class = "small".into();
    let mut tiny = rich_node("t");
    tiny.node_resources.cpu.cpu_shares = 50;
    let mut docker_less = rich_node("d");
    docker_less.drivers.clear();
    let mut far = rich_node("f");
    far.datacenter = "dc9".into();
    let mut j = job(1, "raw_exec");
    j.datacenters = vec!["dc1".into()];
    j.task_groups[0]
        .constraints
        .push(c("${node.class}", "=", "large"));
    let store = store_with(vec![small, tiny, docker_less, far], j);
    let plan = run(&store.snapshot(), &eval("e1"));
    assert!(plan.place.is_empty());
    let m = &plan.failed_tg_allocs["web"];
    assert_eq!(m.nodes_evaluated, 4);
    assert_eq!(m.constraint_filtered["${node.class} = large"], 1);
    assert_eq!(m.constraint_filtered["missing driver \"raw_exec\""], 1);
    assert_eq!(
        m.constraint_filtered["datacenter \"dc9\" not in the job's datacenters"],
        1
    );
    assert_eq!(m.nodes_filtered, 3);
    assert_eq!(m.dimension_exhausted["cpu"], 1);
    assert_eq!(m.nodes_exhausted, 1);
    assert_eq!(m.nodes_available.get("dc1"), Some(&3));
    let d = m.describe();
    assert!(
        d.contains("1 node(s) filtered: ${node.class} = large"),
        "{d}"
    );
    assert!(d.contains("1 node(s) exhausted on cpu"), "{d}");

    // A static port already held.
    let mut j = job(2, "raw_exec");
    j.task_groups[0].networks[0].reserved_ports = vec![Port {
        label: "admin".into(),
        value: 8081,
        ..Default::default()
    }];
    let store = store_with(vec![node("a")], j);
    let plan = run(&store.snapshot(), &eval("e1"));
    assert_eq!(plan.place.len(), 1);
    assert_eq!(
        plan.failed_tg_allocs["web"].dimension_exhausted["network: reserved port 8081 in use"],
        1
    );
}

#[test]
fn results_are_shared_per_class_but_unique_targets_are_checked_per_node() {
    // Nodes of one class, told apart only by a unique attribute.
    let nodes: Vec<Node> = (0..6)
        .map(|i| {
            let mut n = rich_node(&format!("n{i}"));
            n.attributes
                .insert("unique.hostname".into(), format!("host-{i}"));
            n
        })
        .collect();
    let mut j = job(6, "raw_exec");
    j.task_groups[0]
        .constraints
        .push(c("${attr.unique.hostname}", "regexp", "host-[0-2]$"));
    j.task_groups[0]
        .constraints
        .push(c("${node.class}", "=", "large"));
    let store = store_with(nodes, j);
    let plan = run(&store.snapshot(), &eval("e1"));
    let mut on: Vec<_> = placed_on(&plan);
    on.sort();
    on.dedup();
    assert_eq!(on, ["n0", "n1", "n2"]);
}

#[test]
fn host_volumes_must_exist_on_the_node() {
    let mut j = job(1, "raw_exec");
    j.task_groups[0].volumes.insert(
        "data".into(),
        VolumeRequest {
            name: "data".into(),
            volume_type: "host".into(),
            source: "pg-data".into(),
            read_only: false,
        },
    );
    let mut with = node("b");
    with.host_volumes.insert(
        "pg-data".into(),
        ClientHostVolume {
            name: "pg-data".into(),
            path: "/srv/pg".into(),
            read_only: false,
        },
    );
    let store = store_with(vec![node("a"), with], j);
    let plan = run(&store.snapshot(), &eval("e1"));
    assert_eq!(placed_on(&plan), ["b"]);
}
