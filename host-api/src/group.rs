//! Groups and pipelines: kernels routed to each other, launched and stopped as a unit.
//!
//! A *group* declares its kernels and the routes between their output ports and inboxes,
//! and is launched as a whole; launching one kernel with [`crate::Runtime::launch`] is a
//! group of one. On the CPU backend a route writes straight from the upstream kernel's
//! emit into the downstream kernel's inbox ring (never through a host task); on GPU
//! backends a group is what stays resident together, so routes inside it stay on the
//! device. Topology is checked at launch: unknown kernels, type and slot-size mismatches,
//! cycles (unless [`GroupBuilder::allow_cycles`]).

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre_runtime::backend::cpu::{KernelCore, PortTarget};
use gyre_runtime::ring::SlotRef;
use gyre_runtime::routing::{self, RouteError};

use crate::kernel::{recv_shared, try_recv_shared};
use crate::report::{GroupReport, KernelShutdown, RawMessage};
use crate::spec::{join, Message};
use crate::{Error, Kernel, KernelSpec, Runtime, SendError, Sender};

/// Identifies a group builder, so a stage is never used with another builder's group.
static NEXT_BUILDER_ID: AtomicU64 = AtomicU64::new(1);

/// A kernel of a group being built: its index, typed by its messages, and the builder it
/// was added to. It is valid only with that builder and the [`Group`] it launches: any
/// other builder or group refuses it with [`Error::ForeignStage`].
pub struct Stage<In, Out> {
    index: usize,
    builder: u64,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> Clone for Stage<In, Out> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<In, Out> Copy for Stage<In, Out> {}

impl<In, Out> std::fmt::Debug for Stage<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("index", &self.index)
            .field("builder", &self.builder)
            .finish()
    }
}

type Launcher<'rt> = Box<dyn FnOnce(&Runtime) -> Result<Arc<KernelCore>, Error> + 'rt>;

struct Planned<'rt> {
    name: String,
    launch: Option<Launcher<'rt>>,
    in_type: (TypeId, &'static str),
    out_type: (TypeId, &'static str),
    out_bytes: usize,
    ports: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Kernel(usize),
    Host,
    DeadLetters,
}

/// Builds a [`Group`]: add kernels, route their ports, launch.
///
/// ```
/// use gyre::Runtime;
/// use gyre::KernelSpec;
/// use std::time::Duration;
///
/// let runtime = Runtime::builder().build()?;
/// let mut g = runtime.group("split");
/// let split = g.add(KernelSpec::<u32, u32>::new("split").ports(2).no_host_output()
///     .cpu(|x, out| Ok(out.emit_to(x % 2, *x)?)));
/// let even = g.add(KernelSpec::<u32, u32>::new("even").cpu(|x, out| Ok(out.emit(x / 2)?)));
/// let odd = g.add(KernelSpec::<u32, u32>::new("odd").cpu(|x, out| Ok(out.emit(x * 10)?)));
/// g.route(split, 0, even).route(split, 1, odd);
/// let group = g.launch()?;
/// group.activate()?;
/// let input = group.kernel(split)?;
/// input.send(4)?;
/// input.send(3)?;
/// assert_eq!(group.kernel(even)?.recv()?, 2);
/// assert_eq!(group.kernel(odd)?.recv()?, 30);
/// let report = group.drain(Duration::from_secs(5));
/// assert_eq!(report.undelivered_count(), 0);
/// # Ok::<(), gyre::Error>(())
/// ```
pub struct GroupBuilder<'rt> {
    runtime: &'rt Runtime,
    name: String,
    /// The id its stages carry.
    id: u64,
    /// Set when a stage of another builder was passed in; `launch` returns it.
    foreign: Option<Error>,
    kernels: Vec<Planned<'rt>>,
    routes: Vec<(usize, u32, Target)>,
    allow_cycles: bool,
}

impl std::fmt::Debug for GroupBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupBuilder")
            .field("name", &self.name)
            .field(
                "kernels",
                &self.kernels.iter().map(|k| &k.name).collect::<Vec<_>>(),
            )
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl<'rt> GroupBuilder<'rt> {
    pub(crate) fn new(runtime: &'rt Runtime, name: String) -> Self {
        Self {
            runtime,
            name,
            id: NEXT_BUILDER_ID.fetch_add(1, Ordering::Relaxed),
            foreign: None,
            kernels: Vec::new(),
            routes: Vec::new(),
            allow_cycles: false,
        }
    }

    /// Adds a kernel; returns its stage, for routes and for [`Group::kernel`].
    pub fn add<In: Message, Out: Message>(&mut self, spec: KernelSpec<In, Out>) -> Stage<In, Out> {
        let index = self.kernels.len();
        self.kernels.push(Planned {
            name: spec.name().to_owned(),
            in_type: (TypeId::of::<In>(), std::any::type_name::<In>()),
            out_type: (TypeId::of::<Out>(), std::any::type_name::<Out>()),
            out_bytes: std::mem::size_of::<Out>(),
            ports: spec.ports,
            launch: Some(Box::new(move |rt: &Runtime| Ok(rt.launch(spec)?.core))),
        });
        Stage {
            index,
            builder: self.id,
            _types: PhantomData,
        }
    }

    /// The index of `stage` if this builder made it; otherwise records
    /// [`Error::ForeignStage`] for [`GroupBuilder::launch`] to return.
    fn own<A, B>(&mut self, stage: Stage<A, B>) -> Option<usize> {
        if stage.builder == self.id {
            return Some(stage.index);
        }
        self.foreign.get_or_insert_with(|| Error::ForeignStage {
            group: self.name.clone(),
        });
        None
    }

    /// Routes output port `port` of `from` to the inbox of `to` (types checked at
    /// compile time). A stage another builder returned makes [`GroupBuilder::launch`]
    /// fail with [`Error::ForeignStage`].
    pub fn route<A, B, C>(&mut self, from: Stage<A, B>, port: u32, to: Stage<B, C>) -> &mut Self {
        if let (Some(from), Some(to)) = (self.own(from), self.own(to)) {
            self.routes.push((from, port, Target::Kernel(to)));
        }
        self
    }

    /// Routes by kernel names, checking at run time what [`GroupBuilder::route`] checks
    /// at compile time.
    ///
    /// # Errors
    /// [`Error::Route`] for an unknown kernel or when `from`'s output type is not `to`'s
    /// input type.
    pub fn route_by_name(&mut self, from: &str, port: u32, to: &str) -> Result<&mut Self, Error> {
        let find = |name: &str| {
            self.kernels
                .iter()
                .position(|k| k.name == name)
                .ok_or_else(|| RouteError::UnknownKernel(name.to_owned()))
        };
        let (f, t) = (find(from)?, find(to)?);
        let (out_type, in_type) = (self.kernels[f].out_type, self.kernels[t].in_type);
        if out_type.0 != in_type.0 {
            return Err(RouteError::TypeMismatch {
                from: from.to_owned(),
                out_type: out_type.1,
                to: to.to_owned(),
                in_type: in_type.1,
            }
            .into());
        }
        self.routes.push((f, port, Target::Kernel(t)));
        Ok(self)
    }

    /// Binds output port `port` of `from` to its host output (what `recv` reads). Port 0
    /// of a kernel with a host output starts bound there. A stage another builder
    /// returned makes [`GroupBuilder::launch`] fail with [`Error::ForeignStage`].
    pub fn to_host<A, B>(&mut self, from: Stage<A, B>, port: u32) -> &mut Self {
        if let Some(from) = self.own(from) {
            self.routes.push((from, port, Target::Host));
        }
        self
    }

    /// Binds output port `port` of `from` to the runtime's dead-letter sink. A stage
    /// another builder returned makes [`GroupBuilder::launch`] fail with
    /// [`Error::ForeignStage`].
    pub fn to_dead_letters<A, B>(&mut self, from: Stage<A, B>, port: u32) -> &mut Self {
        if let Some(from) = self.own(from) {
            self.routes.push((from, port, Target::DeadLetters));
        }
        self
    }

    /// Allows routes that form cycles (coordinator/worker, BSP exchanges). A cycle whose
    /// rings all fill up stalls for good, so keep the flow inside it bounded.
    pub fn allow_cycles(&mut self) -> &mut Self {
        self.allow_cycles = true;
        self
    }

    fn check(&self) -> Result<Vec<(usize, usize)>, Error> {
        if let Some(foreign) = &self.foreign {
            return Err(foreign.clone());
        }
        let mut edges = Vec::new();
        for (i, &(from, port, target)) in self.routes.iter().enumerate() {
            let k = &self.kernels[from];
            if port >= k.ports {
                return Err(RouteError::NoSuchPort {
                    kernel: k.name.clone(),
                    port,
                    ports: k.ports,
                }
                .into());
            }
            if self.routes[..i]
                .iter()
                .any(|&(f, p, _)| f == from && p == port)
            {
                return Err(Error::Launch(format!(
                    "group `{}`: port {port} of kernel `{}` is routed twice; a port has one target",
                    self.name, k.name
                )));
            }
            if let Target::Kernel(to) = target {
                edges.push((from, to));
            }
        }
        if !self.allow_cycles {
            routing::check_acyclic(self.kernels.len(), &edges, |n| self.kernels[n].name.clone())?;
        }
        Ok(edges)
    }

    /// Launches every kernel (in state `Launched`) and binds every route. On any error
    /// the kernels launched so far are terminated again.
    ///
    /// # Errors
    /// [`Error::ForeignStage`] when a route was given a stage of another builder;
    /// [`Error::Route`] for a bad topology, or any launch error of a kernel.
    pub fn launch(mut self) -> Result<Group, Error> {
        let edges = self.check()?;
        let mut cores: Vec<Arc<KernelCore>> = Vec::with_capacity(self.kernels.len());
        let result = self.launch_into(&edges, &mut cores);
        if let Err(e) = result {
            for core in &cores {
                let _ = core.terminate(&mut |_| {}, &mut |_| {});
            }
            return Err(e);
        }
        let order = routing::drain_order(cores.len(), &edges);
        tracing::info!(group = %self.name, kernels = cores.len(), routes = edges.len(), "group launched");
        Ok(Group {
            name: self.name,
            builder: self.id,
            kernels: cores,
            edges,
            order,
            cyclic: self.allow_cycles,
        })
    }

    fn launch_into(
        &mut self,
        edges: &[(usize, usize)],
        cores: &mut Vec<Arc<KernelCore>>,
    ) -> Result<(), Error> {
        for planned in &mut self.kernels {
            let launch = planned.launch.take().expect("each kernel launches once");
            cores.push(launch(self.runtime)?);
        }
        for &(from, port, target) in &self.routes {
            let bytes = self.kernels[from].out_bytes;
            let (target, exclusive) = match target {
                Target::Kernel(to) => {
                    // A kernel with one upstream route takes its single-producer lane
                    // (no compare-and-swap per message).
                    let upstreams = edges.iter().filter(|&&(_, t)| t == to).count();
                    (
                        PortTarget::Kernel {
                            core: cores[to].clone(),
                            exclusive: false,
                        },
                        upstreams == 1,
                    )
                }
                Target::Host => (PortTarget::Host, false),
                Target::DeadLetters => (PortTarget::DeadLetters, false),
            };
            cores[from].bind(port, target, bytes, exclusive)?;
        }
        Ok(())
    }
}

/// Kernels launched together with their routes (see [`GroupBuilder`]).
#[derive(Debug)]
pub struct Group {
    name: String,
    /// The id of the builder that launched it: the one its stages carry.
    builder: u64,
    kernels: Vec<Arc<KernelCore>>,
    edges: Vec<(usize, usize)>,
    /// Upstream first.
    order: Vec<usize>,
    cyclic: bool,
}

impl Group {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The typed handle of one kernel of the group.
    ///
    /// # Errors
    /// [`Error::ForeignStage`] when `stage` was returned by another builder than the one
    /// that launched this group.
    pub fn kernel<In, Out>(&self, stage: Stage<In, Out>) -> Result<Kernel<In, Out>, Error> {
        match self.kernels.get(stage.index) {
            Some(core) if stage.builder == self.builder => Ok(Kernel {
                core: core.clone(),
                _types: PhantomData,
            }),
            _ => Err(Error::ForeignStage {
                group: self.name.clone(),
            }),
        }
    }

    /// Names of the kernels, upstream first.
    pub fn kernel_names(&self) -> Vec<String> {
        self.order
            .iter()
            .map(|&i| self.kernels[i].config().name.clone())
            .collect()
    }

    /// Routes between kernels, as (upstream name, downstream name).
    pub fn routes(&self) -> Vec<(String, String)> {
        self.edges
            .iter()
            .map(|&(f, t)| {
                (
                    self.kernels[f].config().name.clone(),
                    self.kernels[t].config().name.clone(),
                )
            })
            .collect()
    }

    /// Activates every kernel, downstream first (so nothing waits on an inactive stage).
    ///
    /// # Errors
    /// The first kernel's error, as [`Kernel::activate`].
    pub fn activate(&self) -> Result<(), Error> {
        for &i in self.order.iter().rev() {
            let k = &self.kernels[i];
            k.set_active(true)
                .map_err(|e| Error::from_command(&k.config().name, e))?;
        }
        Ok(())
    }

    /// Pauses every kernel, upstream first; messages keep queuing.
    ///
    /// # Errors
    /// As [`Kernel::deactivate`].
    pub fn deactivate(&self) -> Result<(), Error> {
        for &i in &self.order {
            let k = &self.kernels[i];
            k.set_active(false)
                .map_err(|e| Error::from_command(&k.config().name, e))?;
        }
        Ok(())
    }

    /// Drains the group, upstream kernels first (topological order), so everything in
    /// flight reaches its final sink: each kernel refuses new messages, processes what
    /// is queued, delivers what it emitted downstream, then terminates, before the next
    /// one drains. In a group with cycles it first waits until no message is in any of
    /// its rings. Kernels that do not finish within `timeout` (shared) are terminated
    /// and what they did not deliver is in the report.
    ///
    /// A faulted member (faulted before the drain, or while it runs) is terminated: it
    /// cannot process anything more. That is not an error: its entry in the report has
    /// `error: None`, carries its `fault` (the reason; see [`GroupReport::faulted`]) and
    /// hands back its undelivered messages, the message its handler panicked on first.
    /// The other members drain as usual; what they emit toward the faulted one goes to
    /// the dead letters. What the faulted member emitted to the host before the fault
    /// stays receivable.
    ///
    /// Returns within `timeout` plus about a second whatever a handler does: a handler
    /// still running then is abandoned (its entry says so).
    ///
    /// ```
    /// use gyre::{KernelSpec, Runtime, State};
    /// use std::time::Duration;
    ///
    /// let runtime = Runtime::builder().build()?;
    /// let mut g = runtime.group("g");
    /// let front = g.add(KernelSpec::<u32, u32>::new("front").no_host_output()
    ///     .cpu(|x, out| Ok(out.emit(*x)?)));
    /// let back = g.add(KernelSpec::<u32, u32>::new("back").cpu(|x, out| {
    ///     assert!(*x != 2, "cannot take {x}");
    ///     Ok(out.emit(*x)?)
    /// }));
    /// g.route(front, 0, back);
    /// let group = g.launch()?;
    /// group.activate()?;
    /// for x in 0..4 {
    ///     group.kernel(front)?.send(x)?;
    /// }
    /// while group.kernel(back)?.state() != State::Faulted {
    ///     std::thread::yield_now();
    /// }
    /// let report = group.drain(Duration::from_secs(5));
    /// let faulted: Vec<_> = report.faulted().map(|(name, _)| name).collect();
    /// assert_eq!(faulted, ["back"]);
    /// assert!(report.kernels.iter().all(|k| k.error.is_none()));
    /// // The message `back` panicked on comes back first; what `front` emitted toward it
    /// // after the fault went to the dead letters.
    /// assert_eq!(report.undelivered_as::<u32>(&["back"])[0], 2);
    /// # Ok::<(), gyre::Error>(())
    /// ```
    pub fn drain(&self, timeout: Duration) -> GroupReport {
        let deadline = Instant::now() + timeout;
        if self.cyclic {
            wait_quiet(&self.kernels, deadline);
        }
        stop_kernels(
            self.order.iter().map(|&i| &self.kernels[i]),
            Stop::Drain(deadline),
        )
    }

    /// Terminates every kernel, upstream first; every message still in a ring comes back
    /// in the report.
    pub fn terminate(&self) -> GroupReport {
        stop_kernels(
            self.order.iter().map(|&i| &self.kernels[i]),
            Stop::Terminate,
        )
    }

    /// Terminates one kernel of the group by name; the others keep running (what they
    /// emit toward it from now on goes to the dead letters).
    ///
    /// # Errors
    /// [`Error::Route`] with [`RouteError::UnknownKernel`] when no kernel has that name.
    pub fn terminate_kernel(&self, name: &str) -> Result<GroupReport, Error> {
        let kernel = self
            .kernels
            .iter()
            .find(|k| k.config().name == name)
            .ok_or_else(|| RouteError::UnknownKernel(name.to_owned()))?;
        Ok(stop_kernels(std::iter::once(kernel), Stop::Terminate))
    }

    /// The worst health of the group's kernels and every reason.
    pub fn health(&self, policy: &crate::HealthPolicy) -> crate::Health {
        combine_health(self.kernels.iter().map(|k| k.health(policy)))
    }
}

pub(crate) fn combine_health(all: impl Iterator<Item = crate::Health>) -> crate::Health {
    let mut status = crate::HealthStatus::Healthy;
    let mut reasons = Vec::new();
    let mut stalled = false;
    for health in all {
        status = status.min(health.status);
        reasons.extend(health.reasons);
        stalled |= health.stalled;
    }
    crate::Health {
        status,
        reasons,
        stalled,
    }
}

/// Waits until no kernel has a message in a ring, nor one in a handler, twice in a row.
fn wait_quiet(kernels: &[Arc<KernelCore>], deadline: Instant) {
    let quiet = || {
        kernels
            .iter()
            .all(|k| k.inbox_len() == 0 && !k.is_busy() && !k.has_stashed())
    };
    while Instant::now() < deadline {
        if quiet() {
            std::thread::sleep(Duration::from_millis(1));
            if quiet() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Stop {
    Drain(Instant),
    Terminate,
}

/// Drains or terminates `kernels` in the order given and gathers what they handed back.
pub(crate) fn stop_kernels<'a>(
    kernels: impl Iterator<Item = &'a Arc<KernelCore>>,
    how: Stop,
) -> GroupReport {
    GroupReport {
        kernels: kernels.filter_map(|k| stop_kernel(k, how)).collect(),
    }
}

/// A message handed back by a stop, as a report keeps it.
pub(crate) fn raw(s: SlotRef<'_>) -> RawMessage {
    RawMessage {
        corr: join(s.user_corr()),
        bytes: s.payload.to_vec(),
    }
}

/// Drains or terminates one kernel and says what it handed back; `None` when it was
/// terminated already (whoever terminated it took its messages then). A faulted kernel
/// is terminated by a drain too (see [`Group::drain`]): its entry carries the fault and
/// its undelivered messages, not an error.
pub(crate) fn stop_kernel(kernel: &Arc<KernelCore>, how: Stop) -> Option<KernelShutdown> {
    if kernel.state() == crate::State::Terminated && !kernel.is_uncollected() {
        return None;
    }
    let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
    let outcome = match how {
        Stop::Drain(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            kernel.drain(left, &mut |s| inputs.push(raw(s)), &mut |s| {
                outputs.push(raw(s));
            })
        }
        Stop::Terminate => kernel.terminate(&mut |s| inputs.push(raw(s)), &mut |s| {
            outputs.push(raw(s));
        }),
    };
    let (timed_out, abandoned, error) = match outcome {
        Ok(summary) => (summary.timed_out, summary.abandoned, None),
        // Terminated meanwhile (by another host thread or its fault policy), which took
        // its messages: nothing is left to report.
        Err(gyre_runtime::backend::CommandError::Lifecycle(e))
            if e.from == crate::State::Terminated =>
        {
            return None;
        }
        Err(e) => (
            false,
            false,
            Some(Error::from_command(&kernel.config().name, e)),
        ),
    };
    Some(KernelShutdown {
        kernel: kernel.config().name.clone(),
        processed: kernel.counters().processed,
        timed_out,
        final_state: kernel.state(),
        fault: kernel.fault(),
        error,
        abandoned,
        undelivered: inputs,
        undelivered_outputs: outputs,
    })
}

/// Adds a pipeline's pending last stage, with or without a host output.
type AddStage<'rt> = Box<dyn FnOnce(&mut GroupBuilder<'rt>, bool) -> usize + 'rt>;

/// Builds a linear [`Pipeline`]: each stage's port 0 routed to the next stage's inbox.
/// Intermediate stages get no host output; the last stage's output goes to the host.
///
/// ```
/// use gyre::{KernelSpec, Runtime};
/// use std::time::Duration;
///
/// let runtime = Runtime::builder().build()?;
/// let pipeline = runtime
///     .pipeline::<u32>("math")
///     .stage(KernelSpec::<u32, u32>::new("add").cpu(|x, out| Ok(out.emit(x + 1)?)))
///     .stage(KernelSpec::<u32, u64>::new("square").cpu(|x, out| Ok(out.emit(u64::from(*x).pow(2))?)))
///     .launch()?;
/// pipeline.activate()?;
/// pipeline.send(2)?;
/// assert_eq!(pipeline.recv()?, 9);
/// assert_eq!(pipeline.drain(Duration::from_secs(5)).undelivered_count(), 0);
/// # Ok::<(), gyre::Error>(())
/// ```
pub struct PipelineBuilder<'rt, In, Out> {
    group: GroupBuilder<'rt>,
    pending: Option<AddStage<'rt>>,
    added: Option<usize>,
    first: Option<usize>,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> std::fmt::Debug for PipelineBuilder<'_, In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl<'rt, In: Message, Out: Message> PipelineBuilder<'rt, In, Out> {
    pub(crate) fn new(runtime: &'rt Runtime, name: String) -> Self {
        Self {
            group: GroupBuilder::new(runtime, name),
            pending: None,
            added: None,
            first: None,
            _types: PhantomData,
        }
    }

    fn add_pending(&mut self, host_output: bool) -> Option<usize> {
        let add = self.pending.take()?;
        let index = add(&mut self.group, host_output);
        if let Some(prev) = self.added {
            self.group.routes.push((prev, 0, Target::Kernel(index)));
        }
        self.first.get_or_insert(index);
        self.added = Some(index);
        Some(index)
    }

    /// Appends a stage taking what the previous stage emits on port 0.
    pub fn stage<Next: Message>(
        mut self,
        spec: KernelSpec<Out, Next>,
    ) -> PipelineBuilder<'rt, In, Next> {
        self.add_pending(false);
        PipelineBuilder {
            group: self.group,
            pending: Some(Box::new(
                move |group: &mut GroupBuilder<'rt>, host_output| {
                    let spec = if host_output {
                        spec
                    } else {
                        spec.no_host_output()
                    };
                    group.add(spec).index
                },
            )),
            added: self.added,
            first: self.first,
            _types: PhantomData,
        }
    }

    /// Launches the stages (in state `Launched`; call [`Pipeline::activate`]).
    ///
    /// # Errors
    /// As [`GroupBuilder::launch`]; [`Error::Launch`] for a pipeline with no stage.
    pub fn launch(mut self) -> Result<Pipeline<In, Out>, Error> {
        let name = self.group.name.clone();
        let last = self.add_pending(true).ok_or_else(|| {
            Error::Launch(format!(
                "pipeline `{name}` has no stage: add one with .stage(spec)"
            ))
        })?;
        let first = self.first.unwrap_or(last);
        let group = self.group.launch()?;
        Ok(Pipeline {
            input: Sender::for_core(group.kernels[first].clone()),
            output: group.kernels[last].clone(),
            group,
            _types: PhantomData,
        })
    }
}

/// A launched linear pipeline: send `In` to the first stage, receive `Out` from the last.
pub struct Pipeline<In, Out> {
    group: Group,
    input: Sender<In>,
    output: Arc<KernelCore>,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> std::fmt::Debug for Pipeline<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl<In: Message, Out: Message> Pipeline<In, Out> {
    /// The group behind the pipeline.
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// A sender into the first stage.
    pub fn sender(&self) -> Sender<In> {
        self.input.clone()
    }

    /// Activates every stage, last first.
    ///
    /// # Errors
    /// As [`Group::activate`].
    pub fn activate(&self) -> Result<(), Error> {
        self.group.activate()
    }

    /// Sends into the first stage, waiting while its inbox is full.
    ///
    /// # Errors
    /// As [`Kernel::send`].
    pub fn send(&self, message: In) -> Result<(), SendError<In>> {
        self.input.send(message)
    }

    /// Sends with a correlation id (carried through every stage that emits with
    /// [`crate::Emit::emit`]).
    ///
    /// # Errors
    /// As [`Kernel::send`].
    pub fn send_with_corr(&self, message: In, corr: u64) -> Result<(), SendError<In>> {
        self.input.send_with_corr(message, corr)
    }

    /// Sends from async code.
    ///
    /// # Errors
    /// As [`Kernel::send`].
    pub async fn send_async(&self, message: In) -> Result<(), SendError<In>> {
        self.input.send_async(message).await
    }

    /// Receives from the last stage, waiting for a message.
    ///
    /// # Errors
    /// As [`Kernel::recv`].
    pub fn recv(&self) -> Result<Out, Error> {
        self.recv_within(None).map(|(m, _)| m)
    }

    /// Receives with the correlation id.
    ///
    /// # Errors
    /// As [`Kernel::recv`].
    pub fn recv_with_corr(&self) -> Result<(Out, u64), Error> {
        self.recv_within(None)
    }

    /// Receives, waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`Kernel::recv_timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Out, Error> {
        self.recv_within(Some(timeout)).map(|(m, _)| m)
    }

    /// Receives without waiting.
    ///
    /// # Errors
    /// As [`Kernel::try_recv`].
    pub fn try_recv(&self) -> Result<Option<Out>, Error> {
        try_recv_shared(&self.output)
    }

    fn recv_within(&self, timeout: Option<Duration>) -> Result<(Out, u64), Error> {
        recv_shared(&self.output, timeout)
    }

    /// A requester over the pipeline: send a request into the first stage, get the
    /// reply the last stage emits with the same correlation id (see [`crate::Requester`]).
    ///
    /// # Errors
    /// [`Error::ReceiverTaken`] when the last stage's output is already taken.
    pub fn requester(&self) -> Result<crate::Requester<In, Out>, Error> {
        crate::Requester::over(self.input.core().clone(), self.output.clone())
    }

    /// End-to-end latency quantiles of requests answered through the pipeline (see
    /// [`crate::Requester`]); `None` before the first.
    pub fn latency(&self) -> Option<crate::LatencySummary> {
        self.output.latency()
    }

    /// Drains the stages upstream first (see [`Group::drain`]).
    pub fn drain(&self, timeout: Duration) -> GroupReport {
        self.group.drain(timeout)
    }

    /// Terminates every stage (see [`Group::terminate`]).
    pub fn terminate(&self) -> GroupReport {
        self.group.terminate()
    }
}
