//! What a CUDA group is launched from ([`GroupPlan`], [`KernelPlan`]) and the errors a launch
//! reports.

use crate::abi::SLOT_HEADER_BYTES;
use crate::backend::cuda::codegen::HandlerCode;
use crate::backend::cuda::device::DeviceError;
use crate::backend::cuda::plan;
use crate::ring::RingLayout;

use crate::backend::group::Route;

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

pub(super) fn invalid(group: &str, message: impl Into<String>) -> GroupError {
    GroupError::Invalid {
        group: group.to_owned(),
        message: message.into(),
    }
}

pub(super) fn layout(
    group: &str,
    kernel: &str,
    what: &str,
    capacity: u32,
    slot_bytes: u32,
) -> Result<RingLayout, GroupError> {
    RingLayout::new(capacity, slot_bytes)
        .map_err(|e| invalid(group, format!("kernel `{kernel}`'s {what}: {e}")))
}
