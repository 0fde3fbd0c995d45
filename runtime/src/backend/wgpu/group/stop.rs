//! Commands, drain and terminate, and the final report of a wgpu group.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tick::{map_after, read_u32, take_messages};
use super::{Engine, Inner, Leftovers, WgpuGroup};
use crate::abi::{Command, ControlBlock, State};
use crate::backend::group::{
    issue_command, read_back_inbox, reported_fault, GroupReport, KernelReport, Message,
};
use crate::backend::CommandError;
use crate::control::ControlMemory;
use crate::lifecycle::{self, Event};
use crate::ring::RingLayout;

impl WgpuGroup {
    /// Issues `command` to kernel `k`; it applies at the start of the next tick. Waits for
    /// the acknowledgement.
    ///
    /// # Errors
    /// As on every backend: a refused transition, no acknowledgement in time, a fault.
    pub fn command(&self, k: usize, command: Command) -> Result<State, CommandError> {
        self.inner.command(k, command)
    }

    /// Activates every kernel.
    ///
    /// # Errors
    /// The first command that failed.
    pub fn activate_all(&self) -> Result<(), CommandError> {
        for &k in self.inner.order.iter().rev() {
            self.command(k, Command::Activate)?;
        }
        Ok(())
    }

    /// Drains the group: the host inboxes are closed, every kernel processes what reached
    /// it, and a kernel terminates once its inboxes are empty and its upstream kernels
    /// terminated (so upstream finishes first, within the same ticks). Outputs stay
    /// receivable. After `timeout` the rest is terminated.
    pub fn drain(&self, timeout: Duration) -> GroupReport {
        let inner = &self.inner;
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        // From now on no kernel waits on a host that is not receiving: outputs beyond the
        // host outbox wait in the overflow queue (still receivable, in order).
        inner.unbounded.store(true, Ordering::SeqCst);
        inner.poke();
        for &k in &inner.order {
            if lifecycle::is_stopped(self.state(k)) {
                continue;
            }
            // A refused transition (a concurrent drain or terminate got there first) or a
            // fault is no timeout: the wait below and the final stop cover both.
            if let Err(CommandError::Unresponsive { .. }) = inner.command(k, Command::Drain) {
                timed_out = true;
            }
        }
        let done = inner.ticked.wait_until(Some(deadline), || {
            (inner.fault.lock().is_some()
                || (0..inner.kernels.len())
                    .all(|k| lifecycle::is_stopped(inner.kernels[k].control.state())))
            .then_some(())
        });
        if done.is_none() {
            timed_out = true;
            tracing::warn!(group = %inner.name, "drain timed out: terminating the rest");
        }
        let mut report = self.stop_all();
        report.timed_out = timed_out;
        report
    }

    /// Terminates every kernel at the next tick; everything left in a ring comes back in
    /// the report.
    ///
    /// A message is handed back once, ever: the first stop of the group (this, a drain,
    /// or dropping the group) hands back everything undelivered, and every later stop
    /// returns a report with the kernels' final states and counters and nothing
    /// undelivered. Stops from several threads at once serialise: each message is in
    /// exactly one of their reports.
    pub fn terminate(&self) -> GroupReport {
        self.stop_all()
    }

    fn stop_all(&self) -> GroupReport {
        let inner = &self.inner;
        let mut handed_back = inner.handed_back.lock();
        inner.unbounded.store(true, Ordering::SeqCst);
        for &k in &inner.order {
            if !lifecycle::is_stopped(self.state(k)) {
                if let Err(e) = inner.command(k, Command::Terminate) {
                    tracing::warn!(group = %inner.name, kernel = %inner.kernels[k].plan.name, error = %e, "terminate");
                }
            }
        }
        let report = inner.report(!*handed_back);
        *handed_back = true;
        report
    }

    /// Makes the device lost, as a driver reset would (for tests of the fault path).
    pub fn lose_device_for_test(&self) {
        self.inner.engine.lock().gpu.device.destroy();
        self.inner.poke();
    }
}

impl Drop for WgpuGroup {
    fn drop(&mut self) {
        let running = (0..self.inner.kernels.len()).any(|k| !lifecycle::is_stopped(self.state(k)));
        if running && self.inner.fault.lock().is_none() {
            let report = self.stop_all();
            if report.undelivered_count() > 0 {
                tracing::warn!(group = %self.inner.name, undelivered = report.undelivered_count(), "wgpu group dropped without drain or terminate: its undelivered messages are discarded");
            }
        }
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.wake.notify();
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

impl Inner {
    fn command(&self, k: usize, command: Command) -> Result<State, CommandError> {
        let kernel = &self.kernels[k];
        let _serial = kernel.commands.lock();
        // ORDERING: SeqCst pairs with the store in `report`, made after it set every
        // mirror's final state.
        if self.halted.load(Ordering::SeqCst) {
            // The group was stopped for good and no tick runs any more: nothing would
            // acknowledge a command. Refuse what the state refuses; the rest (terminating
            // a faulted kernel) is already done.
            let from = kernel.control.state();
            lifecycle::transition(from, Event::Command(command))?;
            return Ok(from);
        }
        // A drain or terminate closes the host inbox first: every send that will ever
        // happen is published before the command uploads (the ticker uploads published
        // slots before the command words).
        let epoch = issue_command(
            &kernel.plan.name,
            self.fault.lock().clone(),
            &kernel.control,
            &kernel.inbox,
            command,
        )?;
        self.poke();
        let deadline = Instant::now() + self.command_timeout;
        let acked = self.ticked.wait_until(Some(deadline), || {
            if kernel.control.acknowledged(epoch) {
                return Some(Ok(kernel.control.state()));
            }
            self.fault.lock().clone().map(|reason| {
                Err(CommandError::Faulted {
                    name: kernel.plan.name.clone(),
                    reason,
                })
            })
        });
        match acked {
            Some(Ok(State::Faulted)) => Err(reported_fault(&kernel.plan.name, &kernel.control)),
            Some(result) => result,
            None => Err(CommandError::Unresponsive {
                name: kernel.plan.name.clone(),
                waited: self.command_timeout,
            }),
        }
    }

    /// The report once every kernel stopped (or the group faulted). With `hand_back`,
    /// it halts the group (no tick runs again) and hands back every message not
    /// delivered; without, it reports states and counters only (a message is handed
    /// back once, by the first stop).
    fn report(&self, hand_back: bool) -> GroupReport {
        // Holding the engine, no tick runs while the report reads the mirrors and rings.
        let mut engine = self.engine.lock();
        let fault = self.fault.lock().clone();
        if hand_back {
            engine.halted = true;
            for kernel in &self.kernels {
                let state = kernel.control.state();
                if !lifecycle::is_stopped(state) {
                    // A kernel that did not acknowledge its terminate in time: no tick
                    // runs it again, so it is terminated from here on.
                    tracing::warn!(group = %self.name, kernel = %kernel.plan.name, ?state, "terminated without acknowledging: the group runs no more ticks");
                    kernel
                        .control
                        .memory()
                        .word(std::mem::offset_of!(ControlBlock, state))
                        .store(State::Terminated as u32, Ordering::Relaxed);
                }
            }
            // ORDERING: SeqCst pairs with the load in `command`: a command that sees the
            // group halted sees the final states above.
            self.halted.store(true, Ordering::SeqCst);
        }
        let mut reports: Vec<KernelReport> = self
            .kernels
            .iter()
            .map(|k| {
                let state = if fault.is_some() {
                    State::Faulted
                } else {
                    k.control.state()
                };
                KernelReport::new(&k.plan.name, state, k.control.counters())
            })
            .collect();
        if !hand_back {
            return GroupReport {
                kernels: reports,
                timed_out: false,
                fault,
            };
        }
        for (k, kernel) in self.kernels.iter().enumerate() {
            // The host inbox mirror holds every message not consumed on the device: from the
            // device's last head on.
            // SAFETY: the mirror's only consumer is the ticker, which releases positions
            // (stores `head`) only in `tick`, under the engine lock held here (taken at
            // the top of this function).
            unsafe { read_back_inbox(&kernel.inbox, &mut reports[k].undelivered) };
        }
        if fault.is_none() {
            match self.read_leftovers(&mut engine) {
                Ok((per_edge, per_outbox)) => {
                    for (edge, messages) in self.edges.iter().zip(per_edge) {
                        reports[edge.to].undelivered.extend(messages);
                    }
                    // Outputs the host outbox had no room for stay receivable.
                    for (kernel, messages) in self.kernels.iter().zip(per_outbox) {
                        kernel.overflow.lock().extend(messages);
                    }
                }
                Err(e) => {
                    tracing::error!(group = %self.name, error = %e, "reading back the group's rings");
                }
            }
        }
        GroupReport {
            kernels: reports,
            timed_out: false,
            fault,
        }
    }

    /// Copies every kernel-to-kernel ring and every host outbox back (once the kernels
    /// stopped) and reads what is left in them: messages still in a route, and outputs
    /// the ticker could not yet move to the host.
    fn read_leftovers(&self, engine: &mut Engine) -> Result<Leftovers, String> {
        let gpu = Arc::clone(&engine.gpu);
        let mut regions: Vec<(u64, RingLayout, Option<u32>)> =
            self.edges.iter().map(|e| (e.at, e.layout, None)).collect();
        for (k, kernel) in self.kernels.iter().enumerate() {
            regions.push((
                kernel.at_outbox,
                kernel.out_layout,
                Some(engine.cursors[k].out_head),
            ));
        }
        let total: u64 = regions.iter().map(|r| r.1.region_bytes() as u64).sum();
        let readback = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("gyre leftovers readback"),
            size: total,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("gyre leftovers readback"),
            });
        let mut at = 0;
        for (src, layout, _) in &regions {
            let len = layout.region_bytes() as u64;
            encoder.copy_buffer_to_buffer(&engine.mem, *src, &readback, at, len);
            at += len;
        }
        gpu.queue.submit([encoder.finish()]);
        map_after(&gpu, &readback).map_err(|e| format!("mapping the readback: {e}"))?;
        let view = readback.get_mapped_range(..).map_err(|e| e.to_string())?;
        let mut edges = Vec::new();
        let mut outboxes = Vec::new();
        let mut at = 0usize;
        for (i, (_, layout, from)) in regions.iter().enumerate() {
            let len = layout.region_bytes();
            let region = &view[at..at + len];
            let mut position = from.unwrap_or_else(|| {
                read_u32(region, std::mem::offset_of!(crate::abi::RingHeader, head))
            });
            let mut messages = Vec::new();
            take_messages(region, *layout, &mut position, |tag, corr, payload| {
                messages.push(Message {
                    tag,
                    corr,
                    payload: payload.to_vec(),
                });
                true
            });
            if i < self.edges.len() {
                edges.push(messages);
            } else {
                engine.cursors[i - self.edges.len()].out_head = position;
                outboxes.push(messages);
            }
            at += len;
        }
        drop(view);
        readback.unmap();
        Ok((edges, outboxes))
    }
}
