//! What planning a kernel for any device backend shares: slot sizes from message types,
//! the type checks of built-ins, and the kernel settings every device plan takes.

#![cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(unused))]

use gyre_runtime::abi::{MAX_SLOT_BYTES, MIN_SLOT_BYTES, PAYLOAD_ALIGN, SLOT_HEADER_BYTES};
use gyre_runtime::backend::device_plan::DeviceKernelPlan;
use gyre_runtime::builtins::{Builtin, PARAM_WORDS};

use crate::Error;

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

/// What every device plan sets the same way: the kernel's name and built-in, its rings,
/// ports, emits, batch and parameters.
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
    /// message, `quantum`), with the parameters and ports of `builtin` if there is one
    /// (and one emit per message: no built-in emits more).
    pub(crate) fn new(name: String, builtin: Option<Builtin>, quantum: u32) -> Self {
        Self {
            name,
            builtin,
            capacity: 1024,
            out_capacity: 1024,
            ports: builtin.map_or(1, |b| b.ports()),
            max_emits: if builtin.is_some() { 1 } else { 4 },
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

    /// Sets these settings (the name excepted: plans take it in `new`) and the slot
    /// sizes `(in, out)` on a device backend's kernel plan.
    pub(crate) fn apply<K>(&self, plan: &mut DeviceKernelPlan<K>, (slot_in, slot_out): (u32, u32)) {
        (plan.slot_bytes, plan.out_slot_bytes) = (slot_in, slot_out);
        plan.capacity = self.capacity;
        plan.out_capacity = self.out_capacity;
        plan.ports = self.ports;
        plan.max_emits = self.max_emits;
        plan.quantum = self.quantum;
        plan.params = self.params;
    }
}
