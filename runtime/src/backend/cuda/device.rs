//! What the CUDA backend needs from a device, as a trait with two implementations:
//! the real driver ([`super::driver::DriverDevice`], through cudarc) and the host
//! emulation ([`super::emulated::EmulatedDevice`], the same CUDA C compiled with g++ and
//! run in threads). The host side of the backend ([`super::group`]) only talks to a
//! [`Device`], so the code the conformance tests run against the emulation is the code
//! that drives a GPU.

use std::any::Any;
use std::fmt;
use std::ptr::NonNull;

use super::codegen;

/// What every device allocation type ([`MappedMemory`], [`DeviceMemory`]) has alike: its
/// device address and size (fields `device` and `bytes`), and a debug form that shows
/// them.
macro_rules! device_allocation {
    ($ty:ident) => {
        impl $ty {
            /// The device's address of the first byte.
            pub fn device_ptr(&self) -> u64 {
                self.device
            }

            /// Size in bytes.
            pub fn len(&self) -> usize {
                self.bytes
            }

            /// Whether the allocation is empty (never, for allocations the backend makes).
            pub fn is_empty(&self) -> bool {
                self.bytes == 0
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("device", &format_args!("{:#x}", self.device))
                    .field("bytes", &self.bytes)
                    .finish_non_exhaustive()
            }
        }
    };
}

/// Host memory the device can address: cached (not write-combined) pinned memory mapped
/// into the device's address space, or plain host memory under emulation.
///
/// Zeroed when allocated, aligned to at least 128 bytes (the ABI's line), freed on drop.
pub struct MappedMemory {
    host: NonNull<u8>,
    device: u64,
    bytes: usize,
    _owner: Box<dyn Any + Send + Sync>,
}

// SAFETY: the memory is a plain allocation owned by `_owner`; the raw pointer is only an
// address. Access to the bytes goes through the ring and control protocols, which use
// atomics for every shared word.
unsafe impl Send for MappedMemory {}
// SAFETY: as for `Send`.
unsafe impl Sync for MappedMemory {}

impl MappedMemory {
    /// Wraps an allocation. `owner` frees it when dropped.
    ///
    /// # Safety
    /// `host` must point to `bytes` zeroed bytes, aligned to 128, that stay valid and
    /// unaliased by Rust references until `owner` is dropped; `device` must be the
    /// device's address of the same bytes.
    pub unsafe fn from_raw(
        host: NonNull<u8>,
        device: u64,
        bytes: usize,
        owner: Box<dyn Any + Send + Sync>,
    ) -> Self {
        Self {
            host,
            device,
            bytes,
            _owner: owner,
        }
    }

    /// The host's address of the first byte.
    pub fn host_ptr(&self) -> NonNull<u8> {
        self.host
    }
}

device_allocation!(MappedMemory);

/// Device memory: only the device reads and writes it while a grid runs; the host copies
/// into it before launch and out of it after the grid finished. Zeroed when allocated,
/// aligned to at least 256 bytes, freed on drop.
pub struct DeviceMemory {
    device: u64,
    bytes: usize,
    _owner: Box<dyn Any + Send + Sync>,
}

impl DeviceMemory {
    /// Wraps an allocation. `owner` frees it when dropped.
    ///
    /// # Safety
    /// `device` must be the device address of `bytes` zeroed bytes, aligned to 256, that
    /// stay allocated until `owner` is dropped.
    pub unsafe fn from_raw(device: u64, bytes: usize, owner: Box<dyn Any + Send + Sync>) -> Self {
        Self {
            device,
            bytes,
            _owner: owner,
        }
    }
}

device_allocation!(DeviceMemory);

/// A compiled group module, ready to launch: PTX or cubin on a GPU, a shared library
/// under emulation. Opaque to the backend; only the [`Device`] that made it uses it.
pub struct Module {
    inner: Box<dyn Any + Send + Sync>,
    /// Registers per thread, when the compiler reports it (used in error messages).
    pub registers: Option<u32>,
    /// Bytes of local memory per thread (spills and stack), when reported.
    pub local_bytes: Option<u32>,
}

impl Module {
    /// Wraps a device's compiled module.
    pub fn new(inner: Box<dyn Any + Send + Sync>) -> Self {
        Self {
            inner,
            registers: None,
            local_bytes: None,
        }
    }

    /// The device's own representation.
    pub fn inner(&self) -> &(dyn Any + Send + Sync) {
        &*self.inner
    }
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("registers", &self.registers)
            .field("local_bytes", &self.local_bytes)
            .finish_non_exhaustive()
    }
}

/// The shape of one group launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchShape {
    /// Blocks in the grid (one per kernel of the group).
    pub blocks: u32,
    /// Threads per block.
    pub threads: u32,
}

/// A grid running on its own stream.
pub trait Running: Send + Sync {
    /// `Ok(true)` once the grid finished, `Ok(false)` while it runs, `Err` when the device
    /// reported an error (the grid is gone; its kernels are faulted). Never blocks.
    fn query(&self) -> Result<bool, DeviceError>;
}

/// A device the CUDA backend runs groups on.
pub trait Device: Send + Sync + fmt::Debug {
    /// A description for logs and reports (`"NVIDIA H100 (sm_90)"`, `"emulated (g++)"`).
    fn describe(&self) -> String;

    /// Whether this is the host emulation rather than a GPU.
    fn is_emulated(&self) -> bool;

    /// The device's ordinal: its number among the devices of its kind (CUDA devices as
    /// the driver numbers them under `CUDA_VISIBLE_DEVICES`, or the emulation's devices).
    fn ordinal(&self) -> u32;

    /// Allocates zeroed host memory the device can address (mapped pinned memory).
    fn alloc_mapped(&self, bytes: usize) -> Result<MappedMemory, DeviceError>;

    /// Allocates zeroed device memory.
    fn alloc_device(&self, bytes: usize) -> Result<DeviceMemory, DeviceError>;

    /// Copies `src` into device memory at `offset`. Only before the grid that uses it runs.
    fn write_device(
        &self,
        dst: &DeviceMemory,
        offset: usize,
        src: &[u8],
    ) -> Result<(), DeviceError>;

    /// Copies device memory at `offset` into `dst`. Only once no grid writes that memory
    /// any more (it finished, or the kernels writing it acknowledged they stopped).
    fn read_device(
        &self,
        src: &DeviceMemory,
        offset: usize,
        dst: &mut [u8],
    ) -> Result<(), DeviceError>;

    /// Compiles a group module from CUDA C source (the generated group translation unit;
    /// it includes `gyre_abi.h`, `ring.cuh` and `persistent.cuh`, which `headers` names
    /// with their contents). The entry point is `extern "C" __global__ void
    /// gyre_group_main(const gyre_kernel_desc* kernels, unsigned kernel_count)`.
    fn compile(&self, source: &str, headers: &[(&str, &str)]) -> Result<Module, DeviceError>;

    /// The built-ins module: [`codegen::builtins_source`], whose dispatch case `i` is
    /// [`codegen::BUILTIN_FUNCTIONS`]`[i]` and which launches with any block size up to
    /// 256. A group whose every kernel is a built-in runs on it.
    ///
    /// The default compiles that source with [`compile`](Self::compile). A GPU loads the
    /// image `cargo xtask kernels` built ahead of time with `nvcc` when one was embedded
    /// for it, and compiles through NVRTC only otherwise.
    fn compile_builtins(&self) -> Result<Module, DeviceError> {
        self.compile(&codegen::builtins_source(), &codegen::headers())
    }

    /// The most blocks of `threads` threads of this module that can be resident at once
    /// (occupancy per multiprocessor × multiprocessors): a cooperative grid larger than
    /// this cannot launch.
    fn max_resident_blocks(&self, module: &Module, threads: u32) -> Result<u32, DeviceError>;

    /// Launches the module's entry point as one cooperative grid on a stream of its own,
    /// with arguments `(kernels, kernel_count)`. Returns at once.
    fn launch(
        &self,
        module: &Module,
        shape: LaunchShape,
        kernels: u64,
        kernel_count: u32,
    ) -> Result<Box<dyn Running>, DeviceError>;
}

/// What went wrong on a device.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// No usable CUDA driver or device here; the message says what is missing.
    #[error("{0}")]
    Unavailable(String),
    /// The kernel source did not compile; `log` is the compiler's output, with line numbers.
    #[error("CUDA C did not compile ({compiler}):\n{log}")]
    Compile {
        /// Which compiler (`"NVRTC 13.5"`, `"g++ (emulation)"`).
        compiler: String,
        /// The compiler's log.
        log: String,
    },
    /// The group needs more resident blocks than the device can hold at once.
    #[error(
        "the group needs {needed} resident blocks of {threads} threads but this device holds \
         at most {available}: split the group, or use fewer threads per block"
    )]
    DoesNotFit {
        /// Blocks the group needs.
        needed: u32,
        /// Blocks the device can hold.
        available: u32,
        /// Threads per block asked for.
        threads: u32,
    },
    /// A driver call failed.
    #[error("CUDA driver call {call} failed: {message}")]
    Driver {
        /// The driver function.
        call: &'static str,
        /// The driver's error name and description.
        message: String,
    },
}
