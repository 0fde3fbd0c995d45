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
    inputs: Inputs<'a>,
    _out: PhantomData<fn(Out)>,
}

/// Where the inputs of a batch are.
enum Inputs<'a> {
    /// A run of messages still in their inbox slots.
    Run(&'a Batch<'a>),
    /// One message (a backend that hands over messages one at a time).
    One(Raw<'a>),
}

impl Inputs<'_> {
    fn len(&self) -> usize {
        match self {
            Self::Run(batch) => batch.len(),
            Self::One(_) => 1,
        }
    }

    fn with<R>(&self, input: usize, f: impl FnOnce(Raw<'_>) -> R) -> R {
        match self {
            Self::Run(batch) => batch.with(input, f),
            Self::One(message) => {
                assert_eq!(input, 0, "input {input} is outside a batch of 1");
                f(*message)
            }
        }
    }
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
        let corr = self.inputs.with(input, |source| {
            self.inner.set_source(&source);
            source.corr
        });
        self.inner.emit_to(port, corr, bytemuck::bytes_of(&message))
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
        self.inputs.with(input, |source| {
            if source.tag & gyre_runtime::abi::TAG_KIND_MASK == gyre_runtime::abi::KIND_TIMED {
                0
            } else {
                join(source.corr)
            }
        })
    }

    /// Number of output ports (see [`crate::KernelSpec::ports`]).
    pub fn port_count(&self) -> u32 {
        self.inner.port_count()
    }
}

impl<Out> std::fmt::Debug for BatchEmit<'_, '_, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchEmit")
            .field("inputs", &self.inputs.len())
            .finish()
    }
}

/// A typed batch handler, erased for the backend: copies the batch's inputs into a buffer
/// it keeps (no allocation once it has held the largest batch) and calls the closure once.
pub(crate) struct BatchFn<In, Out, F> {
    handler: F,
    inputs: Vec<In>,
    _out: PhantomData<fn(Out)>,
}

impl<In, Out, F> BatchFn<In, Out, F> {
    pub(crate) fn new(handler: F, capacity: usize) -> Self {
        Self {
            handler,
            inputs: Vec::with_capacity(capacity),
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
        let mut emit = BatchEmit {
            inner: out,
            inputs: Inputs::One(message),
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
        for i in 0..batch.len() {
            let input: In = batch.with(i, |m| *bytemuck::from_bytes(&m.payload[..size]));
            self.inputs.push(input);
        }
        let mut emit = BatchEmit {
            inner: out,
            inputs: Inputs::Run(batch),
            _out: PhantomData,
        };
        (self.handler)(&self.inputs, &mut emit)
    }
}
