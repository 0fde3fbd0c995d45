//! [`CudaKernel`]: one kernel of a CUDA group, typed by its messages.

use std::marker::PhantomData;

use gyre_runtime::backend::cuda::codegen::HandlerCode;
use gyre_runtime::backend::cuda::KernelPlan;
use gyre_runtime::builtins::{Builtin, PARAM_WORDS};

use crate::gpu_common::{self, KernelSettings};
use crate::spec::Message;
use crate::Error;

/// A kernel of a CUDA group: its name, its device function, its rings, typed by the
/// message it takes (`In`) and the message it emits (`Out`).
///
/// Slot sizes follow the message types: `size_of::<T>()` plus the 16-byte slot header,
/// rounded up to a power of two, at least 32 bytes. A type larger than the largest slot
/// (65,536 bytes, header included) is refused when the group launches.
///
/// ```
/// use gyre::cuda::{Builtin, CudaKernel, Record};
///
/// // A user handler, in CUDA C.
/// let double = CudaKernel::<u32, u32>::source("double", "double_it", r"
///     __device__ int double_it(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
///         gyre_u32 x = *(const gyre_u32 *)msg * 2u;
///         return gyre_emit(ctx, 0u, &x, sizeof x);
///     }")
///     .capacity(256)
///     .max_emits(1);
/// // A built-in: parameters, ports and state come from the built-in.
/// let scale = CudaKernel::<Record, Record>::builtin("scale", Builtin::Affine { a: 2.0, b: 1.0 });
/// assert_eq!((double.name(), scale.name()), ("double", "scale"));
/// ```
pub struct CudaKernel<In, Out> {
    settings: KernelSettings,
    handler: HandlerCode,
    sequential: bool,
    state_bytes: u32,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> std::fmt::Debug for CudaKernel<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaKernel")
            .field("name", &self.settings.name)
            .field("function", &self.handler.function())
            .field("capacity", &self.settings.capacity)
            .field("ports", &self.settings.ports)
            .finish_non_exhaustive()
    }
}

impl<In: Message, Out: Message> CudaKernel<In, Out> {
    fn new(name: String, handler: HandlerCode, builtin: Option<Builtin>) -> Self {
        Self {
            settings: KernelSettings::new(name, builtin, 0),
            handler,
            sequential: builtin.is_some_and(|b| b.sequential()),
            state_bytes: builtin.map_or(0, |b| b.state_bytes()),
            _types: PhantomData,
        }
    }

    /// A kernel running a handler written in CUDA C: `cuda_c` defines
    /// `__device__ int FUNCTION(gyre_ctx *ctx, const void *msg, gyre_u32 bytes)` (and
    /// anything it needs). `msg` points at the message (an `In`, at the start of a slot
    /// payload of `bytes` bytes); the handler emits with
    /// `gyre_emit(ctx, port, &out, sizeof out)` and returns 0 (`GYRE_OK`), or an error
    /// code, which sends the message to the dead letters. Compiler messages name the
    /// file `FUNCTION.cu`, with line numbers counted from the start of `cuda_c`.
    ///
    /// Defaults: inbox and host output of 1,024 slots, one port, up to four emits per
    /// message, handled in parallel (one message per thread), no state.
    ///
    /// ```
    /// let k = gyre::cuda::CudaKernel::<f32, f32>::source("neg", "neg", r"
    ///     __device__ int neg(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    ///         float x = -*(const float *)msg;
    ///         return gyre_emit(ctx, 0u, &x, sizeof x);
    ///     }");
    /// assert_eq!(k.name(), "neg");
    /// ```
    pub fn source(
        name: impl Into<String>,
        function: impl Into<String>,
        cuda_c: impl Into<String>,
    ) -> Self {
        let function = function.into();
        let file = format!("{function}.cu");
        Self::new(
            name.into(),
            HandlerCode::Source {
                function,
                source: cuda_c.into(),
                file,
            },
            None,
        )
    }

    /// A kernel running one of gyre's built-ins, with its parameters, ports, state and
    /// sequential flag taken from `builtin`. Its parameters are checked at launch
    /// ([`Builtin::validate`]), and so are the message types: `In` must hold what the
    /// built-in reads ([`Builtin::input_bytes`]) and `Out` must be what it emits
    /// ([`Builtin::output_bytes`]): [`gyre_runtime::builtins::Record`] for most.
    ///
    /// ```
    /// use gyre::cuda::{Aggregate, Builtin, CudaKernel, Record};
    /// let window = CudaKernel::<Record, Aggregate>::builtin("win", Builtin::Window { size: 8 });
    /// assert_eq!(window.name(), "win");
    /// ```
    pub fn builtin(name: impl Into<String>, builtin: Builtin) -> Self {
        let handler = HandlerCode::Builtin(builtin.cuda_function());
        Self::new(name.into(), handler, Some(builtin))
    }

    /// The kernel's name (unique in its group).
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Slots of each inbox ring (the host's and one per upstream route): a power of
    /// two. Default 1,024.
    ///
    /// ```
    /// # use gyre::cuda::{Builtin, CudaKernel, Record};
    /// let k = CudaKernel::<Record, Record>::builtin("pass", Builtin::Gather).capacity(64);
    /// ```
    #[must_use]
    pub fn capacity(mut self, slots: u32) -> Self {
        self.settings.capacity = slots;
        self
    }

    /// Slots of the host output ring (what `recv` reads): a power of two. Default 1,024.
    ///
    /// ```
    /// # use gyre::cuda::{Builtin, CudaKernel, Record};
    /// let k = CudaKernel::<Record, Record>::builtin("pass", Builtin::Gather).host_output(64);
    /// ```
    #[must_use]
    pub fn host_output(mut self, slots: u32) -> Self {
        self.settings.out_capacity = slots;
        self
    }

    /// Output ports (1 to 8, default 1; a built-in sets its own). Ports without a route
    /// go to the host output.
    ///
    /// ```
    /// # use gyre::cuda::CudaKernel;
    /// let k = CudaKernel::<u32, u32>::source("split", "split", "/* ... */").ports(2);
    /// ```
    #[must_use]
    pub fn ports(mut self, ports: u32) -> Self {
        self.settings.ports = ports;
        self
    }

    /// Most messages the handler emits per message it handles (at least 1, default 4):
    /// the device reserves room for this many per thread.
    ///
    /// ```
    /// # use gyre::cuda::CudaKernel;
    /// let k = CudaKernel::<u32, u32>::source("one", "one", "/* ... */").max_emits(1);
    /// ```
    #[must_use]
    pub fn max_emits(mut self, emits: u32) -> Self {
        self.settings.max_emits = emits;
        self
    }

    /// Most messages per batch (default 0: one per thread of the block; at most the
    /// group's threads per block).
    ///
    /// ```
    /// # use gyre::cuda::CudaKernel;
    /// let k = CudaKernel::<u32, u32>::source("k", "k", "/* ... */").quantum(8);
    /// ```
    #[must_use]
    pub fn quantum(mut self, messages: u32) -> Self {
        self.settings.quantum = messages;
        self
    }

    /// The handler's parameter words (`ctx->params`; floats as their bit patterns).
    /// A built-in sets them from its parameters; setting them replaces those.
    ///
    /// ```
    /// # use gyre::cuda::CudaKernel;
    /// let mut words = [0u32; 16];
    /// words[0] = 3;
    /// let k = CudaKernel::<u32, u32>::source("add", "add_param", "/* ... */").params(words);
    /// ```
    #[must_use]
    pub fn params(mut self, words: [u32; PARAM_WORDS]) -> Self {
        self.settings.params = words;
        self
    }

    /// One thread handles each batch, in order: for handlers that update state per
    /// message (a built-in that needs it sets it).
    ///
    /// ```
    /// # use gyre::cuda::CudaKernel;
    /// let k = CudaKernel::<u32, u32>::source("sum", "running_sum", "/* ... */")
    ///     .sequential()
    ///     .state_bytes(4);
    /// ```
    #[must_use]
    pub fn sequential(mut self) -> Self {
        self.sequential = true;
        self
    }

    /// Bytes of device memory for the handler's state (`ctx->state`), zeroed at launch
    /// and kept across messages. Default 0 (a built-in sets what it needs).
    ///
    /// ```
    /// # use gyre::cuda::CudaKernel;
    /// let k = CudaKernel::<u32, u32>::source("sum", "running_sum", "/* ... */").state_bytes(8);
    /// ```
    #[must_use]
    pub fn state_bytes(mut self, bytes: u32) -> Self {
        self.state_bytes = bytes;
        self
    }

    /// The runtime's plan of this kernel, after checking its types and built-in.
    pub(crate) fn plan(self) -> Result<KernelPlan, Error> {
        let slots = self.settings.slots::<In, Out>("gyre::cuda")?;
        let mut plan = KernelPlan::new(self.settings.name.clone(), self.handler);
        gpu_common::apply_settings!(plan, &self.settings, slots);
        plan.sequential = self.sequential;
        plan.state_bytes = self.state_bytes;
        Ok(plan)
    }
}
