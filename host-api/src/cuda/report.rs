//! [`CudaReport`]: what a drain or terminate of a CUDA group hands back.

use gyre_runtime::abi::State;
use gyre_runtime::backend::cuda::group::KernelReport;
use gyre_runtime::backend::cuda::GroupReport;

use super::CudaStage;
use crate::gpu_common;
use crate::gpu_handle::GpuReport;
use crate::spec::Message;

/// What [`super::CudaGroupHandle::drain`] and [`super::CudaGroupHandle::terminate`]
/// return: the runtime's [`GroupReport`] (one [`KernelReport`] per kernel, in the order
/// they were added), with typed readers per stage.
///
/// Nothing is dropped silently: every message sent to a kernel was processed (counted)
/// or is in its `undelivered`; every output it made was delivered (to the host output,
/// where it stays receivable, or downstream) or is in its `undelivered_outputs`.
///
/// ```
/// # use gyre::cuda::{Builtin, CudaKernel, Record};
/// # use gyre::{Backend, Runtime};
/// # let Ok(runtime) = Runtime::builder().backend(Backend::CudaEmulated).build() else { return Ok(()) };
/// let mut g = runtime.cuda_group("held")?;
/// let stage = g.add(CudaKernel::<Record, Record>::builtin("pass", Builtin::Gather));
/// let group = g.launch()?;
/// // Never activated: a terminate hands the queued message back.
/// group.send(&stage, Record { key: 1, seq: 2, value: 3.0, aux: 4 })?;
/// let report = group.terminate();
/// assert_eq!(report.undelivered::<Record>(&stage), [Record { key: 1, seq: 2, value: 3.0, aux: 4 }]);
/// assert_eq!(report.processed(&stage), 0);
/// # Ok::<(), gyre::Error>(())
/// ```
#[derive(Clone)]
pub struct CudaReport(pub(super) GpuReport);

impl std::fmt::Debug for CudaReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt_as("CudaReport", f)
    }
}

impl CudaReport {
    /// The runtime's report, untyped: counters, final states, and messages as slot bytes.
    pub fn group_report(&self) -> &GroupReport {
        &self.0.report
    }

    /// The runtime's report, untyped.
    pub fn into_inner(self) -> GroupReport {
        self.0.report
    }

    /// Whether a drain ran out of time (the rest of the group was terminated).
    pub fn timed_out(&self) -> bool {
        self.0.report.timed_out
    }

    /// The device error that ended the group, if one did.
    pub fn fault(&self) -> Option<&str> {
        self.0.report.fault.as_deref()
    }

    /// Every undelivered message and output of every kernel.
    pub fn undelivered_count(&self) -> usize {
        self.0.report.undelivered_count()
    }

    /// The report of the kernel of `stage`.
    ///
    /// # Panics
    /// When `stage` belongs to another group.
    pub fn kernel<In, Out>(&self, stage: &CudaStage<In, Out>) -> &KernelReport {
        self.0.kernel(stage.id)
    }

    /// Messages the kernel of `stage` processed over its life.
    ///
    /// # Panics
    /// When `stage` belongs to another group.
    pub fn processed<In, Out>(&self, stage: &CudaStage<In, Out>) -> u64 {
        self.kernel(stage).counters.processed
    }

    /// The state the kernel of `stage` ended in.
    ///
    /// # Panics
    /// When `stage` belongs to another group.
    pub fn final_state<In, Out>(&self, stage: &CudaStage<In, Out>) -> State {
        self.kernel(stage).state
    }

    /// Messages that reached the kernel of `stage` and were never handled (its host
    /// inbox, then each ring from an upstream kernel, oldest first per ring), read as
    /// its input type.
    ///
    /// # Panics
    /// When `stage` belongs to another group.
    pub fn undelivered<In: Message>(&self, stage: &CudaStage<In, impl Sized>) -> Vec<In> {
        gpu_common::undelivered(self.kernel(stage))
    }

    /// Outputs the kernel of `stage` made but could not deliver (a terminate while they
    /// waited for room downstream), read as its output type, with their port.
    ///
    /// # Panics
    /// When `stage` belongs to another group.
    pub fn undelivered_outputs<Out: Message>(
        &self,
        stage: &CudaStage<impl Sized, Out>,
    ) -> Vec<(u32, Out)> {
        gpu_common::undelivered_outputs(self.kernel(stage))
    }
}
