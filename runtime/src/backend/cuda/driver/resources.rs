//! The small owning resources the driver calls live in (`Context`, `HostAllocation`,
//! `DeviceAllocation`, `LoadedModule`, `Stream`): each holds an `Arc<Context>` so the
//! primary context outlives everything made in it, and frees what it owns when dropped.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::result::{self as cu, DriverError};
use cudarc::driver::sys::{CUcontext, CUdevice, CUdeviceptr, CUfunction, CUmodule, CUstream};
use parking_lot::Mutex;

use crate::backend::cuda::device::DeviceError;
use crate::backend::cuda::probe;

/// Maps a failed driver call to [`DeviceError::Driver`], naming the call and the result.
pub(super) fn driver_error(call: &'static str) -> impl FnOnce(DriverError) -> DeviceError {
    move |error| DeviceError::Driver {
        call,
        message: probe::describe_driver_error(error),
    }
}

/// A device's primary context, retained for as long as this value lives.
pub(super) struct Context {
    pub(super) device: CUdevice,
    pub(super) ordinal: usize,
    pub(super) raw: CUcontext,
    /// Errors of driver calls made while dropping resources, kept to report later.
    pub(super) drop_errors: Mutex<Vec<DeviceError>>,
}

// SAFETY: a CUDA context handle may be used from any thread (it is made current on each
// thread that calls in); the driver synchronises its own state.
unsafe impl Send for Context {}

// SAFETY: as for `Send`; `drop_errors` is behind a mutex.
unsafe impl Sync for Context {}

impl Context {
    /// Retains the primary context of `device`.
    pub(super) fn retain(device: CUdevice, ordinal: usize) -> Result<Self, DeviceError> {
        // SAFETY: `device` came from cuDeviceGet after cuInit.
        let raw = unsafe { cu::primary_ctx::retain(device) }
            .map_err(driver_error("cuDevicePrimaryCtxRetain"))?;
        Ok(Self {
            device,
            ordinal,
            raw,
            drop_errors: Mutex::new(Vec::new()),
        })
    }

    /// Makes this context current on the calling thread (if it is not already).
    pub(super) fn bind(&self) -> Result<(), DeviceError> {
        if cu::ctx::get_current().map_err(driver_error("cuCtxGetCurrent"))? == Some(self.raw) {
            return Ok(());
        }
        // SAFETY: `raw` is the primary context retained by `self`, still alive.
        unsafe { cu::ctx::set_current(self.raw) }.map_err(driver_error("cuCtxSetCurrent"))
    }

    /// Records the failure of a driver call made in a `Drop`, where it cannot be returned.
    fn record_drop_error(&self, call: &'static str, error: DriverError) {
        let error = driver_error(call)(error);
        tracing::warn!(device = self.ordinal, "{error}");
        let mut errors = self.drop_errors.lock();
        // Bounded: a context in a sticky error state fails every call.
        if errors.len() < 64 {
            errors.push(error);
        }
    }

    /// Binds for a `Drop`; false (after recording why) when the context cannot be bound.
    fn bind_for_drop(&self) -> bool {
        match self.bind() {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(device = self.ordinal, "{error}");
                self.drop_errors.lock().push(error);
                false
            }
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: `device` is the device whose primary context `self` retained, once.
        if let Err(error) = unsafe { cu::primary_ctx::release(self.device) } {
            tracing::warn!(
                device = self.ordinal,
                "{}",
                driver_error("cuDevicePrimaryCtxRelease")(error)
            );
        }
    }
}

/// Pinned, device-mapped host memory from `cuMemHostAlloc`, freed on drop.
pub(super) struct HostAllocation {
    pub(super) ctx: Arc<Context>,
    pub(super) ptr: *mut c_void,
}

// SAFETY: the allocation is plain memory owned by this value; the pointer is only freed,
// once, in `drop`.
unsafe impl Send for HostAllocation {}

// SAFETY: as for `Send`; `&HostAllocation` gives no access to the bytes.
unsafe impl Sync for HostAllocation {}

impl Drop for HostAllocation {
    fn drop(&mut self) {
        if !self.ctx.bind_for_drop() {
            return;
        }
        // SAFETY: `ptr` came from cuMemHostAlloc in this context and is freed only here;
        // the `MappedMemory` owning `self` is being dropped, so no one uses the bytes.
        if let Err(error) = unsafe { cu::free_host(self.ptr) } {
            self.ctx.record_drop_error("cuMemFreeHost", error);
        }
    }
}

/// Device memory, freed on drop.
///
/// From the stream-ordered allocator (`cuMemAllocAsync` on the copy stream) where the
/// device supports memory pools: its free (`cuMemFreeAsync`) does not wait for the
/// device, while `cuMemFree` may synchronise with the whole device, which would wait
/// forever for a persistent grid of another group. `cuMemAlloc`/`cuMemFree` otherwise.
pub(super) struct DeviceAllocation {
    pub(super) ctx: Arc<Context>,
    pub(super) ptr: CUdeviceptr,
    /// The stream the memory was allocated on, when it came from the stream-ordered
    /// allocator.
    pub(super) stream: Option<Arc<Stream>>,
}

impl Drop for DeviceAllocation {
    fn drop(&mut self) {
        if !self.ctx.bind_for_drop() {
            return;
        }
        match &self.stream {
            Some(stream) => {
                // SAFETY: `ptr` came from cuMemAllocAsync on `stream`, which is live (held
                // here), and is freed only here. The owner of the `DeviceMemory` keeps it
                // alive while a grid uses it, so no grid uses it any more.
                if let Err(error) = unsafe { cu::free_async(self.ptr, stream.raw) } {
                    self.ctx.record_drop_error("cuMemFreeAsync", error);
                }
            }
            None => {
                // SAFETY: `ptr` came from cuMemAlloc in this context and is freed only
                // here.
                if let Err(error) = unsafe { cu::free_sync(self.ptr) } {
                    self.ctx.record_drop_error("cuMemFree", error);
                }
            }
        }
    }
}

/// A loaded module and its entry function, unloaded on drop. Shared (`Arc`) between the
/// [`Module`] and every grid launched from it, so a running grid keeps its code loaded.
pub(super) struct LoadedModule {
    pub(super) ctx: Arc<Context>,
    pub(super) module: CUmodule,
    pub(super) function: CUfunction,
}

// SAFETY: module and function handles may be used from any thread with the context
// current; the module is unloaded only in `drop`.
unsafe impl Send for LoadedModule {}

// SAFETY: as for `Send`; the handles are never mutated.
unsafe impl Sync for LoadedModule {}

impl Drop for LoadedModule {
    fn drop(&mut self) {
        if !self.ctx.bind_for_drop() {
            return;
        }
        // SAFETY: `module` was loaded in this context and is unloaded only here; no grid
        // uses it any more (each holds an `Arc` of `self`).
        if let Err(error) = unsafe { cu::module::unload(self.module) } {
            self.ctx.record_drop_error("cuModuleUnload", error);
        }
    }
}

/// A non-blocking stream (`CU_STREAM_NON_BLOCKING`: no implicit synchronisation with the
/// legacy default stream).
pub(super) struct Stream {
    pub(super) ctx: Arc<Context>,
    pub(super) raw: CUstream,
}

// SAFETY: stream handles may be used from any thread with the context current.
unsafe impl Send for Stream {}

// SAFETY: as for `Send`; the handle is never mutated.
unsafe impl Sync for Stream {}

impl Stream {
    /// Creates a non-blocking stream in `ctx` (which the caller has bound).
    pub(super) fn new(ctx: &Arc<Context>) -> Result<Self, DeviceError> {
        let raw = cu::stream::create(cu::stream::StreamKind::NonBlocking)
            .map_err(driver_error("cuStreamCreate"))?;
        Ok(Self {
            ctx: Arc::clone(ctx),
            raw,
        })
    }

    /// Waits for the work queued on this stream only.
    pub(super) fn synchronize(&self) -> Result<(), DeviceError> {
        // SAFETY: `raw` is a live stream of the bound context.
        unsafe { cu::stream::synchronize(self.raw) }.map_err(driver_error("cuStreamSynchronize"))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.ctx.bind_for_drop() {
            return;
        }
        // SAFETY: `raw` is live and destroyed only here. (cuStreamDestroy does not wait
        // for queued work; callers that may still have work queued leak the stream
        // instead, see `RunningGrid`.)
        if let Err(error) = unsafe { cu::stream::destroy(self.raw) } {
            self.ctx.record_drop_error("cuStreamDestroy", error);
        }
    }
}
