//! [`Receiver`]: the exclusive receiving end of a kernel's host output, on any backend,
//! and the wait every receive shares (on wakers, never on a sleep).

use std::future::poll_fn;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gyre_runtime::backend::seam::cpu::{CpuOutput, RecvFailure};

use crate::backing::{cpu_recv_error, read, Backing};
use crate::spec::{join, Message};
use crate::Error;

/// Tries `attempt` once without reading the clock, then waits on the kernel's output
/// signal (spin, yield, park; a device is watched meanwhile) until it yields a message
/// or an error, or the timeout passes.
pub(crate) fn wait_recv<T>(
    backing: &Backing,
    timeout: Option<Duration>,
    mut attempt: impl FnMut() -> Result<Option<T>, Error>,
) -> Result<T, Error> {
    if let Some(message) = attempt()? {
        return Ok(message);
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let _watch = backing.watch();
    backing
        .items()
        .wait_until(deadline, || attempt().transpose())
        .unwrap_or_else(|| {
            Err(Error::Timeout {
                kernel: backing.name().to_owned(),
                after: timeout.unwrap_or_default(),
            })
        })
}

/// The receiving end a [`Receiver`] holds: the CPU kernel's output consumer, or the
/// right to a device kernel's host outbox.
pub(crate) enum RxEnd {
    Cpu(CpuOutput),
    Device,
}

impl RxEnd {
    /// Takes the receiving end of `backing`'s kernel.
    pub(crate) fn take(backing: &Backing) -> Result<Self, Error> {
        match backing {
            Backing::Cpu(core) => core
                .take_output()
                .map(RxEnd::Cpu)
                .map_err(|f| cpu_recv_error(core, f)),
            Backing::Device(d) => {
                if !d.group.host_output[d.k] {
                    return Err(backing.no_output());
                }
                if d.group.receiver_taken[d.k].swap(true, Ordering::Relaxed) {
                    return Err(Error::ReceiverTaken {
                        kernel: backing.name().to_owned(),
                    });
                }
                Ok(RxEnd::Device)
            }
        }
    }

    /// Gives the receiving end back to `backing`'s kernel.
    pub(crate) fn give_back(self, backing: &Backing) {
        match (self, backing) {
            (RxEnd::Cpu(rx), Backing::Cpu(core)) => core.return_output(rx),
            (RxEnd::Device, Backing::Device(d)) => {
                d.group.receiver_taken[d.k].store(false, Ordering::Relaxed);
            }
            _ => unreachable!("a receiving end goes back to the kernel it came from"),
        }
    }

    /// Takes the next output through this end, handing payload and correlation id to
    /// `f`; `Ok(None)` when nothing is there yet.
    pub(crate) fn try_recv_with<R>(
        &mut self,
        backing: &Backing,
        f: impl FnOnce(&[u8], [u32; 2]) -> R,
    ) -> Result<Option<R>, Error> {
        match (self, backing) {
            (RxEnd::Cpu(rx), Backing::Cpu(core)) => {
                match core.try_recv_from(rx, |s| f(s.payload, s.corr)) {
                    Ok(r) => Ok(Some(r)),
                    Err(RecvFailure::Empty) => Ok(None),
                    Err(failure) => Err(cpu_recv_error(core, failure)),
                }
            }
            (RxEnd::Device, Backing::Device(d)) => d.try_recv_with(f),
            _ => unreachable!("a receiving end is used with the kernel it came from"),
        }
    }
}

/// The exclusive receiving end of a kernel's host-bound output (see
/// [`crate::Kernel::receiver`]).
pub struct Receiver<Out> {
    backing: Backing,
    rx: Option<RxEnd>,
    _types: PhantomData<fn() -> Out>,
}

impl<Out> std::fmt::Debug for Receiver<Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("kernel", &self.backing.name())
            .finish_non_exhaustive()
    }
}

impl<Out> Drop for Receiver<Out> {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            rx.give_back(&self.backing);
        }
    }
}

impl<Out: Message> Receiver<Out> {
    pub(crate) fn take(backing: Backing) -> Result<Self, Error> {
        let rx = RxEnd::take(&backing)?;
        Ok(Self {
            backing,
            rx: Some(rx),
            _types: PhantomData,
        })
    }

    fn within(&mut self, timeout: Option<Duration>) -> Result<(Out, u64), Error> {
        let backing = &self.backing;
        let rx = self
            .rx
            .as_mut()
            .expect("the receiving end is held until drop");
        wait_recv(backing, timeout, || {
            rx.try_recv_with(backing, |p, corr| (read::<Out>(p), join(corr)))
        })
    }

    /// The backend of the kernel it receives from: `cpu`, `cuda`, `cuda-emulated` or
    /// `wgpu` (as [`crate::Kernel::backend`]).
    pub fn backend(&self) -> &'static str {
        self.backing.backend()
    }

    /// Receives the next message, waiting for one.
    ///
    /// # Errors
    /// [`Error::Terminated`] (or `Faulted`) when the kernel stopped and everything it
    /// emitted was received.
    pub fn recv(&mut self) -> Result<Out, Error> {
        self.within(None).map(|(message, _)| message)
    }

    /// Receives the next message with its correlation id, waiting for one.
    ///
    /// # Errors
    /// As [`Receiver::recv`].
    pub fn recv_with_corr(&mut self) -> Result<(Out, u64), Error> {
        self.within(None)
    }

    /// Receives, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`], or as [`Receiver::recv`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Out, Error> {
        self.within(Some(timeout)).map(|(message, _)| message)
    }

    /// Receives the next message with its correlation id, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`], or as [`Receiver::recv`].
    pub fn recv_with_corr_timeout(&mut self, timeout: Duration) -> Result<(Out, u64), Error> {
        self.within(Some(timeout))
    }

    /// Receives without waiting; `Ok(None)` when nothing is there yet.
    ///
    /// # Errors
    /// As [`Receiver::recv`].
    pub fn try_recv(&mut self) -> Result<Option<Out>, Error> {
        let rx = self
            .rx
            .as_mut()
            .expect("the receiving end is held until drop");
        rx.try_recv_with(&self.backing, |p, _| read::<Out>(p))
    }

    /// Receives with its correlation id without waiting; `Ok(None)` when nothing is there
    /// yet.
    ///
    /// # Errors
    /// As [`Receiver::recv`].
    pub fn try_recv_with_corr(&mut self) -> Result<Option<(Out, u64)>, Error> {
        let rx = self
            .rx
            .as_mut()
            .expect("the receiving end is held until drop");
        rx.try_recv_with(&self.backing, |p, corr| (read::<Out>(p), join(corr)))
    }

    /// Receives up to `max` messages into `buf` (appended, in order), waiting until at
    /// least one is there. On the CPU the batch is one consume of the output ring: one
    /// release of its `head` and at most one wake of a kernel stalled on it, no lock;
    /// nothing is allocated when `buf` has room for `max` more. On a device backend it
    /// is a loop over the one-message receive. Returns how many it appended: at least
    /// one, never more than `max` (0 only for `max == 0`).
    ///
    /// ```
    /// use gyre::{KernelSpec, Runtime};
    ///
    /// let runtime = Runtime::builder().build()?;
    /// let kernel = runtime.launch(KernelSpec::<u64, u64>::new("inc").cpu(|x, out| Ok(out.emit(x + 1)?)))?;
    /// kernel.activate()?;
    /// let mut rx = kernel.receiver()?;
    /// let inputs: Vec<u64> = (0..100).collect();
    /// kernel.send_batch(&inputs)?;
    /// let mut got = Vec::with_capacity(100);
    /// while got.len() < 100 {
    ///     let n = rx.recv_batch(&mut got, 32)?; // at most 32 at a time
    ///     assert!((1..=32).contains(&n));
    /// }
    /// assert!(got.iter().copied().eq(1..=100));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Terminated`] (or `Faulted`) when the kernel stopped and everything it
    /// emitted was received.
    pub fn recv_batch(&mut self, buf: &mut Vec<Out>, max: usize) -> Result<usize, Error> {
        self.batch_within(buf, max, None)
    }

    /// Receives up to `max` messages into `buf`, waiting at most `timeout` for the first.
    ///
    /// # Errors
    /// [`Error::Timeout`], or as [`Receiver::recv_batch`].
    pub fn recv_batch_timeout(
        &mut self,
        buf: &mut Vec<Out>,
        max: usize,
        timeout: Duration,
    ) -> Result<usize, Error> {
        self.batch_within(buf, max, Some(timeout))
    }

    /// Receives up to `max` messages that are there now into `buf`, without waiting;
    /// `Ok(0)` when none is.
    ///
    /// # Errors
    /// As [`Receiver::recv_batch`].
    pub fn try_recv_batch(&mut self, buf: &mut Vec<Out>, max: usize) -> Result<usize, Error> {
        let rx = self
            .rx
            .as_mut()
            .expect("the receiving end is held until drop");
        crate::batch::try_recv_end(rx, &self.backing, buf, max)
    }

    /// Receives up to `max` messages into `buf` from async code, waiting for the first
    /// without blocking the executor thread.
    ///
    /// # Cancel safety
    /// Cancel-safe: messages are taken only in the poll that returns them.
    ///
    /// # Errors
    /// As [`Receiver::recv_batch`].
    pub async fn recv_batch_async(
        &mut self,
        buf: &mut Vec<Out>,
        max: usize,
    ) -> Result<usize, Error> {
        let backing = &self.backing;
        let rx = self
            .rx
            .as_mut()
            .expect("the receiving end is held until drop");
        crate::batch::recv_wait_async(backing, max, || {
            crate::batch::try_recv_end(rx, backing, buf, max)
        })
        .await
    }

    fn batch_within(
        &mut self,
        buf: &mut Vec<Out>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, Error> {
        let backing = &self.backing;
        let rx = self
            .rx
            .as_mut()
            .expect("the receiving end is held until drop");
        crate::batch::recv_wait(backing, max, timeout, || {
            crate::batch::try_recv_end(rx, backing, buf, max)
        })
    }

    /// Receives from async code without blocking the executor thread.
    ///
    /// # Cancel safety
    /// Cancel-safe: a message is taken only in the poll that returns it.
    ///
    /// # Errors
    /// As [`Receiver::recv`].
    pub async fn recv_async(&mut self) -> Result<Out, Error> {
        self.recv_with_corr_async()
            .await
            .map(|(message, _)| message)
    }

    /// Receives the next message with its correlation id without blocking a thread: the
    /// task is woken when the kernel emits.
    ///
    /// # Cancel safety
    /// Cancel-safe: a message is taken only in the poll that returns it.
    ///
    /// # Errors
    /// As [`Receiver::recv`].
    pub async fn recv_with_corr_async(&mut self) -> Result<(Out, u64), Error> {
        let backing = &self.backing;
        let rx = self
            .rx
            .as_mut()
            .expect("the receiving end is held until drop");
        let _watch = backing.watch();
        poll_fn(|cx| {
            backing.items().poll_until(cx, || {
                rx.try_recv_with(backing, |p, corr| (read::<Out>(p), join(corr)))
                    .transpose()
            })
        })
        .await
    }
}
