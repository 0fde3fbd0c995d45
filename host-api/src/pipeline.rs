//! Pipelines: a group whose stages are routed one to the next.

use std::marker::PhantomData;
use std::time::Duration;

use crate::group::{GroupBuilder, PortTo};
use crate::report::GroupReport;
use crate::spec::Message;
use crate::{Error, Group, Kernel, KernelSpec, Runtime, SendBatchError, SendError, Sender};

/// Adds a pipeline's pending last stage, with or without a host output.
type AddStage<'rt> = Box<dyn FnOnce(&mut GroupBuilder<'rt>, bool) -> usize + 'rt>;

/// Builds a linear [`Pipeline`]: each stage's port 0 routed to the next stage's inbox.
/// Intermediate stages get no host output; the last stage's output goes to the host.
///
/// ```
/// use gyre::{KernelSpec, Runtime};
/// use std::time::Duration;
///
/// let runtime = Runtime::builder().build()?;
/// let pipeline = runtime
///     .pipeline::<u32>("math")
///     .stage(KernelSpec::<u32, u32>::new("add").cpu(|x, out| Ok(out.emit(x + 1)?)))
///     .stage(KernelSpec::<u32, u64>::new("square").cpu(|x, out| Ok(out.emit(u64::from(*x).pow(2))?)))
///     .launch()?;
/// pipeline.activate()?;
/// pipeline.send(2)?;
/// assert_eq!(pipeline.recv()?, 9);
/// assert_eq!(pipeline.drain(Duration::from_secs(5)).undelivered_count(), 0);
/// # Ok::<(), gyre::Error>(())
/// ```
pub struct PipelineBuilder<'rt, In, Out> {
    group: GroupBuilder<'rt>,
    pending: Option<AddStage<'rt>>,
    added: Option<usize>,
    first: Option<usize>,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> std::fmt::Debug for PipelineBuilder<'_, In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl<'rt, In: Message, Out: Message> PipelineBuilder<'rt, In, Out> {
    pub(crate) fn new(runtime: &'rt Runtime, name: String) -> Self {
        Self {
            group: GroupBuilder::new(runtime, name),
            pending: None,
            added: None,
            first: None,
            _types: PhantomData,
        }
    }

    fn add_pending(&mut self, host_output: bool) -> Option<usize> {
        let add = self.pending.take()?;
        let index = add(&mut self.group, host_output);
        if let Some(prev) = self.added {
            self.group.routes.push((prev, 0, PortTo::Kernel(index)));
        }
        self.first.get_or_insert(index);
        self.added = Some(index);
        Some(index)
    }

    /// Appends a stage taking what the previous stage emits on port 0.
    pub fn stage<Next: Message>(
        mut self,
        spec: KernelSpec<Out, Next>,
    ) -> PipelineBuilder<'rt, In, Next> {
        self.add_pending(false);
        PipelineBuilder {
            group: self.group,
            pending: Some(Box::new(
                move |group: &mut GroupBuilder<'rt>, host_output| {
                    let spec = if host_output {
                        spec
                    } else {
                        spec.no_host_output()
                    };
                    group.add(spec).index
                },
            )),
            added: self.added,
            first: self.first,
            _types: PhantomData,
        }
    }

    /// Launches the stages (in state `Launched`; call [`Pipeline::activate`]).
    ///
    /// # Errors
    /// As [`GroupBuilder::launch`]; [`Error::Launch`] for a pipeline with no stage.
    pub fn launch(mut self) -> Result<Pipeline<In, Out>, Error> {
        let name = self.group.name.clone();
        let last = self.add_pending(true).ok_or_else(|| {
            Error::Launch(format!(
                "pipeline `{name}` has no stage: add one with .stage(spec)"
            ))
        })?;
        let first = self.first.unwrap_or(last);
        let group = self.group.launch()?;
        Ok(Pipeline {
            input: Sender::over(group.backing(first)),
            output: Kernel::over(group.backing(last)),
            group,
            _types: PhantomData,
        })
    }
}

/// A launched linear pipeline: send `In` to the first stage, receive `Out` from the last.
pub struct Pipeline<In, Out> {
    group: Group,
    input: Sender<In>,
    output: Kernel<In, Out>,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> std::fmt::Debug for Pipeline<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl<In: Message, Out: Message> Pipeline<In, Out> {
    /// The group behind the pipeline.
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// A sender into the first stage.
    pub fn sender(&self) -> Sender<In> {
        self.input.clone()
    }

    /// Activates every stage, last first.
    ///
    /// # Errors
    /// As [`Group::activate`].
    pub fn activate(&self) -> Result<(), Error> {
        self.group.activate()
    }

    /// Sends into the first stage, waiting while its inbox is full.
    ///
    /// # Errors
    /// As [`Kernel::send`].
    pub fn send(&self, message: In) -> Result<(), SendError<In>> {
        self.input.send(message)
    }

    /// Sends into the first stage, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// As [`Kernel::send_timeout`].
    pub fn send_timeout(&self, message: In, timeout: Duration) -> Result<(), SendError<In>> {
        self.input.send_within(message, timeout)
    }

    /// Sends with a correlation id (carried through every stage that emits with
    /// [`crate::Emit::emit`]).
    ///
    /// # Errors
    /// As [`Kernel::send`].
    pub fn send_with_corr(&self, message: In, corr: u64) -> Result<(), SendError<In>> {
        self.input.send_with_corr(message, corr)
    }

    /// Sends from async code.
    ///
    /// # Errors
    /// As [`Kernel::send`].
    pub async fn send_async(&self, message: In) -> Result<(), SendError<In>> {
        self.input.send_async(message).await
    }

    /// Receives from the last stage, waiting for a message.
    ///
    /// # Errors
    /// As [`Kernel::recv`].
    pub fn recv(&self) -> Result<Out, Error> {
        self.output.recv()
    }

    /// Receives with the correlation id.
    ///
    /// # Errors
    /// As [`Kernel::recv`].
    pub fn recv_with_corr(&self) -> Result<(Out, u64), Error> {
        self.output.recv_with_corr()
    }

    /// Receives, waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`Kernel::recv_timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Out, Error> {
        self.output.recv_timeout(timeout)
    }

    /// Receives from async code without blocking the executor thread.
    ///
    /// # Errors
    /// As [`Kernel::recv`].
    pub async fn recv_async(&self) -> Result<Out, Error> {
        self.output.recv_async().await
    }

    /// Receives without waiting.
    ///
    /// # Errors
    /// As [`Kernel::try_recv`].
    pub fn try_recv(&self) -> Result<Option<Out>, Error> {
        self.output.try_recv()
    }

    /// Sends every message of `messages` into the first stage, in order, waiting while
    /// its inbox is full (see [`Kernel::send_batch`]).
    ///
    /// # Errors
    /// As [`Kernel::send_batch`]: `&messages[err.sent..]` were not sent.
    pub fn send_batch(&self, messages: &[In]) -> Result<usize, SendBatchError<In>> {
        self.input.send_batch(messages)
    }

    /// Sends every message of `messages` into the first stage, in order, waiting at most
    /// `timeout` (for the whole batch) for room (see [`Kernel::send_batch_timeout`]).
    ///
    /// # Errors
    /// As [`Kernel::send_batch_timeout`]: `&messages[err.sent..]` were not sent.
    pub fn send_batch_timeout(
        &self,
        messages: &[In],
        timeout: Duration,
    ) -> Result<usize, SendBatchError<In>> {
        self.input.send_batch_within(messages, timeout)
    }

    /// Sends as many of `messages` as there is room for now, without waiting (see
    /// [`Kernel::try_send_batch`]).
    ///
    /// # Errors
    /// As [`Kernel::try_send_batch`].
    pub fn try_send_batch(&self, messages: &[In]) -> Result<usize, SendBatchError<In>> {
        self.input.try_send_batch(messages)
    }

    /// Sends what `messages` yields into the first stage, in order, waiting while its
    /// inbox is full (see [`Kernel::send_iter`]).
    ///
    /// # Errors
    /// As [`Kernel::send_iter`].
    pub fn send_iter<I: IntoIterator<Item = In>>(
        &self,
        messages: I,
    ) -> Result<usize, SendBatchError<In>> {
        self.input.send_iter(messages)
    }

    /// Sends every message of `messages` from async code (see
    /// [`Kernel::send_batch_async`]).
    ///
    /// # Errors
    /// As [`Kernel::send_batch`].
    pub async fn send_batch_async(&self, messages: &[In]) -> Result<usize, SendBatchError<In>> {
        self.input.send_batch_async(messages).await
    }

    /// Receives up to `max` messages from the last stage into `buf`, waiting for at
    /// least one (see [`Kernel::recv_batch`]).
    ///
    /// # Errors
    /// As [`Kernel::recv_batch`].
    pub fn recv_batch(&self, buf: &mut Vec<Out>, max: usize) -> Result<usize, Error> {
        self.output.recv_batch(buf, max)
    }

    /// Receives up to `max` messages, waiting at most `timeout` for the first.
    ///
    /// # Errors
    /// As [`Kernel::recv_batch_timeout`].
    pub fn recv_batch_timeout(
        &self,
        buf: &mut Vec<Out>,
        max: usize,
        timeout: Duration,
    ) -> Result<usize, Error> {
        self.output.recv_batch_timeout(buf, max, timeout)
    }

    /// Receives up to `max` messages that are there now, without waiting.
    ///
    /// # Errors
    /// As [`Kernel::try_recv_batch`].
    pub fn try_recv_batch(&self, buf: &mut Vec<Out>, max: usize) -> Result<usize, Error> {
        self.output.try_recv_batch(buf, max)
    }

    /// Receives up to `max` messages from async code (see [`Kernel::recv_batch_async`]).
    ///
    /// # Errors
    /// As [`Kernel::recv_batch`].
    pub async fn recv_batch_async(&self, buf: &mut Vec<Out>, max: usize) -> Result<usize, Error> {
        self.output.recv_batch_async(buf, max).await
    }

    /// A requester over the pipeline: send a request into the first stage, get the
    /// reply the last stage emits with the same correlation id (see [`crate::Requester`]).
    ///
    /// # Errors
    /// [`Error::ReceiverTaken`] when the last stage's output is already taken.
    pub fn requester(&self) -> Result<crate::Requester<In, Out>, Error> {
        crate::Requester::over(self.input.backing().clone(), self.output.backing.clone())
    }

    /// End-to-end latency quantiles of requests answered through the pipeline (see
    /// [`crate::Requester`]); `None` before the first.
    pub fn latency(&self) -> Option<crate::LatencySummary> {
        self.output.latency()
    }

    /// Drains the stages upstream first (see [`Group::drain`]).
    pub fn drain(&self, timeout: Duration) -> GroupReport {
        self.group.drain(timeout)
    }

    /// Terminates every stage (see [`Group::terminate`]).
    pub fn terminate(&self) -> GroupReport {
        self.group.terminate()
    }
}
