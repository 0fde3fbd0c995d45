//! [`WgpuKernel`]: one kernel of a wgpu group, typed by its messages.

use std::marker::PhantomData;

use gyre_runtime::backend::wgpu::codegen::WgslHandler;
use gyre_runtime::backend::wgpu::group::WgpuKernelPlan;
use gyre_runtime::builtins::{Builtin, PARAM_WORDS};

use crate::gpu_common::{self, KernelSettings};
use crate::spec::Message;
use crate::Error;

/// A kernel of a wgpu group: its name, its WGSL handler, its rings, typed by the message
/// it takes (`In`) and the message it emits (`Out`).
///
/// Slot sizes follow the message types: `size_of::<T>()` plus the 16-byte slot header,
/// rounded up to a power of two, at least 32 bytes. A type larger than the largest slot
/// (65,536 bytes, header included) is refused when the group launches.
///
/// ```
/// use gyre::wgpu::{Builtin, Record, WgpuKernel};
///
/// // A user handler, in WGSL.
/// let double = WgpuKernel::<u32, u32>::source("double", "double_it", r"
///     fn double_it(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
///         (*msg).w[0] = (*msg).w[0] * 2u;
///         return gyre_emit(ctx, 0u, msg, 4u);
///     }")
///     .capacity(256)
///     .max_emits(1);
/// // A built-in: parameters, ports and state come from the built-in.
/// let scale = WgpuKernel::<Record, Record>::builtin("scale", Builtin::Affine { a: 2.0, b: 1.0 });
/// assert_eq!((double.name(), scale.name()), ("double", "scale"));
/// ```
pub struct WgpuKernel<In, Out> {
    settings: KernelSettings,
    handler: WgslHandler,
    state_words: u32,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> std::fmt::Debug for WgpuKernel<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuKernel")
            .field("name", &self.settings.name)
            .field("function", &self.handler.function())
            .field("capacity", &self.settings.capacity)
            .field("ports", &self.settings.ports)
            .finish_non_exhaustive()
    }
}

impl<In: Message, Out: Message> WgpuKernel<In, Out> {
    fn new(name: String, handler: WgslHandler, builtin: Option<Builtin>) -> Self {
        Self {
            settings: KernelSettings::new(name, builtin, 1024),
            handler,
            state_words: builtin.map_or(0, |b| b.state_bytes().div_ceil(4)),
            _types: PhantomData,
        }
    }

    /// A kernel running a handler written in WGSL: `wgsl` defines
    /// `fn FUNCTION(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32)
    /// -> u32` (and anything it needs). `(*msg).w` holds the message (an `In`, as 32-bit
    /// words from the start of a slot payload of `bytes` bytes); the handler emits with
    /// `gyre_emit(ctx, port, msg, bytes)` (any `GyreMsg` it filled), reads its parameters
    /// with `gyre_param(ctx, i)` and its state with `gyre_state_load(ctx, i)` /
    /// `gyre_state_store(ctx, i, v)`, and returns 0 (`GYRE_OK`), or an error code, which
    /// sends the message to the dead letters. Validation errors name the file
    /// `FUNCTION.wgsl`, with line numbers counted from the start of `wgsl`.
    ///
    /// Defaults: inbox and host output of 1,024 slots, one port, up to four emits per
    /// message, up to 1,024 messages per tick, no state.
    ///
    /// ```
    /// let k = gyre::wgpu::WgpuKernel::<f32, f32>::source("neg", "neg", r"
    ///     fn neg(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    ///         (*msg).w[0] = bitcast<u32>(-bitcast<f32>((*msg).w[0]));
    ///         return gyre_emit(ctx, 0u, msg, 4u);
    ///     }");
    /// assert_eq!(k.name(), "neg");
    /// ```
    pub fn source(
        name: impl Into<String>,
        function: impl Into<String>,
        wgsl: impl Into<String>,
    ) -> Self {
        let function = function.into();
        let file = format!("{function}.wgsl");
        Self::new(
            name.into(),
            WgslHandler::Source {
                function,
                source: wgsl.into(),
                file,
            },
            None,
        )
    }

    /// A kernel running one of gyre's built-ins (its WGSL implementation), with its
    /// parameters, ports and state taken from `builtin`. Its parameters are checked at
    /// launch ([`Builtin::validate`]), and so are the message types: `In` must hold what
    /// the built-in reads ([`Builtin::input_bytes`]) and `Out` must be what it emits
    /// ([`Builtin::output_bytes`]): [`gyre_runtime::builtins::Record`] for most.
    ///
    /// ```
    /// use gyre::wgpu::{Aggregate, Builtin, Record, WgpuKernel};
    /// let window = WgpuKernel::<Record, Aggregate>::builtin("win", Builtin::Window { size: 8 });
    /// assert_eq!(window.name(), "win");
    /// ```
    pub fn builtin(name: impl Into<String>, builtin: Builtin) -> Self {
        let handler = WgslHandler::Builtin(builtin.cuda_function());
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
    /// # use gyre::wgpu::{Builtin, Record, WgpuKernel};
    /// let k = WgpuKernel::<Record, Record>::builtin("pass", Builtin::Gather).capacity(64);
    /// ```
    #[must_use]
    pub fn capacity(mut self, slots: u32) -> Self {
        self.settings.capacity = slots;
        self
    }

    /// Slots of the host output ring (what `recv` reads): a power of two. Default 1,024.
    ///
    /// ```
    /// # use gyre::wgpu::{Builtin, Record, WgpuKernel};
    /// let k = WgpuKernel::<Record, Record>::builtin("pass", Builtin::Gather).host_output(64);
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
    /// # use gyre::wgpu::WgpuKernel;
    /// let k = WgpuKernel::<u32, u32>::source("split", "split", "/* ... */").ports(2);
    /// ```
    #[must_use]
    pub fn ports(mut self, ports: u32) -> Self {
        self.settings.ports = ports;
        self
    }

    /// Most messages the handler emits per message it handles (at least 1, default 4):
    /// a tick takes a message only when its outputs have room for this many.
    ///
    /// ```
    /// # use gyre::wgpu::WgpuKernel;
    /// let k = WgpuKernel::<u32, u32>::source("one", "one", "/* ... */").max_emits(1);
    /// ```
    #[must_use]
    pub fn max_emits(mut self, emits: u32) -> Self {
        self.settings.max_emits = emits;
        self
    }

    /// Most messages the kernel handles per tick (at least 1, default 1,024): lower it so
    /// one busy kernel does not lengthen every tick of its group. On Mesa's lavapipe the
    /// group lowers it further, to what the driver's per-invocation loop limit allows
    /// (runtime/docs/WGPU.md, "Long dispatches on lavapipe").
    ///
    /// ```
    /// # use gyre::wgpu::WgpuKernel;
    /// let k = WgpuKernel::<u32, u32>::source("k", "k", "/* ... */").quantum(64);
    /// ```
    #[must_use]
    pub fn quantum(mut self, messages: u32) -> Self {
        self.settings.quantum = messages;
        self
    }

    /// The handler's parameter words (`gyre_param(ctx, i)`; floats as their bit
    /// patterns). A built-in sets them from its parameters; setting them replaces those.
    ///
    /// ```
    /// # use gyre::wgpu::WgpuKernel;
    /// let mut words = [0u32; 16];
    /// words[0] = 3;
    /// let k = WgpuKernel::<u32, u32>::source("add", "add_param", "/* ... */").params(words);
    /// ```
    #[must_use]
    pub fn params(mut self, words: [u32; PARAM_WORDS]) -> Self {
        self.settings.params = words;
        self
    }

    /// 32-bit words of device memory for the handler's state (`gyre_state_load` /
    /// `gyre_state_store`), zeroed at launch and kept across messages and ticks (the
    /// resident state). Default 0 (a built-in sets what it needs). A kernel handles its
    /// messages one at a time, in order, so state updates need no synchronisation.
    ///
    /// ```
    /// # use gyre::wgpu::WgpuKernel;
    /// let k = WgpuKernel::<u32, u32>::source("sum", "running_sum", "/* ... */").state_words(2);
    /// ```
    #[must_use]
    pub fn state_words(mut self, words: u32) -> Self {
        self.state_words = words;
        self
    }

    /// The runtime's plan of this kernel, after checking its types and built-in.
    pub(crate) fn plan(self) -> Result<WgpuKernelPlan, Error> {
        let slots = self.settings.slots::<In, Out>("gyre::wgpu")?;
        let mut plan = WgpuKernelPlan::new(self.settings.name.clone(), self.handler);
        gpu_common::apply_settings!(plan, &self.settings, slots);
        plan.state_words = self.state_words;
        // Stateless built-ins handle a tick's batch in parallel; user handlers and the
        // stateful built-ins one message at a time, in order.
        plan.parallel = self.settings.builtin.is_some_and(|b| !b.sequential());
        Ok(plan)
    }
}
