//! The host side of a group on a CUDA device: allocation, launch, sending, receiving,
//! lifecycle commands, drain, terminate and the report.
//!
//! Everything here talks to the device through [`Device`] and to the kernels through the
//! shared memory protocol only (`crate::ring` over mapped memory, `crate::control`), so
//! the same code drives a GPU ([`super::driver::DriverDevice`]) and the emulation
//! ([`super::emulated::EmulatedDevice`]) the conformance tests use.

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::codegen::{self, HandlerCode};
use super::device::{Device, DeviceError, DeviceMemory, LaunchShape, MappedMemory, Running};
use super::plan::{self, KernelDesc, Pending, RingRef};
use crate::abi::{
    Command, ControlBlock, PortKind, State, ABI_VERSION, CONTROL_MAGIC, DEAD_LETTER_PREFIX_BYTES,
    SLOT_HEADER_BYTES, TAG_SENDER_SHIFT,
};
use crate::backend::CommandError;
use crate::control::{ControlMemory, Counters, HostSide, Sides};
use crate::health::{self, Health, HealthPolicy, Watchdog};
use crate::lifecycle::{self, Event};
use crate::metrics::KernelSample;
use crate::ring::{Consumer, Halves, Producer, RawRing, RingLayout, RingMemory, Step};
use crate::routing::DeadLetter;
use crate::sync::AtomicU32;
use crate::wait::Backoff;

use crate::backend::group::{check_topology, host_send, Topology};
pub use crate::backend::group::{GroupReport, KernelReport, Message, Route, SendError, Target};

/// One kernel of a group plan.
#[derive(Clone, Debug)]
pub struct KernelPlan {
    /// Its name (unique in the group).
    pub name: String,
    /// Its device function.
    pub handler: HandlerCode,
    /// Handler parameters (`ctx->params`).
    pub params: [u32; plan::PARAM_WORDS],
    /// Whether one thread handles each batch, in order (stateful kernels).
    pub sequential: bool,
    /// Bytes of device state, zeroed at launch (`ctx->state`).
    pub state_bytes: u32,
    /// Slots of each inbox ring (the host's and each upstream route's).
    pub capacity: u32,
    /// Bytes per inbox slot, header included.
    pub slot_bytes: u32,
    /// Slots of the host outbox.
    pub out_capacity: u32,
    /// Bytes per host outbox slot, header included.
    pub out_slot_bytes: u32,
    /// Output ports.
    pub ports: u32,
    /// Most emits per message.
    pub max_emits: u32,
    /// Most messages per batch (0: one per thread of the block).
    pub quantum: u32,
    /// Initial cursor value of every ring of this kernel (tests start near `u32::MAX`).
    pub origin: u32,
}

impl KernelPlan {
    /// A kernel with defaults: 1,024-slot rings of 64-byte slots, one port, up to four
    /// emits per message, one message per thread per batch.
    pub fn new(name: impl Into<String>, handler: HandlerCode) -> Self {
        Self {
            name: name.into(),
            handler,
            params: [0; plan::PARAM_WORDS],
            sequential: false,
            state_bytes: 0,
            capacity: 1024,
            slot_bytes: 64,
            out_capacity: 1024,
            out_slot_bytes: 64,
            ports: 1,
            max_emits: 4,
            quantum: 0,
            origin: 0,
        }
    }
}

impl KernelPlan {
    /// A kernel running a built-in, with its parameters, state, ports and slot sizes.
    ///
    /// # Errors
    /// The built-in's own validation message, for parameters out of range.
    pub fn builtin(
        name: impl Into<String>,
        builtin: &crate::builtins::Builtin,
    ) -> Result<Self, String> {
        builtin.validate()?;
        let slot = |payload: u32| {
            (SLOT_HEADER_BYTES + payload)
                .next_power_of_two()
                .max(crate::abi::MIN_SLOT_BYTES)
        };
        let mut plan = Self::new(name, HandlerCode::Builtin(builtin.cuda_function()));
        plan.params = builtin.params();
        plan.sequential = builtin.sequential();
        plan.state_bytes = builtin.state_bytes();
        plan.ports = builtin.ports();
        plan.slot_bytes = slot(builtin.input_bytes());
        plan.out_slot_bytes = slot(builtin.output_bytes());
        Ok(plan)
    }
}

/// A group to launch: kernels, routes (ports without a route go to the host) and the
/// block size.
#[derive(Clone, Debug)]
pub struct GroupPlan {
    /// The group's name.
    pub name: String,
    /// Its kernels; block `i` of the grid runs kernel `i`.
    pub kernels: Vec<KernelPlan>,
    /// Its routes.
    pub routes: Vec<Route>,
    /// Threads per block (1 to 256).
    pub threads: u32,
}

/// What went wrong launching or running a group.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The device refused or failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The plan is invalid; the message says what to change.
    #[error("group `{group}`: {message}")]
    Invalid {
        /// The group.
        group: String,
        /// What is wrong.
        message: String,
    },
}

/// A control block in mapped memory.
struct MappedControl {
    memory: MappedMemory,
    sides: Sides,
}

// SAFETY: the mapped block is 256 bytes, 128-aligned, alive as long as `memory`; every
// word is accessed through these atomics on the host (the device uses its own atomics on
// the same words, per the protocol).
unsafe impl ControlMemory for MappedControl {
    fn word(&self, byte_offset: usize) -> &AtomicU32 {
        assert!(byte_offset.is_multiple_of(4) && byte_offset < size_of::<ControlBlock>());
        // SAFETY: in bounds and aligned (asserted), valid while `self.memory` lives.
        #[allow(clippy::cast_ptr_alignment)]
        unsafe {
            AtomicU32::from_ptr(
                self.memory
                    .host_ptr()
                    .as_ptr()
                    .add(byte_offset)
                    .cast::<u32>(),
            )
        }
    }

    fn sides(&self) -> &Sides {
        &self.sides
    }
}

/// A ring in mapped memory and the memory that holds it.
struct MappedRing {
    ring: RawRing,
    _memory: MappedMemory,
}

// SAFETY: forwards to the RawRing, whose memory `_memory` keeps alive.
unsafe impl RingMemory for MappedRing {
    fn halves(&self) -> &Halves {
        self.ring.halves()
    }
    fn capacity(&self) -> u32 {
        self.ring.capacity()
    }
    fn slot_bytes(&self) -> u32 {
        self.ring.slot_bytes()
    }
    fn head(&self) -> &AtomicU32 {
        self.ring.head()
    }
    fn tail(&self) -> &AtomicU32 {
        self.ring.tail()
    }
    fn stamp(&self, index: u32) -> &AtomicU32 {
        self.ring.stamp(index)
    }
    unsafe fn with_body_mut<R>(&self, index: u32, f: impl FnOnce(&mut [u8]) -> R) -> R {
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { self.ring.with_body_mut(index, f) }
    }
    unsafe fn with_body<R>(&self, index: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { self.ring.with_body(index, f) }
    }
}

fn mapped_ring(
    device: &dyn Device,
    layout: RingLayout,
    origin: u32,
) -> Result<(MappedRing, u64), DeviceError> {
    let memory = device.alloc_mapped(layout.region_bytes())?;
    // SAFETY: fresh, zeroed, 4096-aligned memory of the region's size, not shared yet.
    let ring = unsafe { RawRing::init(memory.host_ptr(), layout, origin) };
    let address = memory.device_ptr();
    Ok((
        MappedRing {
            ring,
            _memory: memory,
        },
        address,
    ))
}

/// Host memory aligned to 128 bytes, for building and reading back device rings.
struct Staging {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}

impl Staging {
    fn new(bytes: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(bytes.max(1), 128)
            .expect("ring regions are far below isize::MAX");
        // SAFETY: nonzero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, layout }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: owned allocation of this size.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// A kernel-to-kernel ring in device memory.
struct Edge {
    to: usize,
    memory: DeviceMemory,
    layout: RingLayout,
}

/// A kernel's outputs for the host: its host outbox ring, and the queue the host moves
/// outputs to while it drains, stops or waits on the group. One lock for both, so a
/// receiver never looks between the two while outputs move from one to the other (and
/// an empty pair after the kernel acknowledged its stop means nothing more will come).
struct HostOutputs {
    ring: Consumer<MappedRing>,
    queue: VecDeque<Message>,
}

impl HostOutputs {
    /// Moves every output waiting in the ring to the queue.
    fn pump(&mut self) {
        let queue = &mut self.queue;
        self.ring.consume(u32::MAX, |slot| {
            queue.push_back(Message {
                tag: slot.tag,
                corr: slot.corr,
                payload: slot.payload.to_vec(),
            });
            Step::Next
        });
    }

    /// Outputs not received yet: queued, and published in the ring (moved to the queue).
    fn len(&mut self) -> usize {
        self.pump();
        self.queue.len()
    }
}

struct KernelRt {
    plan: KernelPlan,
    id: u32,
    control: HostSide<MappedControl>,
    inbox: Producer<MappedRing>,
    outputs: Mutex<HostOutputs>,
    dead: Mutex<Consumer<MappedRing>>,
    _state: Option<DeviceMemory>,
    scratch: DeviceMemory,
    record_stride: u32,
    commands: Mutex<()>,
    watchdog: Mutex<Option<Watchdog>>,
    /// Throughput measured on the host from the `processed` counter.
    throughput: crate::metrics::ThroughputWindow,
}

/// What stops have handed back so far, so each message is handed back once, whichever
/// stop or how many: held for the whole of a stop, so concurrent stops serialise.
struct Collected {
    /// Kernel `k`'s host inbox was read back (its kernel had stopped for good).
    inbox: Vec<bool>,
    /// The device memory (kernel-to-kernel rings, unpublished outputs) was read back
    /// (the grid had finished).
    device: bool,
}

/// A group of kernels resident on a CUDA device (or its emulation).
pub struct CudaGroup {
    name: String,
    device: Arc<dyn Device>,
    kernels: Vec<KernelRt>,
    edges: Vec<Edge>,
    order: Vec<usize>,
    descs: Option<DeviceMemory>,
    running: Mutex<Option<Box<dyn Running>>>,
    collected: Mutex<Collected>,
    fault: Mutex<Option<String>>,
    dead_letters: Mutex<Vec<DeadLetter>>,
    command_timeout: Duration,
}

impl std::fmt::Debug for CudaGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaGroup")
            .field("name", &self.name)
            .field("device", &self.device.describe())
            .field(
                "kernels",
                &self
                    .kernels
                    .iter()
                    .map(|k| &k.plan.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn invalid(group: &str, message: impl Into<String>) -> GroupError {
    GroupError::Invalid {
        group: group.to_owned(),
        message: message.into(),
    }
}

fn layout(
    group: &str,
    kernel: &str,
    what: &str,
    capacity: u32,
    slot_bytes: u32,
) -> Result<RingLayout, GroupError> {
    RingLayout::new(capacity, slot_bytes)
        .map_err(|e| invalid(group, format!("kernel `{kernel}`'s {what}: {e}")))
}

/// One step of a host wait loop: spin, then yield, then sleep 50 us at a time (a host
/// waiting on a device has nothing to wake it but polling).
fn pause(backoff: &mut Backoff) {
    if !backoff.snooze() {
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn round16(x: u32) -> u32 {
    x.div_ceil(16) * 16
}

impl CudaGroup {
    /// Checks, allocates, compiles and launches a group; its kernels start in state
    /// `Launched` (resident, not processing) and wait for [`CudaGroup::activate_all`].
    ///
    /// # Errors
    /// [`GroupError::Invalid`] for a plan that cannot work (the message says what to
    /// change), [`GroupError::Device`] when allocation, compilation (with the compiler's
    /// log) or the launch fails, or the group does not fit on the device.
    #[allow(clippy::too_many_lines)]
    pub fn launch(
        device: Arc<dyn Device>,
        plan: GroupPlan,
        command_timeout: Duration,
    ) -> Result<Self, GroupError> {
        let group = plan.name.as_str();
        let n = plan.kernels.len();
        if n == 0 {
            return Err(invalid(
                group,
                "a group needs at least one kernel: add one before launching",
            ));
        }
        if !(1..=plan::MAX_THREADS).contains(&plan.threads) {
            return Err(invalid(
                group,
                format!(
                    "{} threads per block: use 1 to 256 (CudaGroupBuilder::threads)",
                    plan.threads
                ),
            ));
        }
        for k in &plan.kernels {
            if k.quantum > plan.threads {
                return Err(invalid(
                    group,
                    format!(
                        "kernel `{}`'s quantum {} exceeds the {} threads per block: lower its \
                         quantum, or raise the group's threads (CudaGroupBuilder::threads)",
                        k.name, k.quantum, plan.threads
                    ),
                ));
            }
            if k.max_emits == 0 {
                return Err(invalid(
                    group,
                    format!(
                        "kernel `{}`: max_emits must be at least 1: give it `.max_emits(1)` or more",
                        k.name
                    ),
                ));
            }
        }
        let shape: Vec<(&str, u32)> = plan
            .kernels
            .iter()
            .map(|k| (k.name.as_str(), k.ports))
            .collect();
        let Topology {
            targets,
            edges: _,
            order,
        } = check_topology(
            &shape,
            &plan.routes,
            "the CUDA backend drains upstream first and cannot drain a cycle; break it or run \
             the group on the CPU backend",
        )
        .map_err(|message| invalid(group, message))?;

        // Handlers. A group of built-ins only uses the canonical built-ins module (case
        // `i` is `BUILTIN_FUNCTIONS[i]`), which may be prebuilt; any other group gets one
        // dispatch case per distinct function, compiled for it.
        let builtin_cases: Option<Vec<u32>> = plan
            .kernels
            .iter()
            .map(|k| match &k.handler {
                HandlerCode::Builtin(function) => codegen::BUILTIN_FUNCTIONS
                    .iter()
                    .position(|builtin| builtin == function)
                    .map(|case| case as u32),
                HandlerCode::Source { .. } => None,
            })
            .collect();
        let (module, cases) = if let Some(cases) = builtin_cases {
            (device.compile_builtins()?, cases)
        } else {
            let mut handlers: Vec<HandlerCode> = Vec::new();
            let mut cases = Vec::with_capacity(n);
            for k in &plan.kernels {
                let case = handlers
                    .iter()
                    .position(|h| h == &k.handler)
                    .unwrap_or_else(|| {
                        handlers.push(k.handler.clone());
                        handlers.len() - 1
                    });
                cases.push(case as u32);
            }
            let source = codegen::group_source(&handlers, plan.threads);
            (device.compile(&source, &codegen::headers())?, cases)
        };
        let available = device.max_resident_blocks(&module, plan.threads)?;
        if available < n as u32 {
            return Err(DeviceError::DoesNotFit {
                needed: n as u32,
                available,
                threads: plan.threads,
            }
            .into());
        }

        // Memory: control blocks and host rings mapped, routes and state on the device.
        let mut kernels = Vec::with_capacity(n);
        let mut control_addresses = Vec::with_capacity(n);
        let mut host_addresses = Vec::with_capacity(n);
        for (i, k) in plan.kernels.iter().enumerate() {
            let memory = device.alloc_mapped(size_of::<ControlBlock>())?;
            let block = ControlBlock {
                magic: CONTROL_MAGIC,
                abi_version: ABI_VERSION,
                kernel_id: i as u32,
                state: State::Launched as u32,
                ..bytemuck::Zeroable::zeroed()
            };
            // SAFETY: fresh mapped memory of the block's size and 128-aligned; the device
            // does not run yet.
            #[allow(clippy::cast_ptr_alignment)]
            unsafe {
                memory
                    .host_ptr()
                    .as_ptr()
                    .cast::<ControlBlock>()
                    .write(block);
            }
            control_addresses.push(memory.device_ptr());
            let control = HostSide::new(MappedControl {
                memory,
                sides: Sides::new(),
            })
            .expect("a new block has no host side yet");
            let in_layout = layout(group, &k.name, "inbox", k.capacity, k.slot_bytes)?;
            let out_layout = layout(
                group,
                &k.name,
                "host outbox",
                k.out_capacity,
                k.out_slot_bytes,
            )?;
            let biggest = in_layout.payload_bytes().max(out_layout.payload_bytes());
            // A dead letter is the message after a 16-byte DeadLetterPrefix; at the largest slot
            // size the last 16 bytes of a message do not fit and are cut (documented).
            let dead_slot = (SLOT_HEADER_BYTES + DEAD_LETTER_PREFIX_BYTES + biggest)
                .next_power_of_two()
                .min(crate::abi::MAX_SLOT_BYTES);
            let dead_layout = layout(
                group,
                &k.name,
                "dead-letter ring",
                k.capacity.max(64),
                dead_slot,
            )?;
            let (inbox, inbox_at) = mapped_ring(&*device, in_layout, k.origin)?;
            let (outbox, outbox_at) = mapped_ring(&*device, out_layout, k.origin)?;
            let (dead, dead_at) = mapped_ring(&*device, dead_layout, k.origin)?;
            host_addresses.push((inbox_at, outbox_at, dead_at, out_layout, dead_layout));
            let state = if k.state_bytes > 0 {
                Some(device.alloc_device(k.state_bytes as usize)?)
            } else {
                None
            };
            kernels.push((inbox, outbox, dead, control, state));
        }
        let mut edges = Vec::new();
        let mut descs = vec![<KernelDesc as bytemuck::Zeroable>::zeroed(); n];
        for (i, k) in plan.kernels.iter().enumerate() {
            let (inbox_at, outbox_at, dead_at, out_layout, dead_layout) = host_addresses[i];
            let desc = &mut descs[i];
            desc.control = control_addresses[i];
            desc.dead_letters = dead_at;
            desc.handler = cases[i];
            desc.kernel_id = i as u32;
            desc.n_ports = k.ports;
            desc.quantum = if k.quantum == 0 {
                plan.threads
            } else {
                k.quantum
            };
            desc.max_emits = k.max_emits;
            desc.flags = if k.sequential {
                plan::FLAG_SEQUENTIAL
            } else {
                0
            };
            desc.params = k.params;
            desc.inbox[0] = RingRef {
                header: inbox_at,
                scope: plan::SCOPE_SYSTEM,
                ..RingRef::default()
            };
            desc.n_inboxes = 1;
            let mut widest = 0u32;
            for (port, target) in targets[i].iter().enumerate() {
                let r = &mut desc.port[port];
                match *target {
                    Target::Host => {
                        *r = RingRef {
                            header: outbox_at,
                            scope: plan::SCOPE_SYSTEM,
                            kind: PortKind::Host as u32,
                            payload_bytes: out_layout.payload_bytes(),
                            ..RingRef::default()
                        };
                    }
                    Target::DeadLetters => {
                        *r = RingRef {
                            header: dead_at,
                            scope: plan::SCOPE_SYSTEM,
                            kind: PortKind::Dead as u32,
                            payload_bytes: dead_layout.payload_bytes() - DEAD_LETTER_PREFIX_BYTES,
                            ..RingRef::default()
                        };
                    }
                    Target::Kernel(to) => {
                        let down = &plan.kernels[to];
                        let edge_layout =
                            layout(group, &down.name, "inbox", down.capacity, down.slot_bytes)?;
                        let memory = device.alloc_device(edge_layout.region_bytes())?;
                        let mut staging = Staging::new(edge_layout.region_bytes());
                        // SAFETY: fresh 128-aligned staging memory of the region's size.
                        let _ = unsafe { RawRing::init(staging.ptr, edge_layout, down.origin) };
                        device.write_device(&memory, 0, staging.bytes_mut())?;
                        *r = RingRef {
                            header: memory.device_ptr(),
                            scope: plan::SCOPE_DEVICE,
                            kind: PortKind::Kernel as u32,
                            peer_control: control_addresses[to],
                            payload_bytes: edge_layout.payload_bytes(),
                            reserved: 0,
                        };
                        edges.push((i, memory, edge_layout, to));
                    }
                }
                widest = widest.max(desc.port[port].payload_bytes);
            }
            desc.record_stride = plan::RECORD_HEADER_BYTES + round16(widest.max(16));
        }
        for (_, memory, _, to) in &edges {
            let desc = &mut descs[*to];
            let slot = desc.n_inboxes as usize;
            desc.inbox[slot] = RingRef {
                header: memory.device_ptr(),
                scope: plan::SCOPE_DEVICE,
                ..RingRef::default()
            };
            desc.n_inboxes += 1;
        }
        let mut runtimes = Vec::with_capacity(n);
        for (i, ((inbox, outbox, dead, control, state), k)) in
            kernels.into_iter().zip(&plan.kernels).enumerate()
        {
            let desc = &mut descs[i];
            let scratch_bytes = plan::SCRATCH_HEADER_BYTES as usize
                + desc.quantum as usize * desc.max_emits as usize * desc.record_stride as usize;
            let scratch = device.alloc_device(scratch_bytes)?;
            desc.scratch = scratch.device_ptr();
            desc.state = state.as_ref().map_or(0, DeviceMemory::device_ptr);
            runtimes.push(KernelRt {
                plan: k.clone(),
                id: i as u32,
                control,
                inbox: Producer::new(inbox).expect("a new mapped ring has no producer yet"),
                outputs: Mutex::new(HostOutputs {
                    ring: Consumer::new(outbox).expect("a new mapped ring has no consumer yet"),
                    queue: VecDeque::new(),
                }),
                dead: Mutex::new(
                    Consumer::new(dead).expect("a new mapped ring has no consumer yet"),
                ),
                _state: state,
                scratch,
                record_stride: desc.record_stride,
                commands: Mutex::new(()),
                watchdog: Mutex::new(None),
                throughput: crate::metrics::ThroughputWindow::new(Instant::now()),
            });
        }
        let table = device.alloc_device(size_of::<KernelDesc>() * n)?;
        device.write_device(&table, 0, bytemuck::cast_slice(&descs))?;
        let running = device.launch(
            &module,
            LaunchShape {
                blocks: n as u32,
                threads: plan.threads,
            },
            table.device_ptr(),
            n as u32,
        )?;
        tracing::info!(group = %plan.name, kernels = n, threads = plan.threads, device = %device.describe(), "launched CUDA group");
        Ok(Self {
            name: plan.name,
            device,
            kernels: runtimes,
            edges: edges
                .into_iter()
                .map(|(_, memory, layout, to)| Edge { to, memory, layout })
                .collect(),
            order,
            descs: Some(table),
            running: Mutex::new(Some(running)),
            collected: Mutex::new(Collected {
                inbox: vec![false; n],
                device: false,
            }),
            fault: Mutex::new(None),
            dead_letters: Mutex::new(Vec::new()),
            command_timeout,
        })
    }

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
    fn grid_finished(&self) -> bool {
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
        let mut letters = Vec::new();
        for kernel in &self.kernels {
            kernel.dead.lock().consume(u32::MAX, |slot| {
                letters.push(DeadLetter::from_device(
                    &kernel.plan.name,
                    slot.tag,
                    slot.corr,
                    slot.payload,
                ));
                Step::Next
            });
        }
        self.dead_letters.lock().extend(letters);
    }

    /// Moves every output waiting in a host outbox to the host's queue of its kernel, and
    /// every dead letter to the group's list, so a kernel that stops never waits on a host
    /// that is not receiving.
    fn pump_all(&self) {
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
        let status = kernel.control.status();
        let counters = kernel.control.counters();
        let depth = kernel.inbox.len();
        let capacity = kernel.inbox.capacity();
        KernelSample {
            name: kernel.plan.name.clone(),
            backend: if self.device.is_emulated() {
                "cuda-emulated"
            } else {
                "cuda"
            },
            id: kernel.id,
            state: self.state(k),
            counters,
            inbox_depth: depth,
            inbox_capacity: capacity,
            inbox_utilisation: f64::from(depth) / f64::from(capacity),
            heartbeat: status.heartbeat,
            ring_bytes: kernel.inbox.memory().ring.layout().region_bytes(),
            // Not measured on the device: handler time needs device clocks the control
            // block has no words for, so the series is absent.
            busy_ns: None,
            throughput: kernel.throughput.rate(Instant::now(), counters.processed),
            latency: None,
        }
    }

    /// Kernel `k`'s health: faulted, or its heartbeat standing still while messages wait
    /// for longer than `policy.watchdog`, is unhealthy (the device heartbeat is the one
    /// the CPU backend's watchdog reads, from the same control-block word).
    pub fn health(&self, k: usize, policy: &HealthPolicy) -> Health {
        let sample = self.sample(k);
        let now = Instant::now();
        let mut watchdog = self.kernels[k].watchdog.lock();
        let watchdog = watchdog.get_or_insert_with(|| Watchdog::new(&sample, now));
        health::evaluate(&sample, policy, watchdog, now)
    }

    /// Issues `command` to kernel `k` and waits for its acknowledgement.
    ///
    /// # Errors
    /// [`CommandError::Lifecycle`] for a transition the state machine refuses,
    /// [`CommandError::Unresponsive`] after the command timeout, [`CommandError::Faulted`]
    /// when the group faulted.
    pub fn command(&self, k: usize, command: Command) -> Result<State, CommandError> {
        self.command_until(k, command, Instant::now() + self.command_timeout)
    }

    /// [`CudaGroup::command`], waiting for the acknowledgement until `deadline`.
    fn command_until(
        &self,
        k: usize,
        command: Command,
        deadline: Instant,
    ) -> Result<State, CommandError> {
        let kernel = &self.kernels[k];
        let _serial = kernel.commands.lock();
        let epoch = self.issue(k, command)?;
        let mut backoff = Backoff::new();
        loop {
            if let Some(state) = self.answered(k, command, epoch)? {
                return Ok(state);
            }
            if Instant::now() >= deadline {
                return Err(CommandError::Unresponsive {
                    name: kernel.plan.name.clone(),
                    waited: self.command_timeout,
                });
            }
            // Keep outputs flowing while waiting: a kernel may be finishing a batch
            // whose emits wait for room downstream, down to a host outbox.
            self.pump_all();
            pause(&mut backoff);
        }
    }

    /// Writes `command` to kernel `k`'s control block (the caller holds its command
    /// lock) and returns its epoch; a drain or terminate first closes the host inbox.
    fn issue(&self, k: usize, command: Command) -> Result<u32, CommandError> {
        let kernel = &self.kernels[k];
        if let Some(reason) = self.fault() {
            return Err(CommandError::Faulted {
                name: kernel.plan.name.clone(),
                reason,
            });
        }
        let from = kernel.control.state();
        lifecycle::transition(from, Event::Command(command))?;
        if command == Command::Drain || command == Command::Terminate {
            // Nothing new after this: the host inbox is closed and every claim that
            // raced the close is published (as a message or cancelled) before the
            // kernel reads the command.
            let tail = kernel.inbox.close();
            kernel.inbox.wait_published(tail, u32::MAX);
        }
        Ok(kernel.control.issue(command))
    }

    /// Whether kernel `k` answered `command`, issued with `epoch`: its state once it
    /// acknowledged, or once it stopped for good without reading the command (a kernel
    /// that finished its drain exits, and acknowledges nothing after); `None` while
    /// waiting.
    fn answered(
        &self,
        k: usize,
        command: Command,
        epoch: u32,
    ) -> Result<Option<State>, CommandError> {
        let kernel = &self.kernels[k];
        let faulted = |reason| CommandError::Faulted {
            name: kernel.plan.name.clone(),
            reason,
        };
        if kernel.control.acknowledged(epoch) {
            let state = kernel.control.state();
            if state == State::Faulted {
                return Err(faulted(format!(
                    "the kernel reported fault code {}",
                    kernel.control.status().error_code
                )));
            }
            // A drain is acknowledged as Draining, then as Terminated.
            return Ok(Some(state));
        }
        if let Some(reason) = self.fault() {
            return Err(faulted(reason));
        }
        let state = kernel.control.state();
        match state {
            State::Faulted => Err(faulted(format!(
                "the kernel reported fault code {}",
                kernel.control.status().error_code
            ))),
            // The kernel exited before it read the command (it finished its drain): a
            // drain or terminate is done; any other command is refused.
            State::Terminated => match command {
                Command::Drain | Command::Terminate => Ok(Some(state)),
                _ => lifecycle::transition(state, Event::Command(command))
                    .map(|_| Some(state))
                    .map_err(CommandError::from),
            },
            _ => Ok(None),
        }
    }

    /// Activates every kernel, downstream first.
    ///
    /// # Errors
    /// The first command that failed.
    pub fn activate_all(&self) -> Result<(), CommandError> {
        for &k in self.order.iter().rev() {
            self.command(k, Command::Activate)?;
        }
        Ok(())
    }

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
            .map(|(k, kernel)| KernelReport {
                name: kernel.plan.name.clone(),
                state: self.state(k),
                counters: kernel.control.counters(),
                undelivered: Vec::new(),
                undelivered_outputs: Vec::new(),
            })
            .collect();
        for (k, kernel) in self.kernels.iter().enumerate() {
            if collected.inbox[k] || !(finished || acknowledged[k]) {
                continue;
            }
            // The host inbox: from the kernel's final head.
            // ORDERING: Acquire pairs with the device's release of head.
            let head = kernel
                .inbox
                .memory()
                .head()
                .load(std::sync::atomic::Ordering::Acquire);
            // SAFETY: the inbox's consumer is the kernel's device block, and it releases
            // nothing more: this runs only once the grid finished or the kernel
            // acknowledged its stop (`acknowledged[k]`), after which its loop has left.
            unsafe {
                kernel.inbox.read_closed(head, |slot| {
                    reports[k].undelivered.push(Message {
                        tag: slot.tag,
                        corr: slot.corr,
                        payload: slot.payload.to_vec(),
                    });
                });
            }
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
            messages.push(Message {
                tag: slot.tag,
                corr: slot.corr,
                payload: slot.payload.to_vec(),
            });
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
