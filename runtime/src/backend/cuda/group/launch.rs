//! Launching a CUDA group: checking the plan, allocating and initialising the rings and
//! control blocks in mapped memory, compiling the group source and starting the grid.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::abi::{ControlBlock, PortKind, DEAD_LETTER_PREFIX_BYTES};
use crate::backend::cuda::codegen::{self, HandlerCode};
use crate::backend::cuda::device::{Device, DeviceError, DeviceMemory, LaunchShape};
use crate::backend::cuda::plan::{self, KernelDesc, RingRef};
use crate::control::{HostSide, Sides};
use crate::ring::{Consumer, Producer, RawRing};

use super::plans::{invalid, GroupError, GroupPlan};
use super::{
    mapped_ring, round16, Collected, CudaGroup, Edge, HostOutputs, KernelRt, MappedControl, Staging,
};
use crate::backend::device_plan::{check_group, dispatch_cases, launched_control, KernelRings};
use crate::backend::group::{Target, Topology};

impl CudaGroup {
    /// Checks, allocates, compiles and launches a group; its kernels start in state
    /// `Launched` (resident, not processing) and wait for [`CudaGroup::activate_all`].
    ///
    /// # Errors
    /// [`GroupError::Invalid`] for a plan that cannot work (the message says what to
    /// change), [`GroupError::Device`] when allocation, compilation (with the compiler's
    /// log) or the launch fails, or the group does not fit on the device.
    #[allow(clippy::too_many_lines)]
    pub fn launch(
        device: Arc<dyn Device>,
        plan: GroupPlan,
        command_timeout: Duration,
    ) -> Result<Self, GroupError> {
        let group = plan.name.as_str();
        let n = plan.kernels.len();
        let Topology { targets, order, .. } = check_group(
            &plan.kernels,
            &plan.routes,
            "the CUDA backend drains upstream first and cannot drain a cycle; break it or run \
             the group on the CPU backend",
            |k| {
                // The group's threads first (checked with its first kernel), then the
                // kernel's own settings.
                if !(1..=plan::MAX_THREADS).contains(&plan.threads) {
                    return Err(format!(
                        "{} threads per block: use 1 to 256 (CudaGroupBuilder::threads)",
                        plan.threads
                    ));
                }
                if k.quantum > plan.threads {
                    return Err(format!(
                        "kernel `{}`'s quantum {} exceeds the {} threads per block: lower its \
                         quantum, or raise the group's threads (CudaGroupBuilder::threads)",
                        k.name, k.quantum, plan.threads
                    ));
                }
                if k.max_emits == 0 {
                    return Err(format!(
                        "kernel `{}`: max_emits must be at least 1: give it `.max_emits(1)` or more",
                        k.name
                    ));
                }
                Ok(())
            },
        )
        .map_err(|message| invalid(group, message))?;

        // Handlers. A group of built-ins only uses the canonical built-ins module (case
        // `i` is `BUILTIN_FUNCTIONS[i]`), which may be prebuilt; any other group gets one
        // dispatch case per distinct function, compiled for it.
        let builtin_cases: Option<Vec<u32>> = plan
            .kernels
            .iter()
            .map(|k| match &k.handler {
                HandlerCode::Builtin(function) => codegen::BUILTIN_FUNCTIONS
                    .iter()
                    .position(|builtin| builtin == function)
                    .map(|case| case as u32),
                HandlerCode::Source { .. } => None,
            })
            .collect();
        let (module, cases) = if let Some(cases) = builtin_cases {
            (device.compile_builtins()?, cases)
        } else {
            let (handlers, cases) = dispatch_cases(plan.kernels.iter().map(|k| &k.handler));
            let source = codegen::group_source(&handlers, plan.threads);
            (device.compile(&source, &codegen::headers())?, cases)
        };
        let available = device.max_resident_blocks(&module, plan.threads)?;
        if available < n as u32 {
            return Err(DeviceError::DoesNotFit {
                needed: n as u32,
                available,
                threads: plan.threads,
            }
            .into());
        }

        // Memory: control blocks and host rings mapped, routes and state on the device.
        let mut kernels = Vec::with_capacity(n);
        let mut control_addresses = Vec::with_capacity(n);
        let mut host_addresses = Vec::with_capacity(n);
        for (i, k) in plan.kernels.iter().enumerate() {
            let memory = device.alloc_mapped(size_of::<ControlBlock>())?;
            let block = launched_control(i as u32);
            // SAFETY: fresh mapped memory of the block's size and 128-aligned; the device
            // does not run yet.
            #[allow(clippy::cast_ptr_alignment)]
            unsafe {
                memory
                    .host_ptr()
                    .as_ptr()
                    .cast::<ControlBlock>()
                    .write(block);
            }
            control_addresses.push(memory.device_ptr());
            let control = HostSide::new(MappedControl {
                memory,
                sides: Sides::new(),
            })
            .expect("a new block has no host side yet");
            let KernelRings {
                inbox: in_layout,
                outbox: out_layout,
                dead: dead_layout,
            } = k.ring_layouts(64).map_err(|m| invalid(group, m))?;
            let (inbox, inbox_at) = mapped_ring(&*device, in_layout, k.origin)?;
            let (outbox, outbox_at) = mapped_ring(&*device, out_layout, k.origin)?;
            let (dead, dead_at) = mapped_ring(&*device, dead_layout, k.origin)?;
            host_addresses.push((inbox_at, outbox_at, dead_at, out_layout, dead_layout));
            let state = if k.backend.state_bytes > 0 {
                Some(device.alloc_device(k.backend.state_bytes as usize)?)
            } else {
                None
            };
            kernels.push((inbox, outbox, dead, control, state));
        }
        let mut edges = Vec::new();
        let mut descs = vec![<KernelDesc as bytemuck::Zeroable>::zeroed(); n];
        for (i, k) in plan.kernels.iter().enumerate() {
            let (inbox_at, outbox_at, dead_at, out_layout, dead_layout) = host_addresses[i];
            let desc = &mut descs[i];
            desc.control = control_addresses[i];
            desc.dead_letters = dead_at;
            desc.handler = cases[i];
            desc.kernel_id = i as u32;
            desc.n_ports = k.ports;
            desc.quantum = if k.quantum == 0 {
                plan.threads
            } else {
                k.quantum
            };
            desc.max_emits = k.max_emits;
            desc.flags = if k.backend.sequential {
                plan::FLAG_SEQUENTIAL
            } else {
                0
            };
            desc.params = k.params;
            desc.inbox[0] = RingRef {
                header: inbox_at,
                scope: plan::SCOPE_SYSTEM,
                ..RingRef::default()
            };
            desc.n_inboxes = 1;
            let mut widest = 0u32;
            for (port, target) in targets[i].iter().enumerate() {
                let r = &mut desc.port[port];
                match *target {
                    Target::Host => {
                        *r = RingRef {
                            header: outbox_at,
                            scope: plan::SCOPE_SYSTEM,
                            kind: PortKind::Host as u32,
                            payload_bytes: out_layout.payload_bytes(),
                            ..RingRef::default()
                        };
                    }
                    Target::DeadLetters => {
                        *r = RingRef {
                            header: dead_at,
                            scope: plan::SCOPE_SYSTEM,
                            kind: PortKind::Dead as u32,
                            payload_bytes: dead_layout.payload_bytes() - DEAD_LETTER_PREFIX_BYTES,
                            ..RingRef::default()
                        };
                    }
                    Target::Kernel(to) => {
                        let down = &plan.kernels[to];
                        let edge_layout = down.inbox_layout().map_err(|m| invalid(group, m))?;
                        let memory = device.alloc_device(edge_layout.region_bytes())?;
                        let mut staging = Staging::new(edge_layout.region_bytes());
                        // SAFETY: fresh 128-aligned staging memory of the region's size.
                        let _ = unsafe { RawRing::init(staging.ptr, edge_layout, down.origin) };
                        device.write_device(&memory, 0, staging.bytes_mut())?;
                        *r = RingRef {
                            header: memory.device_ptr(),
                            scope: plan::SCOPE_DEVICE,
                            kind: PortKind::Kernel as u32,
                            peer_control: control_addresses[to],
                            payload_bytes: edge_layout.payload_bytes(),
                            reserved: 0,
                        };
                        edges.push((i, memory, edge_layout, to));
                    }
                }
                widest = widest.max(desc.port[port].payload_bytes);
            }
            desc.record_stride = plan::RECORD_HEADER_BYTES + round16(widest.max(16));
        }
        for (_, memory, _, to) in &edges {
            let desc = &mut descs[*to];
            let slot = desc.n_inboxes as usize;
            desc.inbox[slot] = RingRef {
                header: memory.device_ptr(),
                scope: plan::SCOPE_DEVICE,
                ..RingRef::default()
            };
            desc.n_inboxes += 1;
        }
        let mut runtimes = Vec::with_capacity(n);
        for (i, ((inbox, outbox, dead, control, state), k)) in
            kernels.into_iter().zip(&plan.kernels).enumerate()
        {
            let desc = &mut descs[i];
            let scratch_bytes = plan::SCRATCH_HEADER_BYTES as usize
                + desc.quantum as usize * desc.max_emits as usize * desc.record_stride as usize;
            let scratch = device.alloc_device(scratch_bytes)?;
            desc.scratch = scratch.device_ptr();
            desc.state = state.as_ref().map_or(0, DeviceMemory::device_ptr);
            runtimes.push(KernelRt {
                plan: k.clone(),
                id: i as u32,
                control,
                inbox: Producer::new(inbox).expect("a new mapped ring has no producer yet"),
                outputs: Mutex::new(HostOutputs {
                    ring: Consumer::new(outbox).expect("a new mapped ring has no consumer yet"),
                    queue: VecDeque::new(),
                }),
                dead: Mutex::new(
                    Consumer::new(dead).expect("a new mapped ring has no consumer yet"),
                ),
                _state: state,
                scratch,
                record_stride: desc.record_stride,
                commands: Mutex::new(()),
                measures: crate::backend::group::HostMeasures::default(),
            });
        }
        let table = device.alloc_device(size_of::<KernelDesc>() * n)?;
        device.write_device(&table, 0, bytemuck::cast_slice(&descs))?;
        let running = device.launch(
            &module,
            LaunchShape {
                blocks: n as u32,
                threads: plan.threads,
            },
            table.device_ptr(),
            n as u32,
        )?;
        tracing::info!(group = %plan.name, kernels = n, threads = plan.threads, device = %device.describe(), "launched CUDA group");
        Ok(Self {
            name: plan.name,
            device,
            kernels: runtimes,
            edges: edges
                .into_iter()
                .map(|(_, memory, layout, to)| Edge { to, memory, layout })
                .collect(),
            order,
            descs: Some(table),
            running: Mutex::new(Some(running)),
            collected: Mutex::new(Collected {
                inbox: vec![false; n],
                device: false,
            }),
            fault: Mutex::new(None),
            dead_letters: Mutex::new(Vec::new()),
            command_timeout,
        })
    }
}
