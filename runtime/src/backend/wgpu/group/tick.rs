//! The ticker: uploads, one dispatch per kernel, the copies back into staging, and reading
//! them into the host mirrors (see the module documentation of `group`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Inner;
use crate::abi::{ControlBlock, State, RING_HEADER_BYTES, TAG_KIND_MASK};
use crate::backend::group::Message;
use crate::backend::wgpu::adapter::GpuContext;
use crate::control::ControlMemory;
use crate::lifecycle;
use crate::ring::{RingLayout, RingMemory};
use crate::routing::DeadLetter;

impl Inner {
    /// The ticker: ticks while there is work, parks when idle.
    pub(super) fn run(&self) {
        let mut pending = true;
        while !self.stop.load(Ordering::SeqCst) {
            if !pending {
                let woke = self.wake.wait_until(None, || {
                    (self.stop.load(Ordering::SeqCst) || self.work.load(Ordering::SeqCst))
                        .then_some(())
                });
                if woke.is_none() || self.stop.load(Ordering::SeqCst) {
                    break;
                }
            }
            self.work.store(false, Ordering::SeqCst);
            if self.fault.lock().is_some() {
                pending = false;
                self.ticked.notify();
                continue;
            }
            pending = match self.tick() {
                Ok(pending) => pending,
                Err(reason) => {
                    tracing::error!(group = %self.name, %reason, "wgpu group faulted");
                    *self.fault.lock() = Some(reason);
                    false
                }
            };
            self.ticked.notify();
        }
    }

    /// One tick. Returns whether more work is pending.
    #[allow(clippy::too_many_lines)]
    pub(super) fn tick(&self) -> Result<bool, String> {
        let mut engine = self.engine.lock();
        let engine = &mut *engine;
        if engine.halted {
            // The group's messages were handed back: the device runs nothing more.
            return Ok(false);
        }
        let gpu = Arc::clone(&engine.gpu);
        if let Some(lost) = gpu.lost() {
            return Err(format!("device lost: {lost}"));
        }
        let queue = &gpu.queue;
        // Uploads: new inbox slots, then commands (a drain or terminate comes after every
        // message sent before it), then the host's consumer heads.
        let mut uploaded_any = false;
        for (k, kernel) in self.kernels.iter().enumerate() {
            let c = &mut engine.cursors[k];
            // The command first, then the slots: a drain or terminate is issued only after
            // the inbox was closed and every claim published, so once this Acquire sees
            // its epoch, the stamp loads below see every message sent before it. (Read
            // after the slots, a command issued meanwhile would reach the device without
            // the messages sent before it, and a drain would end with them unprocessed.)
            let mirror = kernel.control.memory();
            // ORDERING: Acquire pairs with the Release store of command_epoch in `issue`.
            let epoch = mirror
                .word(std::mem::offset_of!(ControlBlock, command_epoch))
                .load(Ordering::Acquire);
            let command = mirror
                .word(std::mem::offset_of!(ControlBlock, command))
                .load(Ordering::Relaxed);
            let ring = kernel.inbox.memory();
            let layout = kernel.in_layout;
            let mask = layout.capacity() - 1;
            let mut end = c.uploaded;
            while end.wrapping_sub(c.uploaded) < layout.capacity()
                && ring.stamp(end & mask).load(Ordering::Acquire) == end.wrapping_add(1)
            {
                end = end.wrapping_add(1);
            }
            let mut position = c.uploaded;
            while position != end {
                // One write per contiguous run of slots (a run ends where the ring wraps).
                let first = position & mask;
                let run = (end.wrapping_sub(position)).min(layout.capacity() - first);
                let slot = layout.slot_bytes() as usize;
                let mut bytes = vec![0u8; run as usize * slot];
                for i in 0..run {
                    let index = first + i;
                    let at = i as usize * slot;
                    bytes[at..at + 4]
                        .copy_from_slice(&ring.stamp(index).load(Ordering::Acquire).to_ne_bytes());
                    // SAFETY: the stamp says the slot is published for this position and
                    // the device has not consumed it (it is past the uploaded cursor), so
                    // no producer writes it now.
                    unsafe {
                        ring.with_body(index, |body| {
                            bytes[at + 4..at + slot].copy_from_slice(body);
                        });
                    }
                }
                let offset = kernel.at_inbox
                    + u64::from(RING_HEADER_BYTES)
                    + u64::from(first) * u64::from(layout.slot_bytes());
                queue.write_buffer(&engine.mem, offset, &bytes);
                position = position.wrapping_add(run);
            }
            if c.uploaded != end {
                uploaded_any = true;
            }
            c.uploaded = end;
            if epoch != c.uploaded_epoch {
                let words = [command, epoch];
                queue.write_buffer(
                    &engine.mem,
                    kernel.at_control + std::mem::offset_of!(ControlBlock, command) as u64,
                    bytemuck::cast_slice(&words),
                );
                c.uploaded_epoch = epoch;
                uploaded_any = true;
            }
            let head_at = std::mem::offset_of!(crate::abi::RingHeader, head) as u64;
            // The heads of the rings the host consumes: its outbox and dead letters.
            for (at, head, uploaded) in [
                (kernel.at_outbox, c.out_head, &mut c.out_head_uploaded),
                (kernel.at_dead, c.dead_head, &mut c.dead_head_uploaded),
            ] {
                if head != *uploaded {
                    queue.write_buffer(&engine.mem, at + head_at, &head.to_ne_bytes());
                    *uploaded = head;
                    uploaded_any = true;
                }
            }
        }
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("gyre tick"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("gyre tick"),
                timestamp_writes: None,
            });
            pass.set_bind_group(0, &engine.bind_group, &[]);
            for &k in &self.order {
                pass.set_pipeline(&engine.pipelines[k]);
                pass.dispatch_workgroups(1, 1, 1);
            }
        }
        let staging = &engine.staging[engine.which];
        engine.which ^= 1;
        for copy in &engine.copies {
            encoder.copy_buffer_to_buffer(&engine.mem, copy.src, staging, copy.dst, copy.len);
        }
        queue.submit([encoder.finish()]);
        map_after(&gpu, staging).map_err(|e| format!("reading back a tick: {e}"))?;
        if let Some(error) = gpu.take_error() {
            return Err(error);
        }
        engine.ticks += 1;
        let mut pending = false;
        let mut fingerprint = 0xcbf2_9ce4_8422_2325_u64;
        let mut mix = |word: u64| {
            fingerprint = (fingerprint ^ word).wrapping_mul(0x0100_0000_01b3);
        };
        {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| format!("reading back a tick: {e}"))?;
            let bytes: &[u8] = &view;
            let mut letters = Vec::new();
            for (k, kernel) in self.kernels.iter().enumerate() {
                let c = &mut engine.cursors[k];
                let base = kernel.st_control as usize;
                let mirror = kernel.control.memory();
                let ack = std::mem::offset_of!(ControlBlock, ack_epoch);
                let state = State::from_word(read_u32(
                    bytes,
                    base + std::mem::offset_of!(ControlBlock, state),
                ));
                for field in [
                    std::mem::offset_of!(ControlBlock, state),
                    std::mem::offset_of!(ControlBlock, ack_epoch),
                    std::mem::offset_of!(ControlBlock, received),
                    std::mem::offset_of!(ControlBlock, processed),
                    std::mem::offset_of!(ControlBlock, emitted),
                ] {
                    mix(u64::from(read_u32(bytes, base + field)));
                }
                if state == Some(State::Draining)
                    || kernel.control.epoch() != read_u32(bytes, base + ack)
                {
                    pending = true;
                }
                // The device's inbox head: free room for senders.
                let head_at = std::mem::offset_of!(crate::abi::RingHeader, head);
                let head = read_u32(bytes, kernel.st_inbox_header as usize + head_at);
                // ORDERING: Release pairs with the producers' Acquire of head: the device
                // finished reading those slots in a completed submission.
                kernel.inbox.memory().head().store(head, Ordering::Release);
                if head != c.uploaded
                    && lifecycle::processes_messages(state.unwrap_or(State::Faulted))
                {
                    pending = true;
                }
                // Outputs: move new messages of the device outbox into the host outbox.
                let out = &bytes[kernel.st_outbox as usize
                    ..kernel.st_outbox as usize + kernel.out_layout.region_bytes()];
                // The host outbox holds older outputs than the overflow queue, so once
                // the queue is in use everything newer goes there too.
                let unbounded = self.unbounded.load(Ordering::SeqCst);
                let mut overflow = kernel.overflow.lock();
                let moved = take_messages(
                    out,
                    kernel.out_layout,
                    &mut c.out_head,
                    |tag, corr, payload| {
                        if overflow.is_empty() {
                            if let Ok(claim) = kernel.outbox_tx.try_claim(1) {
                                claim.write(0, tag, corr, |slot| slot.copy_from_slice(payload));
                                claim.publish();
                                return true;
                            }
                        }
                        if unbounded {
                            overflow.push_back(Message {
                                tag,
                                corr,
                                payload: payload.to_vec(),
                            });
                            return true;
                        }
                        kernel.outbox_full.store(true, Ordering::SeqCst);
                        false
                    },
                );
                drop(overflow);
                // Outputs moved free room in the device outbox; a kernel that stalled on
                // it still has input, which keeps the ticker going (above), so moving
                // outputs alone needs no further tick.
                let _ = moved;
                mix(u64::from(c.out_head));
                let dead = &bytes[kernel.st_dead as usize
                    ..kernel.st_dead as usize + kernel.dead_layout.region_bytes()];
                take_messages(
                    dead,
                    kernel.dead_layout,
                    &mut c.dead_head,
                    |tag, corr, payload| {
                        letters.push(DeadLetter::from_device(
                            &kernel.plan.name,
                            tag,
                            corr,
                            payload,
                        ));
                        true
                    },
                );
                // The status line last, acknowledgement last of all (Release), as a
                // kernel writes it: after this tick's outputs are in the host outbox, so a
                // receiver that reads a stopped state finds every output the kernel made
                // before it stopped (the seam's "nothing more will come").
                for field in [
                    std::mem::offset_of!(ControlBlock, state),
                    std::mem::offset_of!(ControlBlock, heartbeat),
                    std::mem::offset_of!(ControlBlock, error_code),
                    std::mem::offset_of!(ControlBlock, received),
                    std::mem::offset_of!(ControlBlock, processed),
                    std::mem::offset_of!(ControlBlock, emitted),
                    std::mem::offset_of!(ControlBlock, stalls),
                    std::mem::offset_of!(ControlBlock, errors),
                ] {
                    mirror
                        .word(field)
                        .store(read_u32(bytes, base + field), Ordering::Relaxed);
                }
                // ORDERING: Release pairs with HostSide::status's Acquire of ack_epoch.
                mirror
                    .word(ack)
                    .store(read_u32(bytes, base + ack), Ordering::Release);
            }
            for edge in &self.edges {
                let tail = read_u32(
                    bytes,
                    edge.st_header as usize + std::mem::offset_of!(crate::abi::RingHeader, tail),
                );
                let head = read_u32(
                    bytes,
                    edge.st_header as usize + std::mem::offset_of!(crate::abi::RingHeader, head),
                );
                if tail != head
                    && lifecycle::processes_messages(self.kernels[edge.to].control.state())
                {
                    pending = true;
                }
            }
            if !letters.is_empty() {
                self.dead_letters.lock().extend(letters);
            }
        }
        staging.unmap();
        // A tick that uploaded nothing and changed nothing is a fixed point: only the host
        // can change it (a send, a receive or a command pokes the ticker).
        let progress = uploaded_any || fingerprint != engine.fingerprint;
        engine.fingerprint = fingerprint;
        Ok((pending && progress) || self.work.load(Ordering::SeqCst))
    }
}

pub(super) fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

/// Reads the messages of a copied ring region from `*head` on while stamps say they are
/// published, handing each (tag, corr, payload) to `take`, which returns false to stop.
/// Cancelled slots are skipped. Returns the number of messages taken.
pub(super) fn take_messages(
    region: &[u8],
    layout: RingLayout,
    head: &mut u32,
    mut take: impl FnMut(u32, [u32; 2], &[u8]) -> bool,
) -> u32 {
    let slot = layout.slot_bytes() as usize;
    let mask = layout.capacity() - 1;
    let mut taken = 0;
    loop {
        let at = RING_HEADER_BYTES as usize + (*head & mask) as usize * slot;
        if read_u32(region, at) != head.wrapping_add(1) {
            return taken;
        }
        let tag = read_u32(region, at + 4);
        if tag & TAG_KIND_MASK != crate::abi::KIND_CANCELLED {
            let corr = [read_u32(region, at + 8), read_u32(region, at + 12)];
            if !take(tag, corr, &region[at + 16..at + slot]) {
                return taken;
            }
            taken += 1;
        }
        *head = head.wrapping_add(1);
    }
}

/// How long a map's callback may lag behind the poll that saw its submission complete.
const MAP_CALLBACK_PATIENCE: Duration = Duration::from_secs(10);

/// Maps `buffer` for reading once the submissions so far (the last of which copies into
/// it) complete, and returns when the map is done.
///
/// Waiting for the submission is not enough: when several threads poll one device (every
/// group on a device has its own ticker), another thread's poll may collect this map's
/// callback and run it only after this thread's poll has returned. So this waits for the
/// callback itself, polling without blocking meanwhile, for at most
/// [`MAP_CALLBACK_PATIENCE`].
pub(super) fn map_after(gpu: &GpuContext, buffer: &wgpu::Buffer) -> Result<(), String> {
    let (done, mapped) = std::sync::mpsc::channel();
    buffer.map_async(wgpu::MapMode::Read, .., move |r| {
        // The receiver waits below until this arrives or it gives up; a send to one
        // that gave up has nobody to tell.
        let _ = done.send(r);
    });
    // Waiting on `submission` itself fails on a lost device (it was never submitted); the
    // most recent submission covers it.
    let waited = gpu.device.poll(wgpu::PollType::wait_indefinitely());
    if let Some(lost) = gpu.lost() {
        return Err(format!("device lost: {lost}"));
    }
    waited.map_err(|e| format!("waiting for the device: {e}"))?;
    let deadline = Instant::now() + MAP_CALLBACK_PATIENCE;
    loop {
        if let Some(lost) = gpu.lost() {
            return Err(format!("device lost: {lost}"));
        }
        match mapped.recv_timeout(Duration::from_millis(1)) {
            Ok(result) => return result.map_err(|e| e.to_string()),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the map's callback was dropped without running".to_owned());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                return Err(format!(
                    "the map did not complete within {MAP_CALLBACK_PATIENCE:?} of its submission"
                ));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                gpu.device
                    .poll(wgpu::PollType::Poll)
                    .map_err(|e| format!("polling the device: {e}"))?;
            }
        }
    }
}
