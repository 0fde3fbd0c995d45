//! Drain, terminate and the final report of a CUDA group.

use std::time::{Duration, Instant};

use crate::abi::{Command, TAG_SENDER_SHIFT};
use crate::backend::cuda::device::DeviceError;
use crate::backend::cuda::plan::{self, Pending};
use crate::backend::CommandError;
use crate::lifecycle;
use crate::ring::{Consumer, RawRing, Step};
use crate::wait::Backoff;

use super::{pause, Collected, CudaGroup, Edge, Staging};
use crate::backend::group::{read_back_inbox, GroupReport, KernelReport, Message};

impl CudaGroup {
    /// Drains the group: upstream kernels first (topological order), each processes
    /// everything in its inboxes and delivers its outputs, then terminates. Outputs for
    /// the host stay receivable. If `timeout` passes, the rest is terminated (as
    /// [`CudaGroup::terminate`], which reads every ring back) and the report says
    /// `timed_out`. Returns within `timeout`, plus the command timeout at most for that
    /// terminate (milliseconds when the kernels are responsive).
    pub fn drain(&self, timeout: Duration) -> GroupReport {
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        for &k in &self.order {
            let state = self.state(k);
            if lifecycle::is_stopped(state) {
                continue;
            }
            match self.command_until(k, Command::Drain, deadline) {
                Ok(_) => {}
                Err(CommandError::Faulted { .. }) => break,
                Err(e) => {
                    tracing::debug!(group = %self.name, kernel = %self.kernels[k].plan.name, error = %e, "drain");
                    timed_out = true;
                    break;
                }
            }
            let mut backoff = Backoff::new();
            loop {
                self.pump_all();
                let state = self.kernels[k].control.state();
                if lifecycle::is_stopped(state) || self.fault().is_some() {
                    break;
                }
                if Instant::now() >= deadline {
                    timed_out = true;
                    break;
                }
                pause(&mut backoff);
            }
            if timed_out {
                break;
            }
        }
        if timed_out {
            tracing::warn!(group = %self.name, "drain timed out: terminating the rest");
        }
        let mut report = self.stop(Instant::now() + self.command_timeout);
        report.timed_out = timed_out;
        report
    }

    /// Terminates every kernel after the batch in hand; everything left in a ring comes
    /// back in the report. Returns within the command timeout (plus the read-back).
    ///
    /// Each message is handed back once, ever: a later stop (or one that ran
    /// concurrently; stops serialise) reports only what no earlier report had.
    pub fn terminate(&self) -> GroupReport {
        self.stop(Instant::now() + self.command_timeout)
    }

    /// Terminates every kernel that is not stopped (all at once, then waits for their
    /// acknowledgements until `deadline`), waits for the grid until `deadline`, and
    /// reads back what no earlier stop handed back.
    fn stop(&self, deadline: Instant) -> GroupReport {
        let mut collected = self.collected.lock();
        let acknowledged = self.terminate_all(deadline);
        // Every block exits after its kernel terminated: wait for the grid, then the
        // device rings can be read back.
        let mut backoff = Backoff::new();
        while !self.grid_finished() {
            self.pump_all();
            if Instant::now() >= deadline {
                break;
            }
            pause(&mut backoff);
        }
        self.report(&mut collected, &acknowledged)
    }

    /// Terminates every kernel not stopped, upstream first (topological order: a kernel
    /// stops before its downstream, so an output waiting for room downstream stays its
    /// unpublished output rather than going to the dead letters), waiting for each answer
    /// until the one `deadline` (after it, the rest are issued without waiting: the whole
    /// terminate takes the command timeout at most); says, per kernel, whether it stopped
    /// (and reads its host inbox no more).
    fn terminate_all(&self, deadline: Instant) -> Vec<bool> {
        let mut stopped = vec![true; self.kernels.len()];
        let mut late = Vec::new();
        let mut backoff = Backoff::new();
        for &k in &self.order {
            let kernel = &self.kernels[k];
            let _serial = kernel.commands.lock();
            if lifecycle::is_stopped(self.state(k)) {
                continue;
            }
            let epoch = match self.issue(k, Command::Terminate) {
                Ok(epoch) => epoch,
                Err(e) => {
                    tracing::warn!(group = %self.name, kernel = %kernel.plan.name, error = %e, "terminate");
                    continue;
                }
            };
            loop {
                match self.answered(k, Command::Terminate, epoch) {
                    Ok(None) => {}
                    Ok(Some(_)) => break,
                    Err(e) => {
                        tracing::warn!(group = %self.name, kernel = %kernel.plan.name, error = %e, "terminate");
                        break;
                    }
                }
                if Instant::now() >= deadline {
                    stopped[k] = false;
                    late.push((k, epoch));
                    break;
                }
                self.pump_all();
                pause(&mut backoff);
            }
        }
        // Those issued after the deadline had no time to answer: one last look.
        for (k, epoch) in late {
            if let Ok(Some(_)) = self.answered(k, Command::Terminate, epoch) {
                stopped[k] = true;
            } else {
                tracing::warn!(group = %self.name, kernel = %self.kernels[k].plan.name, waited = ?self.command_timeout, "terminate: the kernel did not acknowledge; its handler may be stuck");
            }
        }
        stopped
    }

    /// The report of a stop: reads back what no earlier stop handed back (`collected`),
    /// given which kernels stopped (`acknowledged`, from [`CudaGroup::terminate_all`]).
    fn report(&self, collected: &mut Collected, acknowledged: &[bool]) -> GroupReport {
        let finished = self.grid_finished();
        if finished {
            self.running.lock().take();
        } else {
            tracing::error!(group = %self.name, "the grid did not finish: its device rings cannot be read back yet (a later terminate reads them)");
        }
        self.pump_all();
        let fault = self.fault.lock().clone();
        let mut reports: Vec<KernelReport> = self
            .kernels
            .iter()
            .enumerate()
            .map(|(k, kernel)| {
                KernelReport::new(&kernel.plan.name, self.state(k), kernel.control.counters())
            })
            .collect();
        for (k, kernel) in self.kernels.iter().enumerate() {
            if collected.inbox[k] || !(finished || acknowledged[k]) {
                continue;
            }
            // The host inbox: from the kernel's final head.
            // SAFETY: the inbox's consumer is the kernel's device block, and it releases
            // nothing more: this runs only once the grid finished or the kernel
            // acknowledged its stop (`acknowledged[k]`), after which its loop has left.
            unsafe { read_back_inbox(&kernel.inbox, &mut reports[k].undelivered) };
            collected.inbox[k] = true;
        }
        if finished && fault.is_none() && !collected.device {
            collected.device = true;
            for (k, kernel) in self.kernels.iter().enumerate() {
                if let Err(e) = self.read_pending(k, &mut reports[k]) {
                    tracing::error!(group = %self.name, kernel = %kernel.plan.name, error = %e, "reading back unpublished outputs");
                }
            }
            for edge in &self.edges {
                match self.read_edge(edge) {
                    Ok(messages) => reports[edge.to].undelivered.extend(messages),
                    Err(e) => {
                        tracing::error!(group = %self.name, error = %e, "reading back a kernel-to-kernel ring");
                    }
                }
            }
        }
        GroupReport {
            kernels: reports,
            timed_out: false,
            fault,
        }
    }

    /// Reads what a terminate left in kernel `k`'s staging records.
    fn read_pending(&self, k: usize, report: &mut KernelReport) -> Result<(), DeviceError> {
        let kernel = &self.kernels[k];
        let mut header = [0u8; size_of::<Pending>()];
        self.device.read_device(&kernel.scratch, 0, &mut header)?;
        let pending: Pending = bytemuck::pod_read_unaligned(&header);
        if pending.valid != 1 {
            return Ok(());
        }
        let max_emits = kernel.plan.max_emits as usize;
        let stride = kernel.record_stride as usize;
        for e in pending.first..pending.count.min(kernel.plan.max_emits) {
            let at = plan::SCRATCH_HEADER_BYTES as usize
                + (pending.message as usize * max_emits + e as usize) * stride;
            let mut record = vec![0u8; stride];
            self.device.read_device(&kernel.scratch, at, &mut record)?;
            let word = |i: usize| {
                u32::from_ne_bytes(record[i * 4..i * 4 + 4].try_into().unwrap_or_default())
            };
            let (port, bytes, kind) = (word(0), word(1) as usize, word(2));
            let start = plan::RECORD_HEADER_BYTES as usize;
            report.undelivered_outputs.push((
                port,
                Message {
                    tag: (kernel.id << TAG_SENDER_SHIFT) | kind,
                    corr: [word(4), word(5)],
                    payload: record[start..start + bytes.min(stride - start)].to_vec(),
                },
            ));
        }
        Ok(())
    }

    /// Reads back the messages left in a kernel-to-kernel ring.
    fn read_edge(&self, edge: &Edge) -> Result<Vec<Message>, DeviceError> {
        let mut staging = Staging::new(edge.layout.region_bytes());
        self.device
            .read_device(&edge.memory, 0, staging.bytes_mut())?;
        // SAFETY: the staging copy holds a ring region written by RawRing::init and the
        // device's protocol; nothing else touches it.
        let ring = unsafe { RawRing::from_raw(staging.ptr) }.map_err(|e| DeviceError::Driver {
            call: "read back a device ring",
            message: e.to_string(),
        })?;
        let mut consumer = Consumer::new(ring).expect("a new view has no consumer yet");
        let mut messages = Vec::new();
        consumer.consume(u32::MAX, |slot| {
            messages.push(Message::of_slot(&slot));
            Step::Next
        });
        // The consumer's view points into `staging`, which outlives it (declared first).
        Ok(messages)
    }
}

impl Drop for CudaGroup {
    /// Terminates a group still running (within the command timeout) and warns, with
    /// their numbers, about every message it discards: left in a ring, output but never
    /// received, dead letters never taken.
    fn drop(&mut self) {
        if self.fault.lock().is_some() {
            return;
        }
        let undelivered = if self.running.lock().is_some() {
            self.stop(Instant::now() + self.command_timeout)
                .undelivered_count()
        } else {
            0
        };
        let unreceived: usize = (0..self.kernels.len()).map(|k| self.unreceived(k)).sum();
        let dead_letters = self.dead_letters.lock().len();
        if undelivered + unreceived + dead_letters > 0 {
            tracing::warn!(group = %self.name, undelivered, unreceived, dead_letters, "CUDA group dropped: messages left in its rings (undelivered), outputs never received and dead letters never taken are discarded; drain or terminate it and receive its outputs first");
        }
        if self.running.lock().is_some() {
            // The grid still runs and may touch every buffer: never free memory under
            // it. Leak the group's allocations instead.
            tracing::error!(group = %self.name, "grid still running at drop: leaking its memory");
            let kernels = std::mem::take(&mut self.kernels);
            let edges = std::mem::take(&mut self.edges);
            std::mem::forget(kernels);
            std::mem::forget(edges);
            std::mem::forget(self.descs.take());
        }
    }
}
