//! Bulk-synchronous supersteps: connected components by min-label propagation, the seed
//! pattern for graph analytics on resident kernels.
//!
//! ```text
//!        Superstep(s)                    updates (all-to-all)
//! host ──────────────▶ partition-0 ◀──────────────▶ partition-1 ◀──▶ ...
//!   ▲                       │ Done(s, changed)           │
//!   │   StepComplete(s)     ▼                            ▼
//!   └──────────────────── barrier ◀──────────────────────┘
//! ```
//!
//! Vertex `v` belongs to partition `v % P`; every vertex starts with its own id as its
//! label. In superstep `s` each partition
//! 1. applies the label updates its peers sent in superstep `s - 1` (a vertex takes the
//!    smallest label it hears of),
//! 2. propagates labels along its local edges until nothing changes locally,
//! 3. sends, for every vertex whose label dropped, its label to the neighbours owned by
//!    other partitions (one update per remote vertex: the smallest), tagged with `s`,
//! 4. sends every peer an end-of-step marker, and the `barrier` kernel a
//!    `Done(s, changed)`.
//!
//! The barrier counts the P `Done`s of a step and tells the host
//! `StepComplete(s, total changed)`; the host starts superstep `s + 1` until a step
//! changes nothing. Then every vertex's label is the smallest vertex id of its component,
//! which [`run`] checks against a union-find on the host.
//!
//! **Ordering.** A partition may hear of superstep `s + 1` (from the host) before the
//! last updates of superstep `s` (from its peers): a route writes into the partition's
//! single-producer lane when it is the only route into it (two partitions), and the
//! host's messages go to the shared inbox, with no order between the two rings; and an
//! emit that finds a full ring waits in its port's stash while emits to other ports go
//! ahead. So updates are tagged with their superstep and buffered by step, and each peer
//! closes its updates of a step with an end-of-step marker on the same route (one route
//! is one ring, in order): a partition runs superstep `s + 1` only once it has the
//! host's go and the markers of step `s` from every peer. Inboxes are sized for two
//! supersteps of updates, so in practice no route ever waits for room; a cycle whose rings
//! all fill would stall for good.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use gyre::{Emit, Error, HandlerError, Kernel, KernelSpec, Runtime};

use crate::rng::XorShift64;

/// `BspMsg::kind`: start superstep `step` (host → partition).
pub const SUPERSTEP: u32 = 1;
/// `BspMsg::kind`: vertex `a` may take label `b`, sent in superstep `step` (partition →
/// partition).
pub const UPDATE: u32 = 2;
/// `BspMsg::kind`: partition `a` sent all its updates of superstep `step` (partition →
/// partition).
pub const END_OF_STEP: u32 = 3;
/// `BspMsg::kind`: a partition finished superstep `step`; `a` labels dropped, `b`
/// updates sent (partition → barrier).
pub const DONE: u32 = 4;
/// `BspMsg::kind`: send every label to the host (host → partition).
pub const COLLECT: u32 = 5;
/// `BspMsg::kind`: vertex `a` has label `b` (partition → host).
pub const LABEL: u32 = 6;

/// Output port of a partition to the barrier.
const BARRIER_PORT: u32 = 0;
/// Output port of a partition to the host.
const HOST_PORT: u32 = 1;
/// Output port `PEER_PORTS + q` of a partition goes to partition `q`.
const PEER_PORTS: u32 = 2;

/// What partitions send and receive.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BspMsg {
    /// [`SUPERSTEP`], [`UPDATE`], [`END_OF_STEP`], [`DONE`], [`COLLECT`] or [`LABEL`].
    pub kind: u32,
    /// The superstep it belongs to.
    pub step: u32,
    /// First argument (see the kinds).
    pub a: u32,
    /// Second argument (see the kinds).
    pub b: u32,
}

impl BspMsg {
    fn new(kind: u32, step: u32, a: u32, b: u32) -> Self {
        Self { kind, step, a, b }
    }
}

/// What the barrier tells the host when every partition finished a superstep.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct StepReport {
    /// The superstep.
    pub step: u32,
    /// Labels that dropped in it, over all partitions (in step 0: every vertex).
    pub changed: u32,
    /// Updates sent between partitions in it.
    pub updates: u32,
    /// Partitions that reported.
    pub partitions: u32,
}

/// An undirected graph: vertices `0..vertices` and an edge list.
#[derive(Clone, Debug)]
pub struct Graph {
    /// Number of vertices.
    pub vertices: u32,
    /// Edges (both directions are implied; self-loops are ignored).
    pub edges: Vec<(u32, u32)>,
}

impl Graph {
    /// A reproducible random graph: `edges` edges between uniformly drawn vertices.
    pub fn random(vertices: u32, edges: usize, seed: u64) -> Self {
        let vertices = vertices.max(1);
        let mut rng = XorShift64::new(seed);
        let edges = (0..edges)
            .map(|_| (rng.below(vertices), rng.below(vertices)))
            .collect();
        Self { vertices, edges }
    }
}

/// The smallest vertex id of each vertex's component, by union-find on the host.
pub fn union_find_labels(graph: &Graph) -> Vec<u32> {
    let mut parent: Vec<u32> = (0..graph.vertices).collect();
    fn find(parent: &mut [u32], mut v: u32) -> u32 {
        while parent[v as usize] != v {
            let up = parent[parent[v as usize] as usize];
            parent[v as usize] = up;
            v = up;
        }
        v
    }
    for &(u, v) in &graph.edges {
        let (ru, rv) = (find(&mut parent, u), find(&mut parent, v));
        // The smaller root wins, so each root is its component's smallest vertex.
        if ru < rv {
            parent[rv as usize] = ru;
        } else {
            parent[ru as usize] = rv;
        }
    }
    (0..graph.vertices).map(|v| find(&mut parent, v)).collect()
}

/// What [`run`] did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Vertices in the graph.
    pub vertices: u32,
    /// Edges in the graph.
    pub edges: usize,
    /// Partition kernels.
    pub partitions: u32,
    /// Inbox slots of each partition.
    pub inbox_slots: u32,
    /// What the barrier reported for each superstep, in order.
    pub steps: Vec<StepReport>,
    /// Final label of every vertex, as the partitions reported them.
    pub labels: Vec<u32>,
    /// Whether `labels` equals [`union_find_labels`] of the graph.
    pub matches_union_find: bool,
    /// Time from the first superstep to the last label received.
    pub elapsed: Duration,
    /// Messages the group's drain handed back (0 when all went through).
    pub undelivered: usize,
}

impl Outcome {
    /// Number of connected components (distinct labels).
    pub fn components(&self) -> usize {
        let mut labels = self.labels.clone();
        labels.sort_unstable();
        labels.dedup();
        labels.len()
    }

    /// Vertices in the largest component.
    pub fn largest_component(&self) -> usize {
        let mut sizes: HashMap<u32, usize> = HashMap::new();
        for &l in &self.labels {
            *sizes.entry(l).or_default() += 1;
        }
        sizes.values().copied().max().unwrap_or(0)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "BSP connected components: {} vertices, {} edges, {} partitions + barrier ({} inbox slots each)",
            self.vertices, self.edges, self.partitions, self.inbox_slots
        )?;
        writeln!(f, "  superstep  labels dropped  updates sent")?;
        const SHOWN: usize = 24;
        for (i, s) in self.steps.iter().enumerate() {
            if i == SHOWN && self.steps.len() > SHOWN + 1 {
                writeln!(f, "  {:>9}", "...")?;
            }
            if i < SHOWN || i + 1 == self.steps.len() {
                writeln!(f, "  {:>9}  {:>14}  {:>12}", s.step, s.changed, s.updates)?;
            }
        }
        writeln!(
            f,
            "  converged after {} supersteps: {} components, the largest of {} vertices",
            self.steps.len(),
            self.components(),
            self.largest_component()
        )?;
        writeln!(
            f,
            "  labels match a host-side union-find: {}",
            if self.matches_union_find { "yes" } else { "NO" }
        )?;
        write!(
            f,
            "  time {:.1?}, {} handed back by the drain",
            self.elapsed, self.undelivered
        )
    }
}

/// One partition's state, kept in its handler.
struct Partition {
    id: u32,
    parts: u32,
    /// Neighbours (global ids) of each local vertex; local `i` is global `i * parts + id`.
    adjacency: Vec<Vec<u32>>,
    labels: Vec<u32>,
    /// Updates received, by the superstep that sent them.
    updates: BTreeMap<u32, Vec<(u32, u32)>>,
    /// End-of-step markers received, by superstep.
    markers: HashMap<u32, u32>,
    /// The superstep the host started and this partition has not run yet.
    started: Option<u32>,
}

impl Partition {
    fn new(id: u32, parts: u32, graph: &Graph) -> Self {
        let local = (graph.vertices + parts - 1 - id) / parts;
        let mut adjacency = vec![Vec::new(); local as usize];
        for &(u, v) in &graph.edges {
            if u == v {
                continue;
            }
            for (a, b) in [(u, v), (v, u)] {
                if a % parts == id {
                    adjacency[(a / parts) as usize].push(b);
                }
            }
        }
        Self {
            id,
            parts,
            adjacency,
            labels: (0..local).map(|i| i * parts + id).collect(),
            updates: BTreeMap::new(),
            markers: HashMap::new(),
            started: None,
        }
    }

    fn handle(&mut self, msg: &BspMsg, out: &mut Emit<'_, '_, BspMsg>) -> Result<(), HandlerError> {
        match msg.kind {
            SUPERSTEP => {
                if let Some(pending) = self.started.replace(msg.step) {
                    return Err(HandlerError(format!(
                        "partition {}: superstep {} started while {pending} waits",
                        self.id, msg.step
                    )));
                }
            }
            UPDATE => self
                .updates
                .entry(msg.step)
                .or_default()
                .push((msg.a, msg.b)),
            END_OF_STEP => *self.markers.entry(msg.step).or_default() += 1,
            COLLECT => {
                for (i, &label) in self.labels.iter().enumerate() {
                    let v = i as u32 * self.parts + self.id;
                    out.emit_to(HOST_PORT, BspMsg::new(LABEL, 0, v, label))?;
                }
            }
            other => {
                return Err(HandlerError(format!(
                    "partition {}: unexpected message kind {other}",
                    self.id
                )))
            }
        }
        self.try_superstep(out)
    }

    /// Runs the started superstep once every peer's updates of the previous one are in.
    fn try_superstep(&mut self, out: &mut Emit<'_, '_, BspMsg>) -> Result<(), HandlerError> {
        let Some(step) = self.started else {
            return Ok(());
        };
        let peers = self.parts - 1;
        if step > 0 && self.markers.get(&(step - 1)).copied().unwrap_or(0) < peers {
            return Ok(());
        }
        self.started = None;
        let mut changed = vec![false; self.labels.len()];
        let mut work: Vec<usize> = Vec::new();
        if step == 0 {
            changed.fill(true);
            work.extend(0..self.labels.len());
        } else {
            self.markers.remove(&(step - 1));
            for (v, label) in self.updates.remove(&(step - 1)).unwrap_or_default() {
                if v % self.parts != self.id {
                    return Err(HandlerError(format!(
                        "partition {}: update for vertex {v} of partition {}",
                        self.id,
                        v % self.parts
                    )));
                }
                let i = (v / self.parts) as usize;
                if label < self.labels[i] {
                    self.labels[i] = label;
                    changed[i] = true;
                    work.push(i);
                }
            }
        }
        // Local propagation to a fixed point.
        while let Some(i) = work.pop() {
            let label = self.labels[i];
            for &w in &self.adjacency[i] {
                if w % self.parts == self.id {
                    let j = (w / self.parts) as usize;
                    if label < self.labels[j] {
                        self.labels[j] = label;
                        changed[j] = true;
                        work.push(j);
                    }
                }
            }
        }
        // One update per remote vertex: the smallest label offered to it.
        let mut outgoing: BTreeMap<u32, u32> = BTreeMap::new();
        for (i, _) in changed.iter().enumerate().filter(|(_, &c)| c) {
            for &w in &self.adjacency[i] {
                if w % self.parts != self.id {
                    let offer = outgoing.entry(w).or_insert(u32::MAX);
                    *offer = (*offer).min(self.labels[i]);
                }
            }
        }
        for (&w, &label) in &outgoing {
            out.emit_to(
                PEER_PORTS + w % self.parts,
                BspMsg::new(UPDATE, step, w, label),
            )?;
        }
        for q in (0..self.parts).filter(|&q| q != self.id) {
            out.emit_to(PEER_PORTS + q, BspMsg::new(END_OF_STEP, step, self.id, 0))?;
        }
        let dropped = changed.iter().filter(|&&c| c).count() as u32;
        out.emit_to(
            BARRIER_PORT,
            BspMsg::new(DONE, step, dropped, outgoing.len() as u32),
        )?;
        Ok(())
    }
}

/// Inbox slots for a partition: two supersteps of the most updates any partition can
/// receive in one (one per incoming boundary edge at most), markers and host commands.
fn inbox_slots(graph: &Graph, parts: u32) -> u32 {
    let mut incoming = vec![0u32; parts as usize];
    for &(u, v) in &graph.edges {
        if u % parts != v % parts {
            incoming[(u % parts) as usize] += 1;
            incoming[(v % parts) as usize] += 1;
        }
    }
    let most = incoming.into_iter().max().unwrap_or(0);
    (2 * most + 2 * parts + 16).next_power_of_two().max(64)
}

const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds the connected components of `graph` with `partitions` partition kernels and a
/// barrier, superstep by superstep, then collects every label and checks them against
/// [`union_find_labels`].
///
/// # Errors
/// A launch, lifecycle, send or receive error of gyre ([`Error::Timeout`] when a
/// superstep does not complete within 30 s).
pub fn run(graph: &Graph, partitions: u32) -> Result<Outcome, Error> {
    let parts = partitions.clamp(1, graph.vertices.max(1));
    let slots = inbox_slots(graph, parts);
    let runtime = Runtime::builder().build()?;
    let mut g = runtime.group("bsp");
    let barrier = g.add(
        KernelSpec::<BspMsg, StepReport>::new("barrier")
            .capacity((4 * parts).next_power_of_two().max(64))
            .cpu({
                let mut steps: HashMap<u32, StepReport> = HashMap::new();
                move |done, out| {
                    if done.kind != DONE {
                        return Err(HandlerError(format!("barrier got kind {}", done.kind)));
                    }
                    let report = steps.entry(done.step).or_insert(StepReport {
                        step: done.step,
                        changed: 0,
                        updates: 0,
                        partitions: 0,
                    });
                    report.changed += done.a;
                    report.updates += done.b;
                    report.partitions += 1;
                    if report.partitions == parts {
                        if let Some(complete) = steps.remove(&done.step) {
                            out.emit(complete)?;
                        }
                    }
                    Ok(())
                }
            }),
    );
    let stages: Vec<_> = (0..parts)
        .map(|p| {
            let mut partition = Partition::new(p, parts, graph);
            g.add(
                KernelSpec::<BspMsg, BspMsg>::new(format!("partition-{p}"))
                    .capacity(slots)
                    .ports(PEER_PORTS + parts)
                    .cpu(move |msg, out| partition.handle(msg, out)),
            )
        })
        .collect();
    for (p, &stage) in stages.iter().enumerate() {
        g.route(stage, BARRIER_PORT, barrier)
            .to_host(stage, HOST_PORT);
        for (q, &peer) in stages.iter().enumerate() {
            if q != p {
                g.route(stage, PEER_PORTS + q as u32, peer);
            }
        }
    }
    g.allow_cycles();
    let group = g.launch()?;
    group.activate()?;
    let barrier = group.kernel(barrier)?;
    let partitions: Vec<Kernel<BspMsg, BspMsg>> = stages
        .iter()
        .map(|&s| group.kernel(s))
        .collect::<Result<_, _>>()?;

    let start = Instant::now();
    let result = supersteps(&barrier, &partitions, graph.vertices);
    let elapsed = start.elapsed();
    if result.is_err() {
        group.terminate();
    }
    let report = group.drain(Duration::from_secs(10));
    let _ = runtime.shutdown(Duration::from_secs(10));
    let (steps, labels) = result?;
    Ok(Outcome {
        vertices: graph.vertices,
        edges: graph.edges.len(),
        partitions: parts,
        inbox_slots: slots,
        matches_union_find: labels == union_find_labels(graph),
        steps,
        labels,
        elapsed,
        undelivered: report.undelivered_count(),
    })
}

type Steps = (Vec<StepReport>, Vec<u32>);

/// The host's loop: run supersteps until one changes nothing, then collect the labels.
fn supersteps(
    barrier: &Kernel<BspMsg, StepReport>,
    partitions: &[Kernel<BspMsg, BspMsg>],
    vertices: u32,
) -> Result<Steps, Error> {
    let mut steps = Vec::new();
    for step in 0.. {
        for p in partitions {
            p.send(BspMsg::new(SUPERSTEP, step, 0, 0))?;
        }
        // The barrier completes steps in order: the report is for `step` (the tests
        // check the numbers).
        let report = barrier.recv_timeout(STEP_TIMEOUT)?;
        steps.push(report);
        if report.changed == 0 {
            break;
        }
    }
    for p in partitions {
        p.send(BspMsg::new(COLLECT, 0, 0, 0))?;
    }
    let mut labels = vec![u32::MAX; vertices as usize];
    let parts = partitions.len() as u32;
    for (id, p) in partitions.iter().enumerate() {
        let owned = (vertices + parts - 1 - id as u32) / parts;
        for _ in 0..owned {
            let label = p.recv_timeout(STEP_TIMEOUT)?;
            if let Some(slot) = labels.get_mut(label.a as usize) {
                *slot = label.b;
            }
        }
    }
    Ok((steps, labels))
}
