//! The host side of a kernel's lifecycle: activate, deactivate, drain, terminate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Exec, KernelCore, INBOX_RING, LANE_RING, NOT_IN_HAND, PUBLISH_SPINS};
use crate::abi::{Command, State};
use crate::backend::{CommandError, DrainSummary};
use crate::lifecycle::{self, Event};
use crate::ring::{Producer, RingMemory, SlotRef, Step};
use crate::sync::Ordering;

impl KernelCore {
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
    /// # Errors
    /// [`CommandError`] when the state machine refuses (for example, a second drain).
    pub fn drain(
        self: &Arc<Self>,
        timeout: Duration,
        on_input: &mut dyn FnMut(SlotRef<'_>),
        on_output: &mut dyn FnMut(SlotRef<'_>),
    ) -> Result<DrainSummary, CommandError> {
        let mut serial = self.lifecycle.lock();
        let deadline = Instant::now() + timeout;
        let target = lifecycle::transition(
            self.effective_state(*serial),
            Event::Command(Command::Drain),
        )?;
        self.close_inbox();
        *serial = Some((self.issue(Command::Drain), target));
        drop(serial);
        let stopped = self.wait_state(deadline, |k| lifecycle::is_stopped(k.state()));
        let timed_out = !stopped;
        let mut abandoned = false;
        if timed_out || self.state() == State::Faulted {
            abandoned = self.stop(on_input, on_output, false)?;
        } else {
            // Drained: the inbox is empty, by the kernel's end condition. The sweep is a
            // guard that hands back anything found anyway instead of leaving it behind.
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
    /// # Errors
    /// [`CommandError`] when the kernel is already terminated, or does not stop within
    /// the command timeout (its rings are then left untouched).
    pub fn terminate(
        self: &Arc<Self>,
        on_input: &mut dyn FnMut(SlotRef<'_>),
        on_output: &mut dyn FnMut(SlotRef<'_>),
    ) -> Result<DrainSummary, CommandError> {
        let abandoned = self.stop(on_input, on_output, true)?;
        Ok(DrainSummary {
            abandoned,
            ..self.summary()
        })
    }

    fn stop(
        self: &Arc<Self>,
        on_input: &mut dyn FnMut(SlotRef<'_>),
        on_output: &mut dyn FnMut(SlotRef<'_>),
        take_ring_outputs: bool,
    ) -> Result<bool, CommandError> {
        let mut serial = self.lifecycle.lock();
        let target = lifecycle::transition(
            self.effective_state(*serial),
            Event::Command(Command::Terminate),
        )?;
        self.terminating.store(true, Ordering::Release);
        self.close_inbox();
        let epoch = self.issue(Command::Terminate);
        *serial = Some((epoch, target));
        let timeout = self.config.command_timeout;
        let mut abandoned = false;
        if self.wait_state(Instant::now() + timeout, |k| k.control.acknowledged(epoch)) {
            let mut exec = self.exec.lock();
            let exec = &mut *exec;
            self.collect_inputs(exec, on_input);
            exec.stash.take_all(on_output);
            self.local.stash_pending.store(false, Ordering::Relaxed);
        } else if !self.abandon(on_input) {
            return Err(self.unresponsive(timeout));
        } else {
            abandoned = true;
        }
        if take_ring_outputs {
            if let Some(rx) = self.outbox_rx.lock().as_mut() {
                let capacity = rx.capacity();
                rx.consume(capacity, |slot| {
                    on_output(slot);
                    Step::Next
                });
            }
        }
        self.wake_space_waiters();
        self.outbox_items.notify();
        Ok(abandoned)
    }

    /// Takes the inbox rings over from a handler that did not return within the command
    /// timeout: hands `on_input` the message in its hands first, then every message
    /// queued behind it, and marks the kernel terminated without its acknowledgement.
    /// Returns `false` (and does nothing) when no handler is running: the kernel is
    /// waiting for a worker, not stuck.
    ///
    /// The thread stays inside the handler; if it ever returns, its emits are refused
    /// and it takes nothing more. Messages the handler emitted before it got stuck were
    /// delivered, so the message in hand may be seen twice if it is sent again.
    fn abandon(self: &Arc<Self>, on_input: &mut dyn FnMut(SlotRef<'_>)) -> bool {
        let in_hand = self.local.in_hand.load(Ordering::Relaxed);
        if in_hand == NOT_IN_HAND {
            return false;
        }
        self.abandoned.store(true, Ordering::SeqCst);
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
        if self.is_abandoned() {
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
        if from == State::Faulted && !self.terminating.load(Ordering::Relaxed) {
            // The message the handler panicked on is first in one of the inbox rings;
            // it would panic again, so it goes to the dead-letter sink.
            let reason = self.fault().unwrap_or_else(|| "faulted".into());
            let consumer = if exec.poisoned.take() == Some(LANE_RING) {
                &mut exec.lane
            } else {
                &mut exec.inbox
            };
            consumer.consume(1, |slot| {
                self.dead_letter_input(&slot, reason.clone());
                Step::Next
            });
        }
        if let Some(factory) = &self.config.handler_factory {
            exec.handler = (factory.0)();
        }
        self.inbox.reopen();
        self.lane.reopen();
        self.terminating.store(false, Ordering::Relaxed);
        self.abandoned.store(false, Ordering::Relaxed);
        self.output_stalled.store(false, Ordering::Relaxed);
        *self.fault.lock() = None;
        *self.watchdog.lock() = None;
        *self.supervisor_watchdog.lock() = None;
        exec.control.set_error(0);
        exec.state = State::Launched;
        exec.control.set_state(State::Launched);
        self.stopped.store(false, Ordering::Release);
        *serial = None;
        tracing::info!(kernel = %self.config.name, id = self.id, ?from, "kernel restarted");
        self.state_changed.notify();
        self.wake();
        Ok(
            self.config.placement == crate::backend::Placement::Dedicated
                && !self.thread_alive.load(Ordering::Relaxed),
        )
    }
}
