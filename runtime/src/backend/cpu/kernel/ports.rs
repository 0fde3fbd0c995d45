//! A kernel's output ports on the CPU backend: where each emit goes, and the stash that
//! keeps emits whose target ring is full until it has room.
//!
//! An emit never blocks the thread running the kernel (a pool worker may be the only
//! thread that can run the downstream kernel): when the target ring is full the message
//! goes to the kernel's stash, and so does every later emit, whatever its port, so the
//! kernel's emits reach their targets in the order they were made (a "done" message on
//! one port never overtakes the updates stashed for another). The kernel finishes the
//! message in hand, counts a stall and takes no more input until the stash is delivered;
//! the target wakes it when it frees room. The stash holds at most what one message
//! emits, so memory stays bounded, and what is stashed comes back in a terminate report.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{Emitter, KernelCore};
use crate::abi::{make_tag, KIND_MESSAGE};
use crate::ring::{ClaimError, Producer, SlotRef};
use crate::routing::RouteError;
use crate::sync::{asym, Ordering};

/// Where a port's messages go.
#[derive(Debug, Default)]
pub enum PortTarget {
    /// Nowhere yet: an emit to it is an error ([`super::EmitError::Unbound`]).
    #[default]
    Unbound,
    /// The kernel's host-bound output ring.
    Host,
    /// Another kernel's inbox.
    Kernel {
        /// The downstream kernel.
        core: Arc<KernelCore>,
        /// Whether this port owns the downstream's single-producer lane (claims without a
        /// compare-and-swap) rather than sharing its inbox with other producers.
        exclusive: bool,
    },
    /// The runtime's dead-letter sink.
    DeadLetters,
}

/// One output port: its target, and what the stash delivered to it this turn.
#[derive(Debug, Default)]
pub(crate) struct Port {
    pub(crate) target: PortTarget,
    /// Stashed messages delivered into the target ring since the target was last woken.
    delivered: u32,
}

impl Drop for Port {
    fn drop(&mut self) {
        if let PortTarget::Kernel {
            core,
            exclusive: true,
        } = &self.target
        {
            // ORDERING: Release pairs with the Acquire swap in `take_lane`: our claims
            // happen before the next holder's.
            core.lane_taken.store(false, Ordering::Release);
        }
    }
}

/// Emits waiting for room, in emit order across ports, packed into one buffer that is
/// reused once empty (no allocation per stall after warm-up).
#[derive(Debug, Default)]
pub(crate) struct Stash {
    bytes: Vec<u8>,
    /// (port, tag, corr, start, len)
    items: VecDeque<(u32, u32, [u32; 2], usize, usize)>,
}

impl Stash {
    fn push(&mut self, port: u32, tag: u32, corr: [u32; 2], payload: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.items
            .push_back((port, tag, corr, start, payload.len()));
    }

    fn front(&self) -> Option<(u32, u32, [u32; 2], &[u8])> {
        let &(port, tag, corr, start, len) = self.items.front()?;
        Some((port, tag, corr, &self.bytes[start..start + len]))
    }

    fn pop_front(&mut self) {
        self.items.pop_front();
        if self.items.is_empty() {
            self.bytes.clear();
        }
    }

    /// Whether emits wait for room.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Hands every stashed message to `f` and empties the stash (terminate).
    pub(crate) fn take_all(&mut self, f: &mut dyn FnMut(SlotRef<'_>)) {
        while let Some((_, tag, corr, payload)) = self.front() {
            f(SlotRef {
                position: 0,
                tag,
                corr,
                payload,
            });
            self.pop_front();
        }
    }
}

/// What one delivery attempt did.
enum Delivery {
    Delivered,
    Full,
    /// The target stopped taking messages; the message went to the dead-letter sink.
    DeadLettered,
}

impl Port {
    pub(crate) fn new(target: PortTarget) -> Self {
        Self {
            target,
            delivered: 0,
        }
    }

    /// The ring this port writes into as its only producer (the host output of `core`,
    /// the kernel this port belongs to, or a downstream lane the port owns), if it has one.
    #[inline]
    fn exclusive_ring<'a>(&'a self, core: &'a KernelCore) -> Option<&'a Producer<super::Ring>> {
        match &self.target {
            PortTarget::Host => core.outbox.as_ref(),
            PortTarget::Kernel {
                core: to,
                exclusive: true,
            } => Some(&to.lane),
            _ => None,
        }
    }
}

impl KernelCore {
    /// Payload bytes per slot of a port target's ring, if it has one.
    fn target_payload_bytes(&self, target: &PortTarget) -> Option<usize> {
        match target {
            PortTarget::Host => self
                .outbox
                .as_ref()
                .map(|o| o.memory().layout().payload_bytes() as usize),
            PortTarget::Kernel { core, .. } => Some(core.inbox_payload_bytes()),
            PortTarget::Unbound | PortTarget::DeadLetters => None,
        }
    }

    /// Writes one message into `target`'s ring in place, or reports it full. Call only
    /// from the thread running this kernel (it holds the exec lock).
    fn try_deliver(
        &self,
        target: &PortTarget,
        tag: u32,
        corr: [u32; 2],
        payload: &[u8],
    ) -> Delivery {
        let claimed = match target {
            PortTarget::Host if self.local.overflowing.load(Ordering::Relaxed) => {
                return self.deliver_or_overflow(tag, corr, payload);
            }
            PortTarget::Host => {
                let outbox = self
                    .outbox
                    .as_ref()
                    .expect("a Host port needs an output ring");
                // SAFETY: the output ring's only producer is the thread running this
                // kernel, which holds the exec lock for the whole turn.
                unsafe { outbox.try_claim_exclusive(1) }
            }
            PortTarget::Kernel {
                core,
                exclusive: true,
            } => {
                // SAFETY: this port owns the downstream's lane (`bind` took it through
                // `lane_taken`, and `Drop for Port` gives it back), and the port is used
                // only by the thread holding this kernel's exec lock: one producer.
                unsafe { core.lane.try_claim_exclusive(1) }
            }
            PortTarget::Kernel { core, .. } => core.inbox.try_claim(1),
            PortTarget::Unbound | PortTarget::DeadLetters => {
                unreachable!("only ring targets are delivered to")
            }
        };
        match claimed {
            Ok(claim) => {
                claim.write(0, tag, corr, |slot| {
                    slot[..payload.len()].copy_from_slice(payload);
                });
                claim.publish();
                Delivery::Delivered
            }
            Err(ClaimError::Full { .. }) => Delivery::Full,
            Err(ClaimError::Closed) => {
                let PortTarget::Kernel { core, .. } = target else {
                    unreachable!("the host-bound output ring is never closed")
                };
                let reason = format!(
                    "downstream kernel `{}` stopped taking messages ({:?})",
                    core.config.name,
                    core.closed_state()
                );
                self.dead_letter(false, reason, &emitted_slot(tag, corr, payload));
                Delivery::DeadLettered
            }
            Err(ClaimError::TooMany) => unreachable!("a claim of one always fits"),
        }
    }

    /// Asks `target` to wake this kernel when it frees room, then fences so that either
    /// the target sees the request or the caller's re-check sees the room.
    fn request_room(self: &Arc<Self>, target: &PortTarget) {
        self.output_stalled.store(true, Ordering::SeqCst);
        if let PortTarget::Kernel { core, .. } = target {
            core.space_waiters.lock().push(self.clone());
            core.has_space_waiters.store(true, Ordering::SeqCst);
        }
        // ORDERING: heavy fence between the stores above and the caller's re-check of
        // the ring; pairs with the light fence in `wake_space_waiters` (kernel targets)
        // and in `after_output_consumed` (the host output): Dekker, one side sees the other.
        asym::heavy();
    }

    /// Wakes the kernels that wait for room in this kernel's inbox. Called after this
    /// kernel (or a terminate) released inbox slots, and when it stops.
    pub(super) fn wake_space_waiters(&self) {
        // ORDERING: orders the release of inbox slots before the flag load; pairs with
        // the heavy fence in `request_room`.
        asym::light();
        if self.has_space_waiters.load(Ordering::Relaxed)
            && self.has_space_waiters.swap(false, Ordering::AcqRel)
        {
            let waiters = std::mem::take(&mut *self.space_waiters.lock());
            for waiter in waiters {
                waiter.output_stalled.store(false, Ordering::Relaxed);
                waiter.wake();
            }
        }
    }

    /// Delivers what the stash holds, in order. Returns whether it is empty; when it is
    /// not, this kernel is registered to be woken when the blocking target frees room.
    pub(super) fn flush_stash(self: &Arc<Self>, ports: &mut [Port], stash: &mut Stash) -> bool {
        let mut asked = false;
        while let Some((number, tag, corr, payload)) = stash.front() {
            let port = &mut ports[number as usize];
            if matches!(port.target, PortTarget::Unbound | PortTarget::DeadLetters) {
                // The port was rebound while these waited: nothing to deliver them to.
                let reason =
                    format!("port {number} was rebound to no ring while this emit waited for room");
                self.dead_letter(false, reason, &emitted_slot(tag, corr, payload));
                stash.pop_front();
                continue;
            }
            match self.try_deliver(&port.target, tag, corr, payload) {
                Delivery::Delivered => port.delivered += 1,
                Delivery::DeadLettered => {}
                Delivery::Full if !asked => {
                    self.request_room(&port.target);
                    asked = true;
                    continue;
                }
                Delivery::Full => return false,
            }
            stash.pop_front();
        }
        self.output_stalled.store(false, Ordering::Relaxed);
        true
    }

    /// A host-bound emit while the runtime is dropped (see `overflow_host_output`): into
    /// the output ring while nothing overflowed, else behind what did, so that receivers,
    /// which take the ring first and then the overflow, get everything in emit order.
    /// Never full: a stop of a dropped runtime does not wait for a host that is not
    /// receiving (as a device group pumps its host outputs).
    #[cold]
    fn deliver_or_overflow(&self, tag: u32, corr: [u32; 2], payload: &[u8]) -> Delivery {
        let mut overflow = self.overflow.lock();
        if overflow.is_empty() {
            let outbox = self
                .outbox
                .as_ref()
                .expect("a Host port needs an output ring");
            // SAFETY: as in `try_deliver`: this kernel's thread is the output ring's only
            // producer.
            if let Ok(claim) = unsafe { outbox.try_claim_exclusive(1) } {
                claim.write(0, tag, corr, |slot| {
                    slot[..payload.len()].copy_from_slice(payload);
                });
                claim.publish();
                return Delivery::Delivered;
            }
        }
        overflow.push_back((tag, corr, payload.to_vec()));
        // ORDERING: Release pairs with the receivers' Acquire load: whoever sees the
        // flag finds the message in the queue (under its lock anyway).
        self.overflow_pending.store(true, Ordering::Release);
        drop(overflow);
        self.outbox_items.notify();
        Delivery::Delivered
    }

    /// From now on host-bound emits that find the output ring full go to an overflow
    /// queue that receivers read after the ring, instead of waiting for room: what the
    /// runtime's drop sets before it drains, so that a kernel whose output nobody
    /// receives during the drop (its receiving handle is on the dropping thread) drains
    /// its inbox instead of timing out with it, and every handle left receives all it
    /// emitted. A kernel stalled on a full output is woken to move on.
    pub fn overflow_host_output(self: &Arc<Self>) {
        if self.outbox.is_none() {
            return;
        }
        self.local.overflowing.store(true, Ordering::Relaxed);
        self.output_stalled.store(false, Ordering::Relaxed);
        self.wake();
    }

    /// Takes the oldest overflowed host-bound message (see `overflow_host_output`),
    /// handing it to `f` as a slot. Only when the output ring is empty.
    pub(super) fn take_overflow<R>(&self, f: impl FnOnce(SlotRef<'_>) -> R) -> Option<R> {
        // ORDERING: Acquire pairs with the Release store in `deliver_or_overflow`.
        if !self.overflow_pending.load(Ordering::Acquire) {
            return None;
        }
        let mut overflow = self.overflow.lock();
        let (tag, corr, payload) = overflow.pop_front()?;
        if overflow.is_empty() {
            self.overflow_pending.store(false, Ordering::Relaxed);
        }
        drop(overflow);
        let slot = emitted_slot(tag, corr, &payload);
        Some(f(SlotRef {
            corr: slot.user_corr(),
            ..slot
        }))
    }

    /// Whether overflowed host-bound messages wait (see `overflow_host_output`).
    pub(super) fn overflow_pending(&self) -> bool {
        // ORDERING: as in `take_overflow`.
        self.overflow_pending.load(Ordering::Acquire)
    }

    /// Wakes the consumer of one ring target.
    #[inline]
    fn notify_target(&self, target: &PortTarget) {
        match target {
            PortTarget::Host => self.outbox_items.notify(),
            PortTarget::Kernel { core, .. } => core.wake(),
            PortTarget::Unbound | PortTarget::DeadLetters => {}
        }
    }

    /// Wakes the consumers of every port that got stashed messages delivered this turn.
    pub(super) fn notify_ports(&self, ports: &mut [Port]) {
        for port in ports.iter_mut().filter(|p| p.delivered > 0) {
            port.delivered = 0;
            self.notify_target(&port.target);
        }
    }

    /// Binds output port `port` to `target`, replacing what it was bound to (and giving
    /// back a downstream lane it held). With `exclusive`, a kernel target's
    /// single-producer lane is taken for this port when it is free.
    ///
    /// # Errors
    /// [`RouteError`] when the port does not exist, the target kernel stopped, its slots
    /// are smaller than `message_bytes`, or this kernel's turn does not end within the
    /// command timeout.
    pub fn bind(
        self: &Arc<Self>,
        port: u32,
        target: PortTarget,
        message_bytes: usize,
        exclusive: bool,
    ) -> Result<(), RouteError> {
        let ports = self.config.ports;
        if port >= ports {
            return Err(RouteError::NoSuchPort {
                kernel: self.config.name.clone(),
                port,
                ports,
            });
        }
        let target = match target {
            PortTarget::Kernel { core, .. } => {
                let state = core.state();
                if crate::lifecycle::is_stopped(state) || core.inbox.is_closed() {
                    return Err(RouteError::Stopped {
                        kernel: core.config.name.clone(),
                        state: crate::lifecycle::state_name(core.closed_state()),
                    });
                }
                if core.inbox_payload_bytes() < message_bytes {
                    return Err(RouteError::SlotTooSmall {
                        from: self.config.name.clone(),
                        to: core.config.name.clone(),
                        message_bytes,
                        slot_payload_bytes: core.inbox_payload_bytes(),
                    });
                }
                let exclusive = exclusive
                    // ORDERING: Acquire pairs with the Release store in `Drop for Port` /
                    // `ExclusiveLane::drop`: the previous holder's claims happen first.
                    && !core.lane_taken.swap(true, Ordering::Acquire);
                PortTarget::Kernel { core, exclusive }
            }
            PortTarget::Host if self.outbox.is_none() => {
                return Err(RouteError::NoSuchPort {
                    kernel: format!("{} (no host output ring)", self.config.name),
                    port,
                    ports,
                })
            }
            other => other,
        };
        if let PortTarget::Host = target {
            if self.target_payload_bytes(&target).unwrap_or(0) < message_bytes {
                return Err(RouteError::SlotTooSmall {
                    from: self.config.name.clone(),
                    to: "host".into(),
                    message_bytes,
                    slot_payload_bytes: self.target_payload_bytes(&target).unwrap_or(0),
                });
            }
        }
        let to = match &target {
            PortTarget::Kernel { core, .. } => Some(core.id),
            _ => None,
        };
        let fresh = Port::new(target);
        let Some(mut exec) = self.exec.try_lock_for(self.config.command_timeout) else {
            // Dropping `fresh` gives back a lane taken above.
            return Err(RouteError::Busy(self.config.name.clone()));
        };
        // What the stash holds for this port now goes to the new target, in order.
        exec.ports[port as usize] = fresh;
        self.routes.lock()[port as usize] = to;
        drop(exec);
        // Stashed messages now head for the new target: run a turn to deliver them.
        self.output_stalled.store(false, Ordering::Relaxed);
        self.wake();
        Ok(())
    }

    /// Where each port goes now: `None` for the host output, the dead-letter sink or an
    /// unbound port, else the downstream kernel's id.
    ///
    /// Never waits for the kernel (it reads a host-side copy kept by [`KernelCore::bind`]),
    /// so it answers even while a handler that never returns holds the kernel.
    pub fn routes(&self) -> Vec<Option<u32>> {
        self.routes.lock().clone()
    }

    /// Unbinds every port (breaks reference cycles between kernels routed in a cycle).
    pub(crate) fn unbind_all(&self) {
        if let Some(mut exec) = self.exec.try_lock() {
            if exec.stash.is_empty() {
                for port in &mut exec.ports {
                    *port = Port::default();
                }
                self.routes.lock().fill(None);
            }
        }
    }
}

impl Emitter<'_> {
    /// Emits one message to output port `port`, writing it into the target's slot in
    /// place. Never waits: when the target ring is full the message is kept in the
    /// port's stash (the kernel then takes no more input until it is delivered, counted
    /// as a stall); when the target kernel stopped, it goes to the dead-letter sink.
    ///
    /// # Errors
    /// [`super::EmitError`] when the port does not exist or is unbound, the payload does
    /// not fit the target's slots, or the kernel was abandoned by a terminate.
    // Always: without it the typed handler calls this out of line (seen in `perf`), and
    // the payload copy becomes a `memcpy` call of run-time length instead of a few moves.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn emit_to(
        &mut self,
        port: u32,
        corr: [u32; 2],
        payload: &[u8],
    ) -> Result<(), super::EmitError> {
        // The common case inline: an untimed emit, nothing stashed, into a ring this
        // kernel is the only producer of (the host output or a downstream lane) that has
        // room. Anything else, including every error, takes `emit_slow`.
        if self.timed_corr.is_none() && self.stash.is_empty() {
            if let Some(slot) = self.ports.get(port as usize) {
                let core = self.core;
                let ring = slot.exclusive_ring(core);
                if let Some(ring) = ring {
                    if !core.local.abandoned.load(Ordering::Relaxed)
                        && !core.local.overflowing.load(Ordering::Relaxed)
                    {
                        let tag = make_tag(KIND_MESSAGE, core.id);
                        // SAFETY: as in `try_deliver`: the host output ring's only producer
                        // is the thread running this kernel, and an exclusive port owns the
                        // downstream's lane; this thread holds the exec lock.
                        if unsafe { ring.push_exclusive(tag, corr, payload) }.is_ok() {
                            self.emitted += 1;
                            // Wake the consumer now, not at the end of the turn: a handler
                            // that takes long (or never returns) must not hold back what it
                            // already emitted. A load when the consumer is awake.
                            core.notify_target(&slot.target);
                            return Ok(());
                        }
                    }
                }
            }
        }
        self.emit_slow(port, corr, payload)
    }

    /// Emits `count` messages to output port `port` as one run: `item(i)` gives message
    /// `i`'s correlation id, whether it answers a timed message (it then stays timed), and
    /// its payload. Into a ring this kernel alone produces to (the host output, a
    /// downstream lane) the run is written with one claim of the room it needs, one
    /// publish and one wake of the consumer, instead of one of each per message; the
    /// part that does not fit, and every other target, takes [`Emitter::emit_to`]'s path
    /// message by message (a full target keeps the rest in the stash, in order).
    ///
    /// # Errors
    /// As [`Emitter::emit_to`]; a payload too large for the target is found before
    /// anything is written.
    pub fn emit_run<'p>(
        &mut self,
        port: u32,
        count: usize,
        mut item: impl FnMut(usize) -> ([u32; 2], bool, &'p [u8]),
    ) -> Result<(), super::EmitError> {
        let mut done = 0;
        if self.stash.is_empty()
            && count > 1
            && !self.core.local.overflowing.load(Ordering::Relaxed)
        {
            if let Some(slot) = self.ports.get(port as usize) {
                let core = self.core;
                let ring = slot.exclusive_ring(core);
                if let Some(ring) = ring {
                    let max = ring.memory().layout().payload_bytes() as usize;
                    if let Some(len) = (0..count).map(|i| item(i).2.len()).find(|&l| l > max) {
                        return Err(super::EmitError::TooLarge { len, max });
                    }
                    if core.local.abandoned.load(Ordering::Relaxed) {
                        return Err(super::EmitError::Abandoned);
                    }
                    let want = u32::try_from(count)
                        .unwrap_or(u32::MAX)
                        .min(ring.capacity());
                    let room = ring.free_up_to(want).min(want);
                    // Full or closed: the per-message path below stashes or dead-letters.
                    let claimed = (room > 0).then(|| {
                        // SAFETY: as in `try_deliver`: this kernel's thread is the only
                        // producer of the host output ring and of a lane its port owns.
                        unsafe { ring.try_claim_exclusive(room) }
                    });
                    if let Some(Ok(claim)) = claimed {
                        let id = core.id;
                        let written = claim.write_run(0, |i, body| {
                            let (corr, timed, payload) = item(i as usize);
                            body[..payload.len()].copy_from_slice(payload);
                            let kind = if timed {
                                crate::abi::KIND_TIMED
                            } else {
                                KIND_MESSAGE
                            };
                            Some((make_tag(kind, id), corr))
                        });
                        debug_assert_eq!(written, room, "every item has a payload");
                        claim.publish();
                        self.emitted += room;
                        core.notify_target(&slot.target);
                        done = room as usize;
                    }
                }
            }
        }
        for i in done..count {
            let (corr, timed, payload) = item(i);
            self.timed_corr = timed.then_some(corr);
            self.emit_to(port, corr, payload)?;
        }
        Ok(())
    }

    /// [`Emitter::emit_to`] for everything but its inline case.
    #[cold]
    #[inline(never)]
    fn emit_slow(
        &mut self,
        port: u32,
        corr: [u32; 2],
        payload: &[u8],
    ) -> Result<(), super::EmitError> {
        use super::EmitError;
        let core = self.core;
        if core.local.abandoned.load(Ordering::Relaxed) {
            return Err(EmitError::Abandoned);
        }
        let ports = self.ports.len() as u32;
        let Some(slot) = self.ports.get_mut(port as usize) else {
            return Err(EmitError::NoSuchPort { port, ports });
        };
        let kind = if self
            .timed_corr
            .is_some_and(|t| t[0] == corr[0] && t[1] == corr[1])
        {
            crate::abi::KIND_TIMED
        } else {
            KIND_MESSAGE
        };
        let tag = make_tag(kind, core.id);
        match &slot.target {
            PortTarget::Unbound => Err(EmitError::Unbound { port }),
            PortTarget::DeadLetters => {
                let reason = format!("port {port} is bound to the dead-letter sink");
                core.route_to_dead_letters(reason, &emitted_slot(tag, corr, payload));
                self.emitted += 1;
                Ok(())
            }
            target => {
                let max = core.target_payload_bytes(target).unwrap_or(0);
                if payload.len() > max {
                    return Err(EmitError::TooLarge {
                        len: payload.len(),
                        max,
                    });
                }
                self.emitted += 1;
                if !self.stash.is_empty() {
                    // Behind an earlier emit that waits for room: keep emit order.
                    self.stash.push(port, tag, corr, payload);
                    return Ok(());
                }
                match core.try_deliver(target, tag, corr, payload) {
                    // Wake the consumer now, not at the end of the turn: a handler that
                    // takes long (or never returns) must not hold back what it already
                    // emitted. Costs a load when the consumer is awake.
                    Delivery::Delivered => core.notify_target(target),
                    Delivery::DeadLettered => {}
                    Delivery::Full => {
                        self.stash.push(port, tag, corr, payload);
                        if !self.stalled {
                            self.stalled = true;
                            self.stalls += 1;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Emits to port 0 (see [`Emitter::emit_to`]).
    ///
    /// # Errors
    /// As [`Emitter::emit_to`].
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn emit(&mut self, corr: [u32; 2], payload: &[u8]) -> Result<(), super::EmitError> {
        self.emit_to(0, corr, payload)
    }

    /// Makes `message` the one the next emits answer: an emit carrying its correlation
    /// id keeps the host send time it may carry (a timed message stays timed), as for
    /// the message in hand of [`crate::handler::Handler::handle`]. Batch handlers call
    /// it before emitting the output of each message of their batch.
    #[inline]
    pub fn set_source(&mut self, message: &crate::handler::Message<'_>) {
        self.timed_corr = (message.tag & crate::abi::TAG_KIND_MASK == crate::abi::KIND_TIMED)
            .then_some(message.corr);
    }

    /// Makes the next emits answer a message with correlation id `corr` that was timed
    /// (`Some`), or one that was not (`None`): see [`Emitter::set_source`].
    #[inline]
    pub fn set_timed(&mut self, corr: Option<[u32; 2]>) {
        self.timed_corr = corr;
    }

    /// Makes the next emits answer no message in particular: they are never timed (see
    /// [`Emitter::set_source`]).
    #[inline]
    pub fn clear_source(&mut self) {
        self.timed_corr = None;
    }

    /// Number of output ports.
    pub fn port_count(&self) -> u32 {
        self.ports.len() as u32
    }

    /// The kernel's id (the sender id in the tags of what it emits).
    pub fn kernel_id(&self) -> u32 {
        self.core.id
    }
}

/// A message kept outside the rings (emitted, stashed, kept for a restart) as a slot
/// view, for the dead-letter sink and the rings.
pub(super) fn emitted_slot(tag: u32, corr: [u32; 2], payload: &[u8]) -> SlotRef<'_> {
    SlotRef {
        position: 0,
        tag,
        corr,
        payload,
    }
}
