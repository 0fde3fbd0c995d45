//! What a wgpu group is launched from ([`WgpuGroupPlan`], [`WgpuKernelPlan`]), the errors a
//! launch reports, and the loop-limit bound on a kernel's quantum.

use super::{BUILTIN_LOOPS, LOOP_COST, TICK_LOOPS, WORKGROUP};
use crate::backend::device_plan::{BackendKnobs, DeviceKernelPlan};
use crate::backend::group::Route;
use crate::backend::wgpu::codegen::WgslHandler;

/// What a wgpu kernel plan takes beyond what every device backend's does
/// ([`DeviceKernelPlan::backend`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WgpuKnobs {
    /// Words of state, zeroed at launch (`gyre_state_load` / `gyre_state_store`).
    pub state_words: u32,
    /// Whether the handler may run on several messages at once (no state, or state it
    /// updates safely): the kernel then runs as a workgroup of 64 invocations per batch,
    /// its outputs still in message order. Off by default; on for the stateless built-ins.
    pub parallel: bool,
}

impl BackendKnobs for WgpuKnobs {
    /// Up to 1,024 messages per tick.
    const DEFAULT_QUANTUM: u32 = 1024;

    fn builtin(builtin: &crate::builtins::Builtin) -> Self {
        Self {
            state_words: builtin.state_bytes().div_ceil(4),
            parallel: !builtin.sequential(),
        }
    }
}

/// One kernel of a wgpu group plan (quantum 1,024 by default: the most messages one tick
/// handles; an adapter with a loop limit, lavapipe, may lower it:
/// [`WgpuGroup::quantum`](super::WgpuGroup::quantum)).
pub type WgpuKernelPlan = DeviceKernelPlan<WgpuKnobs>;

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
    let most = if plan.backend.parallel {
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
