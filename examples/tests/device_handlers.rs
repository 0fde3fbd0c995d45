//! The examples' device handlers (`gyre_examples::device`) against the examples' CPU
//! closures: the same inputs through both, the outputs compared exactly (floats bit for
//! bit), on the CUDA emulation (feature `cuda`) and on a wgpu adapter (feature `wgpu`;
//! lavapipe in CI).
//!
//! Two harnesses, because of what the GPU host API can do today:
//!
//! - the typed one (`Runtime::cuda_group` / `Runtime::wgpu_group` with
//!   `CudaKernel::source` / `WgpuKernel::source`) runs the stages that need no correlation
//!   id: the pipeline, fan-out, and request/reply's values;
//! - the typed GPU handles always send correlation id 0 and drop the one an output carries
//!   (`host-api/src/gpu_handle.rs` sends `[0, 0]`; its receive passes the payload only),
//!   so the stages whose meaning is the correlation id (scatter/gather: the job id picks the
//!   first worker and keys the gather; request/reply: the reply carries the request's id)
//!   run through the runtime's own groups (`gyre_runtime::backend::{cuda, wgpu}`), which
//!   send and receive it.
//!
//! Skipped with a message when the emulation (g++) or an adapter is missing, except
//! under `cargo xtask ci` (`GYRE_CI=1`) or with `GYRE_WGPU_ALLOW_SOFTWARE=1`, where that
//! fails.
#![cfg(any(feature = "cuda", feature = "wgpu"))]

#[path = "../../runtime/tests/support/skip.rs"]
mod skip;

use std::collections::BTreeMap;
use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use gyre::{KernelSpec, Message, Runtime};
use gyre_examples::device::{self, DeviceHandler, PIPELINE_SENSORS, PIPELINE_WINDOW};
use gyre_examples::fan_out::{self, Item, Routing};
use gyre_examples::request_reply::{self, Reply, Request, Summed};
use gyre_examples::rng::XorShift64;
use gyre_examples::scatter_gather::{self, Gather, Job, JobResult, Partial, PARTS};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Workers of the fan-out and scatter/gather runs (the examples' default; GPU kernels
/// have at most 8 ports).
const WORKERS: u32 = 4;

// ---- CPU references ---------------------------------------------------------------------

/// `Frame` of `examples/pipeline.rs` (a binary: its types and closures are copied here).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
struct Frame {
    sensor: u32,
    seq: u32,
    raw: f32,
    _pad: u32,
}

/// `Summary` of `examples/pipeline.rs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Summary {
    sensor: u32,
    count: u32,
    mean: f32,
    max: f32,
}

/// Bit-exact equality of two messages: their bytes.
fn same_bytes<T: Pod>(a: &[T], b: &[T]) -> bool {
    bytemuck::cast_slice::<T, u8>(a) == bytemuck::cast_slice::<T, u8>(b)
}

/// Frames like the example's (sensor `i % 16`, an outlier every 97 frames of a sensor),
/// with fractions so that sums and means round, and a few non-finite values for the
/// filter: enough for three full windows of every sensor and a partial fourth.
fn pipeline_frames() -> Vec<Frame> {
    let sensors = PIPELINE_SENSORS;
    let frames = sensors * PIPELINE_WINDOW * 3 + 5_000;
    (0..frames)
        .map(|i| {
            let (sensor, seq) = (i % sensors, i / sensors);
            let raw = match seq % 211 {
                _ if seq.is_multiple_of(97) => 1.0e6,
                13 => f32::NAN,
                29 => f32::INFINITY,
                31 => f32::NEG_INFINITY,
                47 => -0.0,
                _ => (sensor * 10 + seq % 50) as f32 + (seq % 7) as f32 * 0.1 - 3.3,
            };
            Frame {
                sensor,
                seq,
                raw,
                _pad: i,
            }
        })
        .collect()
}

/// The pipeline's three CPU closures, verbatim from `examples/pipeline.rs`, run as the
/// example runs them: one group, calibrate → filter → aggregate. Returns the summaries.
fn cpu_pipeline(frames: &[Frame]) -> Vec<Summary> {
    const SENSORS: u32 = PIPELINE_SENSORS;
    const WINDOW: u32 = PIPELINE_WINDOW;
    let runtime = Runtime::builder().workers(2).build().unwrap();
    let mut g = runtime.group("sensors");
    let calibrate = g.add(
        KernelSpec::<Frame, Frame>::new("calibrate")
            .capacity(4096)
            .no_host_output()
            .cpu(|f, out| {
                Ok(out.emit(Frame {
                    raw: f.raw * 0.5 + 1.0,
                    ..*f
                })?)
            }),
    );
    let filter = g.add(
        KernelSpec::<Frame, Frame>::new("filter")
            .capacity(4096)
            .no_host_output()
            .cpu(|f, out| {
                if f.raw.is_finite() && f.raw < 10_000.0 {
                    out.emit(*f)?;
                }
                Ok(())
            }),
    );
    let mut windows = vec![(0u32, 0.0f32, f32::MIN); SENSORS as usize];
    let aggregate = g.add(
        KernelSpec::<Frame, Summary>::new("aggregate")
            .capacity(4096)
            .host_output(4096)
            .cpu(move |f, out| {
                let w = &mut windows[(f.sensor % SENSORS) as usize];
                w.0 += 1;
                w.1 += f.raw;
                w.2 = w.2.max(f.raw);
                if w.0 == WINDOW {
                    out.emit(Summary {
                        sensor: f.sensor,
                        count: w.0,
                        mean: w.1 / w.0 as f32,
                        max: w.2,
                    })?;
                    *w = (0, 0.0, f32::MIN);
                }
                Ok(())
            }),
    );
    g.route(calibrate, 0, filter).route(filter, 0, aggregate);
    let group = g.launch().unwrap();
    group.activate().unwrap();
    let (input, output) = (
        group.kernel(calibrate).unwrap(),
        group.kernel(aggregate).unwrap(),
    );
    for frame in frames {
        input.send(*frame).unwrap();
    }
    let report = group.drain(TIMEOUT);
    assert_eq!(report.undelivered_count(), 0);
    let mut summaries = Vec::new();
    while let Ok(Some(s)) = output.try_recv() {
        summaries.push(s);
    }
    let _ = runtime.shutdown(TIMEOUT);
    summaries
}

/// The fan-out example's input (as its test uses).
fn fan_out_input() -> Vec<(u32, u32)> {
    fan_out::sample_input(3_000, 64, 7)
}

/// A reproducible order of partials for the gather alone: `jobs` jobs, their parts
/// interleaved over a sliding window of about 300 jobs, so up to a few hundred jobs are
/// pending at once and they complete out of order. Each is (job id, partial).
fn gather_inputs(jobs: u64) -> Vec<(u64, Partial)> {
    let mut rng = XorShift64::new(11);
    let mut open: Vec<(u64, u32)> = Vec::new(); // (job, parts sent)
    let mut next = 0u64;
    let mut out = Vec::new();
    while next < jobs || !open.is_empty() {
        while next < jobs && open.len() < 300 {
            open.push((next, 0));
            next += 1;
        }
        let i = rng.below(open.len() as u32) as usize;
        let (job, part) = open[i];
        let worker = (job as u32 + part) % WORKERS;
        out.push((
            job,
            Partial {
                sum_squares: u64::from(rng.below(1 << 20)).pow(2) * 3 + job,
                max: rng.below(1 << 20),
                part,
                parts: PARTS as u32,
                worker,
            },
        ));
        if part + 1 == PARTS as u32 {
            open.swap_remove(i);
        } else {
            open[i].1 += 1;
        }
    }
    out
}

/// The example's CPU gather alone, fed `inputs` in order from one sender: its results with
/// their correlation ids, in order.
fn cpu_gather(inputs: &[(u64, Partial)]) -> Vec<(u64, JobResult)> {
    let runtime = Runtime::builder().workers(1).build().unwrap();
    let kernel = runtime
        .launch(
            KernelSpec::<Partial, JobResult>::new("gather")
                .capacity(8192)
                .host_output(8192)
                .cpu({
                    let mut gather = Gather::default();
                    move |partial, out| gather.handle(partial, out)
                }),
        )
        .unwrap();
    kernel.activate().unwrap();
    let mut tx = kernel.exclusive_sender().unwrap();
    for (job, partial) in inputs {
        tx.send_with_corr(*partial, *job).unwrap();
    }
    drop(tx);
    let mut results = Vec::new();
    let mut rx = kernel.receiver().unwrap();
    let expected = inputs.len() / PARTS;
    while results.len() < expected {
        let (result, corr) = rx.recv_with_corr().unwrap();
        results.push((corr, result));
    }
    let _ = runtime.shutdown(TIMEOUT);
    results
}

/// The CPU request/reply example's replies, by request id (async and blocking requests).
fn cpu_replies() -> BTreeMap<u64, Reply> {
    let outcome = request_reply::run(1_500, 500, 2).expect("the CPU request/reply runs");
    assert_eq!(outcome.mismatches(), 0);
    outcome
        .async_pairs
        .iter()
        .chain(&outcome.blocking_pairs)
        .map(|(q, r)| (q.id, *r))
        .collect()
}

// ---- The typed GPU API ------------------------------------------------------------------

/// Tests of one GPU backend through its typed API: `$module` is `cuda` or `wgpu` (the
/// `gyre` module too), `$src` the field of [`DeviceHandler`] with its source, `$stateful`
/// what makes a kernel stateful on it.
macro_rules! typed_suite {
    (
        $module:ident, $feature:literal, $backend:expr, $kernel:ident, $group:ident, $src:ident,
        must_run: $must:expr,
        stateful: |$k:ident, $h:ident| $stateful:expr $(,)?
    ) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;
            use gyre::$module::{Builtin, $kernel};

            /// Whether a backend that cannot start fails the test instead of skipping it.
            fn must_run() -> bool {
                $must
            }

            fn runtime() -> Option<Runtime> {
                match Runtime::builder().backend($backend).workers(1).build() {
                    Ok(runtime) => Some(runtime),
                    Err(e) => {
                        assert!(!must_run(), "this backend must run here: {e}");
                        skip::skip(concat!("the device-handler tests on ", $feature), &e);
                        None
                    }
                }
            }

            /// A kernel running `h`'s source for this backend.
            fn kernel<In: Message, Out: Message>(name: &str, h: &DeviceHandler) -> $kernel<In, Out> {
                $kernel::source(name, h.function, h.$src)
            }

            /// `k` made to run `h`'s state: one message at a time, in order.
            fn stateful<In: Message, Out: Message>(
                $k: $kernel<In, Out>,
                $h: &DeviceHandler,
            ) -> $kernel<In, Out> {
                $stateful
            }

            fn params(words: &[u32]) -> [u32; 16] {
                let mut all = [0u32; 16];
                all[..words.len()].copy_from_slice(words);
                all
            }

            /// The pipeline on the device: calibrate and filter as the device handlers or
            /// as the built-ins, aggregate as its device handler.
            fn device_pipeline(runtime: &Runtime, frames: &[Frame], builtins: bool) -> Vec<Summary> {
                let mut g = runtime.$group("sensors").unwrap();
                let (calibrate, filter) = if builtins {
                    (
                        $kernel::<Frame, Frame>::builtin("calibrate", Builtin::Affine { a: 0.5, b: 1.0 }),
                        $kernel::<Frame, Frame>::builtin(
                            "filter",
                            Builtin::Filter { lo: f32::MIN, hi: 10_000.0 },
                        ),
                    )
                } else {
                    (
                        kernel::<Frame, Frame>("calibrate", &device::PIPELINE_CALIBRATE).max_emits(1),
                        kernel::<Frame, Frame>("filter", &device::PIPELINE_FILTER).max_emits(1),
                    )
                };
                let calibrate = g.add(calibrate.capacity(1024));
                let filter = g.add(filter.capacity(1024));
                let aggregate = g.add(
                    stateful(
                        kernel::<Frame, Summary>("aggregate", &device::PIPELINE_AGGREGATE),
                        &device::PIPELINE_AGGREGATE,
                    )
                    .capacity(1024)
                    .host_output(1024)
                    .max_emits(1),
                );
                g.route(&calibrate, 0, &filter).route(&filter, 0, &aggregate);
                let group = g.launch().unwrap();
                group.activate().unwrap();
                for frame in frames {
                    group.send(&calibrate, *frame).unwrap();
                }
                let report = group.drain(TIMEOUT);
                assert!(!report.timed_out(), "{report:?}");
                assert_eq!(report.undelivered_count(), 0);
                assert!(group.take_dead_letters().is_empty());
                let mut summaries = Vec::new();
                while let Ok(Some(s)) = group.try_recv(&aggregate) {
                    summaries.push(s);
                }
                summaries
            }

            #[test]
            fn the_pipeline_prints_the_cpu_summaries_bit_for_bit() {
                let Some(runtime) = runtime() else { return };
                let frames = pipeline_frames();
                let expected = cpu_pipeline(&frames);
                assert_eq!(expected.len(), (PIPELINE_SENSORS * 3) as usize);
                for builtins in [false, true] {
                    let got = device_pipeline(&runtime, &frames, builtins);
                    assert_eq!(got.len(), expected.len(), "builtins: {builtins}");
                    for (g, e) in got.iter().zip(&expected) {
                        assert!(
                            same_bytes(&[*g], &[*e]),
                            "builtins {builtins}: device {g:?} vs CPU {e:?} (mean bits {:#x} vs {:#x})",
                            g.mean.to_bits(),
                            e.mean.to_bits()
                        );
                    }
                }
            }

            fn device_fan_out(runtime: &Runtime, input: &[(u32, u32)], routing: Routing) -> Vec<Vec<Item>> {
                let mut g = runtime.$group("fan-out").unwrap();
                let router = g.add(
                    kernel::<Item, Item>("router", &device::FAN_OUT_ROUTER)
                        .ports(WORKERS)
                        .max_emits(1)
                        .params(params(&[WORKERS, device::fan_out_routing_word(routing)])),
                );
                let workers: Vec<_> = (0..WORKERS)
                    .map(|w| {
                        let worker = g.add(
                            kernel::<Item, Item>(&format!("worker-{w}"), &device::FAN_OUT_WORKER)
                                .max_emits(1)
                                .host_output(4096)
                                .params(params(&[w])),
                        );
                        g.route(&router, w, &worker);
                        worker
                    })
                    .collect();
                let group = g.launch().unwrap();
                group.activate().unwrap();
                for (seq, &(key, value)) in input.iter().enumerate() {
                    let item = Item { seq: seq as u32, key, value, worker: u32::MAX };
                    group.send(&router, item).unwrap();
                }
                let report = group.drain(TIMEOUT);
                assert!(!report.timed_out(), "{report:?}");
                assert_eq!(report.undelivered_count(), 0);
                workers
                    .iter()
                    .map(|worker| {
                        let mut got = Vec::new();
                        while let Ok(Some(item)) = group.try_recv(worker) {
                            got.push(item);
                        }
                        got
                    })
                    .collect()
            }

            #[test]
            fn fan_out_gives_every_worker_the_cpu_items_in_the_cpu_order() {
                let Some(runtime) = runtime() else { return };
                let input = fan_out_input();
                let cpu = fan_out::run(&input, WORKERS).expect("the CPU fan-out runs");
                for run in &cpu.runs {
                    let got = device_fan_out(&runtime, &input, run.routing);
                    assert_eq!(got.len(), run.per_worker.len());
                    for (w, (g, e)) in got.iter().zip(&run.per_worker).enumerate() {
                        assert_eq!(g, e, "{}: worker {w}", run.routing);
                    }
                }
            }

            #[test]
            fn request_reply_stages_compute_the_cpu_replies() {
                let Some(runtime) = runtime() else { return };
                let expected = cpu_replies();
                let mut g = runtime.$group("request-reply").unwrap();
                let add = g.add(kernel::<Request, Summed>("add", &device::REQUEST_REPLY_ADD).max_emits(1));
                let multiply = g.add(
                    kernel::<Summed, Reply>("multiply", &device::REQUEST_REPLY_MULTIPLY)
                        .max_emits(1)
                        .host_output(4096),
                );
                g.route(&add, 0, &multiply);
                let group = g.launch().unwrap();
                group.activate().unwrap();
                for &id in expected.keys() {
                    group.send(&add, request_reply::request_for(id)).unwrap();
                }
                let report = group.drain(TIMEOUT);
                assert_eq!(report.undelivered_count(), 0);
                let mut got = Vec::new();
                while let Ok(Some(reply)) = group.try_recv(&multiply) {
                    got.push(reply);
                }
                // One stage after another, in order: the replies come in request order.
                let expected: Vec<Reply> = expected.values().copied().collect();
                assert_eq!(got, expected);
            }
        }
    };
}

typed_suite!(
    cuda, "cuda", gyre::Backend::CudaEmulated, CudaKernel, cuda_group, cuda,
    must_run: false,
    stateful: |k, h| k.sequential().state_bytes(h.state_bytes),
);

typed_suite!(
    wgpu, "wgpu", gyre::Backend::WgpuSoftware, WgpuKernel, wgpu_group, wgsl,
    must_run: std::env::var("GYRE_WGPU_ALLOW_SOFTWARE").as_deref() == Ok("1"),
    stateful: |k, h| k.state_words(h.state_words()),
);

// ---- The runtime's groups (correlation ids) ---------------------------------------------

/// One kernel of a raw group: a device handler with its message sizes and settings.
struct RawKernel {
    name: String,
    handler: DeviceHandler,
    in_bytes: usize,
    out_bytes: usize,
    ports: u32,
    max_emits: u32,
    params: [u32; 16],
    capacity: u32,
    out_capacity: u32,
}

impl RawKernel {
    fn new<In: Pod, Out: Pod>(name: impl Into<String>, handler: DeviceHandler) -> Self {
        Self {
            name: name.into(),
            handler,
            in_bytes: size_of::<In>(),
            out_bytes: size_of::<Out>(),
            ports: 1,
            max_emits: 1,
            params: [0; 16],
            capacity: 1024,
            out_capacity: 4096,
        }
    }
}

/// The slot for a payload of `bytes` bytes (as the typed API sizes them).
fn slot(bytes: usize) -> u32 {
    let abi = gyre_runtime::abi::SLOT_HEADER_BYTES as usize;
    (abi + bytes)
        .next_power_of_two()
        .max(gyre_runtime::abi::MIN_SLOT_BYTES as usize) as u32
}

/// A launched group of one backend, with correlation ids.
trait RawGroup {
    fn put(&self, k: usize, payload: &[u8], corr: u64);
    /// Drains the group and hands back every host output of kernel `k`: (corr, payload).
    fn drain_and_take(&self, k: usize) -> Vec<(u64, Vec<u8>)>;
}

fn corr_words(corr: u64) -> [u32; 2] {
    [corr as u32, (corr >> 32) as u32]
}

fn corr_of(words: [u32; 2]) -> u64 {
    u64::from(words[0]) | (u64::from(words[1]) << 32)
}

fn check_report(report: &gyre_runtime::backend::group::GroupReport) {
    assert!(!report.timed_out, "{report:?}");
    assert!(report.fault.is_none(), "{report:?}");
    assert_eq!(report.undelivered_count(), 0);
}

#[cfg(feature = "cuda")]
mod raw_cuda {
    use super::*;
    use gyre_runtime::backend::cuda::codegen::HandlerCode;
    use gyre_runtime::backend::cuda::{CudaGroup, GroupPlan, KernelPlan};
    use gyre_runtime::backend::group::Route;

    pub fn launch(name: &str, kernels: Vec<RawKernel>, routes: Vec<Route>) -> Option<CudaGroup> {
        let device = match gyre_runtime::backend::cuda::emulated_device() {
            Ok(device) => device,
            Err(e) => {
                skip::skip("the device-handler tests on the CUDA emulation", &e);
                return None;
            }
        };
        let kernels = kernels
            .into_iter()
            .map(|k| {
                let h = k.handler;
                let mut plan = KernelPlan::new(
                    k.name,
                    HandlerCode::Source {
                        function: h.function.to_owned(),
                        source: h.cuda.to_owned(),
                        file: format!("{}.cu", h.function),
                    },
                );
                plan.params = k.params;
                plan.sequential = h.state_bytes > 0;
                plan.state_bytes = h.state_bytes;
                plan.capacity = k.capacity;
                plan.slot_bytes = slot(k.in_bytes);
                plan.out_capacity = k.out_capacity;
                plan.out_slot_bytes = slot(k.out_bytes);
                plan.ports = k.ports;
                plan.max_emits = k.max_emits;
                plan
            })
            .collect();
        let plan = GroupPlan {
            name: name.to_owned(),
            kernels,
            routes,
            threads: 32,
        };
        let group = CudaGroup::launch(device, plan, TIMEOUT).unwrap();
        group.activate_all().unwrap();
        Some(group)
    }

    impl RawGroup for CudaGroup {
        fn put(&self, k: usize, payload: &[u8], corr: u64) {
            CudaGroup::send(self, k, payload, corr_words(corr), TIMEOUT).unwrap();
        }

        fn drain_and_take(&self, k: usize) -> Vec<(u64, Vec<u8>)> {
            check_report(&self.drain(TIMEOUT));
            assert!(self.take_dead_letters().is_empty());
            let mut out = Vec::new();
            while let Ok(Some(m)) = self.try_recv(k) {
                out.push((corr_of(m.corr), m.payload));
            }
            out
        }
    }
}

#[cfg(feature = "wgpu")]
mod raw_wgpu {
    use std::sync::Arc;

    use super::*;
    use gyre_runtime::backend::group::Route;
    use gyre_runtime::backend::wgpu::adapter::{self, AdapterChoice};
    use gyre_runtime::backend::wgpu::codegen::WgslHandler;
    use gyre_runtime::backend::wgpu::group::{WgpuGroup, WgpuGroupPlan, WgpuKernelPlan};

    pub fn launch(name: &str, kernels: Vec<RawKernel>, routes: Vec<Route>) -> Option<WgpuGroup> {
        let gpu = match adapter::open(AdapterChoice::AllowSoftware) {
            Ok(gpu) => Arc::new(gpu),
            Err(e) => {
                assert!(
                    std::env::var("GYRE_WGPU_ALLOW_SOFTWARE").as_deref() != Ok("1"),
                    "GYRE_WGPU_ALLOW_SOFTWARE=1 but no wgpu adapter opened: {e}"
                );
                skip::skip("the device-handler tests on wgpu", &e);
                return None;
            }
        };
        let kernels = kernels
            .into_iter()
            .map(|k| {
                let h = k.handler;
                let mut plan = WgpuKernelPlan::new(
                    k.name,
                    WgslHandler::Source {
                        function: h.function.to_owned(),
                        source: h.wgsl.to_owned(),
                        file: format!("{}.wgsl", h.function),
                    },
                );
                plan.params = k.params;
                plan.state_words = h.state_words();
                plan.capacity = k.capacity;
                plan.slot_bytes = slot(k.in_bytes);
                plan.out_capacity = k.out_capacity;
                plan.out_slot_bytes = slot(k.out_bytes);
                plan.ports = k.ports;
                plan.max_emits = k.max_emits;
                plan
            })
            .collect();
        let plan = WgpuGroupPlan {
            name: name.to_owned(),
            kernels,
            routes,
        };
        let group = WgpuGroup::launch(gpu, plan, TIMEOUT).unwrap();
        group.activate_all().unwrap();
        Some(group)
    }

    impl RawGroup for WgpuGroup {
        fn put(&self, k: usize, payload: &[u8], corr: u64) {
            WgpuGroup::send(self, k, payload, corr_words(corr), TIMEOUT).unwrap();
        }

        fn drain_and_take(&self, k: usize) -> Vec<(u64, Vec<u8>)> {
            check_report(&self.drain(TIMEOUT));
            assert!(self.take_dead_letters().is_empty());
            let mut out = Vec::new();
            while let Some(m) = self.try_recv(k) {
                out.push((corr_of(m.corr), m.payload));
            }
            out
        }
    }
}

fn read<T: Pod>(payload: &[u8]) -> T {
    bytemuck::pod_read_unaligned(&payload[..size_of::<T>()])
}

/// Tests of one backend through the runtime's groups: `$launch` launches a group of
/// `RawKernel`s with routes.
macro_rules! raw_suite {
    ($module:ident, $feature:literal, $launch:path) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;
            use gyre_runtime::backend::group::{Route, Target};

            fn params(words: &[u32]) -> [u32; 16] {
                let mut all = [0u32; 16];
                all[..words.len()].copy_from_slice(words);
                all
            }

            /// scatter → WORKERS workers → gather, job ids as correlation ids, against the
            /// CPU example's results (all but `in_flight`, which depends on timing on both).
            #[test]
            fn scatter_gather_gives_every_job_the_cpu_result() {
                let jobs = scatter_gather::sample_jobs(2_000, 5);
                let mut kernels = vec![{
                    let mut k = RawKernel::new::<Job, scatter_gather::Chunk>(
                        "scatter",
                        device::SCATTER_GATHER_SCATTER,
                    );
                    k.ports = WORKERS;
                    k.max_emits = PARTS as u32;
                    k.params = params(&[WORKERS]);
                    k
                }];
                let gather = 1 + WORKERS as usize;
                let mut routes = Vec::new();
                for w in 0..WORKERS {
                    let mut k = RawKernel::new::<scatter_gather::Chunk, Partial>(
                        format!("worker-{w}"),
                        device::SCATTER_GATHER_WORKER,
                    );
                    k.params = params(&[w]);
                    kernels.push(k);
                    let index = 1 + w as usize;
                    routes.push(Route {
                        from: 0,
                        port: w,
                        to: Target::Kernel(index),
                    });
                    routes.push(Route {
                        from: index,
                        port: 0,
                        to: Target::Kernel(gather),
                    });
                }
                kernels.push(RawKernel::new::<Partial, JobResult>(
                    "gather",
                    device::SCATTER_GATHER_GATHER,
                ));
                let Some(group) = $launch("scatter-gather", kernels, routes) else {
                    return;
                };
                for (id, job) in jobs.iter().enumerate() {
                    group.put(0, bytemuck::bytes_of(job), id as u64);
                }
                let got = group.drain_and_take(gather);

                let cpu = scatter_gather::run(&jobs, WORKERS).expect("the CPU scatter/gather runs");
                let strip = |r: &JobResult| (r.sum_squares, r.max, r.parts, r.workers);
                let expected: BTreeMap<u64, _> =
                    cpu.results.iter().map(|(id, r)| (*id, strip(r))).collect();
                let got: BTreeMap<u64, _> = got
                    .iter()
                    .map(|(corr, payload)| (*corr, strip(&read::<JobResult>(payload))))
                    .collect();
                assert_eq!(expected.len(), jobs.len());
                assert_eq!(got, expected);
            }

            /// The gather alone, fed the same interleaved partials in the same order as the
            /// CPU's: the same results in the same order, `in_flight` included.
            #[test]
            fn gather_alone_matches_the_cpu_gather_exactly() {
                let inputs = gather_inputs(2_000);
                let mut k =
                    RawKernel::new::<Partial, JobResult>("gather", device::SCATTER_GATHER_GATHER);
                k.capacity = 8192;
                let Some(group) = $launch("gather", vec![k], Vec::new()) else {
                    return;
                };
                for (job, partial) in &inputs {
                    group.put(0, bytemuck::bytes_of(partial), *job);
                }
                let got: Vec<(u64, JobResult)> = group
                    .drain_and_take(0)
                    .iter()
                    .map(|(corr, payload)| (*corr, read::<JobResult>(payload)))
                    .collect();
                let expected = cpu_gather(&inputs);
                assert!(
                    expected.iter().any(|(_, r)| r.in_flight > 100),
                    "many jobs pending at once"
                );
                assert_eq!(got.len(), expected.len());
                for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                    assert_eq!(g, e, "result {i}");
                }
            }

            /// add → multiply: every reply carries its request's correlation id and the
            /// CPU example's reply.
            #[test]
            fn request_reply_echoes_the_correlation_id() {
                let expected = cpu_replies();
                let mut add = RawKernel::new::<Request, Summed>("add", device::REQUEST_REPLY_ADD);
                add.out_capacity = 1024;
                let multiply =
                    RawKernel::new::<Summed, Reply>("multiply", device::REQUEST_REPLY_MULTIPLY);
                let routes = vec![Route {
                    from: 0,
                    port: 0,
                    to: Target::Kernel(1),
                }];
                let Some(group) = $launch("request-reply", vec![add, multiply], routes) else {
                    return;
                };
                // Correlation ids unlike the request ids, high word included.
                let corr = |id: u64| id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for &id in expected.keys() {
                    group.put(
                        0,
                        bytemuck::bytes_of(&request_reply::request_for(id)),
                        corr(id),
                    );
                }
                let got = group.drain_and_take(1);
                assert_eq!(got.len(), expected.len());
                for ((c, payload), (&id, reply)) in got.iter().zip(&expected) {
                    assert_eq!(*c, corr(id), "request {id}");
                    assert_eq!(read::<Reply>(payload), *reply, "request {id}");
                }
            }
        }
    };
}

raw_suite!(raw_cuda_tests, "cuda", raw_cuda::launch);

raw_suite!(raw_wgpu_tests, "wgpu", raw_wgpu::launch);

/// The WGSL aggregate's division (`pipeline_aggregate_div`: WGSL's own `/` may be 2.5 ulp
/// off) against Rust's correctly rounded `x / n as f32`, over normal, subnormal, zero and
/// extreme dividends and divisors from 1 to 2^24.
#[cfg(feature = "wgpu")]
mod wgsl_division {
    use super::*;
    use gyre::wgpu::WgpuKernel;

    const WRAPPER: &str = "
fn pipeline_aggregate_div_check(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    var out: GyreMsg;
    out.w[0] = pipeline_aggregate_div((*msg).w[0], (*msg).w[1]);
    return gyre_emit(ctx, 0u, &out, 4u);
}
";

    fn cases() -> Vec<[u32; 2]> {
        let mut rng = XorShift64::new(3);
        let specials = [
            0u32,
            0x8000_0000,
            1,
            0x8000_0001,
            0x007f_ffff,
            0x0080_0000,
            0x3f80_0000,
            0x7f7f_ffff,
            0xff7f_ffff,
            0x4183_d97f,
            0x0000_0003,
            0x0040_0000,
        ];
        let divisors = [
            1u32,
            2,
            3,
            7,
            10,
            999,
            1000,
            1001,
            4096,
            1 << 24,
            (1 << 24) - 1,
        ];
        let mut cases: Vec<[u32; 2]> = specials
            .iter()
            .flat_map(|&x| divisors.iter().map(move |&n| [x, n]))
            .collect();
        while cases.len() < 6_000 {
            let x = rng.next_u64() as u32;
            if (x >> 23) & 0xff == 0xff {
                continue; // not finite: outside the helper's domain
            }
            let n = match rng.below(3) {
                0 => 1000,
                1 => 1 + rng.below(2000),
                _ => 1 + rng.below(1 << 24),
            };
            cases.push([x, n]);
        }
        cases
    }

    #[test]
    fn the_wgsl_division_is_correctly_rounded() {
        let runtime = match Runtime::builder()
            .backend(gyre::Backend::WgpuSoftware)
            .workers(1)
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                assert!(
                    std::env::var("GYRE_WGPU_ALLOW_SOFTWARE").as_deref() != Ok("1"),
                    "GYRE_WGPU_ALLOW_SOFTWARE=1 but no wgpu adapter opened: {e}"
                );
                skip::skip("the WGSL division test", &e);
                return;
            }
        };
        let source = format!("{}{WRAPPER}", device::PIPELINE_AGGREGATE.wgsl);
        let mut g = runtime.wgpu_group("division").unwrap();
        // The division loops up to ~50 times per message: a small quantum keeps a tick
        // under lavapipe's loop limit (runtime/docs/WGPU.md).
        let div = g.add(
            WgpuKernel::<[u32; 2], u32>::source("div", "pipeline_aggregate_div_check", source)
                .max_emits(1)
                .quantum(64)
                .host_output(8192),
        );
        let group = g.launch().unwrap();
        group.activate().unwrap();
        let cases = cases();
        for case in &cases {
            group.send(&div, *case).unwrap();
        }
        let report = group.drain(TIMEOUT);
        assert_eq!(report.undelivered_count(), 0);
        let mut wrong = Vec::new();
        for &[x, n] in &cases {
            let got = group.try_recv(&div).unwrap().expect("one result per case");
            let expected = (f32::from_bits(x) / n as f32).to_bits();
            if got != expected {
                wrong.push(format!(
                    "{x:#010x} / {n}: {got:#010x}, expected {expected:#010x}"
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} wrong: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
    }
}

/// The CUDA sources as a GPU compiles them: NVRTC for compute_80 and compute_90, then
/// ptxas for sm_80 and sm_90 (the emulation compiles them with g++, which is not NVRTC).
/// The float handlers' PTX has no fused multiply-add. Skipped without NVRTC, except when
/// `GYRE_CUDA_TOOLKIT` is set (`cargo xtask ci`).
#[cfg(feature = "cuda")]
mod nvrtc {
    use gyre_runtime::backend::cuda::codegen::{self, HandlerCode};
    use gyre_runtime::backend::cuda::{nvrtc, probe};

    use super::*;

    const ALL: [DeviceHandler; 10] = [
        device::PIPELINE_CALIBRATE,
        device::PIPELINE_FILTER,
        device::PIPELINE_AGGREGATE,
        device::FAN_OUT_ROUTER,
        device::FAN_OUT_WORKER,
        device::SCATTER_GATHER_SCATTER,
        device::SCATTER_GATHER_WORKER,
        device::SCATTER_GATHER_GATHER,
        device::REQUEST_REPLY_ADD,
        device::REQUEST_REPLY_MULTIPLY,
    ];

    fn code(h: &DeviceHandler) -> HandlerCode {
        HandlerCode::Source {
            function: h.function.to_owned(),
            source: h.cuda.to_owned(),
            file: format!("{}.cu", h.function),
        }
    }

    #[test]
    fn every_cuda_handler_compiles_with_nvrtc_and_ptxas() {
        if let Err(e) = probe::load_nvrtc() {
            assert!(
                std::env::var_os("GYRE_CUDA_TOOLKIT").is_none(),
                "GYRE_CUDA_TOOLKIT is set but NVRTC cannot be loaded: {e}"
            );
            skip::skip("the NVRTC compile of the device handlers", &e);
            return;
        }
        let headers = codegen::headers();
        let all = codegen::group_source(&ALL.iter().map(code).collect::<Vec<_>>(), 256);
        let floats = codegen::group_source(
            &[
                code(&device::PIPELINE_CALIBRATE),
                code(&device::PIPELINE_FILTER),
                code(&device::PIPELINE_AGGREGATE),
            ],
            256,
        );
        for (arch, sm) in [("compute_80", "sm_80"), ("compute_90", "sm_90")] {
            let compiled = nvrtc::compile_ptx(&all, "group.cu", &headers, arch, &[])
                .unwrap_or_else(|e| panic!("{arch}: {e}"));
            nvrtc::ptxas(&compiled.ptx, sm).unwrap_or_else(|e| panic!("ptxas {sm}: {e}"));
            let compiled = nvrtc::compile_ptx(&floats, "group.cu", &headers, arch, &[])
                .unwrap_or_else(|e| panic!("{arch}: {e}"));
            assert!(
                !compiled.ptx.contains("fma."),
                "{arch}: the pipeline's float handlers must not fuse a multiply and an add"
            );
            assert!(
                compiled.ptx.contains("div.rn.f32"),
                "{arch}: the mean is a correctly rounded division"
            );
        }
    }
}
