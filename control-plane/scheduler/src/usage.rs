//! What nodes have in use, and an index that keeps it in step with the state.

use std::fmt;
use std::sync::Arc;

use flotilla_store::State;
use flotilla_types::{Allocation, Node};
use imbl::OrdMap;
use imbl::ordmap::DiffItem;

use crate::constraint::computed_class;
use crate::fx::FxMap;

/// Resources held on one node by its live (non-terminal) allocations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUsage {
    /// CPU in MHz.
    pub cpu: u64,
    pub memory_mb: u64,
    /// Host ports in use, sorted; a port held by two allocations appears twice.
    pub ports: Vec<u16>,
}

impl NodeUsage {
    /// Usage of `node_id` computed from the state's allocations on it.
    pub fn of_node(state: &State, node_id: &str) -> Self {
        let mut u = NodeUsage::default();
        for a in state.allocs_by_node(node_id) {
            if !a.terminal() {
                u.add(a);
            }
        }
        u
    }

    pub fn add(&mut self, a: &Allocation) {
        let r = a.comparable_resources();
        self.cpu += r.cpu;
        self.memory_mb += r.memory_mb;
        for p in &a.allocated_resources.shared.ports {
            let at = self.ports.partition_point(|x| *x < p.value);
            self.ports.insert(at, p.value);
        }
    }

    pub fn remove(&mut self, a: &Allocation) {
        let r = a.comparable_resources();
        self.cpu = self.cpu.saturating_sub(r.cpu);
        self.memory_mb = self.memory_mb.saturating_sub(r.memory_mb);
        for p in &a.allocated_resources.shared.ports {
            if let Ok(at) = self.ports.binary_search(&p.value) {
                self.ports.remove(at);
            }
        }
    }

    /// Whether host port `port` is held.
    pub fn port_in_use(&self, port: u16) -> bool {
        self.ports.binary_search(&port).is_ok()
    }

    /// How many held ports fall in `lo..=hi` (duplicates counted).
    pub fn ports_in_range(&self, lo: u16, hi: u16) -> usize {
        self.ports.partition_point(|p| *p <= hi) - self.ports.partition_point(|p| *p < lo)
    }
}

/// Add (or remove) a live allocation's resources to its node's usage.
fn apply(table: &NodeTable, usage: &mut imbl::Vector<Arc<NodeUsage>>, a: &Allocation, add: bool) {
    if a.terminal() {
        return;
    }
    let Some(p) = table.position(&a.node_id) else {
        return;
    };
    if let Some(u) = usage.get_mut(p) {
        let u = Arc::make_mut(u);
        if add { u.add(a) } else { u.remove(a) }
    }
}

/// Every node of a state in id order, with its computed class and whether it takes placements.
#[derive(Clone, Default)]
pub(crate) struct NodeTable {
    pub nodes: Vec<Arc<Node>>,
    pub classes: Vec<u64>,
    /// Positions of schedulable nodes (ready, eligible, not draining), in id order.
    pub ready: Vec<u32>,
    pos: Arc<FxMap<String, u32>>,
}

impl NodeTable {
    fn build(nodes: &OrdMap<String, Arc<Node>>) -> Self {
        let mut t = NodeTable {
            nodes: nodes.values().cloned().collect(),
            ..Default::default()
        };
        t.classes = t.nodes.iter().map(|n| computed_class(n)).collect();
        t.pos = Arc::new(
            t.nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.id.clone(), i as u32))
                .collect(),
        );
        t.refresh_ready();
        t
    }

    fn refresh_ready(&mut self) {
        self.ready = (0..self.nodes.len() as u32)
            .filter(|i| self.nodes[*i as usize].schedulable())
            .collect();
    }

    pub fn position(&self, node_id: &str) -> Option<usize> {
        self.pos.get(node_id).map(|p| *p as usize)
    }
}

/// Per-node usage and node classes kept in step with the state, so that placing an allocation
/// never rescans a node's allocations (at a million allocations that scan dominates everything).
///
/// Build it once with [`UsageIndex::new`] and move it along with [`UsageIndex::advance`] after
/// each write: it diffs the persistent maps, so the cost follows what changed, not the size of
/// the state. Clones are cheap and share structure, so the plan applier can hand one to every
/// scheduler worker alongside the snapshot it matches. [`schedule`](crate::schedule) uses it only
/// when [`UsageIndex::matches`] the state it is given; the plan is the same either way.
#[derive(Clone, Default)]
pub struct UsageIndex {
    allocs: OrdMap<String, Arc<Allocation>>,
    nodes: OrdMap<String, Arc<Node>>,
    table: Arc<NodeTable>,
    usage: imbl::Vector<Arc<NodeUsage>>,
}

impl fmt::Debug for UsageIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageIndex")
            .field("nodes", &self.table.nodes.len())
            .field("ready", &self.table.ready.len())
            .field("allocs", &self.allocs.len())
            .finish()
    }
}

impl UsageIndex {
    /// Index `state` from scratch: one pass over its allocations.
    pub fn new(state: &State) -> Self {
        let table = NodeTable::build(&state.nodes);
        let mut usage = vec![NodeUsage::default(); table.nodes.len()];
        for a in state.allocs.values() {
            if !a.terminal()
                && let Some(p) = table.position(&a.node_id)
            {
                usage[p].add(a);
            }
        }
        Self {
            allocs: state.allocs.clone(),
            nodes: state.nodes.clone(),
            table: Arc::new(table),
            usage: usage.into_iter().map(Arc::new).collect(),
        }
    }

    /// Whether the index reflects exactly `state`'s allocations and nodes.
    pub fn matches(&self, state: &State) -> bool {
        self.allocs.ptr_eq(&state.allocs) && self.nodes.ptr_eq(&state.nodes)
    }

    /// Bring the index in step with `state` (normally a later version of the state it was made
    /// from; any state works). It diffs the persistent maps, so the cost follows what changed —
    /// though each changed allocation's neighbours in the map are compared field by field.
    pub fn advance(&mut self, state: &State) {
        if !self.allocs.ptr_eq(&state.allocs) {
            let table = &self.table;
            let usage = &mut self.usage;
            for item in self.allocs.diff(&state.allocs) {
                match item {
                    DiffItem::Add(_, a) => apply(table, usage, a, true),
                    DiffItem::Update {
                        old: (_, o),
                        new: (_, n),
                    } => {
                        apply(table, usage, o, false);
                        apply(table, usage, n, true);
                    }
                    DiffItem::Remove(_, a) => apply(table, usage, a, false),
                }
            }
            self.allocs = state.allocs.clone();
        }
        if !self.nodes.ptr_eq(&state.nodes) {
            self.sync_nodes(state);
            self.nodes = state.nodes.clone();
        }
    }

    /// [`UsageIndex::advance`] for a writer that knows what it wrote: `changed` must name every
    /// allocation written between the index's state and `state` (the plan applier, when it is
    /// the only writer, passes the allocations of the plan it just committed). Costs two map
    /// lookups per changed allocation instead of a diff.
    pub fn advance_with<'s>(&mut self, state: &State, changed: impl IntoIterator<Item = &'s str>) {
        if !self.allocs.ptr_eq(&state.allocs) {
            for id in changed {
                let old = self.allocs.get(id);
                let new = state.allocs.get(id);
                if let (Some(o), Some(n)) = (old, new)
                    && Arc::ptr_eq(o, n)
                {
                    continue;
                }
                if let Some(o) = old {
                    apply(&self.table, &mut self.usage, o, false);
                }
                if let Some(n) = new {
                    apply(&self.table, &mut self.usage, n, true);
                }
            }
            self.allocs = state.allocs.clone();
        }
        if !self.nodes.ptr_eq(&state.nodes) {
            self.sync_nodes(state);
            self.nodes = state.nodes.clone();
        }
    }

    /// Take node changes: status and attribute updates in place; joins and removals rebuild the
    /// table (new nodes' usage is read from the state).
    fn sync_nodes(&mut self, state: &State) {
        let mut changed = Vec::new();
        let mut membership = false;
        for item in self.nodes.diff(&state.nodes) {
            match item {
                DiffItem::Update { new: (_, n), .. } => changed.push(n.clone()),
                DiffItem::Add(..) | DiffItem::Remove(..) => {
                    membership = true;
                    break;
                }
            }
        }
        if membership {
            let old_table = self.table.clone();
            let old_usage = std::mem::take(&mut self.usage);
            let table = NodeTable::build(&state.nodes);
            self.usage = table
                .nodes
                .iter()
                .map(
                    |n| match old_table.position(&n.id).and_then(|p| old_usage.get(p)) {
                        Some(u) => u.clone(),
                        None => Arc::new(NodeUsage::of_node(state, &n.id)),
                    },
                )
                .collect();
            self.table = Arc::new(table);
            return;
        }
        let table = Arc::make_mut(&mut self.table);
        for n in changed {
            if let Some(p) = table.position(&n.id) {
                table.classes[p] = computed_class(&n);
                table.nodes[p] = n;
            }
        }
        table.refresh_ready();
    }

    /// The node with this id, if known.
    pub(crate) fn node(&self, node_id: &str) -> Option<&Arc<Node>> {
        let p = self.table.position(node_id)?;
        self.table.nodes.get(p)
    }

    /// Usage of one node, if the node is known.
    pub fn usage(&self, node_id: &str) -> Option<&NodeUsage> {
        let p = self.table.position(node_id)?;
        self.usage.get(p).map(|u| &**u)
    }

    pub(crate) fn table(&self) -> &NodeTable {
        &self.table
    }

    pub(crate) fn usage_at(&self, position: usize) -> Option<&NodeUsage> {
        self.usage.get(position).map(|u| &**u)
    }
}
