//! What drains, terminations and shutdowns hand back.

use gyre_runtime::abi::State;

/// The outcome of stopping one kernel: its totals and every message it did not deliver.
///
/// Nothing is dropped silently: a message sent to a kernel was either processed (and
/// counted in `processed`) or is in `undelivered`; a message it emitted was either
/// received from it or is in `undelivered_outputs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report<In, Out> {
    /// The kernel.
    pub kernel: String,
    /// Messages the kernel processed over its life.
    pub processed: u64,
    /// Messages it emitted over its life.
    pub emitted: u64,
    /// For a drain: whether its timeout expired first (the kernel was then terminated).
    pub timed_out: bool,
    /// The state it ended in.
    pub final_state: State,
    /// Its fault, if it faulted. The first undelivered input is then the message whose
    /// handler panicked.
    pub fault: Option<String>,
    /// Whether its handler did not return within the command timeout, so the host took
    /// its rings over: the first undelivered input is the message that was in hand (its
    /// earlier emits were delivered, so a retry may repeat them).
    pub abandoned: bool,
    /// Messages still in its inbox, in order.
    pub undelivered: Vec<In>,
    /// Messages it emitted that were not received: for a drain, only emits that were
    /// waiting for room when a timeout hit (the output ring itself stays receivable);
    /// for a terminate, also everything still in the output ring.
    pub undelivered_outputs: Vec<Out>,
}

/// What [`crate::Kernel::drain`] returns.
pub type DrainReport<In, Out> = Report<In, Out>;
/// What [`crate::Kernel::terminate`] returns.
pub type TerminateReport<In, Out> = Report<In, Out>;

/// A message handed back by a runtime shutdown, which does not know kernels' types:
/// read it with `bytemuck::pod_read_unaligned(&message.bytes[..size_of::<T>()])`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawMessage {
    /// Correlation id.
    pub corr: u64,
    /// The slot's payload bytes.
    pub bytes: Vec<u8>,
}

impl RawMessage {
    /// The message read as `T` (the type the kernel takes or emits).
    ///
    /// # Panics
    /// When `T` is larger than the slot payload.
    pub fn read<T: bytemuck::Pod>(&self) -> T {
        bytemuck::pod_read_unaligned(&self.bytes[..std::mem::size_of::<T>()])
    }
}

/// One kernel's outcome in a [`ShutdownReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelShutdown {
    /// The kernel.
    pub kernel: String,
    /// Messages it processed over its life.
    pub processed: u64,
    /// Whether its drain timed out (it was then terminated).
    pub timed_out: bool,
    /// The state it ended in.
    pub final_state: State,
    /// Its fault, if any.
    pub fault: Option<String>,
    /// An error stopping it, if any.
    pub error: Option<crate::Error>,
    /// Whether its handler did not return in time and the host took its rings over (the
    /// first undelivered input is the message in hand).
    pub abandoned: bool,
    /// Inputs handed back.
    pub undelivered: Vec<RawMessage>,
    /// Outputs handed back.
    pub undelivered_outputs: Vec<RawMessage>,
}

/// What [`crate::Runtime::shutdown`], [`crate::Group::drain`] and
/// [`crate::Group::terminate`] return: one entry per kernel that was still running
/// (already terminated kernels are left out), in the order they were stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Per kernel.
    pub kernels: Vec<KernelShutdown>,
}

/// What a group's drain or terminate returns.
pub type GroupReport = ShutdownReport;

impl ShutdownReport {
    /// The kernels in the report, in the order they were stopped.
    pub fn kernel_names(&self) -> Vec<&str> {
        self.kernels.iter().map(|k| k.kernel.as_str()).collect()
    }

    /// The entry of the kernel named `name`.
    pub fn kernel(&self, name: &str) -> Option<&KernelShutdown> {
        self.kernels.iter().find(|k| k.kernel == name)
    }

    /// Every input handed back, read as `T`, over all kernels whose inputs are `T`
    /// (the caller knows which: name them in `kernels`).
    pub fn undelivered_as<T: bytemuck::Pod>(&self, kernels: &[&str]) -> Vec<T> {
        self.kernels
            .iter()
            .filter(|k| kernels.contains(&k.kernel.as_str()))
            .flat_map(|k| k.undelivered.iter().map(RawMessage::read::<T>))
            .collect()
    }

    /// Every output handed back, read as `T`, over the kernels named in `kernels`.
    pub fn undelivered_outputs_as<T: bytemuck::Pod>(&self, kernels: &[&str]) -> Vec<T> {
        self.kernels
            .iter()
            .filter(|k| kernels.contains(&k.kernel.as_str()))
            .flat_map(|k| k.undelivered_outputs.iter().map(RawMessage::read::<T>))
            .collect()
    }

    /// The kernels that faulted, with their faults, in the order they were stopped. A
    /// drain terminates a faulted kernel instead of failing: its entry hands back its
    /// undelivered messages (the one its handler panicked on first) and says why.
    pub fn faulted(&self) -> impl Iterator<Item = (&str, &str)> {
        self.kernels
            .iter()
            .filter_map(|k| Some((k.kernel.as_str(), k.fault.as_deref()?)))
    }

    /// Messages handed back, inputs and outputs, over all kernels.
    pub fn undelivered_count(&self) -> usize {
        self.kernels
            .iter()
            .map(|k| k.undelivered.len() + k.undelivered_outputs.len())
            .sum()
    }
}
