//! [`Backend`]: which backend a runtime's groups run on by default, and how a builder
//! finds it (probing drivers and adapters without panicking).

#[cfg(any(feature = "cuda", feature = "wgpu"))]
use std::sync::Arc;

use crate::device::Place;
use crate::Error;

/// Which backend a runtime's groups run on by default.
///
/// Every runtime keeps its CPU worker pool, whatever the choice: a group that asks for
/// [`Backend::Cpu`] ([`crate::GroupBuilder::backend`]) runs there. [`Backend::Cuda`] and
/// [`Backend::CudaEmulated`] add a CUDA device, [`Backend::Wgpu`] and
/// [`Backend::WgpuSoftware`] a wgpu adapter, on which [`crate::Runtime::launch`],
/// [`crate::Runtime::group`] and [`crate::Runtime::pipeline`] run their kernels (each
/// kernel's implementation for that backend). A group may name another device backend
/// ([`crate::GroupBuilder::backend`]): the runtime opens it at that group's launch and
/// keeps it, so one runtime can run groups on the CPU, a CUDA device and a wgpu adapter
/// at once (routes between them are relayed through the host, [`crate::Runtime::connect`]).
///
/// Every variant exists in every build, so code that names one compiles everywhere;
/// building a runtime with a CUDA variant in a gyre built without the `cuda` feature, or
/// a wgpu variant without the `wgpu` feature, returns [`Error::BackendUnavailable`].
///
/// **Several GPUs.** The CUDA variants name a kind of device, not which one: a runtime
/// opens device 0 unless [`crate::RuntimeBuilder::device`] names another, and a group
/// runs on another device of the same backend with [`crate::GroupBuilder::device`]
/// (CUDA devices are numbered as the driver numbers them under `CUDA_VISIBLE_DEVICES`;
/// the emulation has two devices, 0 and 1). A route between groups on different devices
/// is relayed through the host ([`crate::Runtime::connect`]). Metrics label a CUDA
/// kernel's series with `device="N"` besides `backend`.
///
/// ```
/// use gyre::{Backend, Error, Runtime};
///
/// let runtime = match Runtime::builder().backend(Backend::Cuda).build() {
///     Ok(runtime) => runtime,
///     // No GPU, no driver, or no `cuda` feature: the reason says which.
///     Err(Error::BackendUnavailable { reason, .. }) => {
///         eprintln!("falling back to the CPU: {reason}");
///         Runtime::builder().backend(Backend::Cpu).build()?
///     }
///     Err(other) => return Err(other),
/// };
/// assert!(["cpu", "cuda"].contains(&runtime.backend_name()));
/// # Ok::<(), gyre::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Worker threads on the host: always available.
    Cpu,
    /// The best backend here: a hardware GPU when one is present — a CUDA device (feature
    /// `cuda`), else a hardware wgpu adapter (feature `wgpu`; never a software one, which
    /// is slower than the CPU backend) — otherwise the CPU. It logs what it picked and
    /// why; [`crate::Runtime::backend_name`] says which. Kernels then need an
    /// implementation for the backend picked (a built-in has one everywhere); pick
    /// [`Backend::Cpu`] explicitly for CPU-only specs.
    #[default]
    Auto,
    /// An NVIDIA GPU through the CUDA driver (feature `cuda`): device 0, or the one
    /// [`crate::RuntimeBuilder::device`] names. Building fails with
    /// [`Error::BackendUnavailable`] saying what is missing (libcuda, a driver that
    /// initialises, the device asked for, a device that can run persistent kernels)
    /// instead of panicking.
    Cuda,
    /// The CUDA backend's host emulation (feature `cuda`): group sources compiled for
    /// the host with g++ (or `$GYRE_EMU_CXX`) and run in threads, driven by the same host
    /// code as a GPU. For developing and testing CUDA handlers without a GPU; it is not
    /// a GPU and says nothing about GPU speed. It has two devices (ordinals 0 and 1,
    /// `gyre_runtime::backend::cuda::emulated::EMULATED_DEVICES`), each with its own
    /// allocations and grid threads, so that a test can split a pipeline over two
    /// "devices" in one process.
    CudaEmulated,
    /// A hardware wgpu adapter (feature `wgpu`): the best discrete, integrated or
    /// virtual GPU on Vulkan, Metal or DX12 (`WGPU_BACKEND` restricts them), never a
    /// software adapter. Building fails with [`Error::BackendUnavailable`] carrying the
    /// adapter error (no adapter, only a software one, a device that would not open).
    Wgpu,
    /// A wgpu adapter, software ones allowed (feature `wgpu`): a hardware adapter when
    /// there is one, else a software one such as Mesa's lavapipe. For developing and
    /// testing WGSL handlers without a GPU (CI runs every wgpu test on lavapipe); a
    /// software adapter says nothing about GPU speed.
    WgpuSoftware,
}

impl Backend {
    /// The name of this backend (`"auto"` for [`Backend::Auto`], which a runtime reports
    /// as what it picked).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Auto => "auto",
            Self::Cuda => "cuda",
            Self::CudaEmulated => "cuda-emulated",
            Self::Wgpu => "wgpu",
            Self::WgpuSoftware => "wgpu-software",
        }
    }
}

/// The backend a builder resolved to.
pub(crate) struct Chosen {
    pub(crate) name: &'static str,
    #[cfg(feature = "cuda")]
    device: Option<Arc<dyn gyre_runtime::backend::cuda::Device>>,
    #[cfg(feature = "wgpu")]
    gpu: Option<Arc<gyre_runtime::backend::wgpu::adapter::GpuContext>>,
}

impl Chosen {
    fn cpu() -> Self {
        Self {
            name: "cpu",
            #[cfg(feature = "cuda")]
            device: None,
            #[cfg(feature = "wgpu")]
            gpu: None,
        }
    }

    /// Where groups run by default on this backend.
    #[cfg_attr(
        not(any(feature = "cuda", feature = "wgpu")),
        allow(clippy::unused_self)
    )]
    pub(crate) fn place(&self) -> Place {
        #[cfg(feature = "cuda")]
        if let Some(device) = &self.device {
            return Place::Cuda(device.clone());
        }
        #[cfg(feature = "wgpu")]
        if let Some(gpu) = &self.gpu {
            return Place::Wgpu(gpu.clone());
        }
        Place::Cpu
    }
}

/// Resolves `backend`, opening CUDA device `device` (ordinal) for a CUDA backend; any
/// other backend takes only ordinal 0 (its one device).
pub(crate) fn choose(backend: Backend, device: u32) -> Result<Chosen, Error> {
    let chosen = match backend {
        Backend::Cpu => Chosen::cpu(),
        Backend::Auto => choose_auto(device),
        Backend::Cuda | Backend::CudaEmulated => choose_cuda(backend, device)?,
        Backend::Wgpu | Backend::WgpuSoftware => choose_wgpu(backend)?,
    };
    if device != 0 && chosen.place().device().is_none() {
        return Err(Error::BackendUnavailable {
            backend: chosen.name,
            reason: no_ordinals(chosen.name, device),
        });
    }
    Ok(chosen)
}

/// Why device `device` cannot be asked of `backend`, which has no device ordinals.
pub(crate) fn no_ordinals(backend: &str, device: u32) -> String {
    format!(
        "device {device} was asked for, but only the CUDA backends number their devices: \
         the {backend} backend has one; leave the device at 0 (drop `.device({device})`), \
         or choose `Backend::Cuda` or `Backend::CudaEmulated`"
    )
}

/// The devices a runtime opened besides its default one, for groups that asked for
/// them ([`crate::GroupBuilder::backend`], [`crate::GroupBuilder::device`]): each
/// backend, and each CUDA ordinal, is opened once and kept.
#[derive(Debug, Default)]
pub(crate) struct OtherDevices(
    #[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(dead_code))]
    parking_lot::Mutex<Vec<Place>>,
);

impl OtherDevices {
    /// Device 0 of device backend `backend` (not the runtime's own), opened at the first
    /// call and kept.
    ///
    /// # Errors
    /// [`Error::BackendUnavailable`] when it cannot run here.
    pub(crate) fn backend(&self, backend: Backend) -> Result<Place, Error> {
        let mut opened = self.0.lock();
        let same = |p: &Place| match backend {
            Backend::WgpuSoftware => p.name() == "wgpu",
            _ => p.name() == backend.name(),
        };
        if let Some(known) = opened
            .iter()
            .find(|p| same(p) && p.device().unwrap_or(0) == 0)
        {
            return Ok(known.clone());
        }
        let place = choose(backend, 0)?.place();
        opened.push(place.clone());
        Ok(place)
    }

    /// Where a group asking for device `ordinal` runs, given `place` (the backend it
    /// runs on, on the runtime's default device).
    ///
    /// # Errors
    /// [`Error::BackendUnavailable`] when `place`'s backend has no device `ordinal`.
    #[cfg_attr(not(feature = "cuda"), allow(clippy::unused_self))]
    pub(crate) fn place_on(&self, place: Place, ordinal: u32) -> Result<Place, Error> {
        match place.device() {
            Some(here) if here == ordinal => Ok(place),
            None if ordinal == 0 => Ok(place),
            None => Err(Error::BackendUnavailable {
                backend: place.name(),
                reason: no_ordinals(place.name(), ordinal),
            }),
            #[cfg(feature = "cuda")]
            Some(_) => {
                let mut opened = self.0.lock();
                if let Some(known) = opened.iter().find(|p| p.device() == Some(ordinal)) {
                    return Ok(known.clone());
                }
                let other = open_cuda(&place, ordinal)?;
                opened.push(other.clone());
                Ok(other)
            }
            #[cfg(not(feature = "cuda"))]
            Some(_) => unreachable!("only CUDA places have ordinals"),
        }
    }
}

/// Opens CUDA device `ordinal` of the same kind as `place` (a GPU, or the emulation).
#[cfg(feature = "cuda")]
fn open_cuda(place: &Place, ordinal: u32) -> Result<Place, Error> {
    use gyre_runtime::backend::cuda;
    let Place::Cuda(same_kind) = place else {
        unreachable!("only CUDA places have ordinals")
    };
    let backend = place.name();
    let opened = if same_kind.is_emulated() {
        cuda::emulated_device_at(ordinal)
    } else {
        cuda::device_at(ordinal)
    };
    let device = opened.map_err(|error| Error::BackendUnavailable {
        backend,
        reason: error.to_string(),
    })?;
    tracing::info!(device = %device.describe(), backend, ordinal, "CUDA groups may run on this device too");
    Ok(Place::Cuda(device))
}

#[cfg(not(feature = "cuda"))]
fn choose_cuda(backend: Backend, _device: u32) -> Result<Chosen, Error> {
    Err(not_built(backend, "cuda"))
}

#[cfg(feature = "cuda")]
fn choose_cuda(backend: Backend, ordinal: u32) -> Result<Chosen, Error> {
    use gyre_runtime::backend::cuda;
    let unavailable = |error: cuda::DeviceError| Error::BackendUnavailable {
        backend: backend.name(),
        reason: error.to_string(),
    };
    if backend == Backend::CudaEmulated {
        let device = cuda::emulated_device_at(ordinal).map_err(unavailable)?;
        tracing::info!(device = %device.describe(), "backend CudaEmulated: CUDA groups run in the host emulation (not a GPU)");
        let mut chosen = Chosen::cpu();
        chosen.name = "cuda-emulated";
        chosen.device = Some(device);
        return Ok(chosen);
    }
    let device = cuda::device_at(ordinal).map_err(unavailable)?;
    tracing::info!(device = %device.describe(), "backend Cuda: CUDA groups run on this device");
    let mut chosen = Chosen::cpu();
    chosen.name = "cuda";
    chosen.device = Some(device);
    Ok(chosen)
}

#[cfg(not(feature = "wgpu"))]
fn choose_wgpu(backend: Backend) -> Result<Chosen, Error> {
    Err(not_built(backend, "wgpu"))
}

/// The error for `backend` in a gyre built without its `feature`.
#[cfg(not(all(feature = "cuda", feature = "wgpu")))]
fn not_built(backend: Backend, feature: &str) -> Error {
    let what = if feature == "cuda" { "CUDA" } else { "wgpu" };
    Error::BackendUnavailable {
        backend: backend.name(),
        reason: format!(
            "this gyre is built without {what} support: enable the `{feature}` feature of \
             gyre (`gyre = {{ version = \"...\", features = [\"{feature}\"] }}` in Cargo.toml, \
             or `--features gyre/{feature}`)"
        ),
    }
}

#[cfg(feature = "wgpu")]
fn choose_wgpu(backend: Backend) -> Result<Chosen, Error> {
    use gyre_runtime::backend::wgpu::adapter::{self, AdapterChoice, AdapterError};
    let choice = if backend == Backend::Wgpu {
        AdapterChoice::PreferHardware
    } else {
        AdapterChoice::AllowSoftware
    };
    let gpu = adapter::open(choice).map_err(|error| Error::BackendUnavailable {
        backend: backend.name(),
        reason: match error {
            AdapterError::OnlySoftware { .. } => {
                format!("Backend::Wgpu uses hardware adapters only, and {error}")
            }
            other => other.to_string(),
        },
    })?;
    let described = adapter::describe(&gpu.info);
    tracing::info!(adapter = %described, backend = backend.name(), "wgpu groups run on this adapter");
    let mut chosen = Chosen::cpu();
    chosen.name = backend.name();
    chosen.gpu = Some(Arc::new(gpu));
    Ok(chosen)
}

/// What [`Backend::Auto`] picks: a CUDA device, else a hardware wgpu adapter, else the
/// CPU; logged with the reason each GPU backend was not picked.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn choose_auto(device: u32) -> Chosen {
    #[cfg(feature = "cuda")]
    match choose_cuda(Backend::Cuda, device) {
        Ok(chosen) => {
            tracing::info!("backend Auto picked CUDA: a CUDA device is present");
            return chosen;
        }
        Err(why) => tracing::info!(reason = %why, "backend Auto: no CUDA device"),
    }
    #[cfg(feature = "wgpu")]
    match choose_wgpu(Backend::Wgpu) {
        Ok(chosen) => {
            tracing::info!("backend Auto picked wgpu: a hardware adapter is present");
            return chosen;
        }
        Err(why) => tracing::info!(reason = %why, "backend Auto: no hardware wgpu adapter"),
    }
    tracing::info!(
        "backend Auto picked the CPU: no GPU backend is available here (or none is built: \
         features `cuda`, `wgpu`)"
    );
    Chosen::cpu()
}
