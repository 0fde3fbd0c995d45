//! The host side of a running wgpu group: sends into the host inboxes, receives from the
//! host outboxes, dead letters, and what the group reports about its kernels.

use crate::backend::group::SampleOf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::WgpuGroup;
use crate::abi::State;
use crate::backend::group::{host_send, Message, SendError};
use crate::control::Counters;
use crate::health::{Health, HealthPolicy};
use crate::metrics::KernelSample;
use crate::ring::Step;
use crate::routing::DeadLetter;
use crate::wait::Signal;

impl WgpuGroup {
    /// The adapter the group runs on.
    pub fn adapter(&self) -> &str {
        &self.inner.adapter
    }

    /// The index of the kernel named `name`.
    pub fn kernel_index(&self, name: &str) -> Option<usize> {
        self.inner.kernels.iter().position(|k| k.plan.name == name)
    }

    /// The most messages kernel `k` handles per tick: its plan's quantum, lowered on an
    /// adapter whose driver limits loop iterations per invocation (lavapipe; see
    /// [`GpuContext::loop_limit`](crate::backend::wgpu::adapter::GpuContext::loop_limit)).
    pub fn quantum(&self, k: usize) -> u32 {
        self.inner.kernels[k].plan.quantum
    }

    /// Ticks run so far.
    pub fn ticks(&self) -> u64 {
        self.inner.engine.lock().ticks
    }

    /// The device error that ended the group, if one did.
    pub fn fault(&self) -> Option<String> {
        self.inner.fault.lock().clone()
    }

    /// Sends one message to kernel `k` without waiting.
    ///
    /// # Errors
    /// [`SendError`] when the inbox is full, closed, the message too large, or the group
    /// faulted.
    pub fn try_send(&self, k: usize, payload: &[u8], corr: [u32; 2]) -> Result<(), SendError> {
        let inner = &self.inner;
        let kernel = &inner.kernels[k];
        if let Some(fault) = inner.fault.lock().clone() {
            return Err(SendError::Faulted(fault));
        }
        host_send(&kernel.inbox, &kernel.plan.name, payload, corr)?;
        inner.poke();
        Ok(())
    }

    /// Takes one output of kernel `k`, if one is there.
    pub fn try_recv(&self, k: usize) -> Option<Message> {
        self.try_recv_with(k, |tag, corr, payload| Message {
            tag,
            corr,
            payload: payload.to_vec(),
        })
    }

    /// Hands kernel `k`'s next output to `f` without copying it, if one is there.
    pub fn try_recv_with<R>(
        &self,
        k: usize,
        f: impl FnOnce(u32, [u32; 2], &[u8]) -> R,
    ) -> Option<R> {
        let kernel = &self.inner.kernels[k];
        // The host outbox first: the overflow queue only ever holds newer outputs.
        let mut f = Some(f);
        let mut taken = None;
        let n = kernel.outbox.lock().consume(1, |slot| {
            if let Some(f) = f.take() {
                taken = Some(f(slot.tag, slot.corr, slot.payload));
            }
            Step::Last
        });
        if n > 0 {
            // Room in the host outbox: if outputs wait on the device, the ticker may move
            // them now.
            if kernel.outbox_full.swap(false, Ordering::SeqCst) {
                self.inner.poke();
            }
            return taken;
        }
        let message = kernel.overflow.lock().pop_front()?;
        f.map(|f| f(message.tag, message.corr, &message.payload))
    }

    /// Waits at most `timeout` until kernel `k` has an output to take or the group
    /// faulted; returns whether one of them happened. Takes nothing.
    pub fn wait_for_output(&self, k: usize, timeout: Duration) -> bool {
        let kernel = &self.inner.kernels[k];
        self.inner
            .ticked
            .wait_until(Some(Instant::now() + timeout), || {
                let ready = !kernel.outbox.lock().is_empty()
                    || !kernel.overflow.lock().is_empty()
                    || self.inner.fault.lock().is_some();
                ready.then_some(())
            })
            .is_some()
    }

    /// Waits up to `timeout` for one output of kernel `k`.
    ///
    /// # Errors
    /// A message saying it timed out, or the device error.
    pub fn recv_timeout(&self, k: usize, timeout: Duration) -> Result<Message, String> {
        let deadline = Instant::now() + timeout;
        self.inner
            .ticked
            .wait_until(Some(deadline), || {
                if let Some(m) = self.try_recv(k) {
                    return Some(Ok(m));
                }
                self.fault().map(Err)
            })
            .unwrap_or_else(|| {
                Err(format!(
                    "timed out after {timeout:?} waiting for an output of kernel `{}`",
                    self.inner.kernels[k].plan.name
                ))
            })
    }

    /// Every dead letter so far.
    pub fn take_dead_letters(&self) -> Vec<DeadLetter> {
        std::mem::take(&mut *self.inner.dead_letters.lock())
    }

    /// Notified after every tick (outputs copied back, inbox slots uploaded, commands
    /// acknowledged) and when the group faults.
    pub fn ticked(&self) -> &Signal {
        &self.inner.ticked
    }

    /// Kernel `k`'s id (the sender id in its tags).
    pub fn kernel_id(&self, k: usize) -> u32 {
        self.inner.kernels[k].id
    }

    /// Kernel `k`'s state as last copied back.
    pub fn state(&self, k: usize) -> State {
        if self.inner.fault.lock().is_some() {
            return State::Faulted;
        }
        self.inner.kernels[k].control.state()
    }

    /// Kernel `k`'s counters, widened.
    pub fn counters(&self, k: usize) -> Counters<u64> {
        self.inner.kernels[k].control.counters()
    }

    /// A sample of kernel `k` for metrics and health.
    pub fn sample(&self, k: usize) -> KernelSample {
        let kernel = &self.inner.kernels[k];
        let of = SampleOf {
            name: &kernel.plan.name,
            backend: "wgpu",
            id: kernel.id,
            state: self.state(k),
            depth: kernel.inbox.len(),
            capacity: kernel.inbox.capacity(),
            ring_bytes: kernel.in_layout.region_bytes(),
        };
        kernel.measures.sample(of, &kernel.control)
    }

    /// Kernel `k`'s health: faulted, or its heartbeat standing still while messages wait
    /// for longer than `policy.watchdog`, is unhealthy (the device heartbeat is the word
    /// the CPU backend's watchdog reads too).
    pub fn health(&self, k: usize, policy: &HealthPolicy) -> Health {
        self.inner.kernels[k]
            .measures
            .health(&self.sample(k), policy)
    }
}
