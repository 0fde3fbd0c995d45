//! The emulated device: gyre's CUDA C compiled for the host with g++ and run in threads.
//!
//! This is an **emulation**, not a GPU. `kernels/include/gyre_emu.h` maps the CUDA
//! builtins the device code uses onto the host (a block is `threads` std::threads with one
//! barrier and one shared-memory buffer; `ld.acquire`/`st.release` become GCC atomics with
//! the same orderings); "mapped" and "device" memory are both host memory. What it proves:
//! the device side of the ring and control protocols (`ring.cuh`, `persistent.cuh`) and the
//! built-ins do what the Rust host side expects, over the same memory layout, with real
//! concurrency. What it cannot prove: PTX memory-model scopes, PCIe behaviour, warp
//! scheduling and forward progress on a GPU (`runtime/docs/CUDA.md` argues those).
//!
//! It needs a C++20 compiler (`g++`, or `$GYRE_EMU_CXX`) at run time. Compiled modules
//! are cached by content under the temporary directory.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::device::{
    Device, DeviceError, DeviceMemory, LaunchShape, MappedMemory, Module, Running,
};

/// How many devices the emulation has: ordinals `0..EMULATED_DEVICES`. Enough to stand
/// up groups on two "devices" in one process and route between them (through the host,
/// as between GPUs); each is a separate [`EmulatedDevice`] with its own allocations and
/// grid threads, though all of them share the host's memory and cores.
pub const EMULATED_DEVICES: u32 = 2;

/// The emulated device. See the module documentation.
#[derive(Debug)]
pub struct EmulatedDevice {
    compiler: String,
    ordinal: u32,
}

impl EmulatedDevice {
    /// Emulated device 0, compiling with `$GYRE_EMU_CXX` or `g++`.
    ///
    /// # Errors
    /// [`DeviceError::Unavailable`] when the compiler cannot run.
    pub fn new() -> Result<Self, DeviceError> {
        Self::with_ordinal(0)
    }

    /// Emulated device `ordinal` (below [`EMULATED_DEVICES`]), compiling with
    /// `$GYRE_EMU_CXX` or `g++`.
    ///
    /// # Errors
    /// [`DeviceError::Unavailable`] when the ordinal is out of range or the compiler
    /// cannot run.
    pub fn with_ordinal(ordinal: u32) -> Result<Self, DeviceError> {
        if ordinal >= EMULATED_DEVICES {
            return Err(DeviceError::Unavailable(format!(
                "emulated CUDA device {ordinal} does not exist: the emulation has \
                 {EMULATED_DEVICES} devices (ordinals 0 to {}); use one of those",
                EMULATED_DEVICES - 1
            )));
        }
        let compiler = std::env::var("GYRE_EMU_CXX").unwrap_or_else(|_| "g++".to_owned());
        match Command::new(&compiler).arg("--version").output() {
            Ok(out) if out.status.success() => Ok(Self { compiler, ordinal }),
            _ => Err(DeviceError::Unavailable(format!(
                "the emulated CUDA device needs a C++20 compiler: `{compiler} --version` did not \
                 run; install g++ (cargo xtask setup does) or set GYRE_EMU_CXX"
            ))),
        }
    }
}

/// A host allocation aligned to a page, freed on drop.
struct HostBlock {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: a plain heap allocation; only its address is shared.
unsafe impl Send for HostBlock {}
// SAFETY: as for `Send`.
unsafe impl Sync for HostBlock {}

impl HostBlock {
    fn new(bytes: usize) -> Result<Self, DeviceError> {
        let layout = std::alloc::Layout::from_size_align(bytes.max(1), 4096).map_err(|e| {
            DeviceError::Driver {
                call: "emulated alloc",
                message: e.to_string(),
            }
        })?;
        // SAFETY: the layout has a nonzero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| DeviceError::Driver {
            call: "emulated alloc",
            message: format!("out of host memory allocating {bytes} bytes"),
        })?;
        Ok(Self { ptr, layout })
    }
}

impl Drop for HostBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

type LaunchFn = unsafe extern "C" fn(u32, u32, *const u8, u32) -> i32;

/// A compiled group: the shared library and its launch entry.
struct EmuModule {
    library: Arc<libloading::Library>,
    launch: LaunchFn,
}

struct EmuRunning {
    done: Arc<AtomicBool>,
}

impl Running for EmuRunning {
    fn query(&self) -> Result<bool, DeviceError> {
        Ok(self.done.load(Ordering::Acquire))
    }
}

fn cache_dir() -> PathBuf {
    std::env::temp_dir().join(format!("gyre-emu-{}", env!("CARGO_PKG_VERSION")))
}

static BUILD_COUNTER: AtomicU64 = AtomicU64::new(0);

impl EmulatedDevice {
    fn build(&self, source: &str, headers: &[(&str, &str)]) -> Result<PathBuf, DeviceError> {
        let mut hasher = DefaultHasher::new();
        source.hash(&mut hasher);
        headers.hash(&mut hasher);
        gyre_kernels::GYRE_EMU_H.hash(&mut hasher);
        gyre_kernels::GYRE_EMU_LAUNCH_H.hash(&mut hasher);
        self.compiler.hash(&mut hasher);
        let key = format!("{:016x}", hasher.finish());
        let dir = cache_dir().join(&key);
        let library = dir.join("group.so");
        if library.exists() {
            return Ok(library);
        }
        let io = |e: std::io::Error| DeviceError::Driver {
            call: "emulated compile",
            message: e.to_string(),
        };
        // Build in a private directory, then move it into place: concurrent builds of the
        // same source (parallel tests) never see a half-written library.
        let work = cache_dir().join(format!(
            "{key}.build-{}-{}",
            std::process::id(),
            BUILD_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&work).map_err(io)?;
        for (name, text) in headers.iter().copied().chain([
            ("gyre_emu.h", gyre_kernels::GYRE_EMU_H),
            ("gyre_emu_launch.h", gyre_kernels::GYRE_EMU_LAUNCH_H),
        ]) {
            std::fs::write(work.join(name), text).map_err(io)?;
        }
        let unit =
            format!("{source}\n#line 1 \"gyre_emu_launch.h\"\n#include \"gyre_emu_launch.h\"\n");
        std::fs::write(work.join("group.cu"), unit).map_err(io)?;
        let out = Command::new(&self.compiler)
            .current_dir(&work)
            .args([
                "-x",
                "c++",
                "-std=c++20",
                "-O2",
                "-g",
                "-shared",
                "-fPIC",
                "-pthread",
                "-ffp-contract=off",
                "-fno-strict-aliasing",
                "-Wall",
                "-Wno-unused-function",
                "-include",
                "gyre_emu.h",
                "-I",
                ".",
                "-o",
                "group.so",
                "group.cu",
            ])
            .output()
            .map_err(io)?;
        if !out.status.success() {
            let log = String::from_utf8_lossy(&out.stderr).into_owned();
            let _ = std::fs::remove_dir_all(&work);
            return Err(DeviceError::Compile {
                compiler: format!("{} (emulation)", self.compiler),
                log,
            });
        }
        match std::fs::rename(&work, &dir) {
            Ok(()) => {}
            // Another build of the same source won the race: use its library.
            Err(_) if library.exists() => {
                let _ = std::fs::remove_dir_all(&work);
            }
            Err(e) => return Err(io(e)),
        }
        Ok(library)
    }
}

fn load(path: &Path) -> Result<EmuModule, DeviceError> {
    let fail = |e: libloading::Error| DeviceError::Driver {
        call: "emulated module load",
        message: e.to_string(),
    };
    // SAFETY: the library is ours, built just now from gyre's sources; its initialisers
    // only set up thread-local defaults.
    let library = unsafe { libloading::Library::new(path) }.map_err(fail)?;
    // SAFETY: `gyre_emu_launch` is defined by gyre_emu_launch.h with this signature.
    let launch: LaunchFn =
        *unsafe { library.get::<LaunchFn>(b"gyre_emu_launch\0") }.map_err(fail)?;
    Ok(EmuModule {
        library: Arc::new(library),
        launch,
    })
}

impl Device for EmulatedDevice {
    fn describe(&self) -> String {
        format!(
            "emulated CUDA device {} ({} on the host; not a GPU)",
            self.ordinal, self.compiler
        )
    }

    fn is_emulated(&self) -> bool {
        true
    }

    fn ordinal(&self) -> u32 {
        self.ordinal
    }

    fn alloc_mapped(&self, bytes: usize) -> Result<MappedMemory, DeviceError> {
        let block = HostBlock::new(bytes)?;
        let ptr = block.ptr;
        // SAFETY: `block` owns `bytes` zeroed bytes aligned to 4096; under emulation the
        // device address is the host address.
        Ok(unsafe { MappedMemory::from_raw(ptr, ptr.as_ptr() as u64, bytes, Box::new(block)) })
    }

    fn alloc_device(&self, bytes: usize) -> Result<DeviceMemory, DeviceError> {
        let block = HostBlock::new(bytes)?;
        let address = block.ptr.as_ptr() as u64;
        // SAFETY: as above.
        Ok(unsafe { DeviceMemory::from_raw(address, bytes, Box::new(block)) })
    }

    fn write_device(
        &self,
        dst: &DeviceMemory,
        offset: usize,
        src: &[u8],
    ) -> Result<(), DeviceError> {
        check_range(dst.len(), offset, src.len())?;
        // SAFETY: in bounds (checked); the caller guarantees no grid uses the memory now.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                (dst.device_ptr() as usize as *mut u8).add(offset),
                src.len(),
            );
        }
        Ok(())
    }

    fn read_device(
        &self,
        src: &DeviceMemory,
        offset: usize,
        dst: &mut [u8],
    ) -> Result<(), DeviceError> {
        check_range(src.len(), offset, dst.len())?;
        // SAFETY: in bounds (checked); the caller guarantees no grid writes it now.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (src.device_ptr() as usize as *const u8).add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            );
        }
        Ok(())
    }

    fn compile(&self, source: &str, headers: &[(&str, &str)]) -> Result<Module, DeviceError> {
        let path = self.build(source, headers)?;
        Ok(Module::new(Box::new(load(&path)?)))
    }

    fn max_resident_blocks(&self, _module: &Module, threads: u32) -> Result<u32, DeviceError> {
        // Every emulated block is a set of OS threads, all resident: cap the total.
        Ok((4096 / threads.max(1)).max(1))
    }

    fn launch(
        &self,
        module: &Module,
        shape: LaunchShape,
        kernels: u64,
        kernel_count: u32,
    ) -> Result<Box<dyn Running>, DeviceError> {
        let module = module
            .inner()
            .downcast_ref::<EmuModule>()
            .ok_or(DeviceError::Driver {
                call: "emulated launch",
                message: "the module was not compiled by the emulated device".to_owned(),
            })?;
        let done = Arc::new(AtomicBool::new(false));
        let finished = Arc::clone(&done);
        let library = Arc::clone(&module.library);
        let launch = module.launch;
        std::thread::Builder::new()
            .name(format!("gyre-emu{}-grid", self.ordinal))
            .spawn(move || {
                // SAFETY: the descriptor table at `kernels` stays allocated while the
                // group runs (the group owns it and waits for the grid before freeing);
                // `library` keeps the code loaded until every block returned.
                unsafe {
                    launch(
                        shape.blocks,
                        shape.threads,
                        kernels as usize as *const u8,
                        kernel_count,
                    )
                };
                drop(library);
                finished.store(true, Ordering::Release);
            })
            .map_err(|e| DeviceError::Driver {
                call: "emulated launch",
                message: e.to_string(),
            })?;
        Ok(Box::new(EmuRunning { done }))
    }
}

fn check_range(len: usize, offset: usize, bytes: usize) -> Result<(), DeviceError> {
    if offset.checked_add(bytes).is_some_and(|end| end <= len) {
        Ok(())
    } else {
        Err(DeviceError::Driver {
            call: "emulated copy",
            message: format!("{bytes} bytes at offset {offset} exceed an allocation of {len}"),
        })
    }
}
