//! The per-evaluation context: the nodes to try, what they have in use (with the plan so far
//! applied), the job's groups compiled into checks, and the caches that make each placement
//! cost a bounded number of node visits.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_store::State;
use flotilla_types::*;

use crate::constraint::{Caches, Check, Operator, Target, computed_class, parse_bool};
use crate::fx::FxMap;
use crate::rank::{self, SpreadSpec};
use crate::usage::{NodeUsage, UsageIndex};
use crate::{Algorithm, hash_str};

/// Feasible nodes whose score is at or below this are set aside while looking for better ones
/// (Nomad's `skipScoreThreshold`)…
const SKIP_SCORE_THRESHOLD: f64 = 0.0;
/// …up to this many per placement (Nomad's `maxSkip`).
const MAX_SKIP: usize = 3;
/// Nodes scored per placement for groups with affinities or spreads. Nomad scores every feasible
/// node for them; we cap the count so a placement stays cheap in large clusters (it is every
/// node up to this size).
const SCORED_LIMIT: usize = 64;

static NO_USAGE: NodeUsage = NodeUsage {
    cpu: 0,
    memory_mb: 0,
    ports: Vec::new(),
};

/// The schedulable nodes (ready, eligible, not draining) in id order, and their usage.
enum NodeSet<'a> {
    /// Backed by an index that matches the state: nothing is computed per evaluation.
    Indexed(&'a UsageIndex),
    /// Computed from the state as nodes are touched.
    Lazy {
        state: &'a State,
        nodes: Vec<&'a Arc<Node>>,
        classes: Vec<u64>,
        usage: FxMap<usize, NodeUsage>,
    },
}

impl<'a> NodeSet<'a> {
    fn new(state: &'a State, index: Option<&'a UsageIndex>) -> Self {
        match index.filter(|ix| ix.matches(state)) {
            Some(ix) => NodeSet::Indexed(ix),
            None => {
                let nodes: Vec<&Arc<Node>> =
                    state.nodes.values().filter(|n| n.schedulable()).collect();
                let classes = vec![0; nodes.len()];
                NodeSet::Lazy {
                    state,
                    nodes,
                    classes,
                    usage: FxMap::default(),
                }
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            NodeSet::Indexed(ix) => ix.table().ready.len(),
            NodeSet::Lazy { nodes, .. } => nodes.len(),
        }
    }

    fn node(&self, i: usize) -> &'a Arc<Node> {
        match self {
            NodeSet::Indexed(ix) => {
                let t = ix.table();
                &t.nodes[t.ready[i] as usize]
            }
            NodeSet::Lazy { nodes, .. } => nodes[i],
        }
    }

    /// The position of a schedulable node.
    fn find(&self, id: &str) -> Option<usize> {
        match self {
            NodeSet::Indexed(ix) => {
                let t = ix.table();
                let p = t.position(id)? as u32;
                t.ready.binary_search(&p).ok()
            }
            NodeSet::Lazy { nodes, .. } => nodes.binary_search_by(|n| n.id.as_str().cmp(id)).ok(),
        }
    }

    fn class(&mut self, i: usize) -> u64 {
        match self {
            NodeSet::Indexed(ix) => {
                let t = ix.table();
                t.classes[t.ready[i] as usize]
            }
            NodeSet::Lazy { nodes, classes, .. } => {
                if classes[i] == 0 {
                    classes[i] = computed_class(nodes[i]);
                }
                classes[i]
            }
        }
    }

    fn base(&mut self, i: usize) -> &NodeUsage {
        match self {
            NodeSet::Indexed(ix) => {
                let t = ix.table();
                ix.usage_at(t.ready[i] as usize).unwrap_or(&NO_USAGE)
            }
            NodeSet::Lazy {
                state,
                nodes,
                usage,
                ..
            } => usage
                .entry(i)
                .or_insert_with(|| NodeUsage::of_node(state, &nodes[i].id)),
        }
    }
}

/// The plan's effect on one node so far: stops release, placements add.
#[derive(Debug, Default)]
struct Delta {
    cpu: i64,
    memory_mb: i64,
    added: Vec<u16>,
    removed: Vec<u16>,
    /// Upstream listeners, kept only while the job has upstreams.
    binds_added: Vec<UpstreamBind>,
    binds_removed: Vec<UpstreamBind>,
}

/// Counts of the job's allocations per value of a node attribute (Nomad's `propertySet`), for
/// `distinct_property` and `spread`.
#[derive(Debug)]
struct PropSet {
    target: Target,
    /// The text of the target, for metrics.
    text: String,
    /// Only this group's allocations count; `None`: all of the job's.
    group: Option<usize>,
    counts: FxMap<String, u32>,
}

/// Why a class-level check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Why {
    Datacenter,
    JobCheck(usize),
    Driver(usize),
    Volumes,
    GroupCheck(usize),
}

/// Why a node had no room.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Exhausted {
    Cpu,
    Memory,
    Port(u16),
    DynamicPorts,
    /// An upstream listener the group needs is held by another allocation on the node.
    Upstream(UpstreamBind),
}

impl Exhausted {
    pub(crate) fn dimension(self) -> String {
        match self {
            Exhausted::Cpu => "cpu".to_string(),
            Exhausted::Memory => "memory".to_string(),
            Exhausted::Port(p) => format!("network: reserved port {p} in use"),
            Exhausted::DynamicPorts => "network: no free dynamic ports".to_string(),
            Exhausted::Upstream(b) => format!("upstream {b} already bound on node"),
        }
    }
}

/// The upstream listeners allocation `a` holds on its node: those of its group in the job it
/// was placed with (else in the state's version of the job).
pub(crate) fn alloc_binds(state: &State, a: &Allocation) -> Vec<UpstreamBind> {
    let group = a.group().or_else(|| {
        state
            .job(&a.namespace, &a.job_id)
            .and_then(|j| j.group(&a.task_group))
    });
    group.map_or_else(Vec::new, |g| {
        g.upstreams().filter_map(|(_, u)| u.bind()).collect()
    })
}

/// A task group compiled for placement.
#[derive(Debug)]
pub(crate) struct GroupSpec {
    pub name: String,
    pub count: u32,
    pub want: Resources,
    static_ports: Vec<u16>,
    dynamic_ports: usize,
    drivers: Vec<String>,
    host_volumes: Vec<(String, bool)>,
    /// Job-level constraints that read only class-level values.
    job_checks: Vec<Check>,
    /// Group- and task-level constraints that read only class-level values.
    group_checks: Vec<Check>,
    /// Constraints reading values unique to a node: checked for every node.
    node_checks: Vec<Check>,
    distinct_hosts_job: bool,
    distinct_hosts_group: bool,
    /// `(property set, allowed allocations per value)`.
    distinct_props: Vec<(usize, u32)>,
    affinities: Vec<(Check, f64)>,
    affinity_sum: f64,
    affinity_unique: bool,
    spreads: Vec<SpreadSpec>,
    tasks: BTreeMap<String, AllocatedTaskResources>,
    /// The listeners the group's upstreams open on the node (empty for most groups).
    upstreams: Vec<UpstreamBind>,
}

impl GroupSpec {
    pub(crate) fn scored(&self) -> bool {
        !self.affinities.is_empty() || !self.spreads.is_empty()
    }
}

fn distinct_hosts_enabled(c: &Constraint) -> bool {
    Operator::parse(&c.operand) == Operator::DistinctHosts
        && parse_bool(c.r_target.trim()) != Some(false)
}

fn group_constraints(g: &TaskGroup) -> impl Iterator<Item = &Constraint> {
    g.constraints
        .iter()
        .chain(g.tasks.iter().flat_map(|t| t.constraints.iter()))
}

/// Note a filtered node in the metric.
pub(crate) fn filter(metric: &mut AllocMetric, reason: &str) {
    metric.nodes_filtered += 1;
    bump(&mut metric.constraint_filtered, reason);
}

/// Note a node without room in the metric.
pub(crate) fn exhaust(metric: &mut AllocMetric, why: Exhausted) {
    metric.nodes_exhausted += 1;
    *metric
        .dimension_exhausted
        .entry(why.dimension())
        .or_default() += 1;
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(v) => *v += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}

/// The host port range of a node.
pub(crate) fn port_range(node: &Node) -> (u16, u16) {
    let r = &node.node_resources;
    if r.min_dynamic_port > 0 && r.max_dynamic_port >= r.min_dynamic_port {
        (r.min_dynamic_port, r.max_dynamic_port)
    } else {
        (MIN_DYNAMIC_PORT, MAX_DYNAMIC_PORT)
    }
}

/// Everything one evaluation needs while placing.
pub(crate) struct Ctx<'a> {
    pub state: &'a State,
    pub job: &'a Arc<Job>,
    pub groups: Vec<GroupSpec>,
    algorithm: Algorithm,
    /// The job runs in any datacenter (`*`): skip the datacenter check.
    any_datacenter: bool,
    nodes: NodeSet<'a>,
    delta: FxMap<usize, Delta>,
    /// Some group of the job has upstreams: the plan's placements and stops track listeners.
    track_upstreams: bool,
    /// Upstream listeners held on a node by the state's live allocations (read the first time
    /// a group with upstreams visits the node).
    upstreams_on_node: FxMap<usize, Vec<UpstreamBind>>,
    /// The job's live allocations per node position, all groups and per group.
    job_on_node: FxMap<usize, u32>,
    group_on_node: FxMap<(usize, usize), u32>,
    props: Vec<PropSet>,
    caches: Caches,
    /// Metric texts of filter reasons, made once: by datacenter, and by (group, reason).
    reasons: Vec<String>,
    dc_reasons: FxMap<String, u32>,
    why_reasons: FxMap<(usize, Why), u32>,
    /// `(computed class, group)` → `None` if the class passes, else the reason it fails.
    class_verdicts: FxMap<(u64, usize), Option<u32>>,
    class_affinity: FxMap<(u64, usize), f64>,
    /// The shuffled visiting order (drawn lazily) and where the next placement starts.
    order: Vec<u32>,
    shuffled: usize,
    offset: usize,
    rng: u64,
}

impl<'a> Ctx<'a> {
    /// Move allocation `a` of group `g` to the job's new version in place if its node still
    /// suits the group (into `plan.updates`). Otherwise stop it with `why`, release what it
    /// held, and hand it back so the caller may place a replacement.
    pub(crate) fn update_in_place(
        &mut self,
        a: Arc<Allocation>,
        g: usize,
        why: &str,
        now: i64,
        plan: &mut crate::Plan,
    ) -> Option<Arc<Allocation>> {
        let state = self.state;
        let keeps = state
            .node(&a.node_id)
            .is_some_and(|n| self.statically_feasible(n, g));
        if keeps {
            let mut updated = (*a).clone();
            updated.job = Some(self.job.clone());
            updated.modify_time = now;
            plan.updates.push(updated);
            return None;
        }
        plan.stop
            .push(crate::stopped(&a, ALLOC_DESIRED_STOP, why.to_string(), now));
        self.release(&a);
        Some(a)
    }

    /// `live` are the job's allocations that hold resources; the ones the plan stops are then
    /// given to [`Ctx::release`].
    pub(crate) fn new(
        state: &'a State,
        job: &'a Arc<Job>,
        index: Option<&'a UsageIndex>,
        algorithm: Algorithm,
        seed: u64,
        live: &[Arc<Allocation>],
    ) -> Self {
        let mut ctx = Ctx {
            state,
            job,
            groups: Vec::new(),
            algorithm,
            any_datacenter: job.datacenters.iter().any(|d| d == "*"),
            nodes: NodeSet::new(state, index),
            delta: FxMap::default(),
            track_upstreams: false,
            upstreams_on_node: FxMap::default(),
            job_on_node: FxMap::default(),
            group_on_node: FxMap::default(),
            props: Vec::new(),
            caches: Caches::default(),
            reasons: Vec::new(),
            dc_reasons: FxMap::default(),
            why_reasons: FxMap::default(),
            class_verdicts: FxMap::default(),
            class_affinity: FxMap::default(),
            order: Vec::new(),
            shuffled: 0,
            offset: 0,
            rng: seed | 1,
        };
        for g in 0..job.task_groups.len() {
            let spec = ctx.compile(g);
            ctx.groups.push(spec);
        }
        ctx.track_upstreams = ctx.groups.iter().any(|s| !s.upstreams.is_empty());
        for a in live {
            ctx.count(a, 1);
        }
        ctx
    }

    fn prop_set(&mut self, target: &str, group: Option<usize>) -> usize {
        let t = Target::parse(target);
        if let Some(i) = self
            .props
            .iter()
            .position(|p| p.target == t && p.group == group)
        {
            return i;
        }
        self.props.push(PropSet {
            target: t,
            text: target.to_string(),
            group,
            counts: FxMap::default(),
        });
        self.props.len() - 1
    }

    fn compile(&mut self, g: usize) -> GroupSpec {
        let job = self.job;
        let group = &job.task_groups[g];
        let mut spec = GroupSpec {
            name: group.name.clone(),
            count: group.count,
            want: group.total_resources(),
            static_ports: group
                .ports()
                .filter(|(_, s)| *s)
                .map(|(p, _)| p.value)
                .collect(),
            dynamic_ports: group.ports().filter(|(_, s)| !*s).count(),
            drivers: Vec::new(),
            host_volumes: group
                .volumes
                .values()
                .filter(|v| v.volume_type.is_empty() || v.volume_type == "host")
                .map(|v| (v.source.clone(), v.read_only))
                .collect(),
            job_checks: Vec::new(),
            group_checks: Vec::new(),
            node_checks: Vec::new(),
            distinct_hosts_job: job.constraints.iter().any(distinct_hosts_enabled),
            distinct_hosts_group: group_constraints(group).any(distinct_hosts_enabled),
            distinct_props: Vec::new(),
            affinities: Vec::new(),
            affinity_sum: 0.0,
            affinity_unique: false,
            spreads: Vec::new(),
            tasks: group
                .tasks
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        AllocatedTaskResources {
                            cpu: AllocatedCpu {
                                cpu_shares: t.resources.cpu,
                            },
                            memory: AllocatedMemory {
                                memory_mb: t.resources.memory_mb,
                            },
                        },
                    )
                })
                .collect(),
            upstreams: group.upstreams().filter_map(|(_, u)| u.bind()).collect(),
        };
        for t in &group.tasks {
            if !spec.drivers.contains(&t.driver) {
                spec.drivers.push(t.driver.clone());
            }
        }
        let scoped = job
            .constraints
            .iter()
            .map(|c| (c, true))
            .chain(group_constraints(group).map(|c| (c, false)));
        for (c, job_level) in scoped {
            let check = Check::of(c);
            match check.op {
                Operator::DistinctHosts => {}
                Operator::DistinctProperty => {
                    let limit = match c.r_target.trim() {
                        "" => 1,
                        s => s.parse::<u32>().unwrap_or(1).max(1),
                    };
                    let set = self.prop_set(&c.l_target, (!job_level).then_some(g));
                    spec.distinct_props.push((set, limit));
                }
                _ if check.is_unique() => spec.node_checks.push(check),
                _ if job_level => spec.job_checks.push(check),
                _ => spec.group_checks.push(check),
            }
        }
        let affinities = job
            .affinities
            .iter()
            .chain(group.affinities.iter())
            .chain(group.tasks.iter().flat_map(|t| t.affinities.iter()));
        for a in affinities {
            if a.weight == 0 {
                continue;
            }
            let check = Check::new(&a.l_target, &a.operand, &a.r_target);
            spec.affinity_unique |= check.is_unique();
            spec.affinity_sum += f64::from(a.weight).abs();
            spec.affinities.push((check, f64::from(a.weight)));
        }
        let spreads: Vec<&Spread> = group.spreads.iter().chain(job.spreads.iter()).collect();
        let weight_sum: f64 = spreads.iter().map(|s| f64::from(s.weight)).sum();
        for s in spreads {
            let prop = self.prop_set(&s.attribute, Some(g));
            let total = f64::from(group.count);
            let desired: Vec<(String, f64)> = s
                .spread_target
                .iter()
                .map(|t| (t.value.clone(), f64::from(t.percent) / 100.0 * total))
                .collect();
            let sum: f64 = desired.iter().map(|(_, d)| d).sum();
            let implicit = (sum > 0.0 && sum < total).then_some(total - sum);
            spec.spreads.push(SpreadSpec {
                prop,
                weight: if weight_sum > 0.0 {
                    f64::from(s.weight) / weight_sum
                } else {
                    0.0
                },
                desired,
                implicit,
            });
        }
        spec
    }

    /// Count (`+1`) or uncount (`-1`) an allocation of this job in the per-node tallies and the
    /// property sets.
    fn count(&mut self, a: &Allocation, sign: i32) {
        let g = self
            .job
            .task_groups
            .iter()
            .position(|t| t.name == a.task_group);
        if !self.props.is_empty()
            && let Some(node) = self.state.node(&a.node_id)
        {
            for set in &mut self.props {
                if set.group.is_some() && set.group != g {
                    continue;
                }
                if let Some(v) = set.target.resolve(node) {
                    if sign > 0 {
                        *set.counts.entry(v.to_string()).or_default() += 1;
                    } else if let Some(c) = set.counts.get_mut(v) {
                        *c = c.saturating_sub(1);
                        if *c == 0 {
                            set.counts.remove(v);
                        }
                    }
                }
            }
        }
        let Some(i) = self.nodes.find(&a.node_id) else {
            return;
        };
        let bump = |n: &mut u32| {
            *n = if sign > 0 {
                *n + 1
            } else {
                n.saturating_sub(1)
            }
        };
        bump(self.job_on_node.entry(i).or_default());
        if let Some(g) = g {
            bump(self.group_on_node.entry((i, g)).or_default());
        }
    }

    /// The plan stops `a` (the original, as it was in the state): free what it held.
    pub(crate) fn release(&mut self, a: &Allocation) {
        if a.terminal() {
            return;
        }
        self.count(a, -1);
        let Some(i) = self.nodes.find(&a.node_id) else {
            return;
        };
        let r = a.comparable_resources();
        let d = self.delta.entry(i).or_default();
        d.cpu -= r.cpu as i64;
        d.memory_mb -= r.memory_mb as i64;
        d.removed
            .extend(a.allocated_resources.shared.ports.iter().map(|p| p.value));
        if self.track_upstreams {
            d.binds_removed.extend(alloc_binds(self.state, a));
        }
    }

    /// The plan places `a` on node `i`.
    pub(crate) fn commit(&mut self, i: usize, a: &Allocation) {
        self.count(a, 1);
        let r = a.comparable_resources();
        let d = self.delta.entry(i).or_default();
        d.cpu += r.cpu as i64;
        d.memory_mb += r.memory_mb as i64;
        d.added
            .extend(a.allocated_resources.shared.ports.iter().map(|p| p.value));
        if self.track_upstreams {
            d.binds_added.extend(alloc_binds(self.state, a));
        }
    }

    pub(crate) fn find(&self, id: &str) -> Option<usize> {
        self.nodes.find(id)
    }

    /// Schedulable nodes per datacenter the job may use (the metric's `nodes_available`).
    pub(crate) fn nodes_available(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..self.nodes.len() {
            let n = self.nodes.node(i);
            if self.job.allows_datacenter(&n.datacenter) {
                bump(&mut out, &n.datacenter);
            }
        }
        out
    }

    /// Checks that depend only on the node's computed class: datacenter, job constraints,
    /// drivers, host volumes, group and task constraints (Nomad's order).
    fn class_verdict(&mut self, node: &Node, g: usize) -> Option<Why> {
        let spec = &self.groups[g];
        if !self.any_datacenter && !self.job.allows_datacenter(&node.datacenter) {
            return Some(Why::Datacenter);
        }
        if let Some(i) = spec
            .job_checks
            .iter()
            .position(|c| !c.matches(node, &mut self.caches))
        {
            return Some(Why::JobCheck(i));
        }
        if let Some(i) = spec.drivers.iter().position(|d| !node.has_driver(d)) {
            return Some(Why::Driver(i));
        }
        let volumes_ok = spec.host_volumes.iter().all(|(source, read_only)| {
            node.host_volumes
                .get(source)
                .is_some_and(|v| *read_only || !v.read_only)
        });
        if !volumes_ok {
            return Some(Why::Volumes);
        }
        spec.group_checks
            .iter()
            .position(|c| !c.matches(node, &mut self.caches))
            .map(Why::GroupCheck)
    }

    /// The id of the metric text for `why` (made once per evaluation).
    fn reason(&mut self, why: Why, node: &Node, g: usize) -> u32 {
        if why == Why::Datacenter {
            if let Some(id) = self.dc_reasons.get(node.datacenter.as_str()) {
                return *id;
            }
        } else if let Some(id) = self.why_reasons.get(&(g, why)) {
            return *id;
        }
        let spec = &self.groups[g];
        let text = match why {
            Why::Datacenter => format!(
                "datacenter \"{}\" not in the job's datacenters",
                node.datacenter
            ),
            Why::JobCheck(i) => spec.job_checks[i].text.clone(),
            Why::Driver(i) => format!("missing driver \"{}\"", spec.drivers[i]),
            Why::Volumes => "missing compatible host volumes".to_string(),
            Why::GroupCheck(i) => spec.group_checks[i].text.clone(),
        };
        self.reasons.push(text);
        let id = (self.reasons.len() - 1) as u32;
        if why == Why::Datacenter {
            self.dc_reasons.insert(node.datacenter.clone(), id);
        } else {
            self.why_reasons.insert((g, why), id);
        }
        id
    }

    /// Whether group `g` passes the static checks (class-level and per-node constraints) on
    /// `node`, which need not be schedulable: for keeping an allocation where it is.
    pub(crate) fn statically_feasible(&mut self, node: &Node, g: usize) -> bool {
        if self.class_verdict(node, g).is_some() {
            return false;
        }
        let spec = &self.groups[g];
        spec.node_checks
            .iter()
            .all(|c| c.matches(node, &mut self.caches))
    }

    /// Whether group `g` may go on schedulable node `i`; records why not in `metric`.
    pub(crate) fn feasible(&mut self, i: usize, g: usize, metric: &mut AllocMetric) -> bool {
        let node = self.nodes.node(i);
        let class = self.nodes.class(i);
        let verdict = match self.class_verdicts.get(&(class, g)) {
            Some(v) => *v,
            None => {
                let v = self
                    .class_verdict(node, g)
                    .map(|why| self.reason(why, node, g));
                self.class_verdicts.insert((class, g), v);
                v
            }
        };
        if let Some(r) = verdict {
            filter(metric, &self.reasons[r as usize]);
            return false;
        }
        let spec = &self.groups[g];
        if let Some(c) = spec
            .node_checks
            .iter()
            .find(|c| !c.matches(node, &mut self.caches))
        {
            filter(metric, &c.text);
            return false;
        }
        let job_here = self.job_on_node.get(&i).copied().unwrap_or(0);
        let group_here = self.group_on_node.get(&(i, g)).copied().unwrap_or(0);
        if (spec.distinct_hosts_job && job_here > 0)
            || (spec.distinct_hosts_group && group_here > 0)
        {
            filter(metric, CONSTRAINT_DISTINCT_HOSTS);
            return false;
        }
        for &(set, limit) in &spec.distinct_props {
            let p = &self.props[set];
            match p.target.resolve(node) {
                None => {
                    filter(metric, &format!("missing property \"{}\"", p.text));
                    return false;
                }
                Some(v) => {
                    let used = p.counts.get(v).copied().unwrap_or(0);
                    if used >= limit {
                        filter(
                            metric,
                            &format!(
                                "{CONSTRAINT_DISTINCT_PROPERTY}: {}={v} used by {used} allocs",
                                p.text
                            ),
                        );
                        return false;
                    }
                }
            }
        }
        if let Err(why) = self.fits(i, g) {
            exhaust(metric, why);
            return false;
        }
        if !self.groups[g].upstreams.is_empty()
            && let Some(bind) = self.upstream_clash(i, g)
        {
            exhaust(metric, Exhausted::Upstream(bind));
            return false;
        }
        true
    }

    /// The first upstream listener of group `g` that an allocation on node `i` already holds
    /// (counting the plan's stops and placements so far).
    fn upstream_clash(&mut self, i: usize, g: usize) -> Option<UpstreamBind> {
        if !self.upstreams_on_node.contains_key(&i) {
            let node_id = &self.nodes.node(i).id;
            let held: Vec<UpstreamBind> = self
                .state
                .allocs_by_node(node_id)
                .filter(|a| !a.terminal())
                .flat_map(|a| alloc_binds(self.state, a))
                .collect();
            self.upstreams_on_node.insert(i, held);
        }
        let held = self
            .upstreams_on_node
            .get(&i)
            .map_or(&[][..], Vec::as_slice);
        let delta = self.delta.get(&i);
        self.groups[g].upstreams.iter().copied().find(|want| {
            let count = |binds: &[UpstreamBind]| binds.iter().filter(|b| b.clashes(want)).count();
            let (added, removed) =
                delta.map_or((0, 0), |d| (count(&d.binds_added), count(&d.binds_removed)));
            count(held) + added > removed
        })
    }

    /// CPU and memory in use on node `i` with the plan applied.
    fn used(&mut self, i: usize) -> (u64, u64) {
        let base = self.nodes.base(i);
        let (cpu, mem) = (base.cpu as i64, base.memory_mb as i64);
        let (dc, dm) = self.delta.get(&i).map_or((0, 0), |d| (d.cpu, d.memory_mb));
        ((cpu + dc).max(0) as u64, (mem + dm).max(0) as u64)
    }

    /// Whether group `g` fits on node `i`: CPU, memory, its static ports, enough free dynamic
    /// ports.
    pub(crate) fn fits(&mut self, i: usize, g: usize) -> Result<(), Exhausted> {
        let node = self.nodes.node(i);
        let (cpu, mem) = self.used(i);
        let spec = &self.groups[g];
        let res = &node.node_resources;
        if cpu + spec.want.cpu > res.cpu.cpu_shares {
            return Err(Exhausted::Cpu);
        }
        if mem + spec.want.memory_mb > res.memory.memory_mb {
            return Err(Exhausted::Memory);
        }
        if spec.static_ports.is_empty() && spec.dynamic_ports == 0 {
            return Ok(());
        }
        let base = self.nodes.base(i);
        let delta = self.delta.get(&i);
        let taken = |p: u16| port_taken(base, delta, p);
        if let Some(p) = spec.static_ports.iter().find(|p| taken(**p)) {
            return Err(Exhausted::Port(*p));
        }
        if spec.dynamic_ports > 0 {
            let (lo, hi) = port_range(node);
            let in_range = |v: &[u16]| v.iter().filter(|p| (lo..=hi).contains(*p)).count();
            let (added, removed) =
                delta.map_or((0, 0), |d| (in_range(&d.added), in_range(&d.removed)));
            let used = (base.ports_in_range(lo, hi) + added).saturating_sub(removed);
            let span = usize::from(hi - lo) + 1;
            if span.saturating_sub(used) < spec.dynamic_ports {
                return Err(Exhausted::DynamicPorts);
            }
        }
        Ok(())
    }

    /// The node's score for group `g` (mean of the scores that apply).
    pub(crate) fn score(&mut self, i: usize, g: usize, penalty: &[String]) -> f64 {
        let node = self.nodes.node(i);
        let (cpu, mem) = self.used(i);
        let spec = &self.groups[g];
        let mut sum = rank::fit(
            node,
            cpu + spec.want.cpu,
            mem + spec.want.memory_mb,
            self.algorithm,
        );
        let mut n = 1.0;
        let collisions = self.group_on_node.get(&(i, g)).copied().unwrap_or(0);
        if let Some(s) = rank::anti_affinity(collisions, spec.count) {
            sum += s;
            n += 1.0;
        }
        if !penalty.is_empty() && penalty.iter().any(|p| *p == node.id) {
            sum -= 1.0;
            n += 1.0;
        }
        if !spec.affinities.is_empty() {
            let s = if spec.affinity_unique {
                affinity_score(spec, node, &mut self.caches)
            } else {
                let class = self.nodes.class(i);
                let spec = &self.groups[g];
                match self.class_affinity.get(&(class, g)) {
                    Some(s) => *s,
                    None => {
                        let s = affinity_score(spec, node, &mut self.caches);
                        self.class_affinity.insert((class, g), s);
                        s
                    }
                }
            };
            if s != 0.0 {
                sum += s;
                n += 1.0;
            }
        }
        let spec = &self.groups[g];
        if !spec.spreads.is_empty() {
            let s: f64 = spec
                .spreads
                .iter()
                .map(|sp| {
                    let p = &self.props[sp.prop];
                    sp.boost(p.target.resolve(node), &p.counts)
                })
                .sum();
            if s != 0.0 {
                sum += s;
                n += 1.0;
            }
        }
        sum / n
    }

    /// How many feasible nodes to score per placement (Nomad's limit iterator):
    /// `max(2, ceil(log2(nodes)))` for services, 2 for batch jobs, more for groups with
    /// affinities or spreads.
    pub(crate) fn limit(&self, g: usize) -> usize {
        let n = self.nodes.len();
        let mut limit = 2;
        if self.job.job_type != JOB_TYPE_BATCH && n > 0 {
            limit = limit.max((n as f64).log2().ceil() as usize);
        }
        if self.groups[g].scored() {
            limit = limit.max(n.min(SCORED_LIMIT));
        }
        limit
    }

    /// The next node in the shuffled order; the order continues across placements and wraps.
    fn next_node(&mut self) -> usize {
        let n = self.order.len();
        if self.offset >= n {
            self.offset = 0;
        }
        let o = self.offset;
        if o >= self.shuffled {
            let j = o + (self.next_rand() % (n - o) as u64) as usize;
            self.order.swap(o, j);
            self.shuffled = o + 1;
        }
        self.offset += 1;
        self.order[o] as usize
    }

    fn next_rand(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545F4914F6CDD1D)
    }

    /// Pick the best node for group `g`: walk the shuffled nodes until `limit` feasible ones are
    /// scored (setting aside up to [`MAX_SKIP`] with a score ≤ 0 in case better ones follow) and
    /// take the highest score. Nodes with the reschedule `penalty` score lower.
    pub(crate) fn select(
        &mut self,
        g: usize,
        penalty: &[String],
        metric: &mut AllocMetric,
    ) -> Option<usize> {
        let n = self.nodes.len();
        if n == 0 {
            return None;
        }
        if self.order.len() != n {
            self.order = (0..n as u32).collect();
        }
        let limit = self.limit(g);
        let mut seen = 0;
        let mut taken = 0;
        let mut skipped: [(usize, f64); MAX_SKIP] = [(0, 0.0); MAX_SKIP];
        let mut nskipped = 0;
        let mut best: Option<(usize, f64)> = None;
        while taken < limit && seen < n {
            let i = self.next_node();
            seen += 1;
            metric.nodes_evaluated += 1;
            if !self.feasible(i, g, metric) {
                continue;
            }
            let s = self.score(i, g, penalty);
            if s <= SKIP_SCORE_THRESHOLD && nskipped < MAX_SKIP {
                skipped[nskipped] = (i, s);
                nskipped += 1;
                continue;
            }
            taken += 1;
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        }
        for &(i, s) in &skipped[..nskipped] {
            if taken >= limit {
                break;
            }
            taken += 1;
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Host ports for group `g` on node `i`: static ones as asked, dynamic ones from the
    /// node's range starting at a point derived from `seed`. `None` if the range is full.
    pub(crate) fn assign_ports(
        &mut self,
        i: usize,
        g: usize,
        seed: u64,
    ) -> Option<Vec<AllocatedPort>> {
        let node = self.nodes.node(i);
        let group = &self.job.task_groups[g];
        if group.networks.is_empty() {
            return Some(Vec::new());
        }
        let base = self.nodes.base(i);
        let delta = self.delta.get(&i);
        let (lo, hi) = port_range(node);
        let span = u64::from(hi - lo) + 1;
        let mut mine: Vec<u16> = Vec::new();
        let mut out = Vec::new();
        let mut cursor = seed % span;
        for (port, is_static) in group.ports() {
            let value = if is_static {
                port.value
            } else {
                let mut found = None;
                for _ in 0..span {
                    let candidate = lo + (cursor % span) as u16;
                    cursor += 1;
                    if !mine.contains(&candidate) && !port_taken(base, delta, candidate) {
                        found = Some(candidate);
                        break;
                    }
                }
                found?
            };
            mine.push(value);
            out.push(AllocatedPort {
                label: port.label.clone(),
                value,
                to: if port.to == 0 { value } else { port.to },
                host_ip: node.address.clone(),
            });
        }
        Some(out)
    }

    /// A new allocation of group `g` on node `i` (ports assigned; not yet committed).
    pub(crate) fn new_alloc(
        &mut self,
        i: usize,
        g: usize,
        id: String,
        eval_id: &str,
        name: String,
        now: i64,
    ) -> Option<Allocation> {
        let ports = self.assign_ports(i, g, hash_str(&id))?;
        let node = self.nodes.node(i);
        let job = self.job;
        let spec = &self.groups[g];
        Some(Allocation {
            id,
            eval_id: eval_id.to_string(),
            name,
            namespace: job.namespace.clone(),
            node_id: node.id.clone(),
            node_name: node.name.clone(),
            job_id: job.id.clone(),
            job: Some(job.clone()),
            task_group: spec.name.clone(),
            allocated_resources: AllocatedResources {
                tasks: spec.tasks.clone(),
                shared: AllocatedSharedResources { ports },
            },
            desired_status: ALLOC_DESIRED_RUN.to_string(),
            client_status: ALLOC_CLIENT_PENDING.to_string(),
            create_time: now,
            modify_time: now,
            ..Default::default()
        })
    }
}

fn port_taken(base: &NodeUsage, delta: Option<&Delta>, p: u16) -> bool {
    match delta {
        None => base.port_in_use(p),
        Some(d) => d.added.contains(&p) || (base.port_in_use(p) && !d.removed.contains(&p)),
    }
}

/// Nomad's `NodeAffinityIterator`: the sum of matching weights over the sum of |weights|.
fn affinity_score(spec: &GroupSpec, node: &Node, caches: &mut Caches) -> f64 {
    if spec.affinity_sum == 0.0 {
        return 0.0;
    }
    let total: f64 = spec
        .affinities
        .iter()
        .filter(|(c, _)| c.matches(node, caches))
        .map(|(_, w)| *w)
        .sum();
    total / spec.affinity_sum
}
