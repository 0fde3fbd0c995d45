//! What a CPU handler is written against: the message it is handed, the [`Emitter`] it
//! emits through, and the errors it reports.
//!
//! A kernel's CPU implementation is a [`Handler`] (any
//! `FnMut(Message, &mut Emitter) -> Result<(), HandlerError>` closure is one), made once
//! or by a [`HandlerFactory`] on every restart. These types are the handler-facing half
//! of the CPU backend: user code and the public crate write against them; how the
//! backend schedules handlers and moves their messages stays inside
//! [`crate::backend`] (the public crate reaches it through
//! [`crate::backend::seam::cpu`]).

use std::sync::Arc;

pub use crate::backend::cpu::Emitter;

/// A message as a handler sees it: borrowed from its inbox slot.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// Message kind (low 16 bits) and sender id (high 16 bits).
    pub tag: u32,
    /// Correlation id.
    pub corr: [u32; 2],
    /// Payload bytes (the whole slot payload; the message is at its start).
    pub payload: &'a [u8],
}

/// An error a handler reports for one message. The message counts as processed with an
/// error; the kernel keeps running.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

/// The code a kernel runs for each message, or for each run of messages (a batch).
pub trait Handler: Send + 'static {
    /// Handles one message; may emit through `out`.
    ///
    /// # Errors
    /// A [`HandlerError`] is counted in the kernel's `errors` counter.
    fn handle(&mut self, message: Message<'_>, out: &mut Emitter<'_>) -> Result<(), HandlerError>;

    /// Whether the kernel hands this handler runs of messages through
    /// [`Handler::handle_batch`] instead of one message at a time through
    /// [`Handler::handle`]. Asked once per turn; `false` by default.
    fn takes_batches(&self) -> bool {
        false
    }

    /// Handles a run of messages at once (only called when [`Handler::takes_batches`]):
    /// the messages stay in their inbox slots until it returns, like the message in
    /// hand of [`Handler::handle`]. The default hands them to `handle` one by one and
    /// stops at the first error.
    ///
    /// # Errors
    /// A [`HandlerError`] sends every message of the batch to the dead-letter sink and
    /// counts each in the kernel's `errors` counter (what the batch emitted stands).
    fn handle_batch(
        &mut self,
        batch: &Batch<'_>,
        out: &mut Emitter<'_>,
    ) -> Result<(), HandlerError> {
        for i in 0..batch.len() {
            batch.with(i, |message| {
                out.set_source(&message);
                self.handle(message, out)
            })?;
        }
        Ok(())
    }
}

/// A run of messages from one inbox ring handed to [`Handler::handle_batch`], read in
/// place from their slots: at most the kernel's quantum, in the order they were sent.
pub struct Batch<'a> {
    pub(crate) consumer: &'a crate::ring::Consumer<std::sync::Arc<crate::ring::HostRing>>,
    pub(crate) len: u32,
}

impl Batch<'_> {
    /// Number of messages.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the batch is empty (never, when a kernel hands it over).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hands message `i`, borrowed from its slot, to `f`.
    ///
    /// # Panics
    /// When `i >= self.len()`.
    #[inline]
    pub fn with<R>(&self, i: usize, f: impl FnOnce(Message<'_>) -> R) -> R {
        assert!(
            i < self.len(),
            "message {i} is outside a batch of {}",
            self.len
        );
        self.consumer.with_run_slot(i as u32, |slot| {
            f(Message {
                tag: slot.tag,
                corr: slot.corr,
                payload: slot.payload,
            })
        })
    }
}

impl Batch<'_> {
    /// Hands every message, borrowed from its slot, to `f` with its index, in order:
    /// the whole batch in one pass, which finds where the slots are once rather than
    /// once per message as [`Batch::with`] does.
    #[inline]
    pub fn for_each(&self, mut f: impl FnMut(usize, Message<'_>)) {
        self.consumer.read_run(0, self.len, |i, slot| {
            f(
                i as usize,
                Message {
                    tag: slot.tag,
                    corr: slot.corr,
                    payload: slot.payload,
                },
            );
        });
    }
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("len", &self.len).finish()
    }
}

impl<F> Handler for F
where
    F: FnMut(Message<'_>, &mut Emitter<'_>) -> Result<(), HandlerError> + Send + 'static,
{
    fn handle(&mut self, message: Message<'_>, out: &mut Emitter<'_>) -> Result<(), HandlerError> {
        self(message, out)
    }
}

/// Why an emit was refused. Nothing was written; the handler decides what to do
/// (returning the error sends the input message to the dead-letter sink).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The port is not bound to anything.
    #[error("output port {port} is not bound: give the kernel a host output, or route the port to a kernel or the dead-letter sink")]
    Unbound {
        /// The port.
        port: u32,
    },
    /// The kernel has fewer ports.
    #[error("output port {port} does not exist; the kernel has {ports}: raise KernelSpec::ports")]
    NoSuchPort {
        /// The port asked for.
        port: u32,
        /// How many the kernel has.
        ports: u32,
    },
    /// The payload is larger than the target's slots.
    #[error("emitted {len} bytes into slots of {max} payload bytes: raise the target's slot size")]
    TooLarge {
        /// Bytes emitted.
        len: usize,
        /// Payload bytes per slot.
        max: usize,
    },
    /// A terminate gave up waiting for this handler and handed its message back; what
    /// it emits now is refused so the message is not delivered twice.
    #[error("the kernel was terminated while this handler ran and its message was handed back; the emit is refused")]
    Abandoned,
}

impl From<EmitError> for HandlerError {
    fn from(value: EmitError) -> Self {
        Self(value.to_string())
    }
}

/// Makes a fresh handler: what a restart runs instead of the old handler value, so a
/// handler whose state a panic left half-updated starts clean.
#[derive(Clone)]
pub struct HandlerFactory(pub Arc<dyn Fn() -> Box<dyn Handler> + Send + Sync>);

impl std::fmt::Debug for HandlerFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandlerFactory")
    }
}
