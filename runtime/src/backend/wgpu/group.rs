//! The host side of a group on the wgpu backend: resident state, ticked execution.
//!
//! Every ring and control block of the group lives in one storage buffer, in the ABI's
//! layout. The host cannot touch that buffer while the device may use it, so the host
//! keeps **mirrors** and a ticker thread moves words between them at tick boundaries:
//!
//! - each kernel's host inbox is a host ring (`Producer` for senders, unchanged); the
//!   ticker uploads newly published slots into the device copy before a submission and
//!   stores the device's `head` back into the mirror after it (the ticker plays the
//!   consumer side of the mirror: one writer per word);
//! - each kernel's control block has a host mirror (`HostSide`, unchanged): commands are
//!   written there and uploaded; the status line (state, ack, heartbeat, counters) is
//!   copied back into it, state before acknowledgement, so `status()` reads what the
//!   device wrote with the same ordering argument as on every backend;
//! - each kernel's outbox and dead-letter ring are copied back after every tick; the
//!   ticker moves new messages into a bounded host ring that receivers consume, and
//!   uploads the new `head` before the next tick (the device never overwrites what the
//!   host has not taken).
//!
//! A tick is one submission: uploads (`write_buffer`), one dispatch per kernel in
//! topological order (each a single invocation handling up to its quantum; the dispatch
//! boundary orders an upstream kernel's emits before its downstream reads them), copies
//! of the control blocks, ring headers, outboxes and dead-letter rings into a staging
//! buffer (two, used alternately), then a map and a read. Ticks run back to back while
//! any ring holds work, a command waits or a kernel drains, and stop when the group is
//! idle: the ticker then parks until a send, a command or a receive wakes it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::adapter::GpuContext;
use super::codegen::{self, WgslHandler};
use crate::abi::{
    Command, ControlBlock, PortKind, State, ABI_VERSION, CONTROL_MAGIC, DEAD_LETTER_PREFIX_BYTES,
    LINE_BYTES, RING_HEADER_BYTES, SLOT_HEADER_BYTES, TAG_KIND_MASK,
};
use crate::backend::group::{
    check_topology, host_send, GroupReport, KernelReport, Message, Route, SendError, Target,
    Topology,
};
use crate::backend::CommandError;
use crate::control::{ControlMemory, Counters, HostControl, HostSide};
use crate::health::{self, Health, HealthPolicy, Watchdog};
use crate::lifecycle::{self, Event};
use crate::metrics::KernelSample;
use crate::ring::{Consumer, HostRing, Producer, RingLayout, RingMemory, Step};
use crate::routing::DeadLetter;
use crate::wait::Signal;

/// Words of one kernel's descriptor (`GYRE_DESC_WORDS` in tick.wgsl).
const DESC_WORDS: usize = 80;
const D_CONTROL: usize = 0;
const D_HANDLER: usize = 1;
const D_KERNEL_ID: usize = 2;
const D_N_INBOXES: usize = 3;
const D_N_PORTS: usize = 4;
const D_QUANTUM: usize = 5;
const D_MAX_EMITS: usize = 6;
const D_DEAD: usize = 7;
const D_STATE: usize = 8;
const D_STATE_WORDS: usize = 9;
const D_SCRATCH: usize = 10;
const D_FLAGS: usize = 11;
const D_STAGE: usize = 12;
/// Invocations of a parallel kernel's workgroup (`GYRE_WG` in tick.wgsl).
const WORKGROUP: u32 = 64;
/// Words of a staging record before its payload (`GYRE_REC_WORDS` - `GYRE_MSG_WORDS`).
const RECORD_HEADER_WORDS: u32 = 5;
const D_PARAMS: usize = 16;
const D_INBOX: usize = 32;
const D_PORT: usize = 48;
const NONE: u32 = u32::MAX;
/// Passes through a loop's end that gallivm (lavapipe, llvmpipe) counts against its
/// per-invocation loop limit, per WGSL loop iteration, as a bound: a loop costs its
/// iterations plus one, and the compiler adds passes of its own (the tick's happy path
/// measured 18 passes for 9 iterations on Mesa 22.3; runtime/docs/WGPU.md, "Long
/// dispatches on lavapipe").
const LOOP_COST: u32 = 2;
/// Loop iterations of one tick outside its messages (ports, inboxes, the drain rule), with
/// room to spare.
const TICK_LOOPS: u32 = 128;
/// Loop iterations of a built-in handler per message, at most (aggregate and histogram
/// save and restore their output words).
const BUILTIN_LOOPS: u32 = 24;

/// One kernel of a wgpu group plan.
#[derive(Clone, Debug)]
pub struct WgpuKernelPlan {
    /// Its name (unique in the group).
    pub name: String,
    /// Its WGSL handler.
    pub handler: WgslHandler,
    /// Handler parameters (`gyre_param`).
    pub params: [u32; 16],
    /// Words of state, zeroed at launch (`gyre_state_load` / `gyre_state_store`).
    pub state_words: u32,
    /// Slots of each inbox ring.
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
    /// Most messages one tick handles (an adapter with a loop limit, lavapipe, may lower
    /// it: [`WgpuGroup::quantum`]).
    pub quantum: u32,
    /// Initial cursor value of every ring of this kernel (tests start near `u32::MAX`).
    pub origin: u32,
    /// Whether the handler may run on several messages at once (no state, or state it
    /// updates safely): the kernel then runs as a workgroup of 64 invocations per batch,
    /// its outputs still in message order. Off by default; on for the stateless built-ins.
    pub parallel: bool,
}

impl WgpuKernelPlan {
    /// A kernel with defaults: 1,024-slot rings of 64-byte slots, one port, four emits per
    /// message, up to 1,024 messages per tick.
    pub fn new(name: impl Into<String>, handler: WgslHandler) -> Self {
        Self {
            name: name.into(),
            handler,
            params: [0; 16],
            state_words: 0,
            capacity: 1024,
            slot_bytes: 64,
            out_capacity: 1024,
            out_slot_bytes: 64,
            ports: 1,
            max_emits: 4,
            quantum: 1024,
            origin: 0,
            parallel: false,
        }
    }

    /// A kernel running a built-in, with its parameters, state, ports and slot sizes.
    ///
    /// # Errors
    /// The built-in's own validation message.
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
        let mut plan = Self::new(name, WgslHandler::Builtin(builtin.cuda_function()));
        plan.params = builtin.params();
        plan.state_words = builtin.state_bytes().div_ceil(4);
        plan.ports = builtin.ports();
        plan.slot_bytes = slot(builtin.input_bytes());
        plan.out_slot_bytes = slot(builtin.output_bytes());
        plan.parallel = !builtin.sequential();
        Ok(plan)
    }
}

/// A wgpu group to launch.
#[derive(Clone, Debug)]
pub struct WgpuGroupPlan {
    /// The group's name.
    pub name: String,
    /// Its kernels.
    pub kernels: Vec<WgpuKernelPlan>,
    /// Its routes; ports without one go to the host.
    pub routes: Vec<Route>,
}

/// What went wrong launching a wgpu group.
#[derive(Debug, thiserror::Error)]
pub enum WgpuError {
    /// The plan is invalid; the message says what to change.
    #[error("group `{group}`: {message}")]
    Invalid {
        /// The group.
        group: String,
        /// What is wrong.
        message: String,
    },
    /// A handler's WGSL did not validate; the message names the file and line.
    #[error("WGSL did not validate: {0}")]
    Shader(String),
    /// The device refused something.
    #[error("wgpu: {0}")]
    Device(String),
}

fn invalid(group: &str, message: impl Into<String>) -> WgpuError {
    WgpuError::Invalid {
        group: group.to_owned(),
        message: message.into(),
    }
}

/// A bump allocator of byte offsets in the group buffer.
struct Layout {
    bytes: u64,
}

impl Layout {
    fn take(&mut self, bytes: u64) -> u64 {
        let at = self.bytes.next_multiple_of(u64::from(LINE_BYTES) * 2);
        self.bytes = at + bytes;
        at
    }
}

/// One region copied back after every tick: `len` bytes at `src` in the group buffer to
/// `dst` in the staging buffer.
#[derive(Clone, Copy, Debug)]
struct Copy {
    src: u64,
    dst: u64,
    len: u64,
}

struct KernelRt {
    plan: WgpuKernelPlan,
    id: u32,
    control: HostSide<HostControl>,
    inbox: Producer<Arc<HostRing>>,
    outbox_tx: Producer<Arc<HostRing>>,
    outbox: Mutex<Consumer<Arc<HostRing>>>,
    overflow: Mutex<VecDeque<Message>>,
    /// Set by the ticker when device outputs wait because the host outbox was full: a
    /// receive that frees room then wakes the ticker (otherwise receives never do).
    outbox_full: AtomicBool,
    watchdog: Mutex<Option<Watchdog>>,
    /// Throughput measured on the host from the `processed` counter.
    throughput: crate::metrics::ThroughputWindow,
    commands: Mutex<()>,
    /// Byte offsets in the group buffer.
    at_control: u64,
    at_inbox: u64,
    at_outbox: u64,
    at_dead: u64,
    in_layout: RingLayout,
    out_layout: RingLayout,
    dead_layout: RingLayout,
    /// Staging offsets of this kernel's copies.
    st_control: u64,
    st_inbox_header: u64,
    st_outbox: u64,
    st_dead: u64,
}

/// A kernel-to-kernel ring.
struct Edge {
    to: usize,
    at: u64,
    layout: RingLayout,
    st_header: u64,
}

/// Messages left in each kernel-to-kernel ring, and in each kernel's device outbox.
type Leftovers = (Vec<Vec<Message>>, Vec<Vec<Message>>);

/// Ticker-only cursors of one kernel.
#[derive(Clone, Copy, Debug, Default)]
struct Cursors {
    uploaded: u32,
    uploaded_epoch: u32,
    out_head: u32,
    out_head_uploaded: u32,
    dead_head: u32,
    dead_head_uploaded: u32,
}

struct Engine {
    gpu: Arc<GpuContext>,
    mem: wgpu::Buffer,
    staging: [wgpu::Buffer; 2],
    which: usize,
    pipelines: Vec<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    copies: Vec<Copy>,
    cursors: Vec<Cursors>,
    ticks: u64,
    /// What the last tick saw (counters, states, acknowledgements, outputs moved): a tick
    /// that changes none of it, after uploading nothing, is a fixed point, and ticking
    /// again would only spin until the host sends, receives or commands.
    fingerprint: u64,
    /// Set by the stop that hands the group's messages back: from then on no tick runs,
    /// so what that report read stays the whole truth (nothing it handed back is
    /// processed later, nothing processed is handed back).
    halted: bool,
}

/// A group of kernels with resident state on a wgpu device, run in ticks.
pub struct WgpuGroup {
    inner: Arc<Inner>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

struct Inner {
    name: String,
    kernels: Vec<KernelRt>,
    edges: Vec<Edge>,
    order: Vec<usize>,
    engine: Mutex<Engine>,
    /// Set by senders, commands and receivers; the ticker clears it when it starts a tick.
    work: AtomicBool,
    wake: Signal,
    /// Notified after every tick.
    ticked: Signal,
    stop: AtomicBool,
    /// Set by drain and terminate: outputs beyond the host outbox go to the overflow
    /// queue instead of making a kernel wait.
    unbounded: AtomicBool,
    fault: Mutex<Option<String>>,
    /// Serialises drains' and terminates' final stops; true once one of them handed the
    /// group's undelivered messages back (a message is handed back once, ever).
    handed_back: Mutex<bool>,
    /// Set with [`Engine::halted`]: commands are refused from then on (no tick would
    /// acknowledge them).
    halted: AtomicBool,
    dead_letters: Mutex<Vec<DeadLetter>>,
    command_timeout: Duration,
    adapter: String,
}

impl std::fmt::Debug for WgpuGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuGroup")
            .field("name", &self.inner.name)
            .field("adapter", &self.inner.adapter)
            .finish_non_exhaustive()
    }
}

impl WgpuGroup {
    /// Checks, validates, allocates and starts a group: its kernels start `Launched`
    /// (resident, not processing) and its ticker thread waits for work.
    ///
    /// # Errors
    /// [`WgpuError::Invalid`] for a plan that cannot work, [`WgpuError::Shader`] for WGSL
    /// that does not validate (naming the file and line), [`WgpuError::Device`] when the
    /// device refuses.
    #[allow(clippy::too_many_lines)]
    #[allow(clippy::needless_pass_by_value)] // the group keeps a clone; callers hand theirs over
    pub fn launch(
        gpu: Arc<GpuContext>,
        plan: WgpuGroupPlan,
        command_timeout: Duration,
    ) -> Result<Self, WgpuError> {
        let group = plan.name.as_str();
        let n = plan.kernels.len();
        if n == 0 {
            return Err(invalid(
                group,
                "a group needs at least one kernel: add one before launching",
            ));
        }
        for k in &plan.kernels {
            if k.max_emits == 0 || k.quantum == 0 {
                return Err(invalid(
                    group,
                    format!(
                        "kernel `{}`: max_emits and quantum must be at least 1: give it \
                         `.max_emits(n)` and `.quantum(n)` with n of 1 or more",
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
            edges: graph,
            order,
        } = check_topology(
            &shape,
            &plan.routes,
            "a tick runs kernels in topological order, so the wgpu backend cannot run a cycle; \
             break it or use the CPU backend",
        )
        .map_err(|message| invalid(group, message))?;
        // A kernel takes a message only when each output ring has room for all the emits
        // it may make (no emit is ever half done): a ring smaller than that would stall it
        // for good.
        for (i, k) in plan.kernels.iter().enumerate() {
            let mut rings = vec![("its host outbox".to_owned(), k.out_capacity)];
            for &(from, to) in &graph {
                if from == i {
                    rings.push((
                        format!("the inbox of `{}`", plan.kernels[to].name),
                        plan.kernels[to].capacity,
                    ));
                }
            }
            if let Some((what, capacity)) = rings.into_iter().find(|&(_, c)| c < k.max_emits) {
                return Err(invalid(
                    group,
                    format!(
                        "kernel `{}` may emit {} messages per message but {what} holds {capacity}: \
                         raise that capacity or lower max_emits",
                        k.name, k.max_emits
                    ),
                ));
            }
        }

        // Layout: control blocks first (one copy), then each kernel's rings and state.
        let ring_layout = |k: &WgpuKernelPlan, what: &str, capacity: u32, slot: u32| {
            RingLayout::new(capacity, slot)
                .map_err(|e| invalid(group, format!("kernel `{}`'s {what}: {e}", k.name)))
        };
        let mut layout = Layout { bytes: 0 };
        let controls = layout.take(size_of::<ControlBlock>() as u64 * n as u64);
        let mut kernels = Vec::with_capacity(n);
        let mut msg_words = 12u32;
        let mut copies = vec![Copy {
            src: controls,
            dst: 0,
            len: size_of::<ControlBlock>() as u64 * n as u64,
        }];
        let mut staging = copies[0].len;
        let mut stage = |copies: &mut Vec<Copy>, src: u64, len: u64| {
            let dst = staging.next_multiple_of(8);
            staging = dst + len;
            copies.push(Copy { src, dst, len });
            dst
        };
        let mut states = Vec::with_capacity(n);
        for (i, k) in plan.kernels.iter().enumerate() {
            let in_layout = ring_layout(k, "inbox", k.capacity, k.slot_bytes)?;
            let out_layout = ring_layout(k, "host outbox", k.out_capacity, k.out_slot_bytes)?;
            let biggest = in_layout.payload_bytes().max(out_layout.payload_bytes());
            let dead_layout = ring_layout(
                k,
                "dead-letter ring",
                k.capacity
                    .max(64)
                    .max((k.max_emits + 1).next_power_of_two()),
                (SLOT_HEADER_BYTES + DEAD_LETTER_PREFIX_BYTES + biggest)
                    .next_power_of_two()
                    .min(crate::abi::MAX_SLOT_BYTES),
            )?;
            msg_words = msg_words.max(dead_layout.payload_bytes() / 4);
            let at_inbox = layout.take(in_layout.region_bytes() as u64);
            let at_outbox = layout.take(out_layout.region_bytes() as u64);
            let at_dead = layout.take(dead_layout.region_bytes() as u64);
            let at_state = layout.take(u64::from(k.state_words.max(1)) * 4);
            // Scratch: the round-robin cursor, then one emit count per invocation.
            let at_scratch = layout.take(4 * (8 + u64::from(WORKGROUP)));
            states.push((at_state, at_scratch));
            let st_inbox_header = stage(&mut copies, at_inbox, u64::from(RING_HEADER_BYTES));
            let st_outbox = stage(&mut copies, at_outbox, out_layout.region_bytes() as u64);
            let st_dead = stage(&mut copies, at_dead, dead_layout.region_bytes() as u64);
            let mirror = HostControl::new(i as u32);
            // The host outbox: the ticker produces into it, receivers consume.
            let (outbox_tx, outbox) = HostRing::with_origin(out_layout, 0).split();
            kernels.push(KernelRt {
                plan: k.clone(),
                id: i as u32,
                control: HostSide::new(mirror).expect("a new block has no host side yet"),
                inbox: Producer::new(Arc::new(HostRing::with_origin(in_layout, k.origin)))
                    .expect("a new ring has no producer yet"),
                outbox_tx,
                outbox: Mutex::new(outbox),
                overflow: Mutex::new(VecDeque::new()),
                outbox_full: AtomicBool::new(false),
                watchdog: Mutex::new(None),
                throughput: crate::metrics::ThroughputWindow::new(Instant::now()),
                commands: Mutex::new(()),
                at_control: controls + size_of::<ControlBlock>() as u64 * i as u64,
                at_inbox,
                at_outbox,
                at_dead,
                in_layout,
                out_layout,
                dead_layout,
                st_control: size_of::<ControlBlock>() as u64 * i as u64,
                st_inbox_header,
                st_outbox,
                st_dead,
            });
        }
        let mut edges = Vec::new();
        for (i, _) in plan.kernels.iter().enumerate() {
            for (port, target) in targets[i].iter().enumerate() {
                if let Target::Kernel(to) = *target {
                    let down = &plan.kernels[to];
                    let edge_layout = ring_layout(down, "inbox", down.capacity, down.slot_bytes)?;
                    msg_words = msg_words.max(edge_layout.payload_bytes() / 4);
                    let at = layout.take(edge_layout.region_bytes() as u64);
                    let st_header = stage(&mut copies, at, u64::from(RING_HEADER_BYTES));
                    edges.push((
                        i,
                        port,
                        to,
                        Edge {
                            to,
                            at,
                            layout: edge_layout,
                            st_header,
                        },
                    ));
                }
            }
        }
        for k in &kernels {
            msg_words = msg_words
                .max(k.in_layout.payload_bytes() / 4)
                .max(k.out_layout.payload_bytes() / 4);
        }
        // Staging records of parallel kernels: a batch's emits before they get positions.
        let stages: Vec<u64> = kernels
            .iter()
            .map(|k| {
                if k.plan.parallel {
                    layout.take(
                        4 * u64::from(WORKGROUP)
                            * u64::from(k.plan.max_emits)
                            * u64::from(RECORD_HEADER_WORDS + msg_words),
                    )
                } else {
                    0
                }
            })
            .collect();
        // On an adapter whose driver cuts loops short past a number of iterations per
        // invocation (lavapipe), each kernel's quantum is lowered to what fits under it.
        if let Some(limit) = gpu.loop_limit() {
            for (i, k) in kernels.iter_mut().enumerate() {
                let words = |payload: u32| (payload / 4).min(msg_words);
                let w_in = words(k.in_layout.payload_bytes());
                let w_out = targets[i]
                    .iter()
                    .map(|t| match *t {
                        Target::Kernel(to) => {
                            words(plan.kernels[to].slot_bytes - SLOT_HEADER_BYTES)
                        }
                        Target::Host => words(k.out_layout.payload_bytes()),
                        Target::DeadLetters => words(k.dead_layout.payload_bytes()),
                    })
                    .max()
                    .unwrap_or(0)
                    .max(words(k.dead_layout.payload_bytes()));
                let most = quantum_under_loop_limit(&k.plan, w_in, w_out, limit).ok_or_else(|| {
                    invalid(
                        group,
                        format!(
                            "kernel `{}`: one message of {w_in} words with {} emits of up to {w_out} \
                             words may run more loop iterations than this adapter's driver allows \
                             in one dispatch ({limit}, gallivm): use smaller slots or fewer emits",
                            k.plan.name, k.plan.max_emits
                        ),
                    )
                })?;
                if k.plan.quantum > most {
                    tracing::debug!(group, kernel = %k.plan.name, asked = k.plan.quantum, most, "quantum lowered to the adapter's loop limit");
                    k.plan.quantum = most;
                }
            }
        }
        let total = layout.bytes.next_multiple_of(256);
        let limits = gpu.device.limits();
        if total > limits.max_storage_buffer_binding_size || total > limits.max_buffer_size {
            return Err(invalid(
                group,
                format!(
                    "the group needs {total} bytes of rings and state but this adapter binds at most {} \
                     bytes: use smaller capacities or slots, or split the group",
                    limits.max_storage_buffer_binding_size
                ),
            ));
        }

        // Descriptors.
        let mut desc = vec![0u32; DESC_WORDS * n];
        let word = |byte: u64| (byte / 4) as u32;
        let mut handlers: Vec<WgslHandler> = Vec::new();
        for (i, k) in kernels.iter().enumerate() {
            let plan_k = &k.plan;
            let case = handlers
                .iter()
                .position(|h| h == &plan_k.handler)
                .unwrap_or_else(|| {
                    handlers.push(plan_k.handler.clone());
                    handlers.len() - 1
                });
            let d = &mut desc[i * DESC_WORDS..(i + 1) * DESC_WORDS];
            d[D_CONTROL] = word(k.at_control);
            d[D_HANDLER] = case as u32;
            d[D_KERNEL_ID] = i as u32;
            d[D_N_PORTS] = plan_k.ports;
            d[D_QUANTUM] = plan_k.quantum;
            d[D_MAX_EMITS] = plan_k.max_emits;
            d[D_DEAD] = word(k.at_dead);
            d[D_STATE] = word(states[i].0);
            d[D_STATE_WORDS] = plan_k.state_words;
            d[D_SCRATCH] = word(states[i].1);
            d[D_FLAGS] = u32::from(plan_k.parallel);
            d[D_STAGE] = word(stages[i]);
            d[D_PARAMS..D_PARAMS + 16].copy_from_slice(&plan_k.params);
            d[D_INBOX] = word(k.at_inbox);
            d[D_INBOX + 1] = NONE;
            d[D_N_INBOXES] = 1;
            for (port, target) in targets[i].iter().enumerate() {
                let e = D_PORT + port * 4;
                match *target {
                    Target::Host => {
                        d[e] = word(k.at_outbox);
                        d[e + 1] = PortKind::Host as u32;
                        d[e + 2] = k.out_layout.payload_bytes();
                        d[e + 3] = NONE;
                    }
                    Target::DeadLetters => {
                        d[e] = word(k.at_dead);
                        d[e + 1] = PortKind::Dead as u32;
                        d[e + 2] = k.dead_layout.payload_bytes() - DEAD_LETTER_PREFIX_BYTES;
                        d[e + 3] = NONE;
                    }
                    Target::Kernel(_) => {}
                }
            }
        }
        for (from, port, to, edge) in &edges {
            let e = from * DESC_WORDS + D_PORT + port * 4;
            desc[e] = word(edge.at);
            desc[e + 1] = PortKind::Kernel as u32;
            desc[e + 2] = edge.layout.payload_bytes();
            desc[e + 3] = word(kernels[*to].at_control);
            let d = to * DESC_WORDS;
            let slot = desc[d + D_N_INBOXES] as usize;
            desc[d + D_INBOX + slot * 2] = word(edge.at);
            desc[d + D_INBOX + slot * 2 + 1] = word(kernels[*from].at_control);
            desc[d + D_N_INBOXES] += 1;
        }

        // The module: validated with naga first, for errors that name the line.
        let parallel: Vec<bool> = kernels.iter().map(|k| k.plan.parallel).collect();
        let module = codegen::group_module(&handlers, &parallel, msg_words);
        codegen::validate(&module).map_err(WgpuError::Shader)?;
        let device = &gpu.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(group),
            source: wgpu::ShaderSource::Wgsl(module.source.clone().into()),
        });
        // One layout for every kernel's pipeline, so one bind group serves the whole tick.
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let bind_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(group),
            entries: &[storage(0, false), storage(1, true)],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(group),
            bind_group_layouts: &[Some(&bind_layout)],
            immediate_size: 0,
        });
        let pipelines: Vec<wgpu::ComputePipeline> = (0..n)
            .map(|k| {
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&format!("{group}/{}", plan.kernels[k].name)),
                    layout: Some(&pipeline_layout),
                    module: &shader,
                    entry_point: Some(&format!("gyre_kernel_{k}")),
                    compilation_options: wgpu::PipelineCompilationOptions::default(),
                    cache: None,
                })
            })
            .collect();
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(WgpuError::Device(format!(
                "creating the group's pipelines: {error}"
            )));
        }

        // Buffers, initialised on the host: every ring header and stamp, every control
        // block, then one upload.
        let mut image = vec![0u8; total as usize];
        let mut init_ring = |at: u64, layout: RingLayout, origin: u32| {
            let mut ring = HostRing::with_origin(layout, origin);
            let bytes = ring_bytes(&mut ring, layout);
            image[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
        };
        for k in &kernels {
            init_ring(k.at_inbox, k.in_layout, k.plan.origin);
            init_ring(k.at_outbox, k.out_layout, 0);
            init_ring(k.at_dead, k.dead_layout, 0);
        }
        for (_, _, to, edge) in &edges {
            init_ring(edge.at, edge.layout, kernels[*to].plan.origin);
        }
        for k in &kernels {
            let block = ControlBlock {
                magic: CONTROL_MAGIC,
                abi_version: ABI_VERSION,
                kernel_id: k.id,
                state: State::Launched as u32,
                ..bytemuck::Zeroable::zeroed()
            };
            let at = k.at_control as usize;
            image[at..at + size_of::<ControlBlock>()].copy_from_slice(bytemuck::bytes_of(&block));
        }
        let mem = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("gyre group rings"),
            size: total,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        gpu.queue.write_buffer(&mem, 0, &image);
        let desc_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("gyre group descriptors"),
            size: (desc.len() * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.queue
            .write_buffer(&desc_buf, 0, bytemuck::cast_slice(&desc));
        let staging_bytes = staging.next_multiple_of(8);
        let make_staging = || {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("gyre group readback"),
                size: staging_bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(group),
            layout: &bind_layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: mem.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: desc_buf.as_entire_binding(),
                },
            ],
        });
        let cursors = kernels
            .iter()
            .map(|k| Cursors {
                uploaded: k.plan.origin,
                ..Cursors::default()
            })
            .collect();
        let engine = Engine {
            gpu: Arc::clone(&gpu),
            mem,
            staging: [make_staging(), make_staging()],
            which: 0,
            pipelines,
            bind_group,
            copies,
            cursors,
            ticks: 0,
            fingerprint: 0,
            halted: false,
        };
        let adapter = super::adapter::describe(&gpu.info);
        tracing::info!(group, kernels = n, %adapter, "launched wgpu group (resident state, ticked execution)");
        let inner = Arc::new(Inner {
            name: plan.name,
            kernels,
            edges: edges.into_iter().map(|(_, _, _, e)| e).collect(),
            order,
            engine: Mutex::new(engine),
            work: AtomicBool::new(true),
            wake: Signal::new(),
            ticked: Signal::new(),
            stop: AtomicBool::new(false),
            unbounded: AtomicBool::new(false),
            fault: Mutex::new(None),
            handed_back: Mutex::new(false),
            halted: AtomicBool::new(false),
            dead_letters: Mutex::new(Vec::new()),
            command_timeout,
            adapter,
        });
        // One tick now, with every kernel still Launched (each returns at once): drivers
        // that compile pipelines at first use (lavapipe does) do it here, inside launch,
        // not inside the first command's timeout.
        inner.tick().map_err(WgpuError::Device)?;
        let runner = Arc::clone(&inner);
        let ticker = std::thread::Builder::new()
            .name(format!("gyre-wgpu-{}", inner.name))
            .spawn(move || runner.run())
            .map_err(|e| WgpuError::Device(format!("starting the ticker thread: {e}")))?;
        Ok(Self {
            inner,
            ticker: Some(ticker),
        })
    }

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
    /// [`GpuContext::loop_limit`](super::adapter::GpuContext::loop_limit)).
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

    /// Sends one message, waiting up to `timeout` for room.
    ///
    /// # Errors
    /// As [`WgpuGroup::try_send`]; `Full` once the timeout passed.
    pub fn send(
        &self,
        k: usize,
        payload: &[u8],
        corr: [u32; 2],
        timeout: Duration,
    ) -> Result<(), SendError> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        let sent = self.inner.ticked.wait_until(Some(deadline), || {
            match self.try_send(k, payload, corr) {
                Err(SendError::Full { .. }) => None,
                other => {
                    last = Some(other);
                    Some(())
                }
            }
        });
        match (sent, last) {
            (Some(()), Some(result)) => result,
            _ => Err(SendError::Full {
                kernel: self.inner.kernels[k].plan.name.clone(),
            }),
        }
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
        let status = kernel.control.status();
        let counters = kernel.control.counters();
        let depth = kernel.inbox.len();
        let capacity = kernel.inbox.capacity();
        KernelSample {
            name: kernel.plan.name.clone(),
            backend: "wgpu",
            id: kernel.id,
            state: self.state(k),
            counters,
            inbox_depth: depth,
            inbox_capacity: capacity,
            inbox_utilisation: f64::from(depth) / f64::from(capacity),
            heartbeat: status.heartbeat,
            ring_bytes: kernel.in_layout.region_bytes(),
            // Not measured on the device: handler time needs device clocks the control
            // block has no words for, so the series is absent.
            busy_ns: None,
            throughput: kernel.throughput.rate(Instant::now(), counters.processed),
            latency: None,
        }
    }

    /// Kernel `k`'s health, from the same words and evaluation as every backend (the
    /// heartbeat moves once per tick).
    pub fn health(&self, k: usize, policy: &HealthPolicy) -> Health {
        let sample = self.sample(k);
        let now = Instant::now();
        let mut watchdog = self.inner.kernels[k].watchdog.lock();
        let watchdog = watchdog.get_or_insert_with(|| Watchdog::new(&sample, now));
        health::evaluate(&sample, policy, watchdog, now)
    }

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

/// The bytes of a freshly initialised ring region.
fn ring_bytes(ring: &mut HostRing, layout: RingLayout) -> Vec<u8> {
    let mut out = vec![0u8; layout.region_bytes()];
    let header = crate::abi::RingHeader {
        magic: crate::abi::RING_MAGIC,
        abi_version: ABI_VERSION,
        capacity: layout.capacity(),
        slot_bytes: layout.slot_bytes(),
        origin: ring.head().load(Ordering::Relaxed),
        tail: ring.tail().load(Ordering::Relaxed),
        head: ring.head().load(Ordering::Relaxed),
        ..bytemuck::Zeroable::zeroed()
    };
    out[..RING_HEADER_BYTES as usize].copy_from_slice(bytemuck::bytes_of(&header));
    for i in 0..layout.capacity() {
        let at = RING_HEADER_BYTES as usize + i as usize * layout.slot_bytes() as usize;
        out[at..at + 4].copy_from_slice(&ring.stamp(i).load(Ordering::Relaxed).to_ne_bytes());
    }
    out
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

impl Inner {
    /// Something for the ticker to do.
    fn poke(&self) {
        self.work.store(true, Ordering::SeqCst);
        self.wake.notify();
    }

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
        if let Some(reason) = self.fault.lock().clone() {
            return Err(CommandError::Faulted {
                name: kernel.plan.name.clone(),
                reason,
            });
        }
        let from = kernel.control.state();
        lifecycle::transition(from, Event::Command(command))?;
        if command == Command::Drain || command == Command::Terminate {
            // Every send that will ever happen is published before the command uploads:
            // the ticker uploads published slots before the command words.
            let tail = kernel.inbox.close();
            kernel.inbox.wait_published(tail, u32::MAX);
        }
        let epoch = kernel.control.issue(command);
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
            Some(Ok(State::Faulted)) => Err(CommandError::Faulted {
                name: kernel.plan.name.clone(),
                reason: format!(
                    "the kernel reported fault code {}",
                    kernel.control.status().error_code
                ),
            }),
            Some(result) => result,
            None => Err(CommandError::Unresponsive {
                name: kernel.plan.name.clone(),
                waited: self.command_timeout,
            }),
        }
    }

    /// The ticker: ticks while there is work, parks when idle.
    fn run(&self) {
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
    fn tick(&self) -> Result<bool, String> {
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
            if c.out_head != c.out_head_uploaded {
                queue.write_buffer(
                    &engine.mem,
                    kernel.at_outbox + head_at,
                    &c.out_head.to_ne_bytes(),
                );
                c.out_head_uploaded = c.out_head;
                uploaded_any = true;
            }
            if c.dead_head != c.dead_head_uploaded {
                queue.write_buffer(
                    &engine.mem,
                    kernel.at_dead + head_at,
                    &c.dead_head.to_ne_bytes(),
                );
                c.dead_head_uploaded = c.dead_head;
                uploaded_any = true;
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
                // The status line, acknowledgement last (Release), as a kernel writes it.
                let base = kernel.st_control as usize;
                let mirror = kernel.control.memory();
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
                let ack = std::mem::offset_of!(ControlBlock, ack_epoch);
                // ORDERING: Release pairs with HostSide::status's Acquire of ack_epoch.
                mirror
                    .word(ack)
                    .store(read_u32(bytes, base + ack), Ordering::Release);
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
            .map(|k| KernelReport {
                name: k.plan.name.clone(),
                state: if fault.is_some() {
                    State::Faulted
                } else {
                    k.control.state()
                },
                counters: k.control.counters(),
                undelivered: Vec::new(),
                undelivered_outputs: Vec::new(),
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
            // ORDERING: Acquire pairs with the ticker's Release store of head.
            let head = kernel.inbox.memory().head().load(Ordering::Acquire);
            // SAFETY: the mirror's only consumer is the ticker, which releases positions
            // (stores `head`) only in `tick`, under the engine lock held here (taken at
            // the top of this function).
            unsafe {
                kernel.inbox.read_closed(head, |slot| {
                    reports[k].undelivered.push(Message {
                        tag: slot.tag,
                        corr: slot.corr,
                        payload: slot.payload.to_vec(),
                    });
                });
            }
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

/// The largest quantum under which one tick of `plan`'s kernel stays below `limit` loop
/// iterations per invocation (gallivm's count: [`LOOP_COST`] per WGSL loop iteration), for
/// inbox messages of `w_in` payload words and emits of up to `w_out`; `None` when not even
/// one message fits. Every count is the worst case: every message fails (its dead letter
/// copies it twice more) and every emit goes to the dead letters. A user handler's own
/// loops are its own to bound (runtime/docs/WGPU.md).
fn quantum_under_loop_limit(
    plan: &WgpuKernelPlan,
    w_in: u32,
    w_out: u32,
    limit: u32,
) -> Option<u32> {
    let handler = match plan.handler {
        WgslHandler::Builtin(_) => BUILTIN_LOOPS,
        WgslHandler::Source { .. } => 0,
    };
    let emits = plan.max_emits.saturating_mul(2 * w_out + 4);
    let budget = (limit / LOOP_COST).checked_sub(TICK_LOOPS)?;
    let most = if plan.parallel {
        // Per batch of up to 64, the invocations of invocation 0's lanes: picking the
        // batch (inboxes, then up to 64 stamps), clearing counts, its message (reading,
        // staging, counting), the prefix sums (9 rings x 64), writing its emits and dead
        // letter, and taking the batch's counts. A partial batch per inbox at most.
        let wg = WORKGROUP;
        let batch = 8 + wg + 9 + 2 * w_in + handler + 2 * emits + 9 * (wg + 1) + w_in + 4 + wg + 1;
        (budget / batch).checked_sub(8)?.saturating_mul(wg)
    } else {
        // The message loop, reading it, copying it for a dead letter and writing that
        // (4 + w_in), the handler, its emits.
        budget / (1 + 4 * w_in + 4 + handler + emits)
    };
    (most > 0).then_some(most)
}

/// Reads the messages of a copied ring region from `*head` on while stamps say they are
/// published, handing each (tag, corr, payload) to `take`, which returns false to stop.
/// Cancelled slots are skipped. Returns the number of messages taken.
fn take_messages(
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
fn map_after(gpu: &GpuContext, buffer: &wgpu::Buffer) -> Result<(), String> {
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
