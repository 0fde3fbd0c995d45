//! The host side of a kernel's lifecycle: activate, deactivate, drain, terminate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Exec, KernelCore, PUBLISH_SPINS};
use crate::abi::{Command, State};
use crate::backend::{CommandError, DrainSummary};
use crate::lifecycle::{self, Event};
use crate::ring::{SlotRef, Step};
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
        for ring in [&self.inbox, &self.lane] {
            let tail = ring.close();
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
        if timed_out || self.state() == State::Faulted {
            self.stop(on_input, on_output, false)?;
        } else {
            // Drained: the inbox is empty, by the kernel's end condition. The sweep is a
            // guard that hands back anything found anyway instead of leaving it behind.
            self.collect_inputs(&mut self.exec.lock(), on_input);
        }
        Ok(DrainSummary {
            timed_out,
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
        self.stop(on_input, on_output, true)?;
        Ok(self.summary())
    }

    fn stop(
        self: &Arc<Self>,
        on_input: &mut dyn FnMut(SlotRef<'_>),
        on_output: &mut dyn FnMut(SlotRef<'_>),
        take_ring_outputs: bool,
    ) -> Result<(), CommandError> {
        let mut serial = self.lifecycle.lock();
        let target = lifecycle::transition(
            self.effective_state(*serial),
            Event::Command(Command::Terminate),
        )?;
        self.terminating.store(true, Ordering::Release);
        self.outbox_space.notify();
        self.close_inbox();
        let epoch = self.issue(Command::Terminate);
        *serial = Some((epoch, target));
        let timeout = self.config.command_timeout;
        if !self.wait_state(Instant::now() + timeout, |k| k.control.acknowledged(epoch)) {
            return Err(self.unresponsive(timeout));
        }
        {
            let mut exec = self.exec.lock();
            let exec = &mut *exec;
            self.collect_inputs(exec, on_input);
            for (tag, corr, bytes) in exec.stranded.drain(..) {
                on_output(SlotRef {
                    position: 0,
                    tag,
                    corr,
                    payload: &bytes,
                });
            }
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
        self.outbox_items.notify();
        Ok(())
    }
}
