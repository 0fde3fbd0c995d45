//! [`KernelSpec`]: what a kernel is, defined once for every backend.

use std::marker::PhantomData;

use gyre_runtime::abi::{
    DEFAULT_SLOT_BYTES, MAX_SLOT_BYTES, MIN_SLOT_BYTES, PAYLOAD_ALIGN, SLOT_HEADER_BYTES,
};
use gyre_runtime::backend::Placement;
use gyre_runtime::handler::{EmitError, Emitter, HandlerError};
use gyre_runtime::ring::RingLayout;

use crate::batch_emit::{BatchEmit, BatchFn};
use crate::device::{DeviceKnobs, DeviceSource};
use crate::Error;
use gyre_runtime::builtins::Builtin;

/// A message type: plain old data that can be copied into a ring slot as bytes.
///
/// Implemented for every [`bytemuck::Pod`] type that is `Send + 'static`; derive
/// `Pod` and `Zeroable` on a `#[repr(C)]` struct to make one.
pub trait Message: bytemuck::Pod + Send + 'static {}
impl<T: bytemuck::Pod + Send + 'static> Message for T {}

/// What a CPU handler emits through: typed, written into the output slot in place.
pub struct Emit<'a, 'b, Out> {
    inner: &'a mut Emitter<'b>,
    corr: [u32; 2],
    /// The message in hand carries a host send time in `corr`, not a user id.
    timed: bool,
    _out: PhantomData<fn(Out)>,
}

impl<Out: Message> Emit<'_, '_, Out> {
    /// Emits `message` to output port 0 (the host output unless routed elsewhere),
    /// carrying the correlation id of the message being handled. Never waits: when the
    /// target ring is full the message is kept and the kernel takes no more input until
    /// it is delivered (backpressure, counted as a stall).
    ///
    /// # Errors
    /// [`EmitError`] when the port is unbound or the message does not fit the target's
    /// slots. Returning the error from the handler sends the input to the dead letters.
    #[inline]
    pub fn emit(&mut self, message: Out) -> Result<(), EmitError> {
        self.inner.emit(self.corr, bytemuck::bytes_of(&message))
    }

    /// Emits `message` to output port `port` (see [`crate::GroupBuilder::route`]).
    ///
    /// # Errors
    /// As [`Emit::emit`], and [`EmitError::NoSuchPort`].
    #[inline]
    pub fn emit_to(&mut self, port: u32, message: Out) -> Result<(), EmitError> {
        self.inner
            .emit_to(port, self.corr, bytemuck::bytes_of(&message))
    }

    /// Like [`Emit::emit_to`] with an explicit correlation id.
    ///
    /// # Errors
    /// As [`Emit::emit_to`].
    pub fn emit_to_with_corr(
        &mut self,
        port: u32,
        message: Out,
        corr: u64,
    ) -> Result<(), EmitError> {
        self.inner
            .emit_to(port, split(corr), bytemuck::bytes_of(&message))
    }

    /// Like [`Emit::emit`] with an explicit correlation id.
    ///
    /// # Errors
    /// As [`Emit::emit`].
    pub fn emit_with_corr(&mut self, message: Out, corr: u64) -> Result<(), EmitError> {
        self.inner.emit(split(corr), bytemuck::bytes_of(&message))
    }

    /// The correlation id of the message being handled (0 when the sender set none).
    pub fn corr(&self) -> u64 {
        if self.timed {
            0
        } else {
            join(self.corr)
        }
    }

    /// Number of output ports (see [`KernelSpec::ports`]).
    pub fn port_count(&self) -> u32 {
        self.inner.port_count()
    }
}

pub(crate) fn split(corr: u64) -> [u32; 2] {
    [corr as u32, (corr >> 32) as u32]
}

pub(crate) fn join(corr: [u32; 2]) -> u64 {
    u64::from(corr[0]) | (u64::from(corr[1]) << 32)
}

/// The CPU handler, type-erased once when the spec is built: one indirect call per
/// message, straight into the user's closure.
type CpuFn = Box<dyn gyre_runtime::handler::Handler>;

/// A kernel's definition: name, message types, rings, placement and implementations.
///
/// ```
/// use gyre::{KernelSpec, Placement};
///
/// let spec = KernelSpec::<u32, u64>::new("widen")
///     .capacity(256)
///     .placement(Placement::Pool)
///     .cpu(|x, out| Ok(out.emit(u64::from(*x) * 2)?));
/// assert_eq!(spec.name(), "widen");
/// ```
pub struct KernelSpec<In, Out> {
    pub(crate) name: String,
    pub(crate) capacity: u32,
    pub(crate) slot_bytes: Option<u32>,
    pub(crate) host_output: Option<u32>,
    pub(crate) placement: Placement,
    pub(crate) quantum: u32,
    pub(crate) ports: u32,
    pub(crate) fault_policy: gyre_runtime::health::FaultPolicy,
    pub(crate) watchdog: Option<std::time::Duration>,
    pub(crate) cpu: Option<CpuFn>,
    pub(crate) factory: Option<gyre_runtime::handler::HandlerFactory>,
    /// The device implementations and knobs.
    pub(crate) device: DeviceKnobs,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In: Message, Out: Message> KernelSpec<In, Out> {
    /// A spec with defaults: inbox of 1024 slots, a host-bound output of the same
    /// capacity, slots sized to fit the message types (64 bytes or more), pooled
    /// placement, quantum of 64 messages, no implementation yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            capacity: 1024,
            slot_bytes: None,
            host_output: Some(1024),
            placement: Placement::Pool,
            quantum: 64,
            ports: 1,
            fault_policy: gyre_runtime::health::FaultPolicy::Report,
            watchdog: None,
            cpu: None,
            factory: None,
            device: DeviceKnobs::default(),
            _types: PhantomData,
        }
    }

    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Inbox capacity in slots: a power of two up to 2^30.
    #[must_use]
    pub fn capacity(mut self, slots: u32) -> Self {
        self.capacity = slots;
        self
    }

    /// Slot size in bytes for the inbox and output (a power of two, 32 to 65536; 16 are
    /// the slot header). By default the smallest size that fits, at least 64.
    #[must_use]
    pub fn slot_bytes(mut self, bytes: u32) -> Self {
        self.slot_bytes = Some(bytes);
        self
    }

    /// Capacity of the host-bound output ring (what `recv` reads).
    #[must_use]
    pub fn host_output(mut self, slots: u32) -> Self {
        self.host_output = Some(slots);
        self
    }

    /// No host-bound output: the kernel is a sink (its `recv` is an error).
    #[must_use]
    pub fn no_host_output(mut self) -> Self {
        self.host_output = None;
        self
    }

    /// Where the kernel runs on the CPU backend.
    #[must_use]
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Number of output ports (at least 1, default 1). Port 0 goes to the host output
    /// unless routed elsewhere; bind the others with [`crate::GroupBuilder::route`],
    /// [`crate::GroupBuilder::to_host`] or [`crate::GroupBuilder::to_dead_letters`]. A handler picks
    /// the port with [`Emit::emit_to`].
    #[must_use]
    pub fn ports(mut self, ports: u32) -> Self {
        self.ports = ports.max(1);
        self
    }

    /// What the runtime does when the kernel faults (default
    /// [`crate::FaultPolicy::Report`]): report only, terminate it (its messages go to the
    /// dead letters), or restart it with exponential backoff behind a circuit breaker.
    ///
    /// ```
    /// use gyre::{FaultPolicy, KernelSpec, RestartPolicy};
    /// let spec = KernelSpec::<u32, u32>::new("fragile")
    ///     .on_fault(FaultPolicy::Restart(RestartPolicy { max_restarts: 3, ..RestartPolicy::default() }));
    /// ```
    #[must_use]
    pub fn on_fault(mut self, policy: gyre_runtime::health::FaultPolicy) -> Self {
        self.fault_policy = policy;
        self
    }

    /// A background watchdog: when the kernel's heartbeat stands still for `timeout`
    /// while messages wait (a handler stuck), the kernel is reported faulted and its
    /// fault policy applies (`Terminate` and `Restart` take its rings over after the
    /// command timeout and send its messages to the dead letters). Without it, stalls
    /// are only reported by [`crate::Kernel::health`].
    #[must_use]
    pub fn watchdog(mut self, timeout: std::time::Duration) -> Self {
        self.watchdog = Some(timeout);
        self
    }

    /// Most messages handled per scheduling turn (at least 1; default 64 on the CPU).
    /// On CUDA the most per batch (default: one per thread of the block), on wgpu the
    /// most per tick (default 1,024); setting it sets it for every backend.
    #[must_use]
    pub fn quantum(mut self, messages: u32) -> Self {
        self.quantum = messages.max(1);
        self.device.quantum = Some(self.quantum);
        self
    }

    /// The CUDA implementation: `cuda_c` defines
    /// `__device__ int FUNCTION(gyre_ctx *ctx, const void *msg, gyre_u32 bytes)` (and
    /// anything it needs). `msg` points at the message (an `In`); the handler emits with
    /// `gyre_emit(ctx, port, &out, sizeof out)` (carrying the message's correlation id)
    /// and returns 0 (`GYRE_OK`), or an error code, which sends the message to the dead
    /// letters. Compiler messages name the file `FUNCTION.cu`, with line numbers counted
    /// from the start of `cuda_c`. See `runtime/docs/CUDA.md` for the device API.
    ///
    /// ```
    /// let spec = gyre::KernelSpec::<f32, f32>::new("neg").cuda("neg", r"
    ///     __device__ int neg(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    ///         float x = -*(const float *)msg;
    ///         return gyre_emit(ctx, 0u, &x, sizeof x);
    ///     }");
    /// ```
    #[must_use]
    pub fn cuda(mut self, function: impl Into<String>, cuda_c: impl Into<String>) -> Self {
        self.device.cuda = Some(DeviceSource {
            function: function.into(),
            source: cuda_c.into(),
        });
        self
    }

    /// The wgpu implementation: `wgsl` defines
    /// `fn FUNCTION(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32)
    /// -> u32`. `(*msg).w` holds the message as 32-bit words; the handler emits with
    /// `gyre_emit(ctx, port, msg, bytes)`, reads parameters with `gyre_param(ctx, i)` and
    /// state with `gyre_state_load` / `gyre_state_store`, and returns 0 (`GYRE_OK`) or an
    /// error code. Validation errors name the file `FUNCTION.wgsl`. See
    /// `runtime/docs/WGPU.md` for the device API.
    ///
    /// ```
    /// let spec = gyre::KernelSpec::<f32, f32>::new("neg").wgsl("neg", r"
    ///     fn neg(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    ///         (*msg).w[0] = bitcast<u32>(-bitcast<f32>((*msg).w[0]));
    ///         return gyre_emit(ctx, 0u, msg, 4u);
    ///     }");
    /// ```
    #[must_use]
    pub fn wgsl(mut self, function: impl Into<String>, wgsl: impl Into<String>) -> Self {
        self.device.wgsl = Some(DeviceSource {
            function: function.into(),
            source: wgsl.into(),
        });
        self
    }

    /// One of gyre's built-ins, on every backend: its device functions on CUDA and wgpu,
    /// its Rust reference ([`gyre_runtime::builtins::Reference`]) on the CPU (unless the
    /// spec sets its own `.cpu(..)` afterwards). Its ports, parameters and state come
    /// from `builtin`; its parameters and the message types are checked at launch (`In`
    /// must hold what it reads, `Out` must be what it emits: [`crate::builtins::Record`]
    /// for most).
    ///
    /// ```
    /// use gyre::builtins::{Builtin, Record};
    /// let spec = gyre::KernelSpec::<Record, Record>::new("scale")
    ///     .builtin(Builtin::Affine { a: 2.0, b: 1.0 });
    /// ```
    #[must_use]
    pub fn builtin(mut self, builtin: Builtin) -> Self {
        self.device.builtin = Some(builtin);
        self.device.cpu_is_builtin = true;
        self.ports = builtin.ports();
        let make = move || reference_handler(builtin);
        self.cpu = Some(make());
        self.factory = Some(gyre_runtime::handler::HandlerFactory(std::sync::Arc::new(
            make,
        )));
        self
    }

    /// Most messages the handler emits per message it handles, on device backends (at
    /// least 1; default 4, and 1 for a built-in, which never emits more than one message
    /// per message): the device reserves room for this many per message.
    #[must_use]
    pub fn max_emits(mut self, emits: u32) -> Self {
        self.device.max_emits = Some(emits);
        self
    }

    /// The device handler's parameter words (`ctx->params` on CUDA, `gyre_param` on
    /// wgpu; floats as their bit patterns). A built-in sets them from its parameters;
    /// setting them replaces those.
    #[must_use]
    pub fn params(mut self, words: [u32; gyre_runtime::builtins::PARAM_WORDS]) -> Self {
        self.device.params = Some(words);
        self
    }

    /// The device handler takes its messages one at a time, in order: for handlers that
    /// keep state per message. On CUDA one thread handles each batch (otherwise one
    /// message per thread); on wgpu user handlers always run this way. CPU handlers
    /// always do.
    #[must_use]
    pub fn sequential(mut self) -> Self {
        self.device.sequential = true;
        self
    }

    /// Bytes of device memory for the handler's state (`ctx->state` on CUDA,
    /// `gyre_state_load`/`gyre_state_store` words on wgpu), zeroed at launch and kept
    /// across messages. Default 0 (a built-in sets what it needs). CPU handlers keep
    /// their state in the closure.
    #[must_use]
    pub fn state_bytes(mut self, bytes: u32) -> Self {
        self.device.state_bytes = Some(bytes);
        self
    }

    /// The CPU implementation: called once per message with the message and an
    /// [`Emit`] for its outputs. State lives in the closure. Return an error to count the
    /// message as failed (the kernel goes on); a panic faults the kernel.
    #[must_use]
    pub fn cpu<F>(mut self, handler: F) -> Self
    where
        F: FnMut(&In, &mut Emit<'_, '_, Out>) -> Result<(), HandlerError> + Send + 'static,
    {
        self.cpu = Some(erase(handler));
        self.factory = None;
        self.device.cpu_is_builtin = false;
        self
    }

    /// The CPU implementation as a factory: `make` builds the handler at launch and again
    /// at every restart (by hand or by a fault policy), so a restarted kernel starts from
    /// fresh state instead of the state a panic left behind.
    ///
    /// ```
    /// use gyre::KernelSpec;
    /// let spec = KernelSpec::<u32, u32>::new("counter").cpu_factory(|| {
    ///     let mut seen = 0u32;
    ///     move |x: &u32, out: &mut gyre::Emit<'_, '_, u32>| {
    ///         seen += 1;
    ///         Ok(out.emit(x + seen)?)
    ///     }
    /// });
    /// ```
    #[must_use]
    pub fn cpu_factory<M, F>(mut self, make: M) -> Self
    where
        M: Fn() -> F + Send + Sync + 'static,
        F: FnMut(&In, &mut Emit<'_, '_, Out>) -> Result<(), HandlerError> + Send + 'static,
    {
        self.cpu = Some(erase(make()));
        self.factory = Some(gyre_runtime::handler::HandlerFactory(std::sync::Arc::new(
            move || erase(make()),
        )));
        self.device.cpu_is_builtin = false;
        self
    }

    /// The CPU implementation in batch form, for handlers that vectorise: called with a
    /// slice of the inputs that are ready (up to the kernel's [`quantum`](Self::quantum),
    /// in the order they were sent, all from one inbox ring) and a [`BatchEmit`] whose
    /// emits answer an input by its index. One call per batch instead of one per message;
    /// the inputs are copied out of their slots into a buffer the handler keeps (no
    /// allocation per message). Returning an error sends every input of the batch to the
    /// dead letters (what it emitted stands); a panic faults the kernel, and a restart
    /// dead-letters the whole batch it panicked on.
    ///
    /// Device backends run their device handler as before; the batch form is the CPU
    /// implementation.
    ///
    /// ```
    /// use gyre::KernelSpec;
    /// let spec = KernelSpec::<[f32; 4], f32>::new("norm").cpu_batch(|inputs, out| {
    ///     for (i, v) in inputs.iter().enumerate() {
    ///         out.emit(i, v.iter().map(|x| x * x).sum::<f32>().sqrt())?;
    ///     }
    ///     Ok(())
    /// });
    /// ```
    #[must_use]
    pub fn cpu_batch<F>(mut self, handler: F) -> Self
    where
        F: FnMut(&[In], &mut BatchEmit<'_, '_, Out>) -> Result<(), HandlerError> + Send + 'static,
    {
        self.cpu = Some(Box::new(BatchFn::<In, Out, F>::new(
            handler,
            self.quantum as usize,
        )));
        self.factory = None;
        self.device.cpu_is_builtin = false;
        self
    }

    pub(crate) fn layouts(&self) -> Result<(RingLayout, Option<RingLayout>), Error> {
        let inbox_slot = slot_for::<In>(self.slot_bytes)?;
        let inbox = RingLayout::new(self.capacity, inbox_slot).map_err(|source| Error::Layout {
            kernel: self.name.clone(),
            source,
        })?;
        let outbox = match self.host_output {
            None => None,
            Some(capacity) => {
                let slot = slot_for::<Out>(self.slot_bytes)?;
                Some(
                    RingLayout::new(capacity, slot).map_err(|source| Error::Layout {
                        kernel: self.name.clone(),
                        source,
                    })?,
                )
            }
        };
        Ok((inbox, outbox))
    }

    /// The CPU handler, type-erased for the backend.
    pub(crate) fn take_cpu_handler(&mut self) -> Option<CpuFn> {
        self.cpu.take()
    }
}

/// Type-erases a typed handler for the backend: one indirect call per message, straight
/// into the user's closure.
fn erase<In: Message, Out: Message, F>(mut handler: F) -> CpuFn
where
    F: FnMut(&In, &mut Emit<'_, '_, Out>) -> Result<(), HandlerError> + Send + 'static,
{
    let size = std::mem::size_of::<In>();
    Box::new(
        move |message: gyre_runtime::handler::Message<'_>, out: &mut Emitter<'_>| {
            let input: &In = bytemuck::from_bytes(&message.payload[..size]);
            let mut emit = Emit {
                inner: out,
                corr: message.corr,
                timed: message.tag & gyre_runtime::abi::TAG_KIND_MASK
                    == gyre_runtime::abi::KIND_TIMED,
                _out: PhantomData,
            };
            handler(input, &mut emit)
        },
    )
}

/// The slot size for message type `T`: `asked` if given and large enough, else the
/// smallest power of two that fits, at least the default.
fn slot_for<T>(asked: Option<u32>) -> Result<u32, Error> {
    let size = std::mem::size_of::<T>();
    let align = std::mem::align_of::<T>();
    let type_name = std::any::type_name::<T>();
    if align > PAYLOAD_ALIGN as usize {
        return Err(Error::MessageAlignment { type_name, align });
    }
    let needed = (size + SLOT_HEADER_BYTES as usize)
        .next_power_of_two()
        .max(MIN_SLOT_BYTES as usize);
    let suggested = u32::try_from(needed).unwrap_or(u32::MAX);
    match asked {
        Some(slot_bytes) if slot_bytes.saturating_sub(SLOT_HEADER_BYTES) as usize >= size => {
            Ok(slot_bytes)
        }
        Some(slot_bytes) => Err(Error::MessageTooLarge {
            type_name,
            size,
            slot_bytes,
            max: slot_bytes.saturating_sub(SLOT_HEADER_BYTES) as usize,
            suggested,
        }),
        None if needed <= MAX_SLOT_BYTES as usize => Ok(suggested.max(DEFAULT_SLOT_BYTES)),
        None => Err(Error::MessageTooLarge {
            type_name,
            size,
            slot_bytes: MAX_SLOT_BYTES,
            max: (MAX_SLOT_BYTES - SLOT_HEADER_BYTES) as usize,
            suggested,
        }),
    }
}

/// The CPU handler of a built-in: its Rust reference, emitting what the device function
/// would, with the message's correlation id; a refused message is a handler error (the
/// message goes to the dead letters, as on the device).
fn reference_handler(builtin: Builtin) -> CpuFn {
    let mut reference = builtin.reference();
    Box::new(
        move |message: gyre_runtime::handler::Message<'_>, out: &mut Emitter<'_>| {
            let mut emitted = Ok(());
            let handled = reference.handle(message.payload, &mut |port, bytes| {
                if emitted.is_ok() {
                    emitted = out.emit_to(port, message.corr, bytes);
                }
            });
            handled.map_err(|e| HandlerError(e.to_string()))?;
            Ok(emitted?)
        },
    )
}
