//! The examples' device handlers (`gyre_examples::device`) against the examples' CPU
//! closures: the same inputs through both, the outputs compared exactly (floats bit for
//! bit, correlation ids included), on every device backend this build has: the CUDA
//! emulation (feature `cuda`) and wgpu (feature `wgpu`; lavapipe in CI).
//!
//! Everything goes through the one API: the examples' specs carry their CPU closure and
//! their device twins (`DeviceHandler::on`), a runtime on `Backend::Cpu` runs the former
//! and one on a device backend the latter, and `send_with_corr` / `recv_with_corr` carry
//! correlation ids on every backend. Where an example's library runs the whole topology
//! (`sensors::launch_stages`, `fan_out::run`, `scatter_gather::run`,
//! `request_reply::run`), the test runs it on the CPU and on each device and compares;
//! it feeds inputs the examples' own do not have (NaN, ±inf, −0.0, subnormal and huge
//! frames; values that wrap; correlation ids with a high word; partials of hundreds of
//! jobs interleaved).
//!
//! A device backend that cannot start is skipped with a message, except under
//! `cargo xtask ci` (`GYRE_CI=1`) or, for wgpu, with `GYRE_WGPU_ALLOW_SOFTWARE=1`, where
//! that fails.
#![cfg(any(feature = "cuda", feature = "wgpu"))]

#[path = "../../runtime/tests/support/skip.rs"]
mod skip;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use bytemuck::Pod;
use gyre::builtins::Builtin;
use gyre::{Backend, Error, Group, Kernel, KernelSpec, Message, Runtime};
use gyre_examples::device;
use gyre_examples::fan_out;
use gyre_examples::request_reply::{self, Reply, Request, Summed};
use gyre_examples::rng::XorShift64;
use gyre_examples::scatter_gather::{self, Gather, JobResult, Partial, PARTS};
use gyre_examples::sensors::{self, Frame, Stages, Summary, SENSORS, WINDOW};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Workers of the fan-out and scatter/gather runs (the examples' default; device kernels
/// have at most 8 ports).
const WORKERS: u32 = 4;

// ---- Harness ----------------------------------------------------------------------------

/// The device backends this build and machine have (the CUDA emulation with feature
/// `cuda`, wgpu with software adapters allowed with feature `wgpu`), probed once; one
/// that cannot start is skipped, loudly.
fn devices() -> &'static [Backend] {
    static DEVICES: OnceLock<Vec<Backend>> = OnceLock::new();
    DEVICES.get_or_init(|| {
        // (backend, whether it must start here)
        let wanted: &[(Backend, bool)] = &[
            #[cfg(feature = "cuda")]
            (Backend::CudaEmulated, false),
            #[cfg(feature = "wgpu")]
            (
                Backend::WgpuSoftware,
                std::env::var("GYRE_WGPU_ALLOW_SOFTWARE").as_deref() == Ok("1"),
            ),
        ];
        wanted
            .iter()
            .filter(|&&(backend, must_run)| match runtime_on(backend) {
                Ok(runtime) => {
                    let _ = runtime.shutdown(TIMEOUT);
                    true
                }
                Err(e) => {
                    assert!(!must_run, "{backend:?} must run here: {e}");
                    skip::skip(&format!("the device-handler tests on {backend:?}"), &e);
                    false
                }
            })
            .map(|&(backend, _)| backend)
            .collect()
    })
}

/// A runtime on `backend`, as the examples make it.
fn runtime_on(backend: Backend) -> Result<Runtime, Error> {
    gyre_examples::backend::runtime(backend)
}

fn runtime(backend: Backend) -> Runtime {
    runtime_on(backend).unwrap_or_else(|e| panic!("{backend:?}: {e}"))
}

/// Sends `inputs` (message, correlation id) to `input` in order from one sender while a
/// thread receives every host output of `output` with its correlation id; then drains
/// `group` (launched and active) and checks that nothing timed out, faulted, stayed
/// undelivered or went to `runtime`'s dead letters. The outputs, in the order received.
fn stream<In: Message, A: Message, B: Message, Out: Message>(
    runtime: &Runtime,
    group: &Group,
    input: &Kernel<In, A>,
    output: &Kernel<B, Out>,
    inputs: impl IntoIterator<Item = (In, u64)>,
) -> Vec<(Out, u64)> {
    let mut rx = output.receiver().unwrap();
    thread::scope(|scope| {
        let receiver = scope.spawn(move || {
            let mut got = Vec::new();
            loop {
                match rx.recv_with_corr() {
                    Ok(pair) => got.push(pair),
                    Err(Error::Terminated { .. }) => return Ok(got),
                    Err(other) => return Err(other),
                }
            }
        });
        let mut tx = input.exclusive_sender().unwrap();
        let sent = inputs
            .into_iter()
            .try_for_each(|(message, corr)| tx.send_with_corr(message, corr));
        drop(tx);
        // Also after a failed send, so that the receiver ends.
        let report = group.drain(TIMEOUT);
        let got = receiver.join().expect("receiver thread");
        sent.unwrap_or_else(|e| panic!("{}: send: {e}", group.backend()));
        assert!(
            report
                .kernels
                .iter()
                .all(|k| !k.timed_out && k.fault.is_none()),
            "{report:?}"
        );
        assert_eq!(report.undelivered_count(), 0, "{report:?}");
        let letters = runtime.take_dead_letters();
        assert!(letters.is_empty(), "{letters:?}");
        got.unwrap_or_else(|e| panic!("{}: receive: {e}", group.backend()))
    })
}

/// Asserts `got` equals `expected` byte for byte, correlation ids included.
fn assert_same<T: Pod + Debug>(what: &str, got: &[(T, u64)], expected: &[(T, u64)]) {
    assert_eq!(got.len(), expected.len(), "{what}: outputs");
    for (i, ((g, gc), (e, ec))) in got.iter().zip(expected).enumerate() {
        assert!(
            bytemuck::bytes_of(g) == bytemuck::bytes_of(e) && gc == ec,
            "{what}: output {i}: device {g:?} (corr {gc:#x}) vs CPU {e:?} (corr {ec:#x})"
        );
    }
}

// ---- pipeline (examples/src/sensors.rs) -------------------------------------------------

/// Frames like the example's (sensor `i % 16`, an outlier every 97 frames of a sensor),
/// with fractions so that sums and means round, and NaN, ±inf, −0.0, a subnormal and
/// huge negative values (sensor 3's window sums overflow to −inf), which the example's
/// own frames do not have: enough for three full windows of every sensor and a partial
/// fourth.
fn pipeline_frames() -> Vec<Frame> {
    let frames = SENSORS * WINDOW * 3 + 5_000;
    (0..frames)
        .map(|i| {
            let (sensor, seq) = (i % SENSORS, i / SENSORS);
            let raw = match seq % 211 {
                _ if seq.is_multiple_of(97) => 1.0e6,
                13 => f32::NAN,
                29 => f32::INFINITY,
                31 => f32::NEG_INFINITY,
                47 => -0.0,
                53 => 1.0e-40,
                61 if sensor == 3 => -3.0e38, // sensor 3's window sums overflow to -inf
                61 => -1.0e30,
                _ => (sensor * 10 + seq % 50) as f32 + (seq % 7) as f32 * 0.1 - 3.3,
            };
            Frame {
                sensor,
                seq,
                raw,
                pad: i,
            }
        })
        .collect()
}

/// The pipeline with calibrate and filter as gyre built-ins (`Affine { a: 0.5, b: 1.0 }`
/// and `Filter { lo: f32::MIN, hi: 10_000.0 }`, which `examples/src/device.rs` says
/// equal the closures) and aggregate as its device handler: device backends only.
fn builtin_stages(runtime: &Runtime) -> Result<(Group, Stages), Error> {
    let mut g = runtime.group("sensors-builtins");
    let calibrate = g.add(
        KernelSpec::<Frame, Frame>::new("calibrate")
            .no_host_output()
            .builtin(Builtin::Affine { a: 0.5, b: 1.0 }),
    );
    let filter = g.add(
        KernelSpec::<Frame, Frame>::new("filter")
            .no_host_output()
            .builtin(Builtin::Filter {
                lo: f32::MIN,
                hi: 10_000.0,
            }),
    );
    let aggregate =
        g.add(device::PIPELINE_AGGREGATE.on(KernelSpec::<Frame, Summary>::new("aggregate")));
    g.route(calibrate, 0, filter).route(filter, 0, aggregate);
    let group = g.launch()?;
    group.activate()?;
    let stages = (
        group.kernel(calibrate)?,
        group.kernel(filter)?,
        group.kernel(aggregate)?,
    );
    Ok((group, stages))
}

type Launch = fn(&Runtime) -> Result<(Group, Stages), Error>;

/// The summaries (with the correlation id of the frame that filled the window) of
/// `frames`, each sent with its index as correlation id (high word set), through the
/// stages `launch` launches on `runtime`.
fn summaries(runtime: &Runtime, launch: Launch, frames: &[Frame]) -> Vec<(Summary, u64)> {
    let (group, (calibrate, _, aggregate)) = launch(runtime).unwrap();
    let inputs = (0u64..).zip(frames).map(|(i, f)| (*f, i | 7 << 40));
    stream(runtime, &group, &calibrate, &aggregate, inputs)
}

#[test]
fn the_pipeline_gives_the_cpu_summaries_bit_for_bit() {
    let frames = pipeline_frames();
    let expected = summaries(&runtime(Backend::Cpu), sensors::launch_stages, &frames);
    assert_eq!(expected.len(), (SENSORS * 3) as usize);
    for &backend in devices() {
        let runtime = runtime(backend);
        let launches: [(&str, Launch); 2] = [
            ("device handlers", sensors::launch_stages),
            ("built-ins", builtin_stages),
        ];
        for (what, launch) in launches {
            let got = summaries(&runtime, launch, &frames);
            assert_same(&format!("{backend:?}, {what}"), &got, &expected);
        }
    }
}

// ---- fan_out ----------------------------------------------------------------------------

/// The fan-out example on each device, both routings, against its CPU run: every worker
/// gets the CPU's items in the CPU's order (values near `u32::MAX` included, so that the
/// work wraps).
#[test]
fn fan_out_gives_every_worker_the_cpu_items_in_the_cpu_order() {
    let mut input = fan_out::sample_input(3_000, 64, 7);
    for (i, (_, value)) in input.iter_mut().enumerate().step_by(7) {
        *value = u32::MAX - i as u32;
    }
    let cpu = fan_out::run(Backend::Cpu, &input, WORKERS).expect("the CPU fan-out runs");
    for &backend in devices() {
        let got = fan_out::run(backend, &input, WORKERS).expect("the device fan-out runs");
        assert_eq!(got.runs.len(), cpu.runs.len());
        for (run, cpu_run) in got.runs.iter().zip(&cpu.runs) {
            let routing = cpu_run.routing;
            assert_eq!(run.routing, routing);
            assert_eq!(run.undelivered, 0, "{backend:?}: {routing}");
            assert_eq!(run.per_worker.len(), cpu_run.per_worker.len());
            for (w, (g, e)) in run.per_worker.iter().zip(&cpu_run.per_worker).enumerate() {
                assert!(
                    g == e,
                    "{backend:?}: {routing}: worker {w} differs from the CPU's"
                );
            }
        }
    }
}

// ---- scatter_gather ---------------------------------------------------------------------

/// The scatter/gather example on each device (job ids as correlation ids) against its
/// CPU run: every job the CPU's result (all but `in_flight`, which depends on timing on
/// both). Some jobs hold values up to 2^28, so partial sums need all 64 bits.
#[test]
fn scatter_gather_gives_every_job_the_cpu_result() {
    let mut jobs = scatter_gather::sample_jobs(2_000, 5);
    for (j, job) in jobs.iter_mut().enumerate().step_by(97) {
        for (i, v) in job.values.iter_mut().enumerate() {
            *v = (1 << 28) - 1 - (i * j) as u32 % 4096;
        }
    }
    let results = |outcome: &scatter_gather::Outcome| -> BTreeMap<u64, [u64; 4]> {
        assert_eq!(outcome.undelivered, 0);
        let strip = |r: &JobResult| {
            [
                r.sum_squares,
                r.max.into(),
                r.parts.into(),
                r.workers.into(),
            ]
        };
        outcome
            .results
            .iter()
            .map(|(id, r)| (*id, strip(r)))
            .collect()
    };
    let expected = results(&scatter_gather::run(Backend::Cpu, &jobs, WORKERS).unwrap());
    assert_eq!(expected.len(), jobs.len());
    for &backend in devices() {
        let got = scatter_gather::run(backend, &jobs, WORKERS).expect("the device run");
        assert_eq!(got.results.len(), jobs.len(), "{backend:?}");
        assert!(results(&got) == expected, "{backend:?}: results differ");
    }
}

/// A reproducible order of partials for the gather alone: `jobs` jobs, their parts
/// interleaved over a sliding window of about 300 jobs, so up to a few hundred jobs are
/// pending at once and they complete out of order. Each is (partial, job id).
fn gather_inputs(jobs: u64) -> Vec<(Partial, u64)> {
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
        let partial = Partial {
            sum_squares: u64::from(rng.below(1 << 20)).pow(2) * 3 + job,
            max: rng.below(1 << 20),
            part,
            parts: PARTS as u32,
            worker: (job as u32 + part) % WORKERS,
        };
        out.push((partial, job));
        if part + 1 == PARTS as u32 {
            open.swap_remove(i);
        } else {
            open[i].1 += 1;
        }
    }
    out
}

/// The example's gather alone on `runtime`, fed `inputs` in order: its results with
/// their correlation ids, in order.
fn gather(runtime: &Runtime, inputs: &[(Partial, u64)]) -> Vec<(JobResult, u64)> {
    let mut g = runtime.group("gather");
    let stage = g.add(
        device::SCATTER_GATHER_GATHER
            .on(KernelSpec::<Partial, JobResult>::new("gather"))
            .capacity(4096)
            .cpu({
                let mut gather = Gather::default();
                move |partial, out| gather.handle(partial, out)
            }),
    );
    let group = g.launch().unwrap();
    group.activate().unwrap();
    let kernel = group.kernel(stage).unwrap();
    stream(runtime, &group, &kernel, &kernel, inputs.iter().copied())
}

/// The gather alone, fed the same interleaved partials in the same order on the CPU and
/// on each device: the same results in the same order, `in_flight` included.
#[test]
fn gather_alone_matches_the_cpu_gather_exactly() {
    let inputs = gather_inputs(2_000);
    let expected = gather(&runtime(Backend::Cpu), &inputs);
    assert_eq!(expected.len(), inputs.len() / PARTS);
    assert!(
        expected.iter().any(|(r, _)| r.in_flight > 100),
        "many jobs pending at once"
    );
    for &backend in devices() {
        let got = gather(&runtime(backend), &inputs);
        assert_same(&format!("{backend:?}"), &got, &expected);
    }
}

// ---- request_reply ----------------------------------------------------------------------

/// add → multiply on each device: every reply carries its request's correlation id (high
/// word included) and the CPU example's reply, in request order; and the example itself
/// (its requester matches replies by correlation id) answers like the CPU.
#[test]
fn request_reply_echoes_the_correlation_id_and_the_cpu_reply() {
    let cpu = request_reply::run(Backend::Cpu, 1_500, 500, 2).expect("the CPU run");
    assert_eq!(cpu.mismatches(), 0);
    let replies: BTreeMap<u64, Reply> = cpu
        .async_pairs
        .iter()
        .chain(&cpu.blocking_pairs)
        .map(|(q, r)| (q.id, *r))
        .collect();
    // Correlation ids unlike the request ids, high word included.
    let corr = |id: u64| id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let expected: Vec<(Reply, u64)> = replies.iter().map(|(&id, r)| (*r, corr(id))).collect();
    for &backend in devices() {
        let runtime = runtime(backend);
        let mut g = runtime.group("request-reply");
        let add = g.add(device::REQUEST_REPLY_ADD.on(KernelSpec::<Request, Summed>::new("add")));
        let multiply =
            g.add(device::REQUEST_REPLY_MULTIPLY.on(KernelSpec::<Summed, Reply>::new("multiply")));
        g.route(add, 0, multiply);
        let group = g.launch().unwrap();
        group.activate().unwrap();
        let (add, multiply) = (group.kernel(add).unwrap(), group.kernel(multiply).unwrap());
        let requests = replies
            .keys()
            .map(|&id| (request_reply::request_for(id), corr(id)));
        let got = stream(&runtime, &group, &add, &multiply, requests);
        assert_same(&format!("{backend:?}"), &got, &expected);

        let outcome = request_reply::run(backend, 200, 50, 2).expect("the device run");
        assert_eq!(outcome.mismatches(), 0, "{backend:?}");
        for (q, r) in outcome.async_pairs.iter().chain(&outcome.blocking_pairs) {
            assert_eq!(replies.get(&q.id), Some(r), "{backend:?}: request {}", q.id);
        }
    }
}

// ---- WGSL division ----------------------------------------------------------------------

/// The WGSL aggregate's division (`pipeline_aggregate_div`: WGSL's own `/` may be 2.5 ulp
/// off) against Rust's correctly rounded `x / n as f32`, over normal, subnormal, zero,
/// infinite and extreme dividends and divisors from 1 to 2^24.
#[cfg(feature = "wgpu")]
mod wgsl_division {
    use super::*;

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
            0x7f80_0000, // +inf
            0xff80_0000, // -inf
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
                continue; // a NaN's payload is not compared; infinities are specials
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
        let source = format!("{}{WRAPPER}", device::PIPELINE_AGGREGATE.wgsl);
        let cases = cases();
        for &backend in devices().iter().filter(|&&b| b == Backend::WgpuSoftware) {
            let runtime = runtime(backend);
            let mut g = runtime.group("division");
            // The division loops up to ~50 times per message: a small quantum keeps a
            // tick under lavapipe's loop limit (runtime/docs/WGPU.md).
            let div = g.add(
                KernelSpec::<[u32; 2], u32>::new("div")
                    .wgsl("pipeline_aggregate_div_check", source.as_str())
                    .max_emits(1)
                    .quantum(64),
            );
            let group = g.launch().unwrap();
            group.activate().unwrap();
            let div = group.kernel(div).unwrap();
            let got = stream(
                &runtime,
                &group,
                &div,
                &div,
                (0..).zip(&cases).map(|(i, c)| (*c, i)),
            );
            assert_eq!(got.len(), cases.len(), "one result per case");
            let mut wrong = Vec::new();
            for ((&[x, n], (got, corr)), i) in cases.iter().zip(&got).zip(0u64..) {
                assert_eq!(*corr, i, "results in order");
                let expected = (f32::from_bits(x) / n as f32).to_bits();
                if *got != expected {
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
}

// ---- NVRTC ------------------------------------------------------------------------------

/// The CUDA sources as a GPU compiles them: NVRTC for compute_80 and compute_90, then
/// ptxas for sm_80 and sm_90 (the emulation compiles them with g++, which is not NVRTC).
/// The float handlers' PTX has no fused multiply-add. A compiler check, not an API one:
/// it uses the runtime's NVRTC module directly. Skipped without NVRTC, except when
/// `GYRE_CUDA_TOOLKIT` is set (`cargo xtask ci`).
#[cfg(feature = "cuda")]
mod nvrtc {
    use gyre_examples::device::DeviceHandler;
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
