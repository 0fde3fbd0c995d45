//! What a wgpu group is launched from ([`WgpuGroupPlan`], [`WgpuKernelPlan`]), the errors a
//! launch reports, and the loop-limit bound on a kernel's quantum.

use super::{BUILTIN_LOOPS, LOOP_COST, TICK_LOOPS, WORKGROUP};
use crate::abi::SLOT_HEADER_BYTES;
use crate::backend::group::Route;
use crate::backend::wgpu::codegen::WgslHandler;

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
    /// it: [`WgpuGroup::quantum`](super::WgpuGroup::quantum)).
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

pub(super) fn invalid(group: &str, message: impl Into<String>) -> WgpuError {
    WgpuError::Invalid {
        group: group.to_owned(),
        message: message.into(),
    }
}

/// The largest quantum under which one tick of `plan`'s kernel stays below `limit` loop
/// iterations per invocation (gallivm's count: [`LOOP_COST`] per WGSL loop iteration), for
/// inbox messages of `w_in` payload words and emits of up to `w_out`; `None` when not even
/// one message fits. Every count is the worst case: every message fails (its dead letter
/// copies it twice more) and every emit goes to the dead letters. A user handler's own
/// loops are its own to bound (runtime/docs/WGPU.md).
pub(super) fn quantum_under_loop_limit(
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
