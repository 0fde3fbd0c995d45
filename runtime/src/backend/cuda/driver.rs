//! [`Device`] on a real GPU, through the CUDA driver API (cudarc's `driver::result` and
//! `driver::sys` layers).
//!
//! Layered like cudarc: the unsafe driver calls live in small owning resources
//! (`Context`, `HostAllocation`, `DeviceAllocation`, `LoadedModule`, `Stream`),
//! each holding an `Arc<Context>` so the primary context outlives everything made in it.
//! [`DriverDevice`] composes them into the safe [`Device`] interface.
//!
//! Two rules from the design shape this file:
//! - A persistent grid runs until told to stop, on a non-blocking stream of its own.
//!   Nothing here may wait for all work of the device: copies and memsets go on a
//!   dedicated non-blocking copy stream and wait for that stream only; the legacy default
//!   stream is never used.
//! - Host memory shared with a grid is cached pinned memory (`cuMemHostAlloc` with
//!   `DEVICEMAP | PORTABLE`, never `WRITECOMBINED`): the host polls it, and write-combined
//!   memory is uncached for host reads.

use std::ffi::{c_int, c_uint, c_void, CString};
use std::fmt;
use std::ptr::NonNull;
use std::sync::{Arc, Once};

use cudarc::driver::result::{self as cu, DriverError};
use cudarc::driver::sys::{self, CUdevice_attribute, CUdeviceptr, CUfunction_attribute, CUresult};
use parking_lot::Mutex;

use super::device::{
    Device, DeviceError, DeviceMemory, LaunchShape, MappedMemory, Module, Running,
};
use super::{codegen, nvrtc, probe};

mod resources;

use resources::{driver_error, Context, DeviceAllocation, HostAllocation, LoadedModule, Stream};

/// The entry point every group module defines.
const ENTRY: &std::ffi::CStr = c"gyre_group_main";

/// A CUDA GPU driven through the driver API.
///
/// Made by [`DriverDevice::new`], which checks that the device can run gyre's groups:
/// cooperative launch, mapped host memory and compute capability 7.0 or newer (the device
/// code uses `ld.acquire`/`st.release` at system scope and `__nanosleep`).
pub struct DriverDevice {
    ctx: Arc<Context>,
    name: String,
    /// Compute capability (major, minor).
    capability: (u32, u32),
    multiprocessors: u32,
    /// Whether device memory comes from the stream-ordered allocator.
    memory_pools: bool,
    /// The stream all allocations, copies and memsets go on (never the legacy default
    /// stream).
    copy_stream: Arc<Stream>,
    /// Serialises the use of `copy_stream`, so a synchronize waits only for the caller's
    /// own work.
    copy_lock: Mutex<()>,
}

impl fmt::Debug for DriverDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverDevice")
            .field("ordinal", &self.ctx.ordinal)
            .field("name", &self.name)
            .field("capability", &self.capability)
            .field("multiprocessors", &self.multiprocessors)
            .finish_non_exhaustive()
    }
}

impl DriverDevice {
    /// Opens CUDA device `ordinal` (as numbered under `CUDA_VISIBLE_DEVICES`).
    ///
    /// # Errors
    /// [`DeviceError::Unavailable`] when there is no driver, no such device, or the device
    /// lacks cooperative launch, mapped host memory or compute capability 7.0;
    /// [`DeviceError::Driver`] when a driver call fails.
    pub fn new(ordinal: usize) -> Result<Self, DeviceError> {
        let info = probe::load_driver()?;
        if ordinal >= info.device_count {
            return Err(DeviceError::Unavailable(format!(
                "CUDA device {ordinal} does not exist: {} device(s) visible (check \
                 CUDA_VISIBLE_DEVICES)",
                info.device_count
            )));
        }
        let index = c_int::try_from(ordinal).map_err(|_| {
            DeviceError::Unavailable(format!(
                "CUDA device {ordinal} does not exist: use a device number below the count \
                 the driver reports (check CUDA_VISIBLE_DEVICES)"
            ))
        })?;
        let device = cu::device::get(index).map_err(driver_error("cuDeviceGet"))?;
        let name = cu::device::get_name(device).map_err(driver_error("cuDeviceGetName"))?;
        let attribute = |attribute: CUdevice_attribute| -> Result<i32, DeviceError> {
            // SAFETY: `device` came from cuDeviceGet.
            unsafe { cu::device::get_attribute(device, attribute) }
                .map_err(driver_error("cuDeviceGetAttribute"))
        };
        let major = attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let describe = format!("CUDA device {ordinal} ({name}, sm_{major}{minor})");
        if major < 7 {
            return Err(DeviceError::Unavailable(format!(
                "{describe} is too old: gyre needs compute capability 7.0 or newer \
                 (system-scope acquire/release and __nanosleep): use a newer GPU, or run the \
                 group on Backend::CudaEmulated or the CPU backend"
            )));
        }
        if attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH)? == 0 {
            return Err(DeviceError::Unavailable(format!(
                "{describe} cannot launch cooperative grids, which gyre needs for \
                 forward progress between the blocks of a group: use another GPU, or run the \
                 group on Backend::CudaEmulated or the CPU backend"
            )));
        }
        if attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY)? == 0 {
            return Err(DeviceError::Unavailable(format!(
                "{describe} cannot map host memory, which gyre's host rings live in: use \
                 another GPU, or run the group on Backend::CudaEmulated or the CPU backend"
            )));
        }
        let multiprocessors =
            attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;

        let memory_pools =
            attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)? != 0;

        let ctx = Arc::new(Context::retain(device, ordinal)?);
        ctx.bind()?;
        let copy_stream = Arc::new(Stream::new(&ctx)?);
        Ok(Self {
            ctx,
            name,
            capability: (
                u32::try_from(major).unwrap_or(0),
                u32::try_from(minor).unwrap_or(0),
            ),
            multiprocessors: u32::try_from(multiprocessors).unwrap_or(0),
            memory_pools,
            copy_stream,
            copy_lock: Mutex::new(()),
        })
    }

    /// The device's name (`"NVIDIA H100 80GB HBM3"`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal
    }

    /// Compute capability as (major, minor).
    pub fn compute_capability(&self) -> (u32, u32) {
        self.capability
    }

    /// The virtual architecture NVRTC compiles for (`"compute_90"`).
    pub fn virtual_arch(&self) -> String {
        format!("compute_{}{}", self.capability.0, self.capability.1)
    }

    /// The real architecture (`"sm_90"`), for `ptxas`.
    pub fn real_arch(&self) -> String {
        format!("sm_{}{}", self.capability.0, self.capability.1)
    }

    /// Streaming multiprocessors on the device.
    pub fn multiprocessor_count(&self) -> u32 {
        self.multiprocessors
    }

    /// Takes the errors of driver calls made while freeing resources (which `Drop` cannot
    /// return), oldest first.
    pub fn take_drop_errors(&self) -> Vec<DeviceError> {
        std::mem::take(&mut *self.ctx.drop_errors.lock())
    }

    /// The loaded module behind a [`Module`] this device compiled.
    fn loaded<'m>(&self, module: &'m Module) -> Result<&'m Arc<LoadedModule>, DeviceError> {
        let loaded = module
            .inner()
            .downcast_ref::<Arc<LoadedModule>>()
            .ok_or_else(|| DeviceError::Driver {
                call: "cuModuleGetFunction",
                message: "the module was not compiled by a CUDA driver device".to_owned(),
            })?;
        if !Arc::ptr_eq(&loaded.ctx, &self.ctx) {
            return Err(DeviceError::Driver {
                call: "cuModuleGetFunction",
                message: "the module was compiled for another CUDA device".to_owned(),
            });
        }
        Ok(loaded)
    }

    /// Loads a module image (a cubin, or NUL-terminated PTX that the driver compiles for
    /// this device) and finds its entry point, with the registers and local memory the
    /// driver reports for it.
    fn load_module(&self, image: &[u8]) -> Result<Module, DeviceError> {
        // An embedded image may sit at any address; the driver reads an ELF image's
        // headers in place, so hand it a copy aligned to 8 bytes.
        let mut aligned = vec![0u64; image.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..image.len()].copy_from_slice(image);
        self.ctx.bind()?;
        // SAFETY: `aligned` holds a whole cubin or NUL-terminated PTX image (the caller's
        // contract) and outlives the call, which copies what it keeps; the context is
        // current.
        let module =
            unsafe { cu::module::load_data(aligned.as_ptr().cast()) }.map_err(|error| {
                let mut error = driver_error("cuModuleLoadData")(error);
                if let DeviceError::Driver { message, .. } = &mut error {
                    if message.contains("CUDA_ERROR_UNSUPPORTED_PTX_VERSION") {
                        message.push_str(
                        " (the NVIDIA driver is older than NVRTC: update the driver, or use an \
                         NVRTC no newer than the driver's CUDA version)",
                    );
                    }
                }
                error
            })?;
        let entry = ENTRY.to_owned();
        // SAFETY: `module` is live (just loaded).
        let function = match unsafe { cu::module::get_function(module, entry) } {
            Ok(function) => function,
            Err(error) => {
                // SAFETY: `module` is live and not referenced elsewhere.
                let _ = unsafe { cu::module::unload(module) };
                return Err(driver_error("cuModuleGetFunction")(error));
            }
        };
        let loaded = Arc::new(LoadedModule {
            ctx: Arc::clone(&self.ctx),
            module,
            function,
        });
        let function_attribute = |attribute: CUfunction_attribute| {
            // SAFETY: `function` belongs to the live module `loaded` holds.
            unsafe { cu::function::get_function_attribute(function, attribute) }
                .ok()
                .and_then(|value| u32::try_from(value).ok())
        };
        let registers = function_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_NUM_REGS);
        let local_bytes =
            function_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES);
        let mut module = Module::new(Box::new(loaded));
        module.registers = registers;
        module.local_bytes = local_bytes;
        Ok(module)
    }

    /// Loads the prebuilt built-ins image for `arch` (a cubin, or PTX for a `compute_`
    /// architecture); why not, when there is none or it does not load.
    fn load_prebuilt(&self, arch: &str) -> Result<Module, String> {
        let image = gyre_kernels::prebuilt(arch).ok_or_else(|| format!("no {arch} image"))?;
        let loaded = if arch.starts_with("compute_") {
            // PTX is loaded as NUL-terminated text.
            let mut text = image.to_vec();
            text.push(0);
            self.load_module(&text)
        } else {
            self.load_module(image)
        };
        loaded.map_err(|error| format!("the {arch} image did not load: {error}"))
    }

    /// The built-ins module and how it was obtained, best first: the prebuilt cubin for
    /// this exact architecture, the prebuilt compute_90 PTX (compiled by the driver, on
    /// compute capability 9.0 and newer), else NVRTC. The prebuilt images are used only
    /// when they were compiled from the source this runtime generates; one that does not
    /// load is skipped for the next way.
    fn builtins_module(&self) -> Result<(Module, String), DeviceError> {
        let sm = self.real_arch();
        let source = codegen::builtins_source();
        let why_not = match gyre_kernels::prebuilt_source() {
            None => "none was embedded (run `cargo xtask kernels` where nvcc is)".to_owned(),
            Some(built) if built != source => {
                "the embedded images were built from another runtime's source (rerun \
                 `cargo xtask kernels`)"
                    .to_owned()
            }
            Some(_) => {
                let mut why_not = Vec::new();
                match self.load_prebuilt(&sm) {
                    Ok(module) => return Ok((module, format!("prebuilt {sm} cubin"))),
                    Err(reason) => why_not.push(reason),
                }
                let ptx_arch = gyre_kernels::PREBUILT_PTX_ARCH;
                if self.capability.0 >= 9 {
                    match self.load_prebuilt(ptx_arch) {
                        Ok(module) => {
                            let path = format!("prebuilt {ptx_arch} PTX, compiled by the driver");
                            return Ok((module, path));
                        }
                        Err(reason) => why_not.push(reason),
                    }
                } else {
                    why_not.push(format!("{ptx_arch} PTX does not run on {sm}"));
                }
                why_not.join("; ")
            }
        };
        let module = self.compile(&source, &codegen::headers())?;
        Ok((
            module,
            format!(
                "compiled by NVRTC for {} (no prebuilt image used: {why_not})",
                self.virtual_arch()
            ),
        ))
    }

    /// Checks `offset .. offset + len` lies within an allocation of `bytes` bytes.
    fn check_range(
        call: &'static str,
        offset: usize,
        len: usize,
        bytes: usize,
    ) -> Result<(), DeviceError> {
        match offset.checked_add(len) {
            Some(end) if end <= bytes => Ok(()),
            _ => Err(DeviceError::Driver {
                call,
                message: format!(
                    "range {offset}..{offset}+{len} is outside the {bytes}-byte allocation"
                ),
            }),
        }
    }
}

impl Device for DriverDevice {
    fn describe(&self) -> String {
        format!(
            "{} (sm_{}{}, {} SMs)",
            self.name, self.capability.0, self.capability.1, self.multiprocessors
        )
    }

    fn ordinal(&self) -> u32 {
        // `new` checked the ordinal against the driver's device count, which a c_int holds.
        u32::try_from(self.ctx.ordinal).unwrap_or(u32::MAX)
    }

    fn is_emulated(&self) -> bool {
        false
    }

    fn alloc_mapped(&self, bytes: usize) -> Result<MappedMemory, DeviceError> {
        self.ctx.bind()?;
        // Never WRITECOMBINED: the host reads this memory (design rule 7).
        let flags = sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE;
        // SAFETY: the context is current; the returned bytes are zeroed below before any
        // use.
        let ptr = unsafe { cu::malloc_host(bytes.max(1), flags as c_uint) }
            .map_err(driver_error("cuMemHostAlloc"))?;
        let Some(host) = NonNull::new(ptr.cast::<u8>()) else {
            return Err(DeviceError::Driver {
                call: "cuMemHostAlloc",
                message: "returned a null pointer".to_owned(),
            });
        };
        let allocation = HostAllocation {
            ctx: Arc::clone(&self.ctx),
            ptr,
        };
        let mut device: CUdeviceptr = 0;
        // SAFETY: `ptr` is a live DEVICEMAP allocation of this context; flags must be 0.
        unsafe { sys::cuMemHostGetDevicePointer_v2(&raw mut device, ptr, 0) }
            .result()
            .map_err(driver_error("cuMemHostGetDevicePointer"))?;
        // SAFETY: `host` points to at least `bytes` bytes that nothing else references yet.
        unsafe { host.as_ptr().write_bytes(0, bytes) };
        // SAFETY: `host` and `device` address the same `bytes` zeroed bytes, page aligned
        // (cuMemHostAlloc allocates whole pages), valid until `allocation` is dropped.
        Ok(unsafe { MappedMemory::from_raw(host, device, bytes, Box::new(allocation)) })
    }

    fn alloc_device(&self, bytes: usize) -> Result<DeviceMemory, DeviceError> {
        self.ctx.bind()?;
        let _copy = self.copy_lock.lock();
        let stream = &self.copy_stream;
        let allocation = if self.memory_pools {
            // SAFETY: the context is current and the stream live; the memory is zeroed on
            // the same stream below, and the stream is synchronised before any other stream
            // (a grid's) can use it.
            let ptr = unsafe { cu::malloc_async(stream.raw, bytes.max(1)) }
                .map_err(driver_error("cuMemAllocAsync"))?;
            DeviceAllocation {
                ctx: Arc::clone(&self.ctx),
                ptr,
                stream: Some(Arc::clone(stream)),
            }
        } else {
            // SAFETY: the context is current; the memory is zeroed below before any use.
            let ptr =
                unsafe { cu::malloc_sync(bytes.max(1)) }.map_err(driver_error("cuMemAlloc"))?;
            DeviceAllocation {
                ctx: Arc::clone(&self.ctx),
                ptr,
                stream: None,
            }
        };
        let ptr = allocation.ptr;
        // SAFETY: `ptr` is a live allocation of at least `bytes` bytes; the stream is live.
        // The memset is ordered on the copy stream after the allocation, awaited below.
        unsafe { cu::memset_d8_async(ptr, 0, bytes, stream.raw) }
            .map_err(driver_error("cuMemsetD8Async"))?;
        stream.synchronize()?;
        // SAFETY: `ptr` is the device address of `bytes` zeroed bytes, aligned to at least
        // 256 (the guarantee of cuMemAlloc and of the default memory pool), allocated until
        // `allocation` is dropped.
        Ok(unsafe { DeviceMemory::from_raw(ptr, bytes, Box::new(allocation)) })
    }

    fn write_device(
        &self,
        dst: &DeviceMemory,
        offset: usize,
        src: &[u8],
    ) -> Result<(), DeviceError> {
        Self::check_range("cuMemcpyHtoDAsync", offset, src.len(), dst.len())?;
        if src.is_empty() {
            return Ok(());
        }
        self.ctx.bind()?;
        let _copy = self.copy_lock.lock();
        let stream = &self.copy_stream;
        // SAFETY: the destination range lies within a live allocation (checked above);
        // `src` stays borrowed until the stream is synchronised below, so the
        // asynchronous copy never outlives it.
        unsafe { cu::memcpy_htod_async(dst.device_ptr() + offset as u64, src, stream.raw) }
            .map_err(driver_error("cuMemcpyHtoDAsync"))?;
        stream.synchronize()
    }

    fn read_device(
        &self,
        src: &DeviceMemory,
        offset: usize,
        dst: &mut [u8],
    ) -> Result<(), DeviceError> {
        Self::check_range("cuMemcpyDtoHAsync", offset, dst.len(), src.len())?;
        if dst.is_empty() {
            return Ok(());
        }
        self.ctx.bind()?;
        let _copy = self.copy_lock.lock();
        let stream = &self.copy_stream;
        // SAFETY: the source range lies within a live allocation (checked above); `dst`
        // stays mutably borrowed until the stream is synchronised below.
        unsafe { cu::memcpy_dtoh_async(dst, src.device_ptr() + offset as u64, stream.raw) }
            .map_err(driver_error("cuMemcpyDtoHAsync"))?;
        stream.synchronize()
    }

    fn compile(&self, source: &str, headers: &[(&str, &str)]) -> Result<Module, DeviceError> {
        let compiled =
            nvrtc::compile_ptx(source, "gyre_group.cu", headers, &self.virtual_arch(), &[])?;
        let image = CString::new(compiled.ptx).map_err(|_| DeviceError::Driver {
            call: "cuModuleLoadData",
            message: "NVRTC produced PTX containing a NUL byte".to_owned(),
        })?;
        self.load_module(image.as_bytes_with_nul())
    }

    fn compile_builtins(&self) -> Result<Module, DeviceError> {
        let (module, path) = self.builtins_module()?;
        tracing::debug!(device = self.ctx.ordinal, "CUDA built-ins module: {path}");
        static LOGGED: Once = Once::new();
        LOGGED.call_once(|| {
            tracing::info!(device = self.ctx.ordinal, "CUDA built-ins module: {path}");
        });
        Ok(module)
    }

    fn max_resident_blocks(&self, module: &Module, threads: u32) -> Result<u32, DeviceError> {
        let loaded = self.loaded(module)?;
        let block_size = c_int::try_from(threads).map_err(|_| DeviceError::Driver {
            call: "cuOccupancyMaxActiveBlocksPerMultiprocessor",
            message: format!("{threads} threads per block is out of range"),
        })?;
        self.ctx.bind()?;
        // SAFETY: the function belongs to a live module of this (current) context.
        let per_sm = unsafe {
            cu::occupancy::max_active_block_per_multiprocessor(loaded.function, block_size, 0)
        }
        .map_err(driver_error("cuOccupancyMaxActiveBlocksPerMultiprocessor"))?;
        Ok(u32::try_from(per_sm)
            .unwrap_or(0)
            .saturating_mul(self.multiprocessors))
    }

    fn launch(
        &self,
        module: &Module,
        shape: LaunchShape,
        kernels: u64,
        kernel_count: u32,
    ) -> Result<Box<dyn Running>, DeviceError> {
        let loaded = Arc::clone(self.loaded(module)?);
        self.ctx.bind()?;
        let stream = Stream::new(&self.ctx)?;
        let mut kernels_arg: u64 = kernels;
        let mut count_arg: u32 = kernel_count;
        let mut params: [*mut c_void; 2] = [
            (&raw mut kernels_arg).cast::<c_void>(),
            (&raw mut count_arg).cast::<c_void>(),
        ];
        // SAFETY: the function is live (its module is held by `loaded`, which the grid
        // keeps); its parameters are `(const gyre_kernel_desc*, unsigned)`, matching the
        // u64 device address and u32 passed by pointer, which the driver copies before
        // returning; the memory they address is the caller's to keep alive while the grid
        // runs (the group owns it and outlives the grid).
        let launched = unsafe {
            cu::launch_cooperative_kernel(
                loaded.function,
                (shape.blocks, 1, 1),
                (shape.threads, 1, 1),
                0,
                stream.raw,
                &mut params,
            )
        };
        if let Err(error) = launched {
            if error.0 == CUresult::CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE {
                let available = self.max_resident_blocks(module, shape.threads)?;
                return Err(DeviceError::DoesNotFit {
                    needed: shape.blocks,
                    available,
                    threads: shape.threads,
                });
            }
            return Err(driver_error("cuLaunchCooperativeKernel")(error));
        }
        Ok(Box::new(RunningGrid {
            stream: Some(stream),
            module: Some(loaded),
        }))
    }
}

/// A cooperative grid running on its own stream.
struct RunningGrid {
    /// `None` only while dropping.
    stream: Option<Stream>,
    /// Keeps the grid's code loaded; `None` only while dropping.
    module: Option<Arc<LoadedModule>>,
}

impl RunningGrid {
    fn query_status(&self) -> Result<CUresult, DeviceError> {
        let Some(stream) = &self.stream else {
            return Ok(CUresult::CUDA_SUCCESS);
        };
        stream.ctx.bind()?;
        // SAFETY: the stream is live (destroyed only when `self` drops).
        Ok(unsafe { sys::cuStreamQuery(stream.raw) })
    }
}

impl Running for RunningGrid {
    fn query(&self) -> Result<bool, DeviceError> {
        match self.query_status()? {
            CUresult::CUDA_SUCCESS => Ok(true),
            CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            other => Err(driver_error("cuStreamQuery")(DriverError(other))),
        }
    }
}

impl Drop for RunningGrid {
    fn drop(&mut self) {
        // A grid that has not finished still runs the module's code on the stream:
        // destroying either could not wait for it without blocking this thread, so both are
        // leaked instead. A grid that failed is gone; its resources can be freed.
        if matches!(self.query_status(), Ok(CUresult::CUDA_ERROR_NOT_READY)) {
            tracing::warn!(
                "dropping a CUDA grid that is still running: its stream and module are leaked"
            );
            std::mem::forget(self.stream.take());
            std::mem::forget(self.module.take());
        }
    }
}

#[cfg(test)]
mod tests;
