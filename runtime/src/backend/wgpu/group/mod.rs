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
use std::time::Duration;

use parking_lot::Mutex;

use super::adapter::GpuContext;
use crate::backend::group::Message;
use crate::control::{HostControl, HostSide};
use crate::ring::{Consumer, HostRing, Producer, RingLayout};
use crate::routing::DeadLetter;
use crate::wait::Signal;

mod io;
mod launch;
mod plan;
mod stop;
mod tick;

pub use plan::{WgpuError, WgpuGroupPlan, WgpuKernelPlan, WgpuKnobs};

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
    /// Its throughput and watchdog, measured on the host.
    pub(super) measures: crate::backend::group::HostMeasures,
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

impl Inner {
    /// Something for the ticker to do.
    fn poke(&self) {
        self.work.store(true, Ordering::SeqCst);
        self.wake.notify();
    }
}
