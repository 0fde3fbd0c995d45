//! Running a CPU kernel: waking and scheduling it (pool turns or a dedicated thread),
//! applying commands, running batches of its handler, and dead-lettering what fails.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use parking_lot::MutexGuard;

use super::{
    Emitter, Exec, KernelCore, Message, Turn, INBOX_RING, LANE_RING, LINGER_ROUNDS, NOT_IN_HAND,
};
use crate::abi::{fault, State};
use crate::backend::Placement;
use crate::control::{Counters, HostControl, KernelSide};
use crate::handler::{Batch, Handler};
use crate::lifecycle::{self, Event};
use crate::ring::{Consumer, Producer, SlotRef, Step};
use crate::routing::DeadLetter;
use crate::sync::{asym, Ordering};

impl KernelCore {
    /// Tells whoever runs the kernel that it may have work.
    #[inline]
    pub(crate) fn wake(self: &Arc<Self>) {
        match self.config.placement {
            Placement::Pool => {
                // ORDERING: light fence orders our publish before the load of
                // `scheduled`; pairs with the worker's heavy fence after
                // `scheduled = false` and the re-check in `recheck_idle` (Dekker: one of
                // us sees the other).
                asym::light();
                if !self.scheduled.load(Ordering::Relaxed) {
                    self.schedule();
                }
            }
            Placement::Dedicated => self.work.notify(),
        }
    }

    /// Queues an idle pooled kernel on the pool (the slow half of [`KernelCore::wake`]).
    #[cold]
    #[inline(never)]
    pub(super) fn schedule(self: &Arc<Self>) {
        // A plain store, not a swap: a locked instruction here would wait for the message
        // just written to drain from the store buffer, on every send to an idle kernel.
        // Two wakers may both push the kernel; a duplicate entry is harmless (see
        // `run_scheduled`).
        self.scheduled.store(true, Ordering::Relaxed);
        self.pool.push(self.clone());
    }

    /// Tells the kernel's thread and its lifecycle waiters that the backend's threads
    /// stopped: a dedicated kernel's thread re-checks the pool's shutdown and returns, and
    /// a terminate waiting for an acknowledgement carries the command out itself.
    pub(crate) fn runner_stopped(&self) {
        self.work.notify();
        self.state_changed.notify();
    }

    /// Whether the kernel side has something to do now.
    fn has_work(&self) -> bool {
        let status = self.control.status();
        if status.ack_epoch != self.control.epoch() {
            return true;
        }
        let state = status.state.unwrap_or(State::Faulted);
        if !lifecycle::processes_messages(state) {
            return false;
        }
        if self.output_stalled.load(Ordering::Relaxed) {
            return false;
        }
        // A stash whose target has room again is work even with an empty inbox.
        self.local.stash_pending.load(Ordering::Relaxed)
            || self.inbox.has_published()
            || self.lane.has_published()
            || state == State::Draining
    }

    /// Runs the kernel on a pool worker: turns while it has work, requeued behind other
    /// waiting kernels after each (fairness); while no other kernel waits it lingers a
    /// little for the next message before going idle. Out of work while others wait, a
    /// kernel whose last turn took messages is requeued behind them up to
    /// [`super::HOT_REQUEUES`] times before it goes idle: its producers, likely still
    /// sending, then find it scheduled instead of pushing it on the queue again (one
    /// push per turn before: 590,000 per 500,000 messages for 1,000 actors, 60,000 now).
    pub(crate) fn run_scheduled(self: &Arc<Self>) -> Turn {
        let Some(mut exec) = self.exec.try_lock() else {
            // Another worker runs it (a duplicate queue entry), or the host holds it for a
            // moment (bind, collect): put the entry back so the work is not forgotten. An
            // abandoned kernel's stuck thread never lets go, so drop the entry then.
            if self.is_abandoned() {
                return Turn::Dropped;
            }
            std::thread::yield_now();
            self.pool.push(self.clone());
            return Turn::Requeued;
        };
        'turns: loop {
            self.step(&mut exec);
            let mut lingered = 0;
            while !self.has_work() {
                if self.pool.has_queued() && exec.hot > 0 {
                    // Just busy, and others wait: stay scheduled behind them, so that
                    // its producer's next message finds it scheduled.
                    exec.hot -= 1;
                    drop(exec);
                    self.pool.push(self.clone());
                    return Turn::Requeued;
                }
                if lingered == LINGER_ROUNDS || self.pool.has_queued() {
                    break 'turns;
                }
                lingered += 1;
                std::hint::spin_loop();
            }
            if self.pool.has_queued() {
                // Still scheduled: hand the worker to the next kernel, run again later.
                drop(exec);
                self.pool.push(self.clone());
                return Turn::Requeued;
            }
        }
        drop(exec);
        self.scheduled.store(false, Ordering::SeqCst);
        Turn::WentIdle
    }

    /// The second half of going idle, after the worker's heavy fence (one fence for a
    /// batch of kernels that went idle, see [`Pool`]): a message published meanwhile
    /// is never left unscheduled.
    pub(crate) fn recheck_idle(self: &Arc<Self>) {
        if self.has_work() && !self.scheduled.swap(true, Ordering::AcqRel) {
            self.pool.push(self.clone());
        }
    }

    /// The loop of a dedicated kernel's thread; returns when the kernel stops.
    ///
    /// While the kernel has work the thread keeps its exec lock from turn to turn (no
    /// lock traffic per message); it releases the lock while it waits for work, which is
    /// when lifecycle calls collect from the rings.
    pub(crate) fn run_dedicated(self: &Arc<Self>) {
        let mut exec = self.exec.lock();
        loop {
            // A faulted kernel keeps its thread: it must still acknowledge `Terminate`.
            // The flag is cleared under the exec lock, which `restart` takes to decide
            // whether the kernel needs a new thread.
            if (self.step(&mut exec) == State::Terminated && !self.has_work())
                || self.pool.is_shut_down()
            {
                self.thread_alive.store(false, Ordering::Relaxed);
                return;
            }
            // Linger a little with the lock held, as a pool worker does: the next message
            // of an exchange usually comes within a round trip, and releasing and taking
            // the lock again costs two locked instructions per message. Lifecycle calls
            // that need the lock wait at most these few microseconds more.
            if (0..=LINGER_ROUNDS).any(|round| {
                if round > 0 {
                    std::hint::spin_loop();
                }
                self.has_work()
            }) {
                continue;
            }
            MutexGuard::unlocked(&mut exec, || {
                self.work.wait_until(None, || {
                    (self.has_work() || self.pool.is_shut_down()).then_some(())
                });
            });
        }
    }

    /// Applies pending commands, then handles one batch. Returns the state after.
    fn step(self: &Arc<Self>, exec: &mut Exec) -> State {
        self.apply_commands(exec);
        if lifecycle::processes_messages(exec.state) {
            self.run_batch(exec);
            if exec.state == State::Draining
                && exec.inbox.is_empty()
                && exec.lane.is_empty()
                && exec.stash.is_empty()
            {
                self.publish_state(exec, lifecycle::transition(State::Draining, Event::Drained));
            }
        }
        exec.state
    }

    pub(super) fn apply_commands(&self, exec: &mut Exec) {
        let Some((command, epoch)) = exec.control.poll() else {
            return;
        };
        let next = if let Some(command) = command {
            lifecycle::transition(exec.state, Event::Command(command))
        } else {
            exec.control.set_error(fault::BAD_COMMAND);
            *self.fault.lock() = Some(format!("unknown command word at epoch {epoch}"));
            Ok(State::Faulted)
        };
        // A command the state machine refuses (the host validated against a state the
        // kernel has since left, e.g. it faulted meanwhile) is acknowledged with the
        // unchanged state, which tells the host what happened.
        self.publish_state(exec, Ok(next.unwrap_or(exec.state)));
    }

    fn publish_state(&self, exec: &mut Exec, next: Result<State, lifecycle::LifecycleError>) {
        if let Ok(state) = next {
            if state != exec.state {
                tracing::info!(kernel = %self.config.name, id = self.id, from = ?exec.state, to = ?state, "kernel state");
            }
            exec.state = state;
        }
        exec.control.set_state(exec.state);
        if lifecycle::is_stopped(exec.state) {
            // ORDERING: Release pairs with the Acquire load in `try_recv_from`: a receiver
            // that sees the flag sees every emit published before it.
            self.stopped.store(true, Ordering::Release);
        }
        self.state_changed.notify();
        if lifecycle::is_stopped(exec.state) {
            // Receivers waiting for output learn that no more will come; upstream
            // kernels waiting for room learn that none will (their emits go to the
            // dead-letter sink).
            self.outbox_items.notify();
            self.inbox_space.notify();
            self.wake_space_waiters();
        }
    }

    fn run_batch(self: &Arc<Self>, exec: &mut Exec) {
        let Exec {
            inbox,
            lane,
            lane_first,
            control,
            handler,
            ports,
            stash,
            ..
        } = exec;
        let ports: &mut [super::ports::Port] = ports;
        // Deliver what waited for room first; while something still waits, take no input
        // (the target wakes this kernel when it frees room).
        if !stash.is_empty() && !self.flush_stash(ports, stash) {
            control.count(Counters::stall());
            self.notify_ports(ports);
            return;
        }
        self.local.stash_pending.store(false, Ordering::Relaxed);
        let budget = self.config.quantum;
        let started = crate::metrics::coarse_clock_ns();
        let mut emitter = Emitter {
            core: self,
            ports,
            stash,
            emitted: 0,
            stalls: 0,
            stalled: false,
            timed_corr: None,
        };
        let mut tally = Tally::default();
        // Both inbox rings share the turn's budget; which goes first alternates.
        *lane_first = !*lane_first;
        let (first, second, first_ring) = if *lane_first {
            (lane, inbox, LANE_RING)
        } else {
            (inbox, lane, INBOX_RING)
        };
        let released = if handler.takes_batches() {
            let released = self.batch_turn(
                first,
                first_ring,
                budget,
                handler,
                &mut emitter,
                control,
                &mut tally,
            );
            released
                + self.batch_turn(
                    second,
                    first_ring ^ 1,
                    budget - released.min(budget),
                    handler,
                    &mut emitter,
                    control,
                    &mut tally,
                )
        } else {
            let mut on_slot = |ring: u64, slot: SlotRef<'_>| {
                self.handle_one(ring, slot, handler, &mut emitter, control, &mut tally)
            };
            let released = first.consume(budget, |s| on_slot(first_ring, s));
            released
                + second.consume(budget - released.min(budget), |s| {
                    on_slot(first_ring ^ 1, s)
                })
        };
        let Tally {
            handled,
            errors,
            panic,
            poisoned,
        } = tally;
        if poisoned.is_some() {
            exec.poisoned = poisoned;
        }
        let in_hand = &self.local.in_hand;
        in_hand.store(NOT_IN_HAND, Ordering::Relaxed);
        let (emitted, mut stalls, stalled) = (emitter.emitted, emitter.stalls, emitter.stalled);
        if handled > 0 {
            self.add_busy(started);
        }
        if stalled && self.flush_stash_after_turn(ports, stash) {
            stalls = stalls.saturating_sub(1);
        }
        control.count(Counters {
            received: handled,
            processed: handled,
            emitted,
            stalls,
            errors,
        });
        control.beat();
        if released > 0 {
            exec.hot = super::HOT_REQUEUES;
            self.inbox_space.notify();
            self.wake_space_waiters();
        }
        self.notify_ports(ports);
        if let Some(reason) = panic {
            self.fault_on_panic(exec, &reason);
        }
    }

    /// Adds the time since `started` (a [`crate::metrics::coarse_clock_ns`] reading) to
    /// the kernel's busy time: an unbiased estimate over many turns for the price of a
    /// load. Only the thread running the kernel writes it.
    fn add_busy(&self, started: u64) {
        let busy = crate::metrics::coarse_clock_ns().saturating_sub(started);
        let local = &self.local.busy_ns;
        local.store(local.load(Ordering::Relaxed) + busy, Ordering::Relaxed);
    }

    /// Hands `handler` one message of a turn (see [`Consumer::consume`]'s steps).
    // Always: it is the body of the turn's consume loop, once per message (out of line it
    // was a call with seven arguments per message, seen in `perf`).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn handle_one(
        &self,
        ring: u64,
        slot: SlotRef<'_>,
        handler: &mut Box<dyn Handler>,
        emitter: &mut Emitter<'_>,
        control: &mut KernelSide<Arc<HostControl>>,
        tally: &mut Tally,
    ) -> Step {
        if emitter.stalled
            || tally.panic.is_some()
            || self.local.terminating.load(Ordering::Relaxed)
        {
            return Step::Keep;
        }
        // One beat per message, so a slow but live handler never looks stalled.
        control.beat();
        self.local
            .in_hand
            .store(ring << 32 | u64::from(slot.position), Ordering::Relaxed);
        emitter.timed_corr = slot.is_timed().then_some(slot.corr);
        let message = Message {
            tag: slot.tag,
            corr: slot.corr,
            payload: slot.payload,
        };
        match catch_unwind(AssertUnwindSafe(|| handler.handle(message, emitter))) {
            Ok(Ok(())) => {
                tally.handled += 1;
                Step::Next
            }
            // A handler that returns after a terminate gave up on it: `Ok` is harmless
            // (its emits were refused, the restart discards what the rings still hold),
            // but an error or a panic must not dead-letter again, or fault the kernel, for
            // a message the terminate handed back (`abandoned_failure`). Checked in these
            // cold arms only: a check after every handler call cost the pipeline ~12 %.
            Ok(Err(error)) => {
                if self.abandoned_failure(ring, slot.position) {
                    return Step::Keep;
                }
                tally.handled += 1;
                tally.errors += 1;
                // Per message, so debug: the `errors` counter is the place to watch.
                tracing::debug!(kernel = %self.config.name, %error, "handler reported an error");
                self.dead_letter_input(&slot, error.0);
                Step::Next
            }
            Err(payload) => {
                if self.abandoned_failure(ring, slot.position) {
                    return Step::Keep;
                }
                tally.panic = Some(panic_message(payload.as_ref()));
                // The message stays first in its ring; a restart dead-letters it.
                tally.poisoned = Some((ring, 1));
                Step::Keep
            }
        }
    }

    /// Hands `handler` one batch: the run of messages ready at the front of `consumer`
    /// (at most `budget`), which stay in the ring until the handler returns. Returns the
    /// positions released (the batch, and cancelled slots before it).
    #[allow(clippy::too_many_arguments)]
    fn batch_turn(
        &self,
        consumer: &mut Consumer<super::Ring>,
        ring: u64,
        budget: u32,
        handler: &mut Box<dyn Handler>,
        emitter: &mut Emitter<'_>,
        control: &mut KernelSide<Arc<HostControl>>,
        tally: &mut Tally,
    ) -> u32 {
        if budget == 0
            || emitter.stalled
            || tally.panic.is_some()
            || self.local.terminating.load(Ordering::Relaxed)
        {
            return 0;
        }
        let before = consumer.head();
        let len = consumer.ready_run(budget);
        let skipped = consumer.head().wrapping_sub(before);
        if len == 0 {
            return skipped;
        }
        control.beat();
        // The whole batch is in hand: a terminate that gives up on the handler hands back
        // every message from the first one on.
        self.local
            .in_hand
            .store(ring << 32 | u64::from(consumer.head()), Ordering::Relaxed);
        emitter.timed_corr = None;
        let batch = Batch {
            consumer: &*consumer,
            len,
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| handler.handle_batch(&batch, emitter)));
        if self.local.terminating.load(Ordering::Relaxed) && self.handed_back(ring, consumer.head())
        {
            return skipped;
        }
        match outcome {
            Ok(Ok(())) => tally.handled += len,
            Ok(Err(error)) => {
                tally.handled += len;
                tally.errors += len;
                tracing::debug!(kernel = %self.config.name, %error, batch = len, "batch handler reported an error");
                for i in 0..len {
                    consumer
                        .with_run_slot(i, |slot| self.dead_letter_input(&slot, error.0.clone()));
                }
            }
            Err(payload) => {
                // The batch stays first in its ring; a restart dead-letters all of it.
                tally.panic = Some(panic_message(payload.as_ref()));
                tally.poisoned = Some((ring, len));
                return skipped;
            }
        }
        consumer.release_run(len);
        skipped + len
    }

    /// After a handler returned during a terminate: whether the terminate gave up on
    /// it and handed back its message (or batch, from `position` on), which the turn
    /// then must not dead-letter or fault on (before, an abandoned handler that returned
    /// an error dead-lettered a message the terminate had handed back already).
    /// Otherwise the message is the turn's again and the terminate waits for the turn's
    /// acknowledgement.
    ///
    /// Only asked once `terminating` is set (the terminate sets it a whole command
    /// timeout before it may give up on the handler), and for one message only when its
    /// handler failed: the hot path pays nothing.
    #[cold]
    #[inline(never)]
    fn abandoned_failure(&self, ring: u64, position: u32) -> bool {
        self.local.terminating.load(Ordering::Relaxed) && self.handed_back(ring, position)
    }

    /// The swap of [`KernelCore::abandoned_failure`] (see there).
    #[cold]
    fn handed_back(&self, ring: u64, position: u32) -> bool {
        // ORDERING: SeqCst, as the terminate's swap in `abandon`.
        self.local
            .in_hand
            .compare_exchange(
                ring << 32 | u64::from(position),
                NOT_IN_HAND,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_err()
    }

    /// Delivers what the turn stashed, and records whether some still waits: before the
    /// kernel can go idle, its idle re-check (after the heavy fence) must see that the
    /// stash is work once the target frees room. Returns whether all was delivered.
    fn flush_stash_after_turn(
        self: &Arc<Self>,
        ports: &mut [super::ports::Port],
        stash: &mut super::ports::Stash,
    ) -> bool {
        let delivered = self.flush_stash(ports, stash);
        self.local
            .stash_pending
            .store(!delivered, Ordering::Relaxed);
        delivered
    }

    /// Sends a received message to the dead-letter sink with `reason`.
    pub(super) fn dead_letter_input(&self, slot: &SlotRef<'_>, reason: String) {
        self.dead_letter(true, reason, slot);
    }

    /// Sends one message this kernel received (`is_input`) or emitted to the dead-letter
    /// sink with `reason`. Its correlation id is the user's: 0 for a timed message (whose
    /// slot carries the send time there), as a receive or a stop report gives it.
    pub(crate) fn dead_letter(&self, is_input: bool, reason: String, slot: &SlotRef<'_>) {
        self.push_dead_letter(is_input, false, reason, slot);
    }

    /// Sends an emitted message to the dead-letter sink because its port is bound there.
    pub(crate) fn route_to_dead_letters(&self, reason: String, slot: &SlotRef<'_>) {
        self.push_dead_letter(false, true, reason, slot);
    }

    fn push_dead_letter(&self, is_input: bool, routed: bool, reason: String, slot: &SlotRef<'_>) {
        self.dead.push(DeadLetter {
            kernel: self.config.name.clone(),
            reason,
            is_input,
            routed,
            tag: slot.tag,
            corr: slot.user_corr(),
            payload: slot.payload.to_vec(),
        });
    }

    /// What a watchdog does under the `Restart` policy: terminates the kernel, sends the
    /// message its stuck handler held (if the terminate gave up on it) and the emits
    /// waiting for room to the dead-letter sink with `reason`, and keeps the inputs
    /// queued behind it for the restart, which puts them back in first. What the kernel
    /// already emitted to the host stays receivable. (A panic keeps its queue the same
    /// way: the restart dead-letters only the message it panicked on.)
    pub(crate) fn terminate_for_restart(self: &Arc<Self>, reason: &str) {
        if self.is_stopped_by_host() {
            return;
        }
        // ORDERING: Release pairs with the Acquire load in `restart_pending`; set before
        // the kernel reads `Terminated`, so no receiver takes that for the end.
        self.restart_due.store(true, Ordering::Release);
        let mut inputs: Vec<super::Overflowed> = Vec::new();
        let result = self.stop_for_policy(
            false,
            &mut |s| inputs.push((s.tag, s.corr, s.payload.to_vec())),
            &mut |s| self.dead_letter(false, reason.to_owned(), &s),
        );
        let mut inputs = inputs.into_iter();
        match result {
            Ok(true) => {
                if let Some((tag, corr, payload)) = inputs.next() {
                    self.dead_letter(
                        true,
                        reason.to_owned(),
                        &super::ports::emitted_slot(tag, corr, &payload),
                    );
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(kernel = %self.config.name, error = %e, "could not terminate the kernel for its watchdog");
            }
        }
        self.requeued.lock().extend(inputs);
        if self.runtime_stopping() || self.runtime_gone() {
            self.drop_requeued("the runtime stopped before the kernel's restart");
        }
    }

    /// Sends the inputs kept for a restart that will not come to the dead letters.
    pub(crate) fn drop_requeued(&self, why: &str) {
        if self.restart_due.swap(false, Ordering::AcqRel) {
            // Receivers waiting for the restart look again: none comes.
            self.outbox_items.notify();
        }
        let kept = std::mem::take(&mut *self.requeued.lock());
        for (tag, corr, payload) in kept {
            let reason = format!("kept for a restart that did not come ({why})");
            self.dead_letter(
                true,
                reason,
                &super::ports::emitted_slot(tag, corr, &payload),
            );
        }
    }

    /// Puts the inputs kept for this restart back into the inbox, oldest first; one that
    /// finds no room (a watchdog took out the inbox and the exclusive lane, up to twice
    /// the capacity) goes to the dead letters.
    pub(super) fn put_back_requeued(&self) {
        let kept = std::mem::take(&mut *self.requeued.lock());
        for (tag, corr, payload) in kept {
            match self.inbox.try_claim(1) {
                Ok(claim) => {
                    claim.write(0, tag, corr, |body| {
                        body[..payload.len()].copy_from_slice(&payload);
                    });
                    claim.publish();
                }
                Err(_) => self.dead_letter(
                    true,
                    "restart: no room in the inbox for a message kept from before the fault"
                        .to_owned(),
                    &super::ports::emitted_slot(tag, corr, &payload),
                ),
            }
        }
    }

    /// Terminates the kernel and sends every message it hands back, inputs and outputs,
    /// to the dead-letter sink with `reason` (what fault policies do).
    pub(crate) fn terminate_to_dead_letters(self: &Arc<Self>, reason: &str) {
        if self.is_stopped_by_host() {
            // The host drained or terminated it meanwhile and took its messages.
            return;
        }
        let result = self.stop_for_policy(
            true,
            &mut |s| self.dead_letter(true, reason.to_owned(), &s),
            &mut |s| self.dead_letter(false, reason.to_owned(), &s),
        );
        if let Err(e) = result {
            tracing::error!(kernel = %self.config.name, error = %e, "could not terminate the kernel for its fault policy");
        }
    }

    fn fault_on_panic(self: &Arc<Self>, exec: &mut Exec, reason: &str) {
        tracing::error!(kernel = %self.config.name, %reason, "handler panicked; kernel faulted");
        *self.fault.lock() = Some(format!("handler panicked: {reason}"));
        exec.control.set_error(fault::HANDLER_PANIC);
        // Close before the state is published, which wakes the senders waiting for room:
        // woken before the close, a sender found the inbox still open and full and went
        // back to sleep, with nothing left to wake it (a blocked `send_batch` hung until
        // a drain). Senders that find the inbox closed now read `Faulted` (the fault is
        // recorded above); messages already queued wait for `terminate`.
        Producer::close_all([&self.inbox, &self.lane]);
        self.publish_state(exec, lifecycle::transition(exec.state, Event::Fault));
        self.inbox_space.notify();
        self.supervisor.report_fault(self.clone());
    }
}

/// What the messages of one turn came to.
#[derive(Default)]
struct Tally {
    handled: u32,
    errors: u32,
    panic: Option<String>,
    /// The ring whose first messages the handler panicked on, and how many.
    poisoned: Option<(u64, u32)>,
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
