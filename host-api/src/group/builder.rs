//! Building a group: its kernels, their routes, the checks and the launch on a backend.

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use gyre_runtime::backend::seam::cpu::{CpuKernel, CpuRoute};
use gyre_runtime::routing::{self, RouteError};

use super::{Group, Inner};
use crate::device::{self, DeviceLaunch, DevicePlan, Place};
use crate::spec::Message;
use crate::{Backend, Error, KernelSpec, Runtime};

/// Identifies a group builder, so a stage is never used with another builder's group.
static NEXT_BUILDER_ID: AtomicU64 = AtomicU64::new(1);

/// A kernel of a group being built: its index, typed by its messages, and the builder it
/// was added to. It is valid only with that builder and the [`Group`] it launches: any
/// other builder or group refuses it with [`Error::ForeignStage`].
pub struct Stage<In, Out> {
    pub(crate) index: usize,
    pub(super) builder: u64,
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

/// A kernel launched on the CPU, or planned for a device group.
pub(crate) enum Placed {
    Cpu(CpuKernel),
    Device(DevicePlan),
}

type Launcher<'rt> = Box<dyn FnOnce(&Runtime, &Place) -> Result<Placed, Error> + 'rt>;

struct Planned<'rt> {
    name: String,
    launch: Option<Launcher<'rt>>,
    in_type: (TypeId, &'static str),
    out_type: (TypeId, &'static str),
    out_bytes: usize,
    ports: u32,
    host_output: bool,
    supervision: crate::device_supervisor::Supervision,
}

pub(crate) use crate::device::PortTo;
use PortTo as Target;

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
    pub(crate) name: String,
    /// The id its stages carry.
    id: u64,
    /// Set when a stage of another builder was passed in; `launch` returns it.
    foreign: Option<Error>,
    kernels: Vec<Planned<'rt>>,
    pub(crate) routes: Vec<(usize, u32, Target)>,
    allow_cycles: bool,
    /// The backend the group runs on, when not the runtime's.
    backend: Option<Backend>,
    /// CUDA threads per block.
    threads: Option<u32>,
    /// The device the group runs on, when not the backend's default.
    device: Option<u32>,
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
            backend: None,
            threads: None,
            device: None,
        }
    }

    /// Runs the group on `backend` instead of the runtime's: [`Backend::Cpu`] (always
    /// available), or the runtime's device backend. Each kernel runs its implementation
    /// for that backend; one without fails the launch with [`Error::NoImplementation`].
    ///
    /// ```
    /// use gyre::{Backend, KernelSpec, Runtime};
    /// let runtime = Runtime::builder().build()?;
    /// let mut g = runtime.group("on-cpu");
    /// g.backend(Backend::Cpu);
    /// g.add(KernelSpec::<u32, u32>::new("inc").cpu(|x, out| Ok(out.emit(x + 1)?)));
    /// let group = g.launch()?;
    /// assert_eq!(group.backend(), "cpu");
    /// # Ok::<(), gyre::Error>(())
    /// ```
    pub fn backend(&mut self, backend: Backend) -> &mut Self {
        self.backend = Some(backend);
        self
    }

    /// Runs the group on device `ordinal` of its backend (the runtime's, or the one
    /// [`GroupBuilder::backend`] names) instead of the runtime's default device: a CUDA
    /// GPU as the driver numbers them under `CUDA_VISIBLE_DEVICES`, or device 0 or 1 of
    /// [`Backend::CudaEmulated`]. The runtime opens the device at the first launch on it
    /// and keeps it. Routes inside the group stay on that device; a route to a group on
    /// another device is relayed through the host ([`Runtime::connect`]). Only CUDA
    /// numbers its devices: on the CPU and wgpu only ordinal 0 is accepted.
    ///
    /// ```
    /// use gyre::builtins::{Builtin, Record};
    /// use gyre::{Backend, Error, KernelSpec, Runtime};
    /// # let Ok(runtime) = Runtime::builder().backend(Backend::CudaEmulated).build() else { return Ok(()) };
    /// let mut g = runtime.group("on-device-1");
    /// g.device(1);
    /// g.add(KernelSpec::<Record, Record>::new("scale").builtin(Builtin::Affine { a: 2.0, b: 0.0 }));
    /// match g.launch() {
    ///     Ok(group) => assert_eq!(group.device(), Some(1)),
    ///     // A backend without a device 1: the reason names the ordinal and the count.
    ///     Err(Error::BackendUnavailable { reason, .. }) => eprintln!("{reason}"),
    ///     Err(other) => return Err(other),
    /// }
    /// # Ok::<(), gyre::Error>(())
    /// ```
    pub fn device(&mut self, ordinal: u32) -> &mut Self {
        self.device = Some(ordinal);
        self
    }

    /// Threads per block on CUDA, 1 to 256: each kernel handles up to this many
    /// messages at once. Default 64 on a GPU, 4 under emulation (where each thread is a
    /// host thread). Other backends ignore it.
    pub fn threads(&mut self, threads: u32) -> &mut Self {
        self.threads = Some(threads);
        self
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
            host_output: spec.host_output.is_some(),
            supervision: crate::device_supervisor::Supervision {
                fault_policy: spec.fault_policy,
                watchdog: spec.watchdog,
            },
            // Every place but the CPU is a device, however many device features are built.
            #[allow(clippy::match_wildcard_for_single_variants)]
            #[cfg_attr(
                not(any(feature = "cuda", feature = "wgpu")),
                allow(unreachable_patterns)
            )]
            launch: Some(Box::new(move |rt: &Runtime, place: &Place| match place {
                Place::Cpu => Ok(Placed::Cpu(rt.launch_cpu(spec)?)),
                device => Ok(Placed::Device(device::plan(&spec, device)?)),
            })),
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
        // As device groups do: names tell kernels apart in routes by name, reports and
        // metrics (the CPU launched two kernels of one name, with one metric series).
        for (i, k) in self.kernels.iter().enumerate() {
            if self.kernels[..i].iter().any(|other| other.name == k.name) {
                return Err(Error::Launch(format!(
                    "group `{}`: two kernels are named `{}`: rename one",
                    self.name, k.name
                )));
            }
        }
        let mut edges = Vec::new();
        for (i, &(from, port, target)) in self.routes.iter().enumerate() {
            let k = &self.kernels[from];
            if target == Target::Host && !k.host_output {
                // Device groups launched this and lost what the port emitted; the CPU's
                // refusal said that the port did not exist.
                return Err(Error::Launch(format!(
                    "group `{}`: port {port} of kernel `{}` is routed to the host, but the \
                     kernel has no host output: give its spec `.host_output(capacity)` instead \
                     of `.no_host_output()`, or route the port to a kernel or the dead letters",
                    self.name, k.name
                )));
            }
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
        let place = self.runtime.place_on(self.backend, self.device)?;
        if !matches!(place, Place::Cpu) {
            return self.launch_device(&place, edges);
        }
        let mut cores: Vec<CpuKernel> = Vec::with_capacity(self.kernels.len());
        let result = self.launch_into(&edges, &mut cores);
        if let Err(e) = result {
            for core in &cores {
                let _ = core.terminate(&mut |_| {}, &mut |_| {});
            }
            return Err(e);
        }
        let order = routing::drain_order(cores.len(), &edges);
        self.runtime.services().cpu_groups.lock().push((
            self.name.clone(),
            cores.iter().map(CpuKernel::kernel_id).collect(),
        ));
        tracing::info!(group = %self.name, kernels = cores.len(), routes = edges.len(), "group launched");
        Ok(Group {
            name: self.name,
            builder: self.id,
            inner: Inner::Cpu {
                kernels: cores,
                edges,
                order,
                cyclic: self.allow_cycles,
                backend: self.runtime.cpu_backend(),
            },
        })
    }

    /// Plans every kernel for the device of `place`, launches them as one group and
    /// registers it with the runtime.
    fn launch_device(mut self, place: &Place, edges: Vec<(usize, usize)>) -> Result<Group, Error> {
        // The routes, not the permission, decide (an acyclic group that allowed cycles was
        // refused).
        if self.allow_cycles
            && routing::check_acyclic(self.kernels.len(), &edges, |n| self.kernels[n].name.clone())
                .is_err()
        {
            return Err(Error::Unsupported {
                what: format!("group `{}` with cycles", self.name),
                backend: place.name(),
                advice: "a device group runs its kernels in topological order (a grid or a \
                         tick): keep cyclic groups (coordinator/worker, BSP) on the CPU \
                         backend with `GroupBuilder::backend(Backend::Cpu)`"
                    .to_owned(),
            });
        }
        let mut plans = Vec::with_capacity(self.kernels.len());
        for planned in &mut self.kernels {
            let launch = planned.launch.take().expect("each kernel launches once");
            match launch(self.runtime, place)? {
                Placed::Device(plan) => plans.push(plan),
                Placed::Cpu(_) => unreachable!("a device place plans, it does not launch"),
            }
        }
        let order = routing::drain_order(self.kernels.len(), &edges);
        let core = device::launch(
            place,
            DeviceLaunch {
                name: self.name.clone(),
                plans,
                names: self.kernels.iter().map(|k| k.name.clone()).collect(),
                host_output: self.kernels.iter().map(|k| k.host_output).collect(),
                routes: self.routes.clone(),
                edges,
                order,
                threads: self.threads,
                command_timeout: self.runtime.command_timeout,
                supervision: self.kernels.iter().map(|k| k.supervision).collect(),
            },
        )?;
        self.runtime.register(core.clone());
        Ok(Group {
            name: self.name,
            builder: self.id,
            inner: Inner::Device(core),
        })
    }

    fn launch_into(
        &mut self,
        edges: &[(usize, usize)],
        cores: &mut Vec<CpuKernel>,
    ) -> Result<(), Error> {
        for planned in &mut self.kernels {
            let launch = planned.launch.take().expect("each kernel launches once");
            match launch(self.runtime, &Place::Cpu)? {
                Placed::Cpu(core) => cores.push(core),
                Placed::Device(_) => unreachable!("the CPU place launches"),
            }
        }
        for &(from, port, target) in &self.routes {
            let bytes = self.kernels[from].out_bytes;
            let (target, exclusive) = match target {
                Target::Kernel(to) => {
                    // A kernel with one upstream route takes its single-producer lane
                    // (no compare-and-swap per message).
                    let upstreams = edges.iter().filter(|&&(_, t)| t == to).count();
                    (CpuRoute::Kernel(cores[to].clone()), upstreams == 1)
                }
                Target::Host => (CpuRoute::Host, false),
                Target::DeadLetters => (CpuRoute::DeadLetters, false),
            };
            cores[from].bind(port, target, bytes, exclusive)?;
        }
        Ok(())
    }
}
