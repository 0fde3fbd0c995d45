//! The host side of a kernel's lifecycle: activate, deactivate, drain, terminate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use super::{Exec, KernelCore, INBOX_RING, LANE_RING, NOT_IN_HAND, PUBLISH_SPINS, TAKEN_IN_HAND};
use crate::abi::{make_tag, Command, State, HOST_SENDER_ID, KIND_MESSAGE};
use crate::backend::{CommandError, DrainSummary};
use crate::lifecycle::{self, Event};
use crate::ring::{Producer, RingMemory, SlotRef, Step};
use crate::sync::Ordering;

/// How long a drain whose timeout expired waits, past its deadline, for the kernel to
/// acknowledge the terminate it falls back to; a handler still running then is
/// abandoned (see [`KernelCore::terminate`]). This bounds a drain, and so a group drain
/// and a runtime shutdown, at their timeout plus this grace, whatever a handler does.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// The least a fallback terminate waits for an acknowledgement, even past the grace: a
/// live kernel that is only waiting for a worker acknowledges within it.
const MIN_ACK_WAIT: Duration = Duration::from_millis(100);

/// One message handed back: its correlation id and slot payload bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptMessage {
    /// Correlation id (the user's; `[0, 0]` when none).
    pub corr: [u32; 2],
    /// The slot's payload bytes.
    pub payload: Vec<u8>,
}

/// What the stop of a gone runtime handed back for a kernel, kept until one of its
/// handles drains or terminates it.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    inputs: Vec<KeptMessage>,
    outputs: Vec<KeptMessage>,
}

impl Kept {
    /// Messages held.
    pub(crate) fn len(&self) -> usize {
        self.inputs.len() + self.outputs.len()
    }
}

fn replay(messages: Vec<KeptMessage>, f: &mut dyn FnMut(SlotRef<'_>)) {
    for m in messages {
        f(SlotRef {
            position: 0,
            tag: make_tag(KIND_MESSAGE, HOST_SENDER_ID),
            corr: m.corr,
            payload: &m.payload,
        });
    }
}

impl KernelCore {
    /// Marks the kernel as belonging to a runtime that is gone (shut down or dropped):
    /// its threads are stopped, sends fail, and a drain or terminate on a surviving
    /// handle hands back what [`KernelCore::keep_for_handles`] kept, instead of failing.
    /// Receivers and blocked senders are woken to learn it.
    pub fn mark_runtime_gone(&self) {
        // ORDERING: Release pairs with the Acquire load in `runtime_gone`: whoever sees
        // the flag sees what was kept before it.
        self.runtime_gone.store(true, Ordering::Release);
        self.outbox_items.notify();
        self.inbox_space.notify();
        self.state_changed.notify();
    }

    /// Marks the kernel as stopping with its runtime (a shutdown or drop has begun): a
    /// send refused from now on says the runtime is going, not that the kernel drains
    /// (whose advice, to restart it, cannot work). Only chooses the words of errors.
    pub fn mark_runtime_stopping(&self) {
        // Relaxed: a flag that only chooses the words of later errors.
        self.runtime_stopping.store(true, Ordering::Relaxed);
    }

    /// Whether the kernel's runtime is shutting down or gone.
    pub fn runtime_stopping(&self) -> bool {
        // Relaxed: as in `mark_runtime_stopping`.
        self.runtime_stopping.load(Ordering::Relaxed) || self.runtime_gone()
    }

    /// Whether a terminate gave up waiting for the kernel's acknowledgement while no
    /// handler of it ran (it waited for a thread): its rings still hold what it did not
    /// deliver, and the next drain or terminate hands that back, even once the kernel
    /// reads as terminated.
    pub fn is_uncollected(&self) -> bool {
        self.uncollected.load(Ordering::Relaxed)
    }

    /// Whether the runtime that ran the kernel is gone (shut down or dropped).
    pub fn runtime_gone(&self) -> bool {
        // ORDERING: Acquire pairs with the Release store in `mark_runtime_gone`.
        self.runtime_gone.load(Ordering::Acquire)
    }

    /// Keeps messages the stop of a gone runtime handed back for this kernel: the next
    /// drain or terminate through one of its handles hands them back (once).
    pub fn keep_for_handles(&self, inputs: Vec<KeptMessage>, outputs: Vec<KeptMessage>) {
        let mut kept = self.kept.lock();
        kept.inputs.extend(inputs);
        kept.outputs.extend(outputs);
    }

    /// Hands every message still in the host-bound output ring to `on_output` (for a
    /// stopped kernel no handle can receive from any more). Returns how many; 0 while a
    /// `Receiver` holds the output.
    pub fn take_unreceived_outputs(&self, on_output: &mut dyn FnMut(SlotRef<'_>)) -> usize {
        let mut taken = 0;
        if let Some(rx) = self.outbox_rx.lock().as_mut() {
            let capacity = rx.capacity();
            rx.consume(capacity, |slot| {
                taken += 1;
                on_output(SlotRef {
                    corr: slot.user_corr(),
                    ..slot
                });
                Step::Next
            });
            taken += self.take_all_overflow(on_output);
        }
        taken
    }

    /// Hands every overflowed host-bound message to `on_output`, oldest first (see
    /// `overflow_host_output`); how many.
    fn take_all_overflow(&self, on_output: &mut dyn FnMut(SlotRef<'_>)) -> usize {
        let mut taken = 0;
        while self.take_overflow(&mut *on_output).is_some() {
            taken += 1;
        }
        taken
    }

    /// A drain or terminate of a kernel whose runtime is gone and that is stopped: hands
    /// back what was kept for it (and, for a terminate, its output ring).
    fn hand_back_kept(
        &self,
        on_input: &mut dyn FnMut(SlotRef<'_>),
        on_output: &mut dyn FnMut(SlotRef<'_>),
        take_ring_outputs: bool,
    ) -> bool {
        let kept = std::mem::take(&mut *self.kept.lock());
        let inputs = !kept.inputs.is_empty();
        replay(kept.inputs, on_input);
        replay(kept.outputs, on_output);
        if take_ring_outputs {
            self.take_unreceived_outputs(on_output);
        }
        inputs
    }

    /// When a drain that ends at `deadline` stops waiting for the terminate it falls
    /// back to.
    fn fallback_ack_deadline(&self, deadline: Instant) -> Instant {
        let now = Instant::now();
        (deadline + STOP_GRACE)
            .max(now + MIN_ACK_WAIT)
            .min(now + self.config.command_timeout)
    }

    fn wait_state(&self, deadline: Instant, mut done: impl FnMut(&Self) -> bool) -> bool {
        self.state_changed
            .wait_until(Some(deadline), || done(self).then_some(()))
            .is_some()
    }

    /// The state to check a host command against: the kernel's own when it stopped,
    /// else the target of a command it has not acknowledged yet.
    fn effective_state(&self, pending: Option<(u32, State)>) -> State {
        let actual = self.state();
        match pending {
            Some((epoch, target))
                if !lifecycle::is_stopped(actual) && !self.control.acknowledged(epoch) =>
            {
                target
            }
            _ => actual,
        }
    }

    fn issue(self: &Arc<Self>, command: Command) -> u32 {
        tracing::debug!(kernel = %self.config.name, id = self.id, ?command, "lifecycle command");
        let epoch = self.control.issue(command);
        self.wake();
        epoch
    }

    fn unresponsive(&self, waited: Duration) -> CommandError {
        CommandError::Unresponsive {
            name: self.config.name.clone(),
            waited,
        }
    }

    fn faulted(&self) -> CommandError {
        CommandError::Faulted {
            name: self.config.name.clone(),
            reason: self.fault().unwrap_or_else(|| "unknown fault".into()),
        }
    }

    /// Issues `Activate` or `Pause` and waits for the acknowledgement.
    ///
    /// # Errors
    /// [`CommandError`] when the state machine refuses, the kernel faulted, or it does
    /// not acknowledge within the command timeout.
    pub fn set_active(self: &Arc<Self>, active: bool) -> Result<State, CommandError> {
        let command = if active {
            Command::Activate
        } else {
            Command::Pause
        };
        let mut serial = self.lifecycle.lock();
        let target = lifecycle::transition(self.effective_state(*serial), Event::Command(command))?;
        let epoch = self.issue(command);
        *serial = Some((epoch, target));
        let timeout = self.config.command_timeout;
        if !self.wait_state(Instant::now() + timeout, |k| k.control.acknowledged(epoch)) {
            return Err(self.unresponsive(timeout));
        }
        match self.state() {
            s if s == target => Ok(s),
            State::Faulted => Err(self.faulted()),
            other => Err(lifecycle::LifecycleError {
                from: other,
                event: Event::Command(command),
            }
            .into()),
        }
    }

    /// Closes the inbox and waits until senders that claimed before the close finished.
    fn close_inbox(&self) {
        let tails = Producer::close_all([&self.inbox, &self.lane]);
        for (ring, tail) in [&self.inbox, &self.lane].into_iter().zip(tails) {
            let published = ring.wait_published(tail, PUBLISH_SPINS);
            debug_assert!(
                published,
                "an unbounded wait returns only when all is published"
            );
        }
        self.inbox_space.notify();
    }

    /// Hands every message still in the inbox rings to `on_input`. Call once the kernel
    /// stopped (nothing consumes them any more) and the inbox is closed.
    fn collect_inputs(&self, exec: &mut Exec, on_input: &mut dyn FnMut(SlotRef<'_>)) {
        for (producer, consumer) in [(&self.inbox, &mut exec.inbox), (&self.lane, &mut exec.lane)] {
            // Closing again returns the final tail, claims cancelled by the close included.
            let tail = producer.close();
            let published = consumer.wait_published(tail, PUBLISH_SPINS);
            debug_assert!(
                published,
                "an unbounded wait returns only when all is published"
            );
            let capacity = consumer.capacity();
            consumer.consume(capacity, |slot| {
                on_input(slot);
                Step::Next
            });
        }
    }

    /// Drains: refuses new messages, processes everything queued, then terminates.
    /// Outputs stay receivable. On timeout (or a fault meanwhile) the kernel is
    /// terminated: `on_input` gets every message left in the inbox and `on_output` any
    /// emit that was waiting for room in the output ring.
    ///
    /// A faulted kernel cannot process anything more, so draining it terminates it:
    /// its undelivered messages go to the callbacks (the one its handler panicked on
    /// first) and the summary carries its fault. The same holds when it faults during
    /// the drain.
    ///
    /// Returns within `timeout` plus [`STOP_GRACE`] whatever the handler does: after
    /// the timeout the kernel is terminated, and a handler that still has not returned
    /// after the grace is abandoned (see [`KernelCore::terminate`]).
    ///
    /// Once the runtime is gone ([`KernelCore::mark_runtime_gone`]) a drain of the
    /// stopped kernel hands back what was kept for its handles and succeeds.
    ///
    /// # Errors
    /// [`CommandError`] when the state machine refuses (a second drain, a drain of a
    /// terminated kernel), or when a kernel that does not acknowledge has no handler
    /// running either (it waits for a worker that does not come).
    pub fn drain(
        self: &Arc<Self>,
        timeout: Duration,
        on_input: &mut dyn FnMut(SlotRef<'_>),
        on_output: &mut dyn FnMut(SlotRef<'_>),
    ) -> Result<DrainSummary, CommandError> {
        self.drain_until(Instant::now() + timeout, on_input, on_output)
    }

    /// [`KernelCore::drain`] to an absolute `deadline`, which many kernels stopped one
    /// after another share: the grace after it is counted from it once, not again for
    /// each kernel (a shutdown with n stuck kernels took about n grace periods).
    ///
    /// # Errors
    /// As [`KernelCore::drain`].
    pub fn drain_until(
        self: &Arc<Self>,
        deadline: Instant,
        on_input: &mut dyn FnMut(SlotRef<'_>),
        on_output: &mut dyn FnMut(SlotRef<'_>),
    ) -> Result<DrainSummary, CommandError> {
        self.stopped_by_host.store(true, Ordering::Relaxed);
        let mut serial = self.lifecycle.lock();
        let from = self.effective_state(*serial);
        if from == State::Faulted
            || self.is_uncollected()
            || (self.runtime_gone() && lifecycle::is_stopped(from))
        {
            drop(serial);
            let abandoned = self.stop(
                on_input,
                on_output,
                false,
                self.fallback_ack_deadline(deadline),
            )?;
            return Ok(DrainSummary {
                abandoned,
                ..self.summary()
            });
        }
        let target = lifecycle::transition(from, Event::Command(Command::Drain))?;
        self.close_inbox();
        *serial = Some((self.issue(Command::Drain), target));
        drop(serial);
        let stopped = self.wait_state(deadline, |k| lifecycle::is_stopped(k.state()));
        let timed_out = !stopped;
        let mut abandoned = false;
        if timed_out || self.state() == State::Faulted {
            abandoned = self.stop(
                on_input,
                on_output,
                false,
                self.fallback_ack_deadline(deadline),
            )?;
        } else if !self.is_abandoned() {
            // Drained: the inbox is empty, by the kernel's end condition. The sweep is a
            // guard that hands back anything found anyway instead of leaving it behind.
            // (A kernel abandoned by a concurrent terminate was swept by it, and its
            // stuck handler holds the exec lock for good.)
            self.collect_inputs(&mut self.exec.lock(), on_input);
        }
        Ok(DrainSummary {
            timed_out,
            abandoned,
            ..self.summary()
        })
    }

    fn summary(&self) -> DrainSummary {
        let counters = self.counters();
        DrainSummary {
            processed: counters.processed,
            emitted: counters.emitted,
            timed_out: false,
            final_state: Some(self.state()),
            fault: self.fault(),
            abandoned: false,
        }
    }

    /// Terminates: stops after the message in hand and hands every message still in a
    /// ring to the callbacks (inbox to `on_input`, host-bound output to `on_output`).
    ///
    /// Returns within the command timeout (plus the time to hand the messages over)
    /// whatever the handler does: a handler that has not returned by then is abandoned
    /// (see [`KernelCore::is_abandoned`]) and the host takes its rings over. Once the
    /// backend's threads are stopped nothing runs the kernel, so the calling thread
    /// carries the terminate out itself; once the runtime is gone, a terminate of the
    /// stopped kernel hands back what was kept for its handles and succeeds.
    ///
    /// # Errors
    /// [`CommandError`] when the kernel is already terminated (and its runtime still
    /// lives), or does not acknowledge within the command timeout while no handler runs
    /// (it waits for a worker; its rings are then left untouched).
    pub fn terminate(
        self: &Arc<Self>,
        on_input: &mut dyn FnMut(SlotRef<'_>),
        on_output: &mut dyn FnMut(SlotRef<'_>),
    ) -> Result<DrainSummary, CommandError> {
        self.stopped_by_host.store(true, Ordering::Relaxed);
        let ack_deadline = Instant::now() + self.config.command_timeout;
        let abandoned = self.stop(on_input, on_output, true, ack_deadline)?;
        Ok(DrainSummary {
            abandoned,
            ..self.summary()
        })
    }

    /// A terminate by the kernel's fault policy or watchdog (which may restart it
    /// later), as opposed to one by the host (which is final). With
    /// `take_ring_outputs`, what the kernel emitted to the host and nobody received is
    /// handed to `on_output` too; without, it stays in the output ring for receivers (the
    /// `Restart` policy's watchdog).
    pub(crate) fn stop_for_policy(
        self: &Arc<Self>,
        take_ring_outputs: bool,
        on_input: &mut dyn FnMut(SlotRef<'_>),
        on_output: &mut dyn FnMut(SlotRef<'_>),
    ) -> Result<bool, CommandError> {
        let ack_deadline = Instant::now() + self.config.command_timeout;
        self.stop(on_input, on_output, take_ring_outputs, ack_deadline)
    }

    /// Whether the host drained or terminated the kernel since its last (re)start: the
    /// fault policy then leaves it stopped.
    pub fn is_stopped_by_host(&self) -> bool {
        self.stopped_by_host.load(Ordering::Relaxed)
    }

    /// Issues `Terminate` and collects the rings once the kernel acknowledged, waiting
    /// for it until `ack_deadline`; then the handler in hand is abandoned. With the
    /// backend's threads stopped, the host applies the command itself.
    fn stop(
        self: &Arc<Self>,
        on_input: &mut dyn FnMut(SlotRef<'_>),
        on_output: &mut dyn FnMut(SlotRef<'_>),
        take_ring_outputs: bool,
        ack_deadline: Instant,
    ) -> Result<bool, CommandError> {
        let started = Instant::now();
        let mut serial = self.lifecycle.lock();
        let from = self.effective_state(*serial);
        let pending = match *serial {
            // An earlier terminate gave up waiting: wait for its command again and
            // collect what it left behind.
            Some((epoch, State::Terminated)) if self.is_uncollected() => Some(epoch),
            _ => None,
        };
        if pending.is_none()
            && self.runtime_gone()
            && lifecycle::is_stopped(from)
            && from != State::Faulted
        {
            drop(serial);
            // The runtime's stop abandoned a stuck handler and kept what it took over:
            // this stop hands that back, the message that was in hand first, and says so.
            let handed_inputs = self.hand_back_kept(on_input, on_output, take_ring_outputs);
            return Ok(handed_inputs && self.is_abandoned());
        }
        let epoch = if let Some(epoch) = pending {
            epoch
        } else {
            let target = lifecycle::transition(from, Event::Command(Command::Terminate))?;
            self.local.terminating.store(true, Ordering::Release);
            self.close_inbox();
            let epoch = self.issue(Command::Terminate);
            *serial = Some((epoch, target));
            epoch
        };
        self.wait_state(ack_deadline, |k| {
            k.control.acknowledged(epoch) || k.pool.is_shut_down()
        });
        let mut exec = if self.control.acknowledged(epoch) {
            Some(self.exec.lock())
        } else if self.pool.is_shut_down() {
            self.take_over(ack_deadline)
        } else {
            None
        };
        let mut abandoned = false;
        if exec.is_none() {
            if self.abandon(on_input) {
                abandoned = true;
            } else {
                // No handler to give up on: the kernel waits for a worker, or its handler
                // returned just now and the turn kept its message; a moment more for
                // the acknowledgement.
                let until = Instant::now() + MIN_ACK_WAIT;
                self.wait_state(until, |k| k.control.acknowledged(epoch));
                if !self.control.acknowledged(epoch) {
                    self.uncollected.store(true, Ordering::Relaxed);
                    return Err(self.unresponsive(ack_deadline.saturating_duration_since(started)));
                }
                exec = Some(self.exec.lock());
            }
        }
        if let Some(mut exec) = exec {
            let exec = &mut *exec;
            self.collect_inputs(exec, on_input);
            exec.stash.take_all(on_output);
            self.local.stash_pending.store(false, Ordering::Relaxed);
        }
        self.uncollected.store(false, Ordering::Relaxed);
        if take_ring_outputs {
            if let Some(rx) = self.outbox_rx.lock().as_mut() {
                let capacity = rx.capacity();
                rx.consume(capacity, |slot| {
                    on_output(slot);
                    Step::Next
                });
                self.take_all_overflow(on_output);
            }
        }
        if self.runtime_gone() {
            // Anything kept for the handles goes with this stop too.
            self.hand_back_kept(on_input, on_output, false);
        }
        self.wake_space_waiters();
        self.outbox_items.notify();
        Ok(abandoned)
    }

    /// With the backend's threads stopped nothing will run the kernel again: takes its
    /// kernel side and applies the pending command (the terminate) from the host, as the
    /// kernel would have. `None` when a thread left behind inside a handler holds it.
    fn take_over(&self, ack_deadline: Instant) -> Option<MutexGuard<'_, Exec>> {
        let until = ack_deadline.max(Instant::now() + MIN_ACK_WAIT);
        let mut exec = self.exec.try_lock_until(until)?;
        self.apply_commands(&mut exec);
        Some(exec)
    }

    /// Takes the inbox rings over from a handler that did not return within the command
    /// timeout: hands `on_input` the message in its hands first, then every message
    /// queued behind it, and marks the kernel terminated without its acknowledgement.
    /// Returns `false` (and does nothing) when no handler is running: the kernel is
    /// waiting for a worker, not stuck.
    ///
    /// The thread stays inside the handler; if it ever returns, its emits are refused,
    /// the message it held is neither released nor dead-lettered (it was handed back
    /// here) and it takes nothing more. Messages the handler emitted before it got stuck
    /// were delivered, so the message in hand may be seen twice if it is sent again.
    fn abandon(self: &Arc<Self>, on_input: &mut dyn FnMut(SlotRef<'_>)) -> bool {
        // ORDERING: SeqCst, as the turn's swap in `KernelCore::handed_back`: exactly one
        // of the two takes the message from a handler that returns just now.
        let mut in_hand = self.local.in_hand.load(Ordering::SeqCst);
        loop {
            if in_hand == NOT_IN_HAND || in_hand == TAKEN_IN_HAND {
                return false;
            }
            match self.local.in_hand.compare_exchange(
                in_hand,
                TAKEN_IN_HAND,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(now) => in_hand = now,
            }
        }
        self.local.abandoned.store(true, Ordering::SeqCst);
        let (ring, position) = (in_hand >> 32, in_hand as u32);
        tracing::error!(
            kernel = %self.config.name,
            id = self.id,
            "handler did not return within the command timeout; kernel abandoned and its messages handed back"
        );
        let what = format!(
            "terminated while its handler ran for longer than the command timeout ({:?}); the message in hand was handed back",
            self.config.command_timeout
        );
        let mut fault = self.fault.lock();
        *fault = Some(match fault.take() {
            Some(earlier) => format!("{earlier}; {what}"),
            None => what,
        });
        drop(fault);
        let rings = [(INBOX_RING, &self.inbox), (LANE_RING, &self.lane)];
        // The ring holding the message in hand first, from that message on; the other
        // from its consumer's released head (nothing of it is in hand).
        for (number, producer) in rings.iter().filter(|(n, _)| *n == ring) {
            debug_assert_eq!(*number, ring);
            // SAFETY: the consumer is inside the handler of the message at `position`,
            // which it has not released, and releases nothing while the handler runs.
            // (Should the handler return during this read, the turn releases that message
            // before it sees `terminating`: a window `read_closed`'s contract excludes
            // and this path does not yet close.)
            unsafe { producer.read_closed(position, &mut *on_input) };
        }
        for (_, producer) in rings.iter().filter(|(n, _)| *n != ring) {
            // ORDERING: Acquire pairs with the consumer's Release store of `head`.
            let head = producer.memory().head().load(Ordering::Acquire);
            // SAFETY: the consumer is stuck in a handler of the other ring's message: a
            // turn consumes one ring after the other, so this one's consume is finished
            // or not begun, and releases nothing while the handler runs (if it returns,
            // the turn answers `Keep` to this ring's messages once `terminating` is set,
            // though cancelled slots before the first message may be released).
            unsafe { producer.read_closed(head, &mut *on_input) };
        }
        // ORDERING: Release pairs with the Acquire load in `try_recv_from`.
        self.stopped.store(true, Ordering::Release);
        self.pool.replace_stuck_worker(self.config.placement);
        self.state_changed.notify();
        true
    }

    pub(crate) fn set_thread_alive(&self, alive: bool) {
        self.thread_alive.store(alive, Ordering::Relaxed);
    }

    /// Moves a stopped kernel back to `Launched` with its configuration, handler and
    /// routes (see [`crate::backend::cpu::CpuBackend::restart`]). Returns whether it
    /// needs a new dedicated thread.
    pub(crate) fn restart_in_place(self: &Arc<Self>) -> Result<bool, CommandError> {
        let mut serial = self.lifecycle.lock();
        let from = self.state();
        lifecycle::transition(from, Event::Restart)?;
        let was_abandoned = self.is_abandoned();
        if was_abandoned {
            // The thread stuck in the handler still holds the kernel side.
            let Some(exec) = self.exec.try_lock_for(self.config.command_timeout) else {
                return Err(self.unresponsive(self.config.command_timeout));
            };
            drop(exec);
        }
        let Some(mut exec) = self.exec.try_lock_for(self.config.command_timeout) else {
            return Err(self.unresponsive(self.config.command_timeout));
        };
        let exec = &mut *exec;
        // A command the kernel has not acknowledged belongs to the run that ended: the
        // terminate that gave up on a stuck handler, whose thread, once the handler
        // returned, let go of the kernel without applying it when other kernels waited
        // for its worker. Acknowledged here; left pending, the restarted kernel's first
        // turn applied it and terminated again (a supervised restart after a watchdog
        // left the kernel terminated in about a third of the runs with 2 workers).
        self.apply_commands(exec);
        if from == State::Faulted && !self.local.terminating.load(Ordering::Relaxed) {
            // The message the handler panicked on is first in one of the inbox rings;
            // it would panic again, so it goes to the dead-letter sink.
            let reason = self.fault().unwrap_or_else(|| "faulted".into());
            let (ring, count) = exec.poisoned.take().unwrap_or((INBOX_RING, 1));
            let consumer = if ring == LANE_RING {
                &mut exec.lane
            } else {
                &mut exec.inbox
            };
            consumer.consume(count, |slot| {
                self.dead_letter_input(&slot, reason.clone());
                Step::Next
            });
        }
        if was_abandoned {
            // Giving up on the handler handed back every message left in both rings (the
            // terminate's report, or kept for the handle after a drop): none may run again.
            let capacity = exec.inbox.capacity();
            exec.inbox.consume(capacity, |_| Step::Next);
            exec.lane.consume(capacity, |_| Step::Next);
        }
        if let Some(factory) = &self.config.handler_factory {
            exec.handler = (factory.0)();
        }
        self.inbox.reopen();
        self.lane.reopen();
        // What a watchdog kept from before the fault goes first (senders are refused
        // until just now, so only one that retries at this very moment can get ahead).
        self.put_back_requeued();
        self.local.terminating.store(false, Ordering::Relaxed);
        self.local.abandoned.store(false, Ordering::Relaxed);
        self.uncollected.store(false, Ordering::Relaxed);
        self.stopped_by_host.store(false, Ordering::Relaxed);
        self.output_stalled.store(false, Ordering::Relaxed);
        *self.fault.lock() = None;
        *self.watchdog.lock() = None;
        *self.supervisor_watchdog.lock() = None;
        exec.control.set_error(0);
        // Before the state: a receiver that sees `Launched` must not find `stopped` still
        // set and report the output closed.
        self.stopped.store(false, Ordering::Release);
        exec.state = State::Launched;
        exec.control.set_state(State::Launched);
        // After the state: a receiver never sees neither the pending restart nor the
        // restarted kernel.
        self.restart_due.store(false, Ordering::Release);
        *serial = None;
        self.restart_state.lock().total += 1;
        tracing::info!(kernel = %self.config.name, id = self.id, ?from, "kernel restarted");
        self.state_changed.notify();
        if self.config.placement == crate::backend::Placement::Pool {
            // Queued whatever `scheduled` says: a worker that popped this kernel while it
            // was abandoned dropped the entry and left the flag set, and a plain wake
            // would then never queue it again. A duplicate entry is harmless.
            self.schedule();
        } else {
            self.wake();
        }
        Ok(
            self.config.placement == crate::backend::Placement::Dedicated
                && !self.thread_alive.load(Ordering::Relaxed),
        )
    }
}
