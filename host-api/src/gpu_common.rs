//! What the typed GPU group APIs ([`crate::cuda`], [`crate::wgpu`]) share: slot sizes
//! from message types, the type checks of built-ins, the kernel settings both kernel
//! specs carry, typed reads of slot messages, group ids, and the mapping of the runtime's
//! group errors to [`Error`]. The typed handle, stage and report are in `gpu_handle`.
//!
//! Both backends' groups use the same plain types of `gyre_runtime::backend::group`
//! (messages, send errors, reports), so everything here is backend-neutral.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gyre_runtime::abi::{State, MAX_SLOT_BYTES, MIN_SLOT_BYTES, PAYLOAD_ALIGN, SLOT_HEADER_BYTES};
use gyre_runtime::backend::group::{
    KernelReport, Message as SlotMessage, SendError as RawSendError,
};
use gyre_runtime::backend::CommandError;
use gyre_runtime::builtins::{Builtin, PARAM_WORDS};

use crate::Error;

/// Identifies the group a stage belongs to, so a stage is never used on another group.
/// One sequence for every backend: a CUDA stage and a wgpu stage never share an id.
static NEXT_GROUP_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh group id.
pub(crate) fn next_group_id() -> u64 {
    NEXT_GROUP_ID.fetch_add(1, Ordering::Relaxed)
}

/// The slot size for messages of type `T` that take `bytes` bytes of payload: the
/// smallest power of two that holds them and the header, at least [`MIN_SLOT_BYTES`].
///
/// # Errors
/// [`Error::MessageAlignment`] for a type aligned beyond a slot payload;
/// [`Error::Launch`] for one larger than the largest slot.
pub(crate) fn slot_for<T>(bytes: usize) -> Result<u32, Error> {
    let type_name = std::any::type_name::<T>();
    let align = std::mem::align_of::<T>();
    if align > PAYLOAD_ALIGN as usize {
        return Err(Error::MessageAlignment { type_name, align });
    }
    let needed = (bytes + SLOT_HEADER_BYTES as usize)
        .next_power_of_two()
        .max(MIN_SLOT_BYTES as usize);
    match u32::try_from(needed) {
        Ok(slot) if slot <= MAX_SLOT_BYTES => Ok(slot),
        _ => Err(Error::Launch(format!(
            "message type `{type_name}` takes {bytes} bytes but the largest slot \
             ({MAX_SLOT_BYTES} bytes) holds {} payload bytes: shrink the type, or split it \
             into several messages",
            MAX_SLOT_BYTES - SLOT_HEADER_BYTES
        ))),
    }
}

/// Checks a built-in's parameters and that `In` holds what it reads and `Out` is what it
/// emits; `module` names the module whose record types to suggest (`"gyre::cuda"`).
/// Returns the payload bytes of its input and output slots.
///
/// # Errors
/// [`Error::Launch`] saying which parameter or type to change.
pub(crate) fn builtin_payloads<In, Out>(
    kernel: &str,
    builtin: &Builtin,
    module: &str,
) -> Result<(usize, usize), Error> {
    let in_size = std::mem::size_of::<In>();
    let out_size = std::mem::size_of::<Out>();
    builtin
        .validate()
        .map_err(|why| Error::Launch(format!("kernel `{kernel}`: {why}")))?;
    let reads = builtin.input_bytes() as usize;
    let emits = builtin.output_bytes() as usize;
    if in_size < reads {
        return Err(Error::Launch(format!(
            "kernel `{kernel}`: built-in {} reads {reads}-byte messages but its input type \
             `{}` is {in_size} bytes: use a {reads}-byte input type ({module}::Record \
             for record built-ins)",
            builtin.name(),
            std::any::type_name::<In>()
        )));
    }
    if out_size != emits {
        return Err(Error::Launch(format!(
            "kernel `{kernel}`: built-in {} emits {emits}-byte messages but its output type \
             `{}` is {out_size} bytes: use the built-in's output type (Record, \
             Aggregate or Histogram in {module})",
            builtin.name(),
            std::any::type_name::<Out>()
        )));
    }
    Ok((in_size.max(reads), out_size.max(emits)))
}

/// The first `size_of::<T>()` bytes of a slot payload as a `T` (zero-extended if the
/// payload is shorter, which a slot sized for `T` never is).
pub(crate) fn read<T: bytemuck::Pod>(payload: &[u8]) -> T {
    let size = std::mem::size_of::<T>();
    if payload.len() >= size {
        bytemuck::pod_read_unaligned(&payload[..size])
    } else {
        let mut value = T::zeroed();
        bytemuck::bytes_of_mut(&mut value)[..payload.len()].copy_from_slice(payload);
        value
    }
}

/// A slot message as `T`.
pub(crate) fn read_message<T: bytemuck::Pod>(message: &SlotMessage) -> T {
    read(&message.payload)
}

/// A kernel report's undelivered messages, read as its input type.
pub(crate) fn undelivered<In: bytemuck::Pod>(kernel: &KernelReport) -> Vec<In> {
    kernel.undelivered.iter().map(read_message).collect()
}

/// A kernel report's undelivered outputs, read as its output type, with their port.
pub(crate) fn undelivered_outputs<Out: bytemuck::Pod>(kernel: &KernelReport) -> Vec<(u32, Out)> {
    kernel
        .undelivered_outputs
        .iter()
        .map(|(port, m)| (*port, read_message(m)))
        .collect()
}

/// The error for kernel `kernel`, in `state`, that takes or makes no more messages;
/// `fault` is the group's fault, if any.
pub(crate) fn stopped(kernel: &str, state: State, fault: Option<String>) -> Error {
    let kernel = kernel.to_owned();
    match state {
        State::Faulted => Error::Faulted {
            kernel,
            reason: fault.unwrap_or_else(|| "the kernel reported a fault".to_owned()),
        },
        State::Terminated => Error::Terminated { kernel },
        _ => Error::Draining { kernel },
    }
}

/// The error for a send to `kernel` that failed; `waited` is the timeout of a blocking
/// send (`None` for `try_send`), `stopped` the error for a kernel that takes no more.
pub(crate) fn send_error<In>(
    kernel: &str,
    error: RawSendError,
    waited: Option<Duration>,
    stopped: impl FnOnce() -> Error,
) -> Error {
    let kernel = kernel.to_owned();
    match error {
        RawSendError::Full { .. } => match waited {
            Some(after) => Error::Timeout { kernel, after },
            None => Error::Full { kernel },
        },
        RawSendError::Closed { .. } => stopped(),
        RawSendError::Faulted(reason) => Error::Faulted { kernel, reason },
        RawSendError::TooLarge { bytes, room, .. } => Error::MessageTooLarge {
            type_name: std::any::type_name::<In>(),
            size: bytes,
            slot_bytes: room + SLOT_HEADER_BYTES,
            max: room as usize,
            suggested: (bytes + SLOT_HEADER_BYTES as usize)
                .next_power_of_two()
                .try_into()
                .unwrap_or(u32::MAX),
        },
    }
}

/// The error for a group-wide command (activate) of group `group` that failed.
pub(crate) fn command_error(group: &str, error: CommandError) -> Error {
    match error {
        CommandError::Lifecycle(source) => Error::Lifecycle {
            kernel: format!("{group} (group)"),
            source,
        },
        CommandError::Unresponsive { name, waited } => Error::Unresponsive {
            kernel: name,
            waited,
        },
        CommandError::Faulted { name, reason } => Error::Faulted {
            kernel: name,
            reason,
        },
    }
}

/// Receives through `try_recv` until it gives a message or an error, or `timeout`
/// passes ([`Error::Timeout`] naming `kernel`). Between tries it calls `wait` with the
/// time left (`None`: no deadline); `wait` waits for news from the device or a short
/// while, and returns a message if one arrived meanwhile.
pub(crate) fn recv_until<T>(
    kernel: &str,
    timeout: Option<Duration>,
    mut try_recv: impl FnMut() -> Result<Option<T>, Error>,
    mut wait: impl FnMut(Option<Duration>) -> Option<T>,
) -> Result<T, Error> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        if let Some(message) = try_recv()? {
            return Ok(message);
        }
        let left = match (deadline, timeout) {
            (Some(deadline), Some(after)) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(Error::Timeout {
                        kernel: kernel.to_owned(),
                        after,
                    });
                }
                Some(deadline - now)
            }
            _ => None,
        };
        if let Some(message) = wait(left) {
            return Ok(message);
        }
    }
}

/// What both typed GPU kernels (`CudaKernel`, `WgpuKernel`) set the same way: the
/// kernel's name and built-in, its rings, ports, emits, batch and parameters.
#[derive(Clone, Debug)]
pub(crate) struct KernelSettings {
    /// The kernel's name (unique in its group).
    pub(crate) name: String,
    /// The built-in it runs, if it runs one.
    pub(crate) builtin: Option<Builtin>,
    /// Slots of each inbox ring.
    pub(crate) capacity: u32,
    /// Slots of the host output ring.
    pub(crate) out_capacity: u32,
    /// Output ports.
    pub(crate) ports: u32,
    /// Most messages emitted per message handled.
    pub(crate) max_emits: u32,
    /// Most messages per batch (CUDA) or tick (wgpu).
    pub(crate) quantum: u32,
    /// The handler's parameter words.
    pub(crate) params: [u32; PARAM_WORDS],
}

impl KernelSettings {
    /// The defaults (inbox and host output of 1,024 slots, one port, up to four emits per
    /// message, `quantum`), with the parameters and ports of `builtin` if there is one.
    pub(crate) fn new(name: String, builtin: Option<Builtin>, quantum: u32) -> Self {
        Self {
            name,
            builtin,
            capacity: 1024,
            out_capacity: 1024,
            ports: builtin.map_or(1, |b| b.ports()),
            max_emits: 4,
            quantum,
            params: builtin.map_or([0; PARAM_WORDS], |b| b.params()),
        }
    }

    /// The input and output slot sizes for a kernel taking `In` and emitting `Out`, after
    /// checking the types against the built-in (`module` as in [`builtin_payloads`]).
    ///
    /// # Errors
    /// As [`builtin_payloads`] and [`slot_for`].
    pub(crate) fn slots<In, Out>(&self, module: &str) -> Result<(u32, u32), Error> {
        let (in_bytes, out_bytes) = match &self.builtin {
            Some(builtin) => builtin_payloads::<In, Out>(&self.name, builtin, module)?,
            None => (std::mem::size_of::<In>(), std::mem::size_of::<Out>()),
        };
        Ok((slot_for::<In>(in_bytes)?, slot_for::<Out>(out_bytes)?))
    }
}

/// Sets the fields of a runtime kernel plan (`KernelPlan`, `WgpuKernelPlan`: the same
/// names) from `KernelSettings` (its name excepted: plans take it in `new`) and the slot
/// sizes `(in, out)`.
macro_rules! apply_settings {
    ($plan:expr, $settings:expr, $slots:expr) => {{
        let plan = &mut $plan;
        let settings = $settings;
        (plan.slot_bytes, plan.out_slot_bytes) = $slots;
        plan.capacity = settings.capacity;
        plan.out_capacity = settings.out_capacity;
        plan.ports = settings.ports;
        plan.max_emits = settings.max_emits;
        plan.quantum = settings.quantum;
        plan.params = settings.params;
    }};
}
pub(crate) use apply_settings;
