//! Launching a wgpu group: checking the plan, laying out the group buffer, creating the
//! pipelines, and starting the ticker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::plan::{invalid, quantum_under_loop_limit, WgpuError, WgpuGroupPlan};
use super::{
    Copy, Cursors, Edge, Engine, Inner, KernelRt, WgpuGroup, DESC_WORDS, D_CONTROL, D_DEAD,
    D_FLAGS, D_HANDLER, D_INBOX, D_KERNEL_ID, D_MAX_EMITS, D_N_INBOXES, D_N_PORTS, D_PARAMS,
    D_PORT, D_QUANTUM, D_SCRATCH, D_STAGE, D_STATE, D_STATE_WORDS, NONE, RECORD_HEADER_WORDS,
    WORKGROUP,
};
use crate::abi::{
    ControlBlock, PortKind, ABI_VERSION, DEAD_LETTER_PREFIX_BYTES, LINE_BYTES, RING_HEADER_BYTES,
    SLOT_HEADER_BYTES,
};
use crate::backend::device_plan::{check_group, dispatch_cases, launched_control, KernelRings};
use crate::backend::group::{Target, Topology};
use crate::backend::wgpu::adapter::GpuContext;
use crate::backend::wgpu::codegen;
use crate::control::{HostControl, HostSide};
use crate::ring::{HostRing, Producer, RingLayout, RingMemory};
use crate::wait::Signal;

/// A bump allocator of byte offsets in the group buffer.
struct Layout {
    bytes: u64,
}

impl Layout {
    fn take(&mut self, bytes: u64) -> u64 {
        let at = self.bytes.next_multiple_of(u64::from(LINE_BYTES) * 2);
        self.bytes = at + bytes;
        at
    }
}

impl WgpuGroup {
    /// Checks, validates, allocates and starts a group: its kernels start `Launched`
    /// (resident, not processing) and its ticker thread waits for work.
    ///
    /// # Errors
    /// [`WgpuError::Invalid`] for a plan that cannot work, [`WgpuError::Shader`] for WGSL
    /// that does not validate (naming the file and line), [`WgpuError::Device`] when the
    /// device refuses.
    #[allow(clippy::too_many_lines)]
    #[allow(clippy::needless_pass_by_value)] // the group keeps a clone; callers hand theirs over
    pub fn launch(
        gpu: Arc<GpuContext>,
        plan: WgpuGroupPlan,
        command_timeout: Duration,
    ) -> Result<Self, WgpuError> {
        let group = plan.name.as_str();
        let n = plan.kernels.len();
        let Topology {
            targets,
            edges: graph,
            order,
        } = check_group(
            &plan.kernels,
            &plan.routes,
            "a tick runs kernels in topological order, so the wgpu backend cannot run a cycle; \
             break it or use the CPU backend",
            |k| {
                if k.max_emits == 0 || k.quantum == 0 {
                    return Err(format!(
                        "kernel `{}`: max_emits and quantum must be at least 1: give it \
                         `.max_emits(n)` and `.quantum(n)` with n of 1 or more",
                        k.name
                    ));
                }
                Ok(())
            },
        )
        .map_err(|message| invalid(group, message))?;
        // A kernel takes a message only when each output ring has room for all the emits
        // it may make (no emit is ever half done): a ring smaller than that would stall it
        // for good.
        for (i, k) in plan.kernels.iter().enumerate() {
            let mut rings = vec![("its host outbox".to_owned(), k.out_capacity)];
            for &(from, to) in &graph {
                if from == i {
                    rings.push((
                        format!("the inbox of `{}`", plan.kernels[to].name),
                        plan.kernels[to].capacity,
                    ));
                }
            }
            if let Some((what, capacity)) = rings.into_iter().find(|&(_, c)| c < k.max_emits) {
                return Err(invalid(
                    group,
                    format!(
                        "kernel `{}` may emit {} messages per message but {what} holds {capacity}: \
                         raise that capacity or lower max_emits",
                        k.name, k.max_emits
                    ),
                ));
            }
        }

        // Layout: control blocks first (one copy), then each kernel's rings and state.
        let mut layout = Layout { bytes: 0 };
        let controls = layout.take(size_of::<ControlBlock>() as u64 * n as u64);
        let mut kernels = Vec::with_capacity(n);
        let mut msg_words = 12u32;
        let mut copies = vec![Copy {
            src: controls,
            dst: 0,
            len: size_of::<ControlBlock>() as u64 * n as u64,
        }];
        let mut staging = copies[0].len;
        let mut stage = |copies: &mut Vec<Copy>, src: u64, len: u64| {
            let dst = staging.next_multiple_of(8);
            staging = dst + len;
            copies.push(Copy { src, dst, len });
            dst
        };
        let mut states = Vec::with_capacity(n);
        for (i, k) in plan.kernels.iter().enumerate() {
            let KernelRings {
                inbox: in_layout,
                outbox: out_layout,
                dead: dead_layout,
            } = k
                .ring_layouts(64.max((k.max_emits + 1).next_power_of_two()))
                .map_err(|m| invalid(group, m))?;
            msg_words = msg_words.max(dead_layout.payload_bytes() / 4);
            let at_inbox = layout.take(in_layout.region_bytes() as u64);
            let at_outbox = layout.take(out_layout.region_bytes() as u64);
            let at_dead = layout.take(dead_layout.region_bytes() as u64);
            let at_state = layout.take(u64::from(k.backend.state_words.max(1)) * 4);
            // Scratch: the round-robin cursor, then one emit count per invocation.
            let at_scratch = layout.take(4 * (8 + u64::from(WORKGROUP)));
            states.push((at_state, at_scratch));
            let st_inbox_header = stage(&mut copies, at_inbox, u64::from(RING_HEADER_BYTES));
            let st_outbox = stage(&mut copies, at_outbox, out_layout.region_bytes() as u64);
            let st_dead = stage(&mut copies, at_dead, dead_layout.region_bytes() as u64);
            let mirror = HostControl::new(i as u32);
            // The host outbox: the ticker produces into it, receivers consume.
            let (outbox_tx, outbox) = HostRing::with_origin(out_layout, 0).split();
            kernels.push(KernelRt {
                plan: k.clone(),
                id: i as u32,
                control: HostSide::new(mirror).expect("a new block has no host side yet"),
                inbox: Producer::new(Arc::new(HostRing::with_origin(in_layout, k.origin)))
                    .expect("a new ring has no producer yet"),
                outbox_tx,
                outbox: Mutex::new(outbox),
                overflow: Mutex::new(VecDeque::new()),
                outbox_full: AtomicBool::new(false),
                measures: crate::backend::group::HostMeasures::default(),
                commands: Mutex::new(()),
                at_control: controls + size_of::<ControlBlock>() as u64 * i as u64,
                at_inbox,
                at_outbox,
                at_dead,
                in_layout,
                out_layout,
                dead_layout,
                st_control: size_of::<ControlBlock>() as u64 * i as u64,
                st_inbox_header,
                st_outbox,
                st_dead,
            });
        }
        let mut edges = Vec::new();
        for (i, _) in plan.kernels.iter().enumerate() {
            for (port, target) in targets[i].iter().enumerate() {
                if let Target::Kernel(to) = *target {
                    let down = &plan.kernels[to];
                    let edge_layout = down.inbox_layout().map_err(|m| invalid(group, m))?;
                    msg_words = msg_words.max(edge_layout.payload_bytes() / 4);
                    let at = layout.take(edge_layout.region_bytes() as u64);
                    let st_header = stage(&mut copies, at, u64::from(RING_HEADER_BYTES));
                    edges.push((
                        i,
                        port,
                        to,
                        Edge {
                            to,
                            at,
                            layout: edge_layout,
                            st_header,
                        },
                    ));
                }
            }
        }
        for k in &kernels {
            msg_words = msg_words
                .max(k.in_layout.payload_bytes() / 4)
                .max(k.out_layout.payload_bytes() / 4);
        }
        // Staging records of parallel kernels: a batch's emits before they get positions.
        let stages: Vec<u64> = kernels
            .iter()
            .map(|k| {
                if k.plan.backend.parallel {
                    layout.take(
                        4 * u64::from(WORKGROUP)
                            * u64::from(k.plan.max_emits)
                            * u64::from(RECORD_HEADER_WORDS + msg_words),
                    )
                } else {
                    0
                }
            })
            .collect();
        // On an adapter whose driver cuts loops short past a number of iterations per
        // invocation (lavapipe), each kernel's quantum is lowered to what fits under it.
        if let Some(limit) = gpu.loop_limit() {
            for (i, k) in kernels.iter_mut().enumerate() {
                let words = |payload: u32| (payload / 4).min(msg_words);
                let w_in = words(k.in_layout.payload_bytes());
                let w_out = targets[i]
                    .iter()
                    .map(|t| match *t {
                        Target::Kernel(to) => {
                            words(plan.kernels[to].slot_bytes - SLOT_HEADER_BYTES)
                        }
                        Target::Host => words(k.out_layout.payload_bytes()),
                        Target::DeadLetters => words(k.dead_layout.payload_bytes()),
                    })
                    .max()
                    .unwrap_or(0)
                    .max(words(k.dead_layout.payload_bytes()));
                let most = quantum_under_loop_limit(&k.plan, w_in, w_out, limit).ok_or_else(|| {
                    invalid(
                        group,
                        format!(
                            "kernel `{}`: one message of {w_in} words with {} emits of up to {w_out} \
                             words may run more loop iterations than this adapter's driver allows \
                             in one dispatch ({limit}, gallivm): use smaller slots or fewer emits",
                            k.plan.name, k.plan.max_emits
                        ),
                    )
                })?;
                if k.plan.quantum > most {
                    tracing::debug!(group, kernel = %k.plan.name, asked = k.plan.quantum, most, "quantum lowered to the adapter's loop limit");
                    k.plan.quantum = most;
                }
            }
        }
        let total = layout.bytes.next_multiple_of(256);
        let limits = gpu.device.limits();
        if total > limits.max_storage_buffer_binding_size || total > limits.max_buffer_size {
            return Err(invalid(
                group,
                format!(
                    "the group needs {total} bytes of rings and state but this adapter binds at most {} \
                     bytes: use smaller capacities or slots, or split the group",
                    limits.max_storage_buffer_binding_size
                ),
            ));
        }

        // Descriptors.
        let mut desc = vec![0u32; DESC_WORDS * n];
        let word = |byte: u64| (byte / 4) as u32;
        let (handlers, cases) = dispatch_cases(kernels.iter().map(|k| &k.plan.handler));
        for (i, k) in kernels.iter().enumerate() {
            let plan_k = &k.plan;
            let d = &mut desc[i * DESC_WORDS..(i + 1) * DESC_WORDS];
            d[D_CONTROL] = word(k.at_control);
            d[D_HANDLER] = cases[i];
            d[D_KERNEL_ID] = i as u32;
            d[D_N_PORTS] = plan_k.ports;
            d[D_QUANTUM] = plan_k.quantum;
            d[D_MAX_EMITS] = plan_k.max_emits;
            d[D_DEAD] = word(k.at_dead);
            d[D_STATE] = word(states[i].0);
            d[D_STATE_WORDS] = plan_k.backend.state_words;
            d[D_SCRATCH] = word(states[i].1);
            d[D_FLAGS] = u32::from(plan_k.backend.parallel);
            d[D_STAGE] = word(stages[i]);
            d[D_PARAMS..D_PARAMS + 16].copy_from_slice(&plan_k.params);
            d[D_INBOX] = word(k.at_inbox);
            d[D_INBOX + 1] = NONE;
            d[D_N_INBOXES] = 1;
            for (port, target) in targets[i].iter().enumerate() {
                let e = D_PORT + port * 4;
                match *target {
                    Target::Host => {
                        d[e] = word(k.at_outbox);
                        d[e + 1] = PortKind::Host as u32;
                        d[e + 2] = k.out_layout.payload_bytes();
                        d[e + 3] = NONE;
                    }
                    Target::DeadLetters => {
                        d[e] = word(k.at_dead);
                        d[e + 1] = PortKind::Dead as u32;
                        d[e + 2] = k.dead_layout.payload_bytes() - DEAD_LETTER_PREFIX_BYTES;
                        d[e + 3] = NONE;
                    }
                    Target::Kernel(_) => {}
                }
            }
        }
        for (from, port, to, edge) in &edges {
            let e = from * DESC_WORDS + D_PORT + port * 4;
            desc[e] = word(edge.at);
            desc[e + 1] = PortKind::Kernel as u32;
            desc[e + 2] = edge.layout.payload_bytes();
            desc[e + 3] = word(kernels[*to].at_control);
            let d = to * DESC_WORDS;
            let slot = desc[d + D_N_INBOXES] as usize;
            desc[d + D_INBOX + slot * 2] = word(edge.at);
            desc[d + D_INBOX + slot * 2 + 1] = word(kernels[*from].at_control);
            desc[d + D_N_INBOXES] += 1;
        }

        // The module: validated with naga first, for errors that name the line.
        let parallel: Vec<bool> = kernels.iter().map(|k| k.plan.backend.parallel).collect();
        let module = codegen::group_module(&handlers, &parallel, msg_words);
        codegen::validate(&module).map_err(WgpuError::Shader)?;
        let device = &gpu.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(group),
            source: wgpu::ShaderSource::Wgsl(module.source.clone().into()),
        });
        // One layout for every kernel's pipeline, so one bind group serves the whole tick.
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let bind_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(group),
            entries: &[storage(0, false), storage(1, true)],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(group),
            bind_group_layouts: &[Some(&bind_layout)],
            immediate_size: 0,
        });
        let pipelines: Vec<wgpu::ComputePipeline> = (0..n)
            .map(|k| {
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&format!("{group}/{}", plan.kernels[k].name)),
                    layout: Some(&pipeline_layout),
                    module: &shader,
                    entry_point: Some(&format!("gyre_kernel_{k}")),
                    compilation_options: wgpu::PipelineCompilationOptions::default(),
                    cache: None,
                })
            })
            .collect();
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(WgpuError::Device(format!(
                "creating the group's pipelines: {error}"
            )));
        }

        // Buffers, initialised on the host: every ring header and stamp, every control
        // block, then one upload.
        let mut image = vec![0u8; total as usize];
        let mut init_ring = |at: u64, layout: RingLayout, origin: u32| {
            let mut ring = HostRing::with_origin(layout, origin);
            let bytes = ring_bytes(&mut ring, layout);
            image[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
        };
        for k in &kernels {
            init_ring(k.at_inbox, k.in_layout, k.plan.origin);
            init_ring(k.at_outbox, k.out_layout, 0);
            init_ring(k.at_dead, k.dead_layout, 0);
        }
        for (_, _, to, edge) in &edges {
            init_ring(edge.at, edge.layout, kernels[*to].plan.origin);
        }
        for k in &kernels {
            let block = launched_control(k.id);
            let at = k.at_control as usize;
            image[at..at + size_of::<ControlBlock>()].copy_from_slice(bytemuck::bytes_of(&block));
        }
        let mem = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("gyre group rings"),
            size: total,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        gpu.queue.write_buffer(&mem, 0, &image);
        let desc_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("gyre group descriptors"),
            size: (desc.len() * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.queue
            .write_buffer(&desc_buf, 0, bytemuck::cast_slice(&desc));
        let staging_bytes = staging.next_multiple_of(8);
        let make_staging = || {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("gyre group readback"),
                size: staging_bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(group),
            layout: &bind_layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: mem.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: desc_buf.as_entire_binding(),
                },
            ],
        });
        let cursors = kernels
            .iter()
            .map(|k| Cursors {
                uploaded: k.plan.origin,
                ..Cursors::default()
            })
            .collect();
        let engine = Engine {
            gpu: Arc::clone(&gpu),
            mem,
            staging: [make_staging(), make_staging()],
            which: 0,
            pipelines,
            bind_group,
            copies,
            cursors,
            ticks: 0,
            fingerprint: 0,
            halted: false,
        };
        let adapter = crate::backend::wgpu::adapter::describe(&gpu.info);
        tracing::info!(group, kernels = n, %adapter, "launched wgpu group (resident state, ticked execution)");
        let inner = Arc::new(Inner {
            name: plan.name,
            kernels,
            edges: edges.into_iter().map(|(_, _, _, e)| e).collect(),
            order,
            engine: Mutex::new(engine),
            work: AtomicBool::new(true),
            wake: Signal::new(),
            ticked: Signal::new(),
            stop: AtomicBool::new(false),
            unbounded: AtomicBool::new(false),
            fault: Mutex::new(None),
            handed_back: Mutex::new(false),
            halted: AtomicBool::new(false),
            dead_letters: Mutex::new(Vec::new()),
            command_timeout,
            adapter,
        });
        // One tick now, with every kernel still Launched (each returns at once): drivers
        // that compile pipelines at first use (lavapipe does) do it here, inside launch,
        // not inside the first command's timeout.
        inner.tick().map_err(WgpuError::Device)?;
        let runner = Arc::clone(&inner);
        let ticker = std::thread::Builder::new()
            .name(format!("gyre-wgpu-{}", inner.name))
            .spawn(move || runner.run())
            .map_err(|e| WgpuError::Device(format!("starting the ticker thread: {e}")))?;
        Ok(Self {
            inner,
            ticker: Some(ticker),
        })
    }
}

/// The bytes of a freshly initialised ring region.
pub(super) fn ring_bytes(ring: &mut HostRing, layout: RingLayout) -> Vec<u8> {
    let mut out = vec![0u8; layout.region_bytes()];
    let header = crate::abi::RingHeader {
        magic: crate::abi::RING_MAGIC,
        abi_version: ABI_VERSION,
        capacity: layout.capacity(),
        slot_bytes: layout.slot_bytes(),
        origin: ring.head().load(Ordering::Relaxed),
        tail: ring.tail().load(Ordering::Relaxed),
        head: ring.head().load(Ordering::Relaxed),
        ..bytemuck::Zeroable::zeroed()
    };
    out[..RING_HEADER_BYTES as usize].copy_from_slice(bytemuck::bytes_of(&header));
    for i in 0..layout.capacity() {
        let at = RING_HEADER_BYTES as usize + i as usize * layout.slot_bytes() as usize;
        out[at..at + 4].copy_from_slice(&ring.stamp(i).load(Ordering::Relaxed).to_ne_bytes());
    }
    out
}
