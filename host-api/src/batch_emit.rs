//! The batch form of a CPU handler: [`KernelSpec::cpu_batch`](crate::KernelSpec::cpu_batch)
//! hands the handler a slice of inputs and a [`BatchEmit`] for their outputs.

use std::marker::PhantomData;

use gyre_runtime::handler::{Batch, EmitError, Emitter, Handler, HandlerError, Message as Raw};

use crate::spec::{join, split};
use crate::Message;

/// What a batch handler emits through: outputs answer a message of the batch by its
/// index (carrying that message's correlation id), or carry a correlation id of their own.
///
/// Every emit is written into the target ring as it is made, as with [`crate::Emit`];
/// a full target keeps it (and what follows) until there is room, and the kernel takes
/// no more input meanwhile.
pub struct BatchEmit<'a, 'b, Out> {
    inner: &'a mut Emitter<'b>,
    /// Each input's correlation id and whether it is timed (a host send time rides in
    /// the correlation id), read once, with the inputs.
    sources: &'a [([u32; 2], bool)],
    _out: PhantomData<fn(Out)>,
}

impl<Out: Message> BatchEmit<'_, '_, Out> {
    /// Emits `message` to output port 0 as the output of input `input` of the batch: it
    /// carries that input's correlation id.
    ///
    /// # Errors
    /// [`EmitError`] when the port is unbound or the message does not fit the target's
    /// slots. Returning the error from the handler sends the whole batch to the dead
    /// letters.
    ///
    /// # Panics
    /// When `input` is not an index of the batch.
    #[inline]
    pub fn emit(&mut self, input: usize, message: Out) -> Result<(), EmitError> {
        self.emit_to(0, input, message)
    }

    /// Emits `message` to output port `port` as the output of input `input`.
    ///
    /// # Errors
    /// As [`BatchEmit::emit`], and [`EmitError::NoSuchPort`].
    ///
    /// # Panics
    /// When `input` is not an index of the batch.
    #[inline]
    pub fn emit_to(&mut self, port: u32, input: usize, message: Out) -> Result<(), EmitError> {
        let (corr, timed) = self.sources[input];
        self.inner.set_timed(timed.then_some(corr));
        self.inner.emit_to(port, corr, bytemuck::bytes_of(&message))
    }

    /// Emits `outputs` to output port 0, output `i` answering input `i` (carrying its
    /// correlation id), as one run: into the host output or a downstream kernel routed
    /// with the kernel as its only producer, room for all of them is claimed at once and
    /// the consumer woken once. The handler form of a vectorised map.
    ///
    /// ```
    /// use gyre::KernelSpec;
    /// let spec = KernelSpec::<u64, u64>::new("square").cpu_batch(|inputs, out| {
    ///     let squares: Vec<u64> = inputs.iter().map(|x| x * x).collect();
    ///     Ok(out.emit_all(&squares)?)
    /// });
    /// ```
    ///
    /// # Errors
    /// As [`BatchEmit::emit`]; nothing is written when a message does not fit the
    /// target's slots.
    ///
    /// # Panics
    /// When there are more outputs than inputs.
    #[inline]
    pub fn emit_all(&mut self, outputs: &[Out]) -> Result<(), EmitError> {
        self.emit_all_to(0, outputs)
    }

    /// [`BatchEmit::emit_all`] to output port `port`.
    ///
    /// # Errors
    /// As [`BatchEmit::emit_all`], and [`EmitError::NoSuchPort`].
    ///
    /// # Panics
    /// When there are more outputs than inputs.
    pub fn emit_all_to(&mut self, port: u32, outputs: &[Out]) -> Result<(), EmitError> {
        assert!(
            outputs.len() <= self.sources.len(),
            "{} outputs for a batch of {} inputs: emit_all answers input i with output i",
            outputs.len(),
            self.sources.len()
        );
        let sources = self.sources;
        self.inner.emit_run(port, outputs.len(), |i| {
            let (corr, timed) = sources[i];
            (corr, timed, bytemuck::bytes_of(&outputs[i]))
        })
    }

    /// Emits `message` to port `port` with correlation id `corr` (answering no input in
    /// particular: an aggregate, say).
    ///
    /// # Errors
    /// As [`BatchEmit::emit_to`].
    pub fn emit_with_corr(&mut self, port: u32, message: Out, corr: u64) -> Result<(), EmitError> {
        self.inner.clear_source();
        self.inner
            .emit_to(port, split(corr), bytemuck::bytes_of(&message))
    }

    /// The correlation id input `input` was sent with (0 when the sender set none).
    ///
    /// # Panics
    /// When `input` is not an index of the batch.
    pub fn corr(&self, input: usize) -> u64 {
        match self.sources[input] {
            (_, true) => 0,
            (corr, false) => join(corr),
        }
    }

    /// Number of output ports (see [`crate::KernelSpec::ports`]).
    pub fn port_count(&self) -> u32 {
        self.inner.port_count()
    }
}

impl<Out> std::fmt::Debug for BatchEmit<'_, '_, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchEmit")
            .field("inputs", &self.sources.len())
            .finish()
    }
}

/// A typed batch handler, erased for the backend: copies the batch's inputs into a buffer
/// it keeps (no allocation once it has held the largest batch) and calls the closure once.
pub(crate) struct BatchFn<In, Out, F> {
    handler: F,
    inputs: Vec<In>,
    sources: Vec<([u32; 2], bool)>,
    _out: PhantomData<fn(Out)>,
}

impl<In, Out, F> BatchFn<In, Out, F> {
    pub(crate) fn new(handler: F, capacity: usize) -> Self {
        Self {
            handler,
            inputs: Vec::with_capacity(capacity),
            sources: Vec::with_capacity(capacity),
            _out: PhantomData,
        }
    }
}

impl<In, Out, F> Handler for BatchFn<In, Out, F>
where
    In: Message,
    Out: Message,
    F: FnMut(&[In], &mut BatchEmit<'_, '_, Out>) -> Result<(), HandlerError> + Send + 'static,
{
    fn handle(&mut self, message: Raw<'_>, out: &mut Emitter<'_>) -> Result<(), HandlerError> {
        // Only asked for when the kernel does not hand over batches: a batch of one.
        let size = std::mem::size_of::<In>();
        let input: In = *bytemuck::from_bytes(&message.payload[..size]);
        self.inputs.clear();
        self.inputs.push(input);
        self.sources.clear();
        self.sources.push((message.corr, is_timed(message.tag)));
        let mut emit = BatchEmit {
            inner: out,
            sources: &self.sources,
            _out: PhantomData,
        };
        (self.handler)(&self.inputs, &mut emit)
    }

    fn takes_batches(&self) -> bool {
        true
    }

    fn handle_batch(
        &mut self,
        batch: &Batch<'_>,
        out: &mut Emitter<'_>,
    ) -> Result<(), HandlerError> {
        let size = std::mem::size_of::<In>();
        self.inputs.clear();
        self.sources.clear();
        let (inputs, sources) = (&mut self.inputs, &mut self.sources);
        batch.for_each(|_, m| {
            inputs.push(*bytemuck::from_bytes(&m.payload[..size]));
            sources.push((m.corr, is_timed(m.tag)));
        });
        let mut emit = BatchEmit {
            inner: out,
            sources: &self.sources,
            _out: PhantomData,
        };
        (self.handler)(&self.inputs, &mut emit)
    }
}

/// Whether a message's tag marks it timed (its correlation id is a host send time).
fn is_timed(tag: u32) -> bool {
    tag & gyre_runtime::abi::TAG_KIND_MASK == gyre_runtime::abi::KIND_TIMED
}
