//! Choosing a wgpu adapter and opening a device on it.
//!
//! [`open`] enumerates the adapters of the native backends (Vulkan, Metal, DX12, or
//! those named by the `WGPU_BACKEND` environment variable, e.g. `WGPU_BACKEND=vulkan`),
//! picks the best one the [`AdapterChoice`] allows, and requests a device with the
//! WebGPU default limits except for the storage buffer limits, raised to the adapter's:
//! all the rings of a group live in one storage buffer.
//!
//! Software adapters (Mesa's lavapipe, `DeviceType::Cpu`) run every compute shader
//! correctly but slower than the CPU backend would, so they are used only when asked
//! for ([`AdapterChoice::AllowSoftware`]); CI runs every wgpu test on lavapipe.
//!
//! The device reports failures asynchronously: [`GpuContext::lost`] says whether (and
//! why) the device was lost, and [`GpuContext::take_error`] hands back the first
//! error no error scope captured. Nothing here panics on a driver failure.

use std::fmt::Write as _;
use std::sync::Arc;

use parking_lot::Mutex;

/// Which adapters [`open`] may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdapterChoice {
    /// A hardware adapter only (discrete, integrated or virtual GPU), never a software
    /// one: what `Backend::Auto` uses, since a software adapter is slower than the CPU
    /// backend.
    PreferHardware,
    /// A hardware adapter when there is one, else a software adapter (Mesa's lavapipe,
    /// `DeviceType::Cpu`): what `Backend::WgpuSoftware` and the CI tests use.
    AllowSoftware,
}

/// Why [`open`] found no device.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// No usable adapter on any enabled backend.
    #[error(
        "no Vulkan/Metal/DX12 adapter (backends tried: {backends}): install a GPU driver, or \
         Mesa's software Vulkan (apt-get install mesa-vulkan-drivers), and allow software \
         adapters with Backend::WgpuSoftware"
    )]
    NoAdapter {
        /// The backends enumerated (`WGPU_BACKEND` restricts them).
        backends: String,
    },
    /// Only software adapters, and [`AdapterChoice::PreferHardware`] was asked for.
    #[error(
        "only a software adapter ({name}) is available; Backend::Auto does not use it over \
         the CPU backend; ask for it with Backend::WgpuSoftware"
    )]
    OnlySoftware {
        /// The software adapter found, as [`describe`] writes it.
        name: String,
    },
    /// The adapter refused to open a device.
    #[error("the adapter {adapter} could not open a device: {source}")]
    RequestDevice {
        /// The adapter, as [`describe`] writes it.
        adapter: String,
        /// What wgpu said.
        #[source]
        source: wgpu::RequestDeviceError,
    },
}

/// An open device: what every wgpu group of a runtime shares.
#[derive(Debug)]
pub struct GpuContext {
    /// The device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// The adapter the device was opened on.
    pub info: wgpu::AdapterInfo,
    /// Why the device was lost, set once by the device-lost callback.
    lost: Arc<Mutex<Option<String>>>,
    /// The first error no error scope captured and no one has taken yet.
    error: Arc<Mutex<Option<String>>>,
}

/// Loop iterations one shader invocation runs on Mesa's gallivm (llvmpipe on GL, lavapipe
/// on Vulkan) before the driver ends every loop early: `LP_MAX_TGSI_LOOP_ITERATIONS`, one
/// counter per invocation that every pass through the end of any loop's body decrements.
/// Past it, the loop in hand stops after its current iteration and so does every later
/// one: no error, no fault, just work left undone (runtime/docs/WGPU.md, "Long dispatches
/// on lavapipe").
pub const GALLIVM_LOOP_LIMIT: u32 = 65_535;

/// How many loop iterations one shader invocation may run on the adapter `info` describes
/// before its driver silently cuts loops short, if it has such a limit: Mesa's llvmpipe
/// and lavapipe (gallivm) do, at [`GALLIVM_LOOP_LIMIT`]; hardware drivers do not.
pub fn loop_limit(info: &wgpu::AdapterInfo) -> Option<u32> {
    let gallivm = info.driver.eq_ignore_ascii_case("llvmpipe")
        || info.name.starts_with("llvmpipe")
        || info.driver_info.contains("llvmpipe");
    gallivm.then_some(GALLIVM_LOOP_LIMIT)
}

impl GpuContext {
    /// The adapter's [`loop_limit`]: what bounds a wgpu kernel's quantum on it.
    pub fn loop_limit(&self) -> Option<u32> {
        loop_limit(&self.info)
    }

    /// Why the device was lost (`None` while it is usable). Once lost, every later
    /// submission fails; the device must be opened again.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().clone()
    }

    /// The first error (validation, out of memory, internal) that no error scope
    /// captured since the last call, if any. Later errors that arrive while one is
    /// pending are logged and dropped: the first is the cause.
    pub fn take_error(&self) -> Option<String> {
        self.error.lock().take()
    }
}

/// One line naming an adapter: `llvmpipe (LLVM 15.0.6, 256 bits) — Cpu, Vulkan, driver
/// llvmpipe (Mesa 22.3.6 (LLVM 15.0.6))`.
pub fn describe(info: &wgpu::AdapterInfo) -> String {
    let mut line = format!("{} — {:?}, {:?}", info.name, info.device_type, info.backend);
    match (info.driver.is_empty(), info.driver_info.is_empty()) {
        (true, true) => {}
        (false, true) => {
            let _ = write!(line, ", driver {}", info.driver);
        }
        (true, false) => {
            let _ = write!(line, ", driver {}", info.driver_info);
        }
        (false, false) => {
            let _ = write!(line, ", driver {} ({})", info.driver, info.driver_info);
        }
    }
    line
}

/// The backends [`open`] enumerates: `WGPU_BACKEND` when set (a comma-separated list:
/// `vulkan`, `metal`, `dx12`), else every native backend this build has.
pub fn backends() -> wgpu::Backends {
    (wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12).with_env()
}

/// How much `open` prefers a device type; `None`: never used.
fn rank(device_type: wgpu::DeviceType, choice: AdapterChoice) -> Option<u8> {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => Some(4),
        wgpu::DeviceType::IntegratedGpu => Some(3),
        wgpu::DeviceType::VirtualGpu => Some(2),
        wgpu::DeviceType::Cpu | wgpu::DeviceType::Other => match choice {
            AdapterChoice::AllowSoftware if device_type == wgpu::DeviceType::Cpu => Some(1),
            AdapterChoice::AllowSoftware => Some(0),
            AdapterChoice::PreferHardware => None,
        },
    }
}

/// Opens a device on the best adapter `choice` allows: a discrete GPU, else an
/// integrated one, else a virtual one, else (only with
/// [`AdapterChoice::AllowSoftware`]) a software adapter.
///
/// # Errors
/// [`AdapterError::NoAdapter`] when there is no adapter able to run compute shaders,
/// [`AdapterError::OnlySoftware`] when only software adapters exist and `choice` is
/// [`AdapterChoice::PreferHardware`], [`AdapterError::RequestDevice`] when the adapter
/// refuses the device.
pub fn open(choice: AdapterChoice) -> Result<GpuContext, AdapterError> {
    let backends = backends();
    let usable = wgpu::Instance::enabled_backend_features().intersection(backends);
    let no_adapter = || AdapterError::NoAdapter {
        backends: if usable.is_empty() {
            "none this build supports; check WGPU_BACKEND".to_owned()
        } else {
            usable
                .iter_names()
                .map(|(name, _)| name.to_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        },
    };
    // `Instance::new` panics when the build has no backend for this platform.
    if usable.is_empty() {
        return Err(no_adapter());
    }
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle().with_env()
    });
    let adapters: Vec<wgpu::Adapter> = pollster::block_on(instance.enumerate_adapters(backends))
        .into_iter()
        .filter(|adapter| {
            adapter
                .get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        })
        .collect();
    for adapter in &adapters {
        tracing::debug!(adapter = %describe(&adapter.get_info()), "wgpu adapter found");
    }
    let best = adapters
        .iter()
        .filter_map(|adapter| Some((rank(adapter.get_info().device_type, choice)?, adapter)))
        .max_by_key(|&(rank, _)| rank)
        .map(|(_, adapter)| adapter);
    let Some(adapter) = best else {
        return Err(match adapters.first() {
            Some(software) => AdapterError::OnlySoftware {
                name: describe(&software.get_info()),
            },
            None => no_adapter(),
        });
    };
    let info = adapter.get_info();
    let adapter_limits = adapter.limits();
    let required_limits = wgpu::Limits {
        max_storage_buffer_binding_size: adapter_limits.max_storage_buffer_binding_size,
        max_buffer_size: adapter_limits.max_buffer_size,
        ..wgpu::Limits::default().or_worse_values_from(&adapter_limits)
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("gyre"),
        required_limits,
        ..wgpu::DeviceDescriptor::default()
    }))
    .map_err(|source| AdapterError::RequestDevice {
        adapter: describe(&info),
        source,
    })?;

    let lost = Arc::new(Mutex::new(None));
    let lost_slot = Arc::clone(&lost);
    device.set_device_lost_callback(move |reason, message| {
        let why = format!("{reason:?}: {message}");
        tracing::warn!(reason = %why, "wgpu device lost");
        lost_slot.lock().get_or_insert(why);
    });
    let error = Arc::new(Mutex::new(None));
    let error_slot = Arc::clone(&error);
    device.on_uncaptured_error(Arc::new(move |uncaptured: wgpu::Error| {
        let message = uncaptured.to_string();
        tracing::warn!(error = %message, "wgpu error");
        error_slot.lock().get_or_insert(message);
    }));
    tracing::info!(adapter = %describe(&info), "wgpu device opened");
    Ok(GpuContext {
        device,
        queue,
        info,
        lost,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the environment promises a software adapter (CI sets it; lavapipe).
    fn software_required() -> bool {
        std::env::var_os("GYRE_WGPU_ALLOW_SOFTWARE").is_some_and(|v| v == "1")
    }

    /// A device on any adapter, software included; `None` (the test skips) when there is
    /// none and the environment does not promise one.
    fn software_context() -> Option<GpuContext> {
        match open(AdapterChoice::AllowSoftware) {
            Ok(context) => Some(context),
            Err(error) => {
                assert!(
                    !software_required(),
                    "GYRE_WGPU_ALLOW_SOFTWARE=1 but no adapter: {error}"
                );
                eprintln!("skipped: no wgpu adapter: {error}");
                None
            }
        }
    }

    #[test]
    fn allow_software_opens_a_device() {
        let Some(context) = software_context() else {
            return;
        };
        eprintln!("adapter: {}", describe(&context.info));
        if open(AdapterChoice::PreferHardware).is_err() {
            // No hardware adapter: the one opened is the software one (lavapipe).
            assert_eq!(context.info.device_type, wgpu::DeviceType::Cpu);
        }
        assert!(context.lost().is_none());
        assert!(context.take_error().is_none());
        assert!(context.device.limits().max_storage_buffer_binding_size >= 128 << 20);
    }

    #[test]
    fn prefer_hardware_refuses_a_software_adapter() {
        match open(AdapterChoice::PreferHardware) {
            Ok(context) => {
                assert_ne!(context.info.device_type, wgpu::DeviceType::Cpu);
                eprintln!(
                    "skipped: a hardware adapter exists: {}",
                    describe(&context.info)
                );
            }
            Err(AdapterError::OnlySoftware { name }) => {
                let message = AdapterError::OnlySoftware { name: name.clone() }.to_string();
                assert!(message.contains("Backend::WgpuSoftware"), "{message}");
                assert!(name.contains("Cpu"), "{name}");
                eprintln!("refused as expected: {message}");
            }
            Err(error) => {
                assert!(
                    !software_required(),
                    "GYRE_WGPU_ALLOW_SOFTWARE=1 but: {error}"
                );
                eprintln!("skipped: {error}");
            }
        }
    }

    #[test]
    fn validation_errors_are_captured() {
        let Some(context) = software_context() else {
            return;
        };
        // A storage buffer that cannot be mapped for reading: a validation error.
        let _buffer = context.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("invalid"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        let error = context.take_error().expect("the validation error is kept");
        assert!(!error.is_empty());
        assert!(context.take_error().is_none(), "taken once");
        assert!(context.lost().is_none());
    }

    #[test]
    fn the_device_copies_and_maps_a_buffer() {
        let Some(context) = software_context() else {
            return;
        };
        let words: Vec<u32> = (0..64).collect();
        let bytes: &[u8] = bytemuck::cast_slice(&words);
        let size = bytes.len() as u64;
        let storage = context.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("storage"),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = context.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        context.queue.write_buffer(&storage, 0, bytes);
        let mut encoder = context
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        encoder.copy_buffer_to_buffer(&storage, 0, &staging, 0, size);
        let submission = context.queue.submit([encoder.finish()]);
        let (mapped_tx, mapped_rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |result| {
            let _ = mapped_tx.send(result);
        });
        context
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: Some(std::time::Duration::from_secs(10)),
            })
            .expect("the copy completes");
        mapped_rx
            .try_recv()
            .expect("poll ran the map callback")
            .expect("mapped");
        let view = staging.get_mapped_range(..).expect("a mapped range");
        assert_eq!(bytemuck::cast_slice::<u8, u32>(&view), &words[..]);
        drop(view);
        staging.unmap();
        assert!(context.take_error().is_none());
    }

    fn info(name: &str, driver: &str, device_type: wgpu::DeviceType) -> wgpu::AdapterInfo {
        wgpu::AdapterInfo {
            name: name.to_owned(),
            driver: driver.to_owned(),
            ..wgpu::AdapterInfo::new(device_type, wgpu::Backend::Vulkan)
        }
    }

    #[test]
    fn only_gallivm_adapters_limit_loops() {
        use wgpu::DeviceType::{Cpu, DiscreteGpu, IntegratedGpu};
        let lavapipe = info("llvmpipe (LLVM 15.0.6, 256 bits)", "llvmpipe", Cpu);
        assert_eq!(loop_limit(&lavapipe), Some(GALLIVM_LOOP_LIMIT));
        // wgpu's GL backend names the renderer and leaves the driver empty.
        let gl = info("llvmpipe (LLVM 15.0.6, 256 bits)", "", Cpu);
        assert_eq!(loop_limit(&gl), Some(GALLIVM_LOOP_LIMIT));
        for hardware in [
            info("NVIDIA H100", "NVIDIA", DiscreteGpu),
            info(
                "AMD Radeon Graphics (RADV GFX1103_R1)",
                "radv",
                IntegratedGpu,
            ),
            info(
                "Intel(R) Graphics (ADL GT2)",
                "Intel open-source Mesa driver",
                IntegratedGpu,
            ),
            info("SwiftShader Device (Subzero)", "SwiftShader driver", Cpu),
        ] {
            assert_eq!(loop_limit(&hardware), None, "{}", hardware.name);
        }
    }

    #[test]
    fn ranks_prefer_hardware_and_keep_software_out_unless_allowed() {
        use wgpu::DeviceType::{Cpu, DiscreteGpu, IntegratedGpu, Other, VirtualGpu};
        let hardware = AdapterChoice::PreferHardware;
        let software = AdapterChoice::AllowSoftware;
        assert!(rank(DiscreteGpu, hardware) > rank(IntegratedGpu, hardware));
        assert!(rank(IntegratedGpu, hardware) > rank(VirtualGpu, hardware));
        assert_eq!(rank(Cpu, hardware), None);
        assert_eq!(rank(Other, hardware), None);
        assert!(rank(VirtualGpu, software) > rank(Cpu, software));
        assert!(rank(Cpu, software) > rank(Other, software));
    }
}
