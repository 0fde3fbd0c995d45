//! What every device backend's group plans share: a kernel's handler, the kernel plan
//! (its rings, ports, emits, batch, parameters, and what only its backend takes), the
//! ring layouts a launch derives from it, the checks every launch makes, and the initial
//! control block. Plain data and checks, no backend code: the CUDA and wgpu backends
//! both build on these, and neither depends on the other.

use crate::abi::{
    ControlBlock, State, ABI_VERSION, CONTROL_MAGIC, DEAD_LETTER_PREFIX_BYTES, MAX_SLOT_BYTES,
    MIN_SLOT_BYTES, SLOT_HEADER_BYTES,
};
use crate::backend::group::{check_topology, Route, Topology};
use crate::builtins::{Builtin, PARAM_WORDS};
use crate::ring::RingLayout;

/// A kernel's handler as a device group's generated code names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DeviceHandler {
    /// A built-in device function, by name
    /// ([`Builtin::cuda_function`](crate::builtins::Builtin::cuda_function)'s: the same
    /// names in `builtins.cuh` and `builtins.wgsl`).
    Builtin(&'static str),
    /// User code in the backend's language defining the function: on CUDA,
    /// `__device__ int FUNCTION(gyre_ctx *ctx, const void *msg, gyre_u32 bytes)`; on
    /// wgpu, `fn FUNCTION(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>,
    /// bytes: u32) -> u32`.
    Source {
        /// The function's name.
        function: String,
        /// The code that defines it (and anything it needs).
        source: String,
        /// A name for compiler messages (`"scale.cu"`, `"scale.wgsl"`): errors name it
        /// and the line.
        file: String,
    },
}

impl DeviceHandler {
    /// The function the group's dispatch calls.
    pub fn function(&self) -> &str {
        match self {
            Self::Builtin(name) => name,
            Self::Source { function, .. } => function,
        }
    }
}

/// What one device backend's kernel plans take beyond the fields every device backend
/// shares ([`DeviceKernelPlan::backend`]).
///
/// Their [`Default`] is a new plan's: a user handler with no state.
pub trait BackendKnobs: Clone + std::fmt::Debug + Default {
    /// The quantum of a new plan.
    const DEFAULT_QUANTUM: u32;

    /// The knobs of a plan running `builtin` (its state, whether it runs in order).
    fn builtin(builtin: &Builtin) -> Self;
}

/// One kernel of a device group plan: what every device backend takes, and in
/// [`DeviceKernelPlan::backend`] what only its backend does (`K`).
#[derive(Clone, Debug)]
pub struct DeviceKernelPlan<K> {
    /// Its name (unique in the group).
    pub name: String,
    /// Its handler.
    pub handler: DeviceHandler,
    /// Handler parameters (`ctx->params` on CUDA, `gyre_param` on wgpu).
    pub params: [u32; PARAM_WORDS],
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
    /// Most messages per batch: on CUDA, 0 means one per thread of the block; on wgpu,
    /// per tick (an adapter with a loop limit, lavapipe, may lower it:
    /// `WgpuGroup::quantum`).
    pub quantum: u32,
    /// Initial cursor value of every ring of this kernel (tests start near `u32::MAX`).
    pub origin: u32,
    /// What only its backend takes.
    pub backend: K,
}

impl<K: BackendKnobs> DeviceKernelPlan<K> {
    /// A kernel with defaults: 1,024-slot rings of 64-byte slots, one port, up to four
    /// emits per message, the backend's default quantum
    /// ([`BackendKnobs::DEFAULT_QUANTUM`]) and knobs (their [`Default`]).
    pub fn new(name: impl Into<String>, handler: DeviceHandler) -> Self {
        Self {
            name: name.into(),
            handler,
            params: [0; PARAM_WORDS],
            capacity: 1024,
            slot_bytes: 64,
            out_capacity: 1024,
            out_slot_bytes: 64,
            ports: 1,
            max_emits: 4,
            quantum: K::DEFAULT_QUANTUM,
            origin: 0,
            backend: K::default(),
        }
    }

    /// A kernel running a built-in, with its parameters, state, ports and slot sizes.
    ///
    /// # Errors
    /// The built-in's own validation message, for parameters out of range.
    pub fn builtin(name: impl Into<String>, builtin: &Builtin) -> Result<Self, String> {
        builtin.validate()?;
        let slot = |payload: u32| {
            (SLOT_HEADER_BYTES + payload)
                .next_power_of_two()
                .max(MIN_SLOT_BYTES)
        };
        let mut plan = Self::new(name, DeviceHandler::Builtin(builtin.cuda_function()));
        plan.params = builtin.params();
        plan.ports = builtin.ports();
        plan.slot_bytes = slot(builtin.input_bytes());
        plan.out_slot_bytes = slot(builtin.output_bytes());
        plan.backend = K::builtin(builtin);
        Ok(plan)
    }
}

impl<K> DeviceKernelPlan<K> {
    /// The layout of each of its inbox rings.
    ///
    /// # Errors
    /// A sentence naming the kernel and what is wrong with the capacity or slot size.
    pub fn inbox_layout(&self) -> Result<RingLayout, String> {
        self.layout("inbox", self.capacity, self.slot_bytes)
    }

    /// The layouts of its host inbox, host outbox and dead-letter ring, the dead-letter
    /// ring holding at least `dead_capacity` slots (and at least its inbox's), each a
    /// message of the larger of the two after a dead-letter prefix. At the largest slot
    /// size the last 16 bytes of such a message do not fit and are cut (documented).
    ///
    /// # Errors
    /// As [`DeviceKernelPlan::inbox_layout`].
    pub fn ring_layouts(&self, dead_capacity: u32) -> Result<KernelRings, String> {
        let inbox = self.inbox_layout()?;
        let outbox = self.layout("host outbox", self.out_capacity, self.out_slot_bytes)?;
        let biggest = inbox.payload_bytes().max(outbox.payload_bytes());
        let dead = self.layout(
            "dead-letter ring",
            self.capacity.max(dead_capacity),
            (SLOT_HEADER_BYTES + DEAD_LETTER_PREFIX_BYTES + biggest)
                .next_power_of_two()
                .min(MAX_SLOT_BYTES),
        )?;
        Ok(KernelRings {
            inbox,
            outbox,
            dead,
        })
    }

    fn layout(&self, what: &str, capacity: u32, slot_bytes: u32) -> Result<RingLayout, String> {
        RingLayout::new(capacity, slot_bytes)
            .map_err(|e| format!("kernel `{}`'s {what}: {e}", self.name))
    }
}

/// The layouts of a kernel's own rings ([`DeviceKernelPlan::ring_layouts`]).
#[derive(Clone, Copy, Debug)]
pub struct KernelRings {
    /// Its host inbox.
    pub inbox: RingLayout,
    /// Its host outbox.
    pub outbox: RingLayout,
    /// Its dead-letter ring.
    pub dead: RingLayout,
}

/// Checks a device group's kernels and routes: at least one kernel, then `check` on each
/// kernel in order (what the backend requires of one), then the topology
/// ([`check_topology`], `cycle_advice` saying what to do about a cycle).
///
/// # Errors
/// The first problem found, as a sentence that says what to change.
pub fn check_group<K>(
    kernels: &[DeviceKernelPlan<K>],
    routes: &[Route],
    cycle_advice: &str,
    mut check: impl FnMut(&DeviceKernelPlan<K>) -> Result<(), String>,
) -> Result<Topology, String> {
    if kernels.is_empty() {
        return Err("a group needs at least one kernel: add one before launching".to_owned());
    }
    for k in kernels {
        check(k)?;
    }
    let shape: Vec<(&str, u32)> = kernels.iter().map(|k| (k.name.as_str(), k.ports)).collect();
    check_topology(&shape, routes, cycle_advice)
}

/// The dispatch case of each handler of `handlers` (one per kernel, in order), and the
/// distinct handlers by case: one case per distinct handler, numbered in order of first
/// use, so kernels running the same handler share its code.
pub fn dispatch_cases<'a>(
    handlers: impl IntoIterator<Item = &'a DeviceHandler>,
) -> (Vec<DeviceHandler>, Vec<u32>) {
    let mut distinct: Vec<DeviceHandler> = Vec::new();
    let cases = handlers
        .into_iter()
        .map(|handler| {
            let case = distinct
                .iter()
                .position(|h| h == handler)
                .unwrap_or_else(|| {
                    distinct.push(handler.clone());
                    distinct.len() - 1
                });
            case as u32
        })
        .collect();
    (distinct, cases)
}

/// Kernel `kernel_id`'s control block at launch: resident, not processing
/// ([`State::Launched`]), no command issued.
pub fn launched_control(kernel_id: u32) -> ControlBlock {
    ControlBlock {
        magic: CONTROL_MAGIC,
        abi_version: ABI_VERSION,
        kernel_id,
        state: State::Launched as u32,
        ..bytemuck::Zeroable::zeroed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::group::Target;

    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    struct Knobs(bool);

    impl BackendKnobs for Knobs {
        const DEFAULT_QUANTUM: u32 = 7;

        fn builtin(builtin: &Builtin) -> Self {
            Self(builtin.sequential())
        }
    }

    fn plan(name: &str) -> DeviceKernelPlan<Knobs> {
        DeviceKernelPlan::new(name, DeviceHandler::Builtin("f"))
    }

    #[test]
    fn a_builtin_plan_takes_its_slots_ports_and_knobs() {
        let p = DeviceKernelPlan::<Knobs>::builtin("s", &Builtin::Scatter { ports: 3 }).unwrap();
        assert_eq!(p.ports, 3);
        assert_eq!(p.quantum, 7);
        assert_eq!(p.backend, Knobs(Builtin::Scatter { ports: 3 }.sequential()));
        assert!(p.slot_bytes >= MIN_SLOT_BYTES && p.slot_bytes.is_power_of_two());
    }

    #[test]
    fn the_dead_letter_ring_holds_a_prefixed_message_and_the_asked_capacity() {
        let mut p = plan("k");
        p.capacity = 16;
        let rings = p.ring_layouts(64).unwrap();
        assert_eq!(rings.dead.capacity(), 64);
        assert!(
            rings.dead.payload_bytes() >= rings.inbox.payload_bytes() + DEAD_LETTER_PREFIX_BYTES
        );
        p.capacity = 3;
        let err = p.ring_layouts(64).unwrap_err();
        assert!(err.starts_with("kernel `k`'s inbox: "), "{err}");
    }

    #[test]
    fn kernels_running_one_handler_share_its_case() {
        let source = |f: &str| DeviceHandler::Source {
            function: f.to_owned(),
            source: String::new(),
            file: format!("{f}.cu"),
        };
        let kernels = [
            source("a"),
            DeviceHandler::Builtin("b"),
            source("a"),
            source("c"),
        ];
        let (distinct, cases) = dispatch_cases(&kernels);
        assert_eq!(cases, [0, 1, 0, 2]);
        assert_eq!(
            distinct,
            [source("a"), DeviceHandler::Builtin("b"), source("c")]
        );
    }

    #[test]
    fn a_group_is_checked_empty_then_per_kernel_then_topology() {
        let none: &[DeviceKernelPlan<Knobs>] = &[];
        let err = check_group(none, &[], "", |_| Ok(())).unwrap_err();
        assert!(err.contains("at least one kernel"), "{err}");
        let two = [plan("a"), plan("a")];
        let err = check_group(&two, &[], "", |k| Err(format!("no {}", k.name))).unwrap_err();
        assert_eq!(err, "no a");
        let err = check_group(&two, &[], "", |_| Ok(())).unwrap_err();
        assert!(err.contains("two kernels are named `a`"), "{err}");
        let chain = [plan("a"), plan("b")];
        let route = Route {
            from: 0,
            port: 0,
            to: Target::Kernel(1),
        };
        let topology = check_group(&chain, &[route], "", |_| Ok(())).unwrap();
        assert_eq!(topology.order, [0, 1]);
    }
}
