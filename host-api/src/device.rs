//! Launching a group on a device backend: each kernel's implementation for the backend
//! becomes the runtime's plan, the group is launched as a unit behind the backend seam,
//! and the runtime keeps it in its registry.

// Without a device feature only `Place::Cpu` exists and the device paths are unreachable.
#![cfg_attr(
    not(any(feature = "cuda", feature = "wgpu")),
    allow(unused, unreachable_code, clippy::unnecessary_wraps)
)]

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use gyre_runtime::backend::device_plan::{BackendKnobs, DeviceHandler, DeviceKernelPlan};
use gyre_runtime::backend::group::{Route, Target as RouteTarget};
use gyre_runtime::backend::seam::DeviceGroup;
use gyre_runtime::builtins::Builtin;
use gyre_runtime::metrics::LatencyRecorder;

use crate::backing::DeviceCore;
use crate::gpu_common::KernelSettings;
use crate::spec::{KernelSpec, Message};
use crate::Error;

/// Where a group runs: the CPU pool or a device of the runtime.
#[derive(Clone, Debug)]
pub(crate) enum Place {
    /// The CPU backend's pool.
    Cpu,
    /// A CUDA device (a GPU, or the host emulation).
    #[cfg(feature = "cuda")]
    Cuda(Arc<dyn gyre_runtime::backend::cuda::Device>),
    /// A wgpu adapter.
    #[cfg(feature = "wgpu")]
    Wgpu(Arc<gyre_runtime::backend::wgpu::adapter::GpuContext>),
}

impl Place {
    /// The backend's name, as errors and metrics say it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            #[cfg(feature = "cuda")]
            Self::Cuda(device) if device.is_emulated() => "cuda-emulated",
            #[cfg(feature = "cuda")]
            Self::Cuda(_) => "cuda",
            #[cfg(feature = "wgpu")]
            Self::Wgpu(_) => "wgpu",
        }
    }

    /// The device's ordinal, on a backend that numbers its devices (CUDA).
    pub(crate) fn device(&self) -> Option<u32> {
        match self {
            #[cfg(feature = "cuda")]
            Self::Cuda(device) => Some(device.ordinal()),
            _ => None,
        }
    }
}

/// One kernel of a device group, planned for its backend: a runtime
/// [`DeviceKernelPlan`] with the backend's knobs (`CudaKnobs`, `WgpuKnobs`), which
/// [`DeviceLaunch::take_plans`] takes back for the backend the group launches on.
/// Shared, so a restart launches the group again from the same plans.
#[derive(Clone)]
pub(crate) struct DevicePlan(Arc<dyn std::any::Any + Send + Sync>);

impl DevicePlan {
    fn new<K: Send + Sync + 'static>(plan: DeviceKernelPlan<K>) -> Self {
        Self(Arc::new(plan))
    }
}

/// A device kernel's source: its function's name and the code that defines it.
#[derive(Clone, Debug)]
pub(crate) struct DeviceSource {
    pub(crate) function: String,
    pub(crate) source: String,
}

/// What a spec says for device backends, one name per knob (see [`KernelSpec`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct DeviceKnobs {
    pub(crate) cuda: Option<DeviceSource>,
    pub(crate) wgsl: Option<DeviceSource>,
    pub(crate) builtin: Option<Builtin>,
    /// Whether the CPU implementation is the built-in's reference (not a closure set
    /// after it): its types are then checked at launch on the CPU too.
    pub(crate) cpu_is_builtin: bool,
    /// Set by `KernelSpec::max_emits`; else the default of `KernelSettings::new`.
    pub(crate) max_emits: Option<u32>,
    pub(crate) params: Option<[u32; gyre_runtime::builtins::PARAM_WORDS]>,
    pub(crate) sequential: bool,
    pub(crate) state_bytes: Option<u32>,
    /// Set when the spec set a quantum: device backends then use it too.
    pub(crate) quantum: Option<u32>,
}

/// The error for a kernel with no implementation for `place`.
pub(crate) fn no_implementation(kernel: &str, backend: &'static str, add: &str) -> Error {
    Error::NoImplementation {
        kernel: kernel.to_owned(),
        backend,
        advice: format!(
            "add {add} to its KernelSpec, or launch its group on a backend it has an \
             implementation for (`GroupBuilder::backend(Backend::Cpu)` for `.cpu(...)`)"
        ),
    }
}

/// The device-neutral settings of `spec` for a device whose default quantum is
/// `quantum` (when the spec sets none).
fn settings<In: Message, Out: Message>(
    spec: &KernelSpec<In, Out>,
    builtin: Option<Builtin>,
    quantum: u32,
) -> Result<(KernelSettings, (u32, u32)), Error> {
    // The CPU's checks of capacities and slot sizes first, so that a spec is refused
    // with the same error on every backend (`Layout`, `MessageTooLarge`, with their
    // advice): device groups said `Launch` with the device's words, and took a slot size
    // too small for the message type (or not a power of two) by silently using the size
    // they needed.
    spec.layouts()?;
    let knobs = &spec.device;
    let mut settings = KernelSettings::new(spec.name.clone(), builtin, quantum);
    settings.capacity = spec.capacity;
    settings.out_capacity = spec.host_output.unwrap_or(settings.out_capacity);
    settings.ports = spec.ports;
    settings.max_emits = knobs.max_emits.unwrap_or(settings.max_emits);
    settings.quantum = knobs.quantum.unwrap_or(quantum);
    if let Some(params) = knobs.params {
        settings.params = params;
    }
    let (mut slot_in, mut slot_out) = settings.slots::<In, Out>("gyre::builtins")?;
    if let Some(asked) = spec.slot_bytes {
        (slot_in, slot_out) = (slot_in.max(asked), slot_out.max(asked));
    }
    Ok((settings, (slot_in, slot_out)))
}

/// The state bytes of a kernel: what the spec says, else what its built-in needs.
fn state_bytes(knobs: &DeviceKnobs, builtin: Option<Builtin>) -> u32 {
    knobs
        .state_bytes
        .unwrap_or_else(|| builtin.map_or(0, |b| b.state_bytes()))
}

/// The plan of `spec` for a device backend whose kernel plans take knobs `K`, with the
/// built-in it runs if it runs one: its source for that backend (`code`, whose files end
/// in `ext`), else its built-in (an error naming what to add, `add`, without either),
/// and the device-neutral settings under the backend's default quantum. The caller sets
/// the backend's own knobs.
fn device_plan<K: BackendKnobs, In: Message, Out: Message>(
    spec: &KernelSpec<In, Out>,
    place: &Place,
    code: Option<&DeviceSource>,
    ext: &str,
    add: &str,
) -> Result<(DeviceKernelPlan<K>, Option<Builtin>), Error> {
    let (handler, builtin) = match (code, spec.device.builtin) {
        (Some(code), _) => (
            DeviceHandler::Source {
                function: code.function.clone(),
                source: code.source.clone(),
                file: format!("{}.{ext}", code.function),
            },
            None,
        ),
        (None, Some(builtin)) => (
            DeviceHandler::Builtin(builtin.cuda_function()),
            Some(builtin),
        ),
        (None, None) => return Err(no_implementation(&spec.name, place.name(), add)),
    };
    let (settings, slots) = settings(spec, builtin, K::DEFAULT_QUANTUM)?;
    let mut plan = DeviceKernelPlan::new(spec.name.clone(), handler);
    settings.apply(&mut plan, slots);
    Ok((plan, builtin))
}

/// Plans `spec` for `place` (a device).
pub(crate) fn plan<In: Message, Out: Message>(
    spec: &KernelSpec<In, Out>,
    place: &Place,
) -> Result<DevicePlan, Error> {
    let knobs = &spec.device;
    match place {
        Place::Cpu => unreachable!("CPU kernels are launched, not planned"),
        #[cfg(feature = "cuda")]
        Place::Cuda(_) => {
            let add = "`.cuda(function, source)` or `.builtin(..)`";
            let (mut plan, builtin) = device_plan::<gyre_runtime::backend::cuda::CudaKnobs, _, _>(
                spec,
                place,
                knobs.cuda.as_ref(),
                "cu",
                add,
            )?;
            plan.backend.sequential = knobs.sequential || builtin.is_some_and(|b| b.sequential());
            plan.backend.state_bytes = state_bytes(knobs, builtin);
            Ok(DevicePlan::new(plan))
        }
        #[cfg(feature = "wgpu")]
        Place::Wgpu(_) => {
            use gyre_runtime::backend::wgpu::group::WgpuKnobs;
            let add = "`.wgsl(function, source)` or `.builtin(..)`";
            let (mut plan, builtin) =
                device_plan::<WgpuKnobs, _, _>(spec, place, knobs.wgsl.as_ref(), "wgsl", add)?;
            plan.backend.state_words = state_bytes(knobs, builtin).div_ceil(4);
            // Stateless built-ins handle a tick's batch in parallel; user handlers and
            // the stateful built-ins one message at a time, in order.
            plan.backend.parallel = !knobs.sequential && builtin.is_some_and(|b| !b.sequential());
            Ok(DevicePlan::new(plan))
        }
    }
}

/// Where a port of a planned group goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PortTo {
    Kernel(usize),
    Host,
    DeadLetters,
}

/// A device group to launch: its kernels' plans and what the host keeps about them.
#[derive(Clone)]
pub(crate) struct DeviceLaunch {
    pub(crate) name: String,
    pub(crate) plans: Vec<DevicePlan>,
    pub(crate) names: Vec<String>,
    pub(crate) host_output: Vec<bool>,
    pub(crate) routes: Vec<(usize, u32, PortTo)>,
    pub(crate) edges: Vec<(usize, usize)>,
    pub(crate) order: Vec<usize>,
    /// CUDA threads per block, when the group sets them.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) threads: Option<u32>,
    pub(crate) command_timeout: std::time::Duration,
    /// Each kernel's fault policy and watchdog.
    pub(crate) supervision: Vec<crate::device_supervisor::Supervision>,
}

impl DeviceLaunch {
    /// Takes its kernels' plans, for the backend whose knobs are `K` (the one every
    /// kernel of the group was planned for: [`plan`] on the group's place).
    fn take_plans<K: Clone + 'static>(&mut self) -> Vec<DeviceKernelPlan<K>> {
        self.plans
            .drain(..)
            .map(|p| {
                p.0.downcast_ref::<DeviceKernelPlan<K>>()
                    .expect("every kernel of a group is planned for the group's backend")
                    .clone()
            })
            .collect()
    }
}

/// Launches `launch` on `place` (a device); a restart launches it again from the same
/// plan.
pub(crate) fn launch(place: &Place, launch: DeviceLaunch) -> Result<Arc<DeviceCore>, Error> {
    let group = launch_group(place, launch.clone())?;
    let relaunch: crate::device_supervisor::Relaunch = {
        let (place, plan) = (place.clone(), launch.clone());
        Box::new(move || launch_group(&place, plan.clone()))
    };
    let n = launch.names.len();
    tracing::info!(group = %launch.name, backend = place.name(), kernels = n, "group launched");
    let group = crate::device_supervisor::Restartable::new(
        group,
        launch.names.clone(),
        launch.order.clone(),
        launch.supervision,
        relaunch,
        launch.command_timeout,
    );
    Ok(Arc::new(DeviceCore {
        group,
        name: launch.name,
        names: launch.names,
        host_output: launch.host_output,
        edges: launch.edges,
        order: launch.order,
        receiver_taken: (0..n).map(|_| AtomicBool::new(false)).collect(),
        sender_taken: (0..n).map(|_| AtomicBool::new(false)).collect(),
        latency: (0..n).map(|_| LatencyRecorder::new()).collect(),
        stopped: AtomicBool::new(false),
        runtime_gone: AtomicBool::new(false),
    }))
}

/// Launches the group of `launch` on `place` (a device).
fn launch_group(place: &Place, mut launch: DeviceLaunch) -> Result<Box<dyn DeviceGroup>, Error> {
    let routes: Vec<Route> = launch
        .routes
        .iter()
        .map(|&(from, port, to)| Route {
            from,
            port,
            to: match to {
                PortTo::Kernel(k) => RouteTarget::Kernel(k),
                PortTo::Host => RouteTarget::Host,
                PortTo::DeadLetters => RouteTarget::DeadLetters,
            },
        })
        .collect();
    let backend = place.name();
    let group: Box<dyn DeviceGroup> = match place {
        Place::Cpu => unreachable!("CPU groups are not device groups"),
        #[cfg(feature = "cuda")]
        Place::Cuda(device) => launch_cuda(device, &mut launch, routes, backend)?,
        #[cfg(feature = "wgpu")]
        Place::Wgpu(gpu) => launch_wgpu(gpu, &mut launch, routes, backend)?,
    };
    Ok(group)
}

/// Launches the CUDA group of `launch` on `device`, with its watcher thread.
#[cfg(feature = "cuda")]
fn launch_cuda(
    device: &Arc<dyn gyre_runtime::backend::cuda::Device>,
    launch: &mut DeviceLaunch,
    routes: Vec<Route>,
    backend: &'static str,
) -> Result<Box<dyn DeviceGroup>, Error> {
    use gyre_runtime::backend::cuda::seam::WatchedCudaGroup;
    use gyre_runtime::backend::cuda::{CudaGroup, DeviceError, GroupError, GroupPlan};
    let kernels = launch.take_plans();
    let plan = GroupPlan {
        name: launch.name.clone(),
        kernels,
        routes,
        threads: launch
            .threads
            .unwrap_or(if device.is_emulated() { 4 } else { 64 }),
    };
    let group =
        CudaGroup::launch(device.clone(), plan, launch.command_timeout).map_err(|e| match e {
            GroupError::Device(DeviceError::Compile { compiler, log }) => {
                Error::Compile { compiler, log }
            }
            GroupError::Device(DeviceError::Unavailable(reason)) => {
                Error::BackendUnavailable { backend, reason }
            }
            invalid @ GroupError::Invalid { .. } => Error::Launch(format!("CUDA {invalid}")),
            other => Error::Launch(format!("CUDA group `{}`: {other}", launch.name)),
        })?;
    Ok(Box::new(WatchedCudaGroup::new(group).map_err(|e| {
        Error::Launch(format!(
            "could not start the CUDA group's watcher thread: {e}"
        ))
    })?))
}

/// Launches the wgpu group of `launch` on `gpu`.
#[cfg(feature = "wgpu")]
fn launch_wgpu(
    gpu: &Arc<gyre_runtime::backend::wgpu::adapter::GpuContext>,
    launch: &mut DeviceLaunch,
    routes: Vec<Route>,
    backend: &'static str,
) -> Result<Box<dyn DeviceGroup>, Error> {
    use gyre_runtime::backend::wgpu::group::{WgpuError, WgpuGroup, WgpuGroupPlan};
    let kernels = launch.take_plans();
    let plan = WgpuGroupPlan {
        name: launch.name.clone(),
        kernels,
        routes,
    };
    let group =
        WgpuGroup::launch(gpu.clone(), plan, launch.command_timeout).map_err(|e| match e {
            WgpuError::Shader(log) => Error::Compile {
                compiler: "naga (WGSL)".to_owned(),
                log,
            },
            WgpuError::Device(reason) => match gpu.lost() {
                Some(lost) => Error::BackendUnavailable {
                    backend,
                    reason: format!("the wgpu device was lost ({lost}): {reason}"),
                },
                None => Error::Launch(format!("wgpu group `{}`: {reason}", launch.name)),
            },
            invalid @ WgpuError::Invalid { .. } => Error::Launch(format!("wgpu {invalid}")),
        })?;
    Ok(Box::new(group))
}
