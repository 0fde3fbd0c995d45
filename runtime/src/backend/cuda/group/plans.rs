//! What a CUDA group is launched from ([`GroupPlan`], [`KernelPlan`]) and the errors a launch
//! reports.

use crate::backend::cuda::device::DeviceError;
use crate::backend::device_plan::{BackendKnobs, DeviceKernelPlan};
use crate::backend::group::Route;

/// What a CUDA kernel plan takes beyond what every device backend's does
/// ([`DeviceKernelPlan::backend`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CudaKnobs {
    /// Whether one thread handles each batch, in order (stateful kernels).
    pub sequential: bool,
    /// Bytes of device state, zeroed at launch (`ctx->state`).
    pub state_bytes: u32,
}

impl BackendKnobs for CudaKnobs {
    /// One message per thread of the block.
    const DEFAULT_QUANTUM: u32 = 0;

    fn builtin(builtin: &crate::builtins::Builtin) -> Self {
        Self {
            sequential: builtin.sequential(),
            state_bytes: builtin.state_bytes(),
        }
    }
}

/// One kernel of a CUDA group plan (quantum 0, the default: one message per thread of
/// the block).
pub type KernelPlan = DeviceKernelPlan<CudaKnobs>;

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
