//! The host side of a running CUDA group: sends into the host inboxes, receives from the
//! host outboxes, dead letters, and what the group reports about its kernels.

use crate::backend::group::SampleOf;
use std::sync::Arc;

use crate::abi::State;
use crate::backend::cuda::device::Device;
use crate::control::Counters;
use crate::health::{Health, HealthPolicy};
use crate::metrics::KernelSample;
use crate::ring::Step;
use crate::routing::DeadLetter;

use super::CudaGroup;
use crate::backend::group::host_send;
use crate::backend::group::{Message, SendError};

impl CudaGroup {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device it runs on.
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.device
    }

    /// The index of the kernel named `name`.
    pub fn kernel_index(&self, name: &str) -> Option<usize> {
        self.kernels.iter().position(|k| k.plan.name == name)
    }

    /// Number of kernels.
    pub fn len(&self) -> usize {
        self.kernels.len()
    }

    /// Whether the group has no kernels (never: launch refuses that).
    pub fn is_empty(&self) -> bool {
        self.kernels.is_empty()
    }

    /// The device error that ended the group, if one did. Queries the grid's stream.
    pub fn fault(&self) -> Option<String> {
        if let Some(fault) = self.fault.lock().clone() {
            return Some(fault);
        }
        let mut running = self.running.lock();
        if let Some(grid) = running.as_ref() {
            match grid.query() {
                Ok(_) => None,
                Err(e) => {
                    let reason = format!("device error: {e}");
                    tracing::error!(group = %self.name, %reason, "CUDA group faulted");
                    *running = None;
                    *self.fault.lock() = Some(reason.clone());
                    Some(reason)
                }
            }
        } else {
            None
        }
    }

    /// Whether the grid finished (every kernel exited), or the group faulted.
    pub(super) fn grid_finished(&self) -> bool {
        if self.fault().is_some() {
            return true;
        }
        self.running
            .lock()
            .as_ref()
            .is_none_or(|grid| grid.query().unwrap_or(true))
    }

    /// Sends one message to kernel `k`'s host inbox without waiting.
    ///
    /// # Errors
    /// [`SendError`] when the inbox is full, closed, the message too large, or the group
    /// faulted.
    pub fn try_send(&self, k: usize, payload: &[u8], corr: [u32; 2]) -> Result<(), SendError> {
        let kernel = &self.kernels[k];
        match host_send(&kernel.inbox, &kernel.plan.name, payload, corr) {
            // A full inbox of a group that faulted will never empty: say why.
            Err(full @ SendError::Full { .. }) => {
                if let Some(fault) = self.fault() {
                    return Err(SendError::Faulted(fault));
                }
                // A kernel may be waiting for room in a dead-letter ring.
                self.collect_dead_letters();
                Err(full)
            }
            other => other,
        }
    }

    /// Takes one output of kernel `k` from its host outbox, if one is there.
    ///
    /// # Errors
    /// The device error, when the group faulted and nothing is left to receive.
    pub fn try_recv(&self, k: usize) -> Result<Option<Message>, String> {
        match self.try_recv_with(k, |tag, corr, payload| Message {
            tag,
            corr,
            payload: payload.to_vec(),
        }) {
            Some(message) => Ok(Some(message)),
            None => match self.fault() {
                Some(fault) => Err(fault),
                None => Ok(None),
            },
        }
    }

    /// Hands kernel `k`'s next output to `f` without copying it, if one is there.
    ///
    /// `None` after kernel `k` acknowledged its stop ([`CudaGroup::state`] read before this
    /// call says `Terminated`) means nothing more will come: the kernel published every
    /// output before it acknowledged, and the ring and the host's queue are looked at
    /// under one lock. An empty look also collects the dead letters (a kernel may be
    /// waiting for room in a dead-letter ring).
    pub fn try_recv_with<R>(
        &self,
        k: usize,
        f: impl FnOnce(u32, [u32; 2], &[u8]) -> R,
    ) -> Option<R> {
        let kernel = &self.kernels[k];
        let mut outputs = kernel.outputs.lock();
        if let Some(message) = outputs.queue.pop_front() {
            return Some(f(message.tag, message.corr, &message.payload));
        }
        let mut f = Some(f);
        let mut out = None;
        outputs.ring.consume(1, |slot| {
            if let Some(f) = f.take() {
                out = Some(f(slot.tag, slot.corr, slot.payload));
            }
            Step::Last
        });
        drop(outputs);
        if out.is_none() {
            self.collect_dead_letters();
        }
        out
    }

    /// Outputs of kernel `k` for the host not received yet.
    pub fn unreceived(&self, k: usize) -> usize {
        self.kernels[k].outputs.lock().len()
    }

    /// Moves every message waiting in the dead-letter rings to the group's list, and
    /// returns the list.
    pub fn take_dead_letters(&self) -> Vec<DeadLetter> {
        self.collect_dead_letters();
        std::mem::take(&mut *self.dead_letters.lock())
    }

    fn collect_dead_letters(&self) {
        // The list's lock is held while the rings are read: collectors run on several
        // threads (senders, receivers, the watcher), and letters read by one must not be
        // appended after letters another read later.
        let mut list = self.dead_letters.lock();
        for kernel in &self.kernels {
            kernel.dead.lock().consume(u32::MAX, |slot| {
                list.push(DeadLetter::from_device(
                    &kernel.plan.name,
                    slot.tag,
                    slot.corr,
                    slot.payload,
                ));
                Step::Next
            });
        }
    }

    /// Moves every output waiting in a host outbox to the host's queue of its kernel, and
    /// every dead letter to the group's list, so a kernel that stops never waits on a host
    /// that is not receiving.
    pub(super) fn pump_all(&self) {
        for kernel in &self.kernels {
            kernel.outputs.lock().pump();
        }
        self.collect_dead_letters();
    }

    /// Kernel `k`'s id (the sender id in its tags).
    pub fn kernel_id(&self, k: usize) -> u32 {
        self.kernels[k].id
    }

    /// A fingerprint of what waiters wait for: every kernel's inbox fill, the position
    /// and readiness of its host outbox, its queued outputs and its state, and whether
    /// the group faulted. Any change of a waited-for condition changes it. Also moves
    /// dead letters to the group's list, so a kernel waiting for room in its dead-letter
    /// ring is not left waiting while nobody sends or receives.
    pub(crate) fn fingerprint(&self) -> u64 {
        use crate::backend::seam::fold;
        self.collect_dead_letters();
        let mut hash = 0xcbf2_9ce4_8422_2325;
        for kernel in &self.kernels {
            hash = fold(hash, u64::from(kernel.inbox.len()));
            let outputs = kernel.outputs.lock();
            hash = fold(hash, u64::from(outputs.ring.head()));
            hash = fold(hash, u64::from(outputs.ring.is_empty()));
            hash = fold(hash, outputs.queue.len() as u64);
            drop(outputs);
            hash = fold(hash, kernel.control.state() as u64);
        }
        fold(hash, u64::from(self.fault.lock().is_some()))
    }

    /// Kernel `k`'s state, as it last acknowledged it.
    pub fn state(&self, k: usize) -> State {
        if self.fault.lock().is_some() {
            return State::Faulted;
        }
        self.kernels[k].control.state()
    }

    /// Kernel `k`'s counters, widened to u64.
    pub fn counters(&self, k: usize) -> Counters<u64> {
        self.kernels[k].control.counters()
    }

    /// A sample of kernel `k` for metrics and health.
    pub fn sample(&self, k: usize) -> KernelSample {
        let kernel = &self.kernels[k];
        let of = SampleOf {
            name: &kernel.plan.name,
            backend: if self.device.is_emulated() {
                "cuda-emulated"
            } else {
                "cuda"
            },
            id: kernel.id,
            state: self.state(k),
            depth: kernel.inbox.len(),
            capacity: kernel.inbox.capacity(),
            ring_bytes: kernel.inbox.memory().ring.layout().region_bytes(),
        };
        let mut sample = kernel.measures.sample(of, &kernel.control);
        sample.device = Some(self.device.ordinal());
        sample
    }

    /// Kernel `k`'s health: faulted, or its heartbeat standing still while messages wait
    /// for longer than `policy.watchdog`, is unhealthy (the device heartbeat is the word
    /// the CPU backend's watchdog reads too).
    pub fn health(&self, k: usize, policy: &HealthPolicy) -> Health {
        self.kernels[k].measures.health(&self.sample(k), policy)
    }
}
