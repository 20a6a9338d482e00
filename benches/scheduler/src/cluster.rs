//! A simulated cluster: nodes of mixed classes, datacenters, attributes and meta, and a mix of
//! jobs shaped like a real fleet's.

use std::collections::BTreeMap;

use flotilla_types::*;

/// A small deterministic generator (xorshift64*), so every run sees the same cluster.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545F4914F6CDD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// An id shaped like a UUID (random, so keys land all over the state's maps as real ids do).
    pub fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0x3fff | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }
}

/// Node classes: (name, share in percent, CPU MHz, memory MB, cores).
const CLASSES: [(&str, u64, u64, u64, u32); 4] = [
    ("compute", 50, 80_000, 131_072, 32),
    ("general", 25, 60_000, 98_304, 24),
    ("memory", 20, 40_000, 262_144, 16),
    ("gpu", 5, 160_000, 524_288, 64),
];

/// Datacenters and their share of nodes in percent.
pub const DATACENTERS: [(&str, u64); 4] = [("dc1", 40), ("dc2", 30), ("dc3", 20), ("dc4", 10)];

const KERNELS: [&str; 4] = [
    "5.4.0-150-generic",
    "5.15.0-91-generic",
    "6.1.0-13-amd64",
    "6.5.0-21-generic",
];

fn pick<'a, T>(rng: &mut Rng, table: &'a [(&'a str, u64, T)]) -> (&'a str, &'a T) {
    let mut roll = rng.range(0, 99);
    for (name, share, extra) in table {
        if roll < *share {
            return (name, extra);
        }
        roll -= share;
    }
    let (name, _, extra) = &table[table.len() - 1];
    (name, extra)
}

/// Node number `i` of the simulated cluster.
pub fn node(rng: &mut Rng, i: usize) -> Node {
    let classes: Vec<(&str, u64, (u64, u64, u32))> = CLASSES
        .iter()
        .map(|(n, s, c, m, k)| (*n, *s, (*c, *m, *k)))
        .collect();
    let (class, &(cpu, memory_mb, cores)) = pick(rng, &classes);
    let dcs: Vec<(&str, u64, ())> = DATACENTERS.iter().map(|(n, s)| (*n, *s, ())).collect();
    let (dc, _) = pick(rng, &dcs);
    let arch = if rng.chance(95) { "amd64" } else { "arm64" };
    let kernel = KERNELS[rng.range(0, KERNELS.len() as u64 - 1) as usize];
    let ip = format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
    let attributes: BTreeMap<String, String> = [
        ("kernel.name", "linux".to_string()),
        ("kernel.version", kernel.to_string()),
        (
            "os.name",
            if rng.chance(70) { "ubuntu" } else { "debian" }.to_string(),
        ),
        ("cpu.arch", arch.to_string()),
        ("cpu.numcores", cores.to_string()),
        ("driver.docker", "1".to_string()),
        ("driver.docker.version", "24.0.7".to_string()),
        ("unique.hostname", format!("host-{i:06}")),
        ("unique.network.ip-address", ip.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let meta: BTreeMap<String, String> = [
        ("rack", format!("r{:02}", rng.range(0, 39))),
        (
            "zone",
            format!("{dc}-{}", ["a", "b", "c"][rng.range(0, 2) as usize]),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let drivers = ["docker", "exec", "raw_exec"]
        .into_iter()
        .map(|d| {
            (
                d.to_string(),
                DriverInfo {
                    detected: true,
                    healthy: true,
                    ..Default::default()
                },
            )
        })
        .collect();
    Node {
        id: rng.uuid(),
        name: format!("host-{i:06}"),
        datacenter: dc.to_string(),
        node_class: class.to_string(),
        status: NODE_STATUS_READY.to_string(),
        scheduling_eligibility: NODE_ELIGIBLE.to_string(),
        attributes,
        meta,
        node_resources: NodeResources {
            cpu: NodeCpu {
                cpu_shares: cpu,
                total_core_count: cores,
            },
            memory: NodeMemory { memory_mb },
            ..Default::default()
        },
        drivers,
        address: ip.clone(),
        http_addr: format!("{ip}:4646"),
        proxy_addr: format!("{ip}:15008"),
        ..Default::default()
    }
}

fn constraint(l: &str, op: &str, r: &str) -> Constraint {
    Constraint {
        l_target: l.to_string(),
        r_target: r.to_string(),
        operand: op.to_string(),
    }
}

fn group(rng: &mut Rng, name: &str, count: u32) -> TaskGroup {
    let ports = if rng.chance(10) { 2 } else { 1 };
    TaskGroup {
        name: name.to_string(),
        count,
        networks: vec![NetworkResource {
            dynamic_ports: (0..ports)
                .map(|p| Port {
                    label: format!("p{p}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        tasks: vec![Task {
            name: "main".to_string(),
            driver: "docker".to_string(),
            config: [(
                "image".to_string(),
                format!("registry.local/{name}:1.{}", rng.range(0, 9)).into(),
            )]
            .into(),
            resources: Resources {
                cpu: rng.range(1, 10) * 50,
                memory_mb: rng.range(1, 16) * 64,
            },
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// What kind of job a generated job is (for the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    Batch,
    System,
    Sysbatch,
}

/// A service or batch job with 1–2 groups of 10–500 instances (fewer when `max_count` is
/// smaller) and a mix of constraints, distinct_hosts, spreads and affinities.
pub fn job(rng: &mut Rng, n: usize, max_count: u32, nodes: usize) -> (Job, Kind) {
    let kind = if rng.chance(25) {
        Kind::Batch
    } else {
        Kind::Service
    };
    let id = format!("job-{n:06}");
    let groups = if rng.chance(20) { 2 } else { 1 };
    let mut task_groups = Vec::new();
    for g in 0..groups {
        let count = rng.range(10, 500).min(u64::from(max_count.max(1))) as u32;
        task_groups.push(group(rng, &format!("g{g}"), count.max(1)));
    }
    let mut job = Job {
        id,
        job_type: match kind {
            Kind::Batch => JOB_TYPE_BATCH,
            _ => JOB_TYPE_SERVICE,
        }
        .to_string(),
        task_groups,
        ..Default::default()
    };
    let roll = rng.range(0, 99);
    if roll < 30 {
        job.constraints
            .push(constraint("${node.class}", "=", "compute"));
    } else if roll < 40 {
        job.constraints
            .push(constraint("${node.datacenter}", "regexp", "^dc[12]$"));
    } else if roll < 55 {
        job.constraints
            .push(constraint("${attr.kernel.version}", "version", ">= 5.10"));
    } else if roll < 60 {
        job.constraints
            .push(constraint("${attr.cpu.arch}", "=", "amd64"));
    }
    if rng.chance(10) && job.constraints.is_empty() {
        // Spread instances one per host; keep the count well under the cluster size.
        let cap = (nodes / 4).max(1) as u32;
        for g in &mut job.task_groups {
            g.count = g.count.min(cap);
            g.constraints
                .push(constraint("", CONSTRAINT_DISTINCT_HOSTS, "true"));
        }
    }
    if rng.chance(10) {
        let targets = if rng.chance(50) {
            vec![
                SpreadTarget {
                    value: "dc1".into(),
                    percent: 50,
                },
                SpreadTarget {
                    value: "dc2".into(),
                    percent: 30,
                },
            ]
        } else {
            vec![]
        };
        job.spreads.push(Spread {
            attribute: "${node.datacenter}".into(),
            weight: 50,
            spread_target: targets,
        });
    } else if rng.chance(5) {
        job.affinities.push(Affinity {
            l_target: "${node.class}".into(),
            r_target: "memory".into(),
            operand: "=".into(),
            weight: 50,
        });
    }
    job.canonicalize();
    (job, kind)
}

/// A system (or sysbatch) job; one of them skips GPU nodes.
pub fn system_job(rng: &mut Rng, n: usize, sysbatch: bool) -> (Job, Kind) {
    let mut task_groups = vec![group(rng, "agent", 1)];
    task_groups[0].tasks[0].resources = Resources {
        cpu: 100,
        memory_mb: 128,
    };
    let mut job = Job {
        id: format!("system-{n}"),
        job_type: if sysbatch {
            JOB_TYPE_SYSBATCH
        } else {
            JOB_TYPE_SYSTEM
        }
        .to_string(),
        task_groups,
        ..Default::default()
    };
    if n == 1 {
        job.constraints
            .push(constraint("${node.class}", "!=", "gpu"));
    }
    job.canonicalize();
    (
        job,
        if sysbatch {
            Kind::Sysbatch
        } else {
            Kind::System
        },
    )
}
