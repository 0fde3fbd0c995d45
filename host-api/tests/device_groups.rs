//! Groups on every device backend this build has, through the one API: the CUDA
//! emulation (feature `cuda`) and wgpu with software adapters allowed (feature `wgpu`,
//! lavapipe in CI). Built-in pipelines against the built-ins' CPU references, a user
//! handler given as CUDA C and WGSL in one spec, stops handing messages back, launch
//! errors (mistyped built-ins, oversize and over-aligned types, foreign stages, bad
//! ports, missing implementations, backends the runtime lacks), and what a dropped
//! `Group` leaves to the runtime. Each backend is skipped (loudly) where its tool is
//! missing, except under `cargo xtask ci`, where that fails. What differs between the
//! backends (compilers, their messages, CUDA-only device calls) is in `cuda_emulated.rs`
//! and `wgpu_lavapipe.rs`.
#![cfg(any(feature = "cuda", feature = "wgpu"))]

#[path = "../../runtime/tests/support/skip.rs"]
mod support;

use std::time::{Duration, Instant};

use gyre::builtins::{Builtin, Record};
use gyre::{Backend, Error, GroupReport, KernelSpec, Runtime, State};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A device backend of this build, with its runtime and what its kernels promise.
struct Device {
    /// The backend's name as the runtime says it (`cuda-emulated`, `wgpu-software`).
    name: &'static str,
    /// The backend, for `GroupBuilder::backend`.
    backend: Backend,
    runtime: Runtime,
    /// Whether a kernel's outputs come in input order (wgpu handles a kernel's messages
    /// in order; CUDA threads of a batch finish in any order).
    ordered: bool,
    /// How many units in the last place a float of a built-in may differ from the CPU
    /// reference (wgpu may round `a * x + b` once more than the CPU: fused or not).
    ulps: u32,
}

/// The device backends of this build: name, backend, whether outputs come in order, and
/// the ulps a float may differ by (see [`Device`]).
const BACKENDS: &[(&str, Backend, bool, u32)] = &[
    #[cfg(feature = "cuda")]
    ("cuda-emulated", Backend::CudaEmulated, false, 0),
    #[cfg(feature = "wgpu")]
    ("wgpu-software", Backend::WgpuSoftware, true, 1),
];

/// The device backends of this build, as [`Device`]s; one whose tool is missing is
/// skipped (a failure under `cargo xtask ci`).
fn devices() -> Vec<Device> {
    let mut all = Vec::new();
    for &(name, backend, ordered, ulps) in BACKENDS {
        match Runtime::builder().backend(backend).workers(1).build() {
            Ok(runtime) => {
                assert_eq!(runtime.backend_name(), name);
                all.push(Device {
                    name,
                    backend,
                    runtime,
                    ordered,
                    ulps,
                });
            }
            Err(e) => {
                let asked = std::env::var("GYRE_WGPU_ALLOW_SOFTWARE").as_deref() == Ok("1");
                assert!(
                    !(asked && backend == Backend::WgpuSoftware),
                    "GYRE_WGPU_ALLOW_SOFTWARE=1 but no wgpu adapter opened: {e}"
                );
                support::skip(&format!("the {name} backend"), &e);
            }
        }
    }
    all
}

/// Doubles a `u32`, in CUDA C.
const DOUBLE_CUDA: &str = r"
__device__ int double_u32(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    gyre_u32 x = *(const gyre_u32 *)msg * 2u;
    return gyre_emit(ctx, 0u, &x, sizeof x);
}
";

/// Doubles a `u32`, in WGSL.
const DOUBLE_WGSL: &str = "\
fn double_u32(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    (*msg).w[0] = (*msg).w[0] * 2u;
    return gyre_emit(ctx, 0u, msg, 4u);
}
";

/// A kernel doubling `u32`s on every device backend (and the CPU).
fn double(name: &str) -> KernelSpec<u32, u32> {
    KernelSpec::<u32, u32>::new(name)
        .cuda("double_u32", DOUBLE_CUDA)
        .wgsl("double_u32", DOUBLE_WGSL)
        .cpu(|x, out| Ok(out.emit(x * 2)?))
}

/// A spec of `In`/`Out` with a (never compiled) implementation for each device backend.
fn unused<In: gyre::Message, Out: gyre::Message>(name: &str) -> KernelSpec<In, Out> {
    KernelSpec::new(name)
        .cuda("unused", "/* unused */")
        .wgsl("unused", "/* unused */")
}

/// What `builtins` do to `inputs` in a chain, by their CPU references.
fn reference_chain(builtins: &[Builtin], inputs: &[Record]) -> Vec<Record> {
    let mut stream = inputs.to_vec();
    for builtin in builtins {
        let mut reference = builtin.reference();
        let mut next = Vec::new();
        for record in &stream {
            reference
                .handle(bytemuck::bytes_of(record), &mut |port, bytes| {
                    assert_eq!(port, 0);
                    next.push(bytemuck::pod_read_unaligned(bytes));
                })
                .unwrap();
        }
        stream = next;
    }
    stream
}

/// Distance in units in the last place between two finite f32 of the same sign.
fn ulps(a: f32, b: f32) -> u32 {
    a.to_bits().abs_diff(b.to_bits())
}

/// The entry of `kernel` in `report`, which must have one.
fn entry<'r>(report: &'r GroupReport, kernel: &str) -> &'r gyre::KernelShutdown {
    report
        .kernel(kernel)
        .unwrap_or_else(|| panic!("no entry for `{kernel}` in {report:?}"))
}

#[test]
fn an_affine_then_filter_pipeline_matches_the_reference() {
    for device in devices() {
        let name = device.name;
        let affine = Builtin::Affine { a: 1.5, b: -3.25 };
        let filter = Builtin::Filter { lo: 0.0, hi: 100.0 };
        let mut g = device.runtime.group("affine-filter");
        let scale = g.add(
            KernelSpec::<Record, Record>::new("scale")
                .capacity(64)
                .builtin(affine),
        );
        let keep = g.add(
            KernelSpec::<Record, Record>::new("keep")
                .capacity(64)
                .builtin(filter),
        );
        g.route(scale, 0, keep);
        let group = g.launch().unwrap();
        assert_eq!(group.backend(), group_backend(name));
        let (scale, keep) = (group.kernel(scale).unwrap(), group.kernel(keep).unwrap());
        assert_eq!(scale.state(), State::Launched, "{name}");
        assert_eq!(keep.backend(), group.backend());
        group.activate().unwrap();
        assert_eq!(keep.state(), State::Active, "{name}");
        assert_eq!(scale.state(), State::Active, "{name}");

        let inputs: Vec<Record> = (0..200u32)
            .map(|i| Record {
                key: i % 7,
                seq: i,
                value: i as f32 * 0.75 - 20.0,
                aux: i ^ 0x5a5a,
            })
            .collect();
        for record in &inputs {
            scale.send(*record).unwrap();
        }
        let expected = reference_chain(&[affine, filter], &inputs);
        assert!(
            !expected.is_empty() && expected.len() < inputs.len(),
            "the filter must keep some records and drop others"
        );
        let mut got: Vec<Record> = (0..expected.len())
            .map(|_| keep.recv_timeout(TIMEOUT).unwrap())
            .collect();
        if !device.ordered {
            // Parallel kernels keep no order across threads of a batch: compare by sequence.
            got.sort_by_key(|r| r.seq);
        }
        assert_eq!(got.len(), expected.len(), "{name}");
        for (g, e) in got.iter().zip(&expected) {
            // Only the float of affine may differ, by one rounding where the backend may:
            // everything else is exact.
            assert_eq!((g.key, g.seq, g.aux), (e.key, e.seq, e.aux), "{name}");
            assert!(
                ulps(g.value, e.value) <= device.ulps,
                "{name}: {g:?} vs {e:?}"
            );
        }
        let exact = got == expected;
        eprintln!("{name}: affine → filter bit-exact against the CPU reference: {exact}");

        let report = group.drain(TIMEOUT);
        assert!(
            report.kernels.iter().all(|k| !k.timed_out),
            "{name}: {report:?}"
        );
        assert_eq!(report.kernel_names(), ["scale", "keep"], "upstream first");
        assert_eq!(report.undelivered_count(), 0, "{name}");
        assert_eq!(entry(&report, "scale").processed, inputs.len() as u64);
        assert_eq!(entry(&report, "keep").processed, inputs.len() as u64);
        assert_eq!(entry(&report, "keep").final_state, State::Terminated);
        assert_eq!(report.faulted().count(), 0, "{name}");
        assert!(report
            .kernels
            .iter()
            .all(|k| k.error.is_none() && !k.abandoned));
        assert!(device.runtime.take_dead_letters().is_empty(), "{name}");
        assert!(
            matches!(keep.try_recv(), Err(Error::Terminated { .. })),
            "{name}: a drained kernel whose outputs were all received reports it is terminated"
        );
        assert!(matches!(
            scale.try_send(inputs[0]).map_err(|e| e.error),
            Err(Error::Terminated { .. } | Error::Draining { .. })
        ));
    }
}

#[test]
fn a_user_handler_doubles_u32() {
    for device in devices() {
        let name = device.name;
        let mut g = device.runtime.group("double");
        // Two threads per block on CUDA; wgpu ignores it.
        g.threads(2);
        let stage = g.add(double("double").capacity(16).max_emits(1));
        let group = g.launch().unwrap();
        let double = group.kernel(stage).unwrap();
        group.activate().unwrap();
        let mut got = Vec::new();
        for i in 0..100u32 {
            double.send(i).unwrap();
            got.push(double.recv_timeout(TIMEOUT).unwrap());
        }
        assert_eq!(got, (0..100).map(|i| i * 2).collect::<Vec<_>>(), "{name}");
        assert!(double.try_recv().unwrap().is_none(), "{name}");
        let metrics = double.metrics();
        assert_eq!(metrics.processed, 100, "{name}");
        assert_eq!(metrics.backend, group.backend());
        assert_eq!(
            double.health().status,
            gyre::HealthStatus::Healthy,
            "{name}"
        );
        let report = group.terminate();
        assert_eq!(report.undelivered_count(), 0, "{name}: {report:?}");
        assert_eq!(entry(&report, "double").final_state, State::Terminated);
        assert_eq!(double.state(), State::Terminated, "{name}");
        assert!(
            matches!(double.recv_timeout(TIMEOUT), Err(Error::Terminated { .. })),
            "{name}"
        );
    }
}

#[test]
fn a_terminate_hands_back_queued_messages() {
    for device in devices() {
        let name = device.name;
        let mut g = device.runtime.group("held");
        let stage = g.add(double("double").capacity(8));
        let group = g.launch().unwrap();
        let double = group.kernel(stage).unwrap();
        // Never activated: the inbox fills, then a send fails with the message handed back.
        for i in 0..8u32 {
            double.try_send(i).unwrap();
        }
        let full = double.try_send(8).unwrap_err();
        assert!(matches!(full.error, Error::Full { .. }), "{name}: {full:?}");
        assert_eq!(full.into_message(), 8);
        let report = group.terminate();
        assert_eq!(
            report.undelivered_as::<u32>(&["double"]),
            (0..8).collect::<Vec<u32>>(),
            "{name}"
        );
        assert_eq!(entry(&report, "double").processed, 0, "{name}");
    }
}

/// A kernel launched alone is a group of one: its own drain and terminate work, with a
/// typed report.
#[test]
fn a_kernel_launched_alone_stops_through_its_handle_with_a_typed_report() {
    for device in devices() {
        let name = device.name;
        let alone = device.runtime.launch(double("double").capacity(8)).unwrap();
        assert_eq!(alone.backend(), group_backend(name));
        for i in 0..8u32 {
            alone.try_send(i).unwrap();
        }
        let report = alone.terminate().unwrap();
        assert_eq!(report.undelivered, (0..8).collect::<Vec<u32>>(), "{name}");
        assert_eq!(
            (report.processed, report.final_state),
            (0, State::Terminated)
        );

        let again = device.runtime.launch(double("again")).unwrap();
        again.activate().unwrap();
        for i in 0..10u32 {
            again.send(i).unwrap();
        }
        let report = again.drain(TIMEOUT).unwrap();
        assert!(!report.timed_out, "{name}: {report:?}");
        assert_eq!(
            (report.processed, report.final_state),
            (10, State::Terminated)
        );
        assert!(report.undelivered.is_empty(), "{name}");
        // What it emitted stays receivable after the drain.
        let got: Vec<u32> = (0..10)
            .map(|_| again.recv_timeout(TIMEOUT).unwrap())
            .collect();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).map(|i| i * 2).collect::<Vec<_>>(), "{name}");
    }
}

/// Issue 10, defect 11: stops hand each message back once, ever: concurrent terminates
/// split the queue between their reports, and a drain after them hands back nothing.
#[test]
fn stops_hand_each_message_back_once() {
    for device in devices() {
        let name = device.name;
        let mut g = device.runtime.group("stops");
        let stage = g.add(double("double").capacity(64));
        let group = g.launch().unwrap();
        let double = group.kernel(stage).unwrap();
        for i in 0..40u32 {
            double.try_send(i).unwrap();
        }
        let reports = std::thread::scope(|s| {
            let a = s.spawn(|| group.terminate());
            let b = s.spawn(|| group.terminate());
            [a.join().unwrap(), b.join().unwrap()]
        });
        let mut handed: Vec<u32> = reports
            .iter()
            .flat_map(|r| r.undelivered_as::<u32>(&["double"]))
            .collect();
        handed.sort_unstable();
        assert_eq!(
            handed,
            (0..40).collect::<Vec<u32>>(),
            "{name}: each message in one report"
        );
        // A stop of a terminated group has nothing to hand back and, as on the CPU,
        // leaves its terminated kernels out.
        let again = group.drain(TIMEOUT);
        assert!(again.kernels.is_empty(), "{name}: {again:?}");
        assert_eq!(double.state(), State::Terminated, "{name}");
    }
}

#[test]
fn wrong_types_for_a_builtin_are_refused_at_launch() {
    for device in devices() {
        let name = device.name;
        let mut g = device.runtime.group("mistyped");
        g.add(KernelSpec::<u32, u32>::new("affine").builtin(Builtin::Affine { a: 1.0, b: 0.0 }));
        let err = g.launch().unwrap_err();
        assert!(matches!(err, Error::Launch(_)), "{name}: {err:?}");
        let text = err.to_string();
        assert!(text.contains("16-byte"), "{name}: {text}");
        assert!(text.contains("gyre::builtins::Record"), "{name}: {text}");
    }
}

/// The same spec on the CPU: the built-in's Rust reference reads 16-byte records, so a
/// `u32` kernel must be refused at launch there too, not run on the slot's padding.
#[test]
fn wrong_types_for_a_builtin_are_refused_at_launch_on_the_cpu_too() {
    let runtime = Runtime::builder().backend(Backend::Cpu).build().unwrap();
    let launched = runtime
        .launch(KernelSpec::<u32, u32>::new("affine").builtin(Builtin::Affine { a: 1.0, b: 0.0 }));
    let err = launched.map(drop).unwrap_err();
    assert!(matches!(err, Error::Launch(_)), "{err:?}");
    assert!(err.to_string().contains("gyre::builtins::Record"), "{err}");
}

#[test]
fn a_message_type_too_large_for_a_slot_is_refused_at_launch() {
    for device in devices() {
        let name = device.name;
        let mut g = device.runtime.group("huge");
        g.add(unused::<[u8; 70_000], u32>("huge"));
        let err = g.launch().unwrap_err();
        // The CPU's error, as on the CPU.
        assert!(
            matches!(err, Error::MessageTooLarge { size: 70_000, .. }),
            "{name}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("70000"), "{name}: {text}");
    }
}

#[test]
fn an_over_aligned_message_type_is_refused_at_launch() {
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C, align(32))]
    struct Wide([u64; 4]);

    for device in devices() {
        let name = device.name;
        let err = device
            .runtime
            .launch(unused::<Wide, u32>("wide"))
            .unwrap_err();
        assert!(
            matches!(err, Error::MessageAlignment { align: 32, .. }),
            "{name}: {err:?}"
        );
        assert!(
            err.to_string().contains("16 bytes or less"),
            "{name}: {err}"
        );
    }
}

/// On a device runtime `Runtime::launch` runs on the device: a spec with only a CPU
/// closure has no implementation there, and says so; a group put on the CPU runs it.
#[test]
fn cpu_kernels_run_on_a_device_runtime_in_cpu_groups() {
    for device in devices() {
        let name = device.name;
        let echo = || KernelSpec::<u32, u32>::new("echo").cpu(|x, out| Ok(out.emit(*x)?));
        let err = device.runtime.launch(echo()).unwrap_err();
        let Error::NoImplementation {
            ref kernel,
            backend,
            ..
        } = err
        else {
            panic!("{name}: expected NoImplementation, got {err:?}");
        };
        assert_eq!((kernel.as_str(), backend), ("echo", group_backend(name)));
        assert!(err.to_string().contains("Backend::Cpu"), "{name}: {err}");

        let mut g = device.runtime.group("on-cpu");
        g.backend(Backend::Cpu);
        let stage = g.add(echo());
        let group = g.launch().unwrap();
        assert_eq!(group.backend(), "cpu");
        let echo = group.kernel(stage).unwrap();
        echo.activate().unwrap();
        echo.send(5).unwrap();
        assert_eq!(echo.recv_timeout(TIMEOUT).unwrap(), 5, "{name}");
        // The runtime's own device may be named per group too.
        let mut g = device.runtime.group("on-device");
        g.backend(device.backend);
        g.add(double("double"));
        assert_eq!(g.launch().unwrap().backend(), group_backend(name));
    }
}

/// The backend a group reports for a runtime of backend `name`.
fn group_backend(name: &str) -> &str {
    name.trim_end_matches("-software")
}

/// A group asked to run on `backend` (named `name`) on `runtime`, whose own backend is
/// another, runs there: the runtime opens that backend at the launch and keeps it.
fn assert_runs_on(runtime: &Runtime, name: &str, backend: Backend) {
    for round in 0..2 {
        let mut g = runtime.group(format!("on-{name}-{round}"));
        g.backend(backend);
        let stage = g.add(double("double"));
        g.to_host(stage, 0);
        let group = g
            .launch()
            .unwrap_or_else(|e| panic!("{name} on a {} runtime: {e}", runtime.backend_name()));
        assert_eq!(group.backend(), group_backend(name));
        let k = group.kernel(stage).unwrap();
        k.activate().unwrap();
        k.send(21).unwrap();
        assert_eq!(
            k.recv_timeout(Duration::from_secs(30)).unwrap(),
            42,
            "{name}"
        );
        drop(group.terminate());
    }
}

/// One runtime, several backends: a group naming a device backend the runtime was not
/// built with runs on it (opened at its first group, kept for the next), from a CPU
/// runtime and from a runtime of the other device backend; the CUDA driver backend
/// without a driver is refused with the probe's reason; a device-only spec has no CPU
/// implementation.
#[test]
fn a_group_naming_another_backend_runs_there() {
    let runtime = Runtime::builder().backend(Backend::Auto).build().unwrap();
    assert_eq!(runtime.backend_name(), "cpu");
    let devices = devices();
    for device in &devices {
        assert_runs_on(&runtime, device.name, device.backend);
    }
    for device in &devices {
        for other in devices.iter().filter(|o| o.name != device.name) {
            assert_runs_on(&device.runtime, other.name, other.backend);
        }
    }
    #[cfg(feature = "cuda")]
    {
        let mut g = runtime.group("on-a-gpu");
        g.backend(Backend::Cuda);
        g.add(double("double"));
        match g.launch() {
            Ok(group) => assert_eq!(group.backend(), "cuda"),
            Err(Error::BackendUnavailable { backend, reason }) => {
                assert_eq!(backend, "cuda");
                assert!(!reason.is_empty());
            }
            Err(other) => panic!("expected a CUDA group or BackendUnavailable, got {other:?}"),
        }
    }
    let err = runtime
        .launch(unused::<u32, u32>("device-only"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::NoImplementation { kernel, backend: "cpu", .. } if kernel == "device-only"),
        "{err:?}"
    );
}

#[test]
fn a_stage_of_another_group_is_an_error_not_a_panic() {
    for device in devices() {
        let name = device.name;
        let runtime = &device.runtime;
        let gather = |n: &str| KernelSpec::<Record, Record>::new(n).builtin(Builtin::Gather);
        let mut other = runtime.group("other");
        let _ = other.add(gather("o0"));
        let foreign = other.add(gather("o1"));
        // A route with it fails the launch; so do a host or dead-letter binding.
        for bind in 0..3 {
            let mut g = runtime.group("g");
            let a = g.add(gather("a"));
            let _ = g.add(gather("b"));
            match bind {
                0 => g.route(a, 0, foreign),
                1 => g.to_host(foreign, 0),
                _ => g.to_dead_letters(foreign, 0),
            };
            let err = g.launch().map(drop).unwrap_err();
            assert!(
                matches!(&err, Error::ForeignStage { group } if group == "g"),
                "{name}: {err:?}"
            );
        }
        // A launched group refuses it: no handle to another group's kernel.
        let mut g = runtime.group("h");
        let own = g.add(gather("a"));
        let _ = g.add(gather("b"));
        let group = g.launch().unwrap();
        let err = group.kernel(foreign).map(drop).unwrap_err();
        assert!(
            matches!(&err, Error::ForeignStage { group } if group == "h"),
            "{name}: {err:?}"
        );
        let record = Record {
            key: 1,
            seq: 2,
            value: 3.0,
            aux: 4,
        };
        group.kernel(own).unwrap().try_send(record).unwrap();
        assert_eq!(group.terminate().undelivered_as::<Record>(&["a"]), [record]);
    }
}

#[test]
fn a_route_from_a_port_the_kernel_lacks_says_what_to_change() {
    for device in devices() {
        let mut g = device.runtime.group("g");
        let a = g.add(KernelSpec::<Record, Record>::new("a").builtin(Builtin::Gather));
        let b = g.add(KernelSpec::<Record, Record>::new("b").builtin(Builtin::Gather));
        g.route(a, 3, b);
        let err = g.launch().map(drop).unwrap_err();
        assert!(matches!(err, Error::Route(_)), "{}: {err:?}", device.name);
        assert_eq!(
            err.to_string(),
            "kernel `a` has 1 output port(s); port 3 does not exist: use a port below 1, or \
             raise KernelSpec::ports"
        );
    }
}

#[test]
fn a_send_after_terminate_says_the_kernel_is_terminated() {
    for device in devices() {
        for activate in [false, true] {
            let mut g = device.runtime.group("stopped");
            let stage = g.add(double("double"));
            let group = g.launch().unwrap();
            let double = group.kernel(stage).unwrap();
            if activate {
                group.activate().unwrap();
            }
            double.try_send(1).unwrap();
            group.terminate();
            for refused in [double.try_send(2), double.send(3)] {
                let error = refused.unwrap_err().error;
                assert!(
                    matches!(error, Error::Terminated { .. }),
                    "{}: activated {activate}: {error}",
                    device.name
                );
            }
        }
    }
}

/// Emits even `u32`s doubled and fails on odd ones (error code 7), in CUDA C, WGSL and
/// Rust.
fn even_only(name: &str) -> KernelSpec<u32, u32> {
    const CUDA: &str = r"
__device__ int even_only(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    gyre_u32 x = *(const gyre_u32 *)msg;
    if (x & 1u) {
        return 7;
    }
    x *= 2u;
    return gyre_emit(ctx, 0u, &x, sizeof x);
}
";
    const WGSL: &str = "\
fn even_only(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    if (((*msg).w[0] & 1u) != 0u) {
        return 7u;
    }
    (*msg).w[0] = (*msg).w[0] * 2u;
    return gyre_emit(ctx, 0u, msg, 4u);
}
";
    KernelSpec::<u32, u32>::new(name)
        .cuda("even_only", CUDA)
        .wgsl("even_only", WGSL)
        .cpu(|x, out| {
            if x & 1 == 1 {
                return Err(gyre::HandlerError(format!("{x} is odd")));
            }
            Ok(out.emit(x * 2)?)
        })
}

/// A message its handler fails on goes to the runtime's dead letters, as an input, on
/// every device backend and on a CPU group of the same runtime; the kernel goes on.
#[test]
fn a_failed_message_goes_to_the_dead_letters_and_the_kernel_goes_on() {
    for device in devices() {
        for backend in [device.backend, Backend::Cpu] {
            let name = format!("{} ({backend:?})", device.name);
            let mut g = device.runtime.group("evens");
            g.backend(backend);
            let stage = g.add(even_only("even"));
            let group = g.launch().unwrap();
            let even = group.kernel(stage).unwrap();
            group.activate().unwrap();
            for i in 0..20u32 {
                even.send(i).unwrap();
            }
            let mut got: Vec<u32> = (0..10)
                .map(|_| even.recv_timeout(TIMEOUT).unwrap())
                .collect();
            got.sort_unstable();
            assert_eq!(got, (0..10).map(|i| i * 4).collect::<Vec<_>>(), "{name}");
            let mut letters = Vec::new();
            let deadline = Instant::now() + TIMEOUT;
            while letters.len() < 10 {
                assert!(Instant::now() < deadline, "{name}: {letters:?}");
                letters.extend(device.runtime.take_dead_letters());
                std::thread::yield_now();
            }
            assert!(
                letters.iter().all(|l| l.kernel == "even" && l.is_input),
                "{name}: {letters:?}"
            );
            let mut odd: Vec<u32> = letters
                .iter()
                .map(|l| bytemuck::pod_read_unaligned(&l.payload[..4]))
                .collect();
            odd.sort_unstable();
            assert_eq!(
                odd,
                (0..10).map(|i| 2 * i + 1).collect::<Vec<_>>(),
                "{name}"
            );
            assert_eq!(even.state(), State::Active, "{name}");
            let report = group.drain(TIMEOUT);
            assert_eq!(report.undelivered_count(), 0, "{name}: {report:?}");
            assert_eq!(entry(&report, "even").processed, 20, "{name}");
            assert_eq!(report.faulted().count(), 0, "{name}");
        }
    }
}

/// Waits until `kernel` processed `n` messages.
fn wait_processed(kernel: &gyre::Kernel<u32, u32>, n: u64) {
    let deadline = Instant::now() + TIMEOUT;
    while kernel.metrics().processed < n {
        assert!(Instant::now() < deadline, "the kernel made no progress");
        std::thread::yield_now();
    }
}

/// A dropped `Group` does not stop its device group: the runtime keeps it (it still
/// runs for the handles left), and its shutdown drains it and hands back what nobody
/// can receive any more, as for CPU kernels no handle holds.
#[test]
fn a_dropped_group_keeps_running_and_the_shutdown_hands_back_what_it_held() {
    for device in devices() {
        let name = device.name;
        let mut g = device.runtime.group("dropped");
        let stage = g.add(double("double").capacity(16));
        let group = g.launch().unwrap();
        let double = group.kernel(stage).unwrap();
        group.activate().unwrap();
        drop(group);
        // 16 go through to the host output (never received), then 16 more wait in the
        // inbox while the kernel is paused.
        for i in 0..16u32 {
            double.send(i).unwrap();
        }
        wait_processed(&double, 16);
        double.deactivate().unwrap();
        assert_eq!(double.state(), State::Paused, "{name}");
        for i in 16..32u32 {
            double.send(i).unwrap();
        }
        assert_eq!(device.runtime.kernel_count(), 1, "{name}");
        drop(double);
        let report = device.runtime.shutdown(TIMEOUT);
        assert_eq!(report.kernel_names(), ["double"], "{name}");
        let kernel = entry(&report, "double");
        assert_eq!(kernel.final_state, State::Terminated, "{name}: {report:?}");
        // Whether the drain processed the paused inputs or handed them back, every
        // message is there once: as an output, or as an input not yet doubled.
        let mut handed: Vec<u32> = report.undelivered_outputs_as::<u32>(&["double"]);
        handed.extend(
            report
                .undelivered_as::<u32>(&["double"])
                .iter()
                .map(|x| x * 2),
        );
        handed.sort_unstable();
        assert_eq!(
            handed,
            (0..32).map(|i| i * 2).collect::<Vec<u32>>(),
            "{name}: {report:?}"
        );
    }
}

/// A device kernel's handle outlives its runtime: what the kernel emitted stays
/// receivable, and a send hands the message back saying the runtime is gone.
#[test]
fn a_handle_outliving_its_runtime_keeps_its_outputs_and_refuses_sends() {
    for device in devices() {
        let name = device.name;
        let kernel = device.runtime.launch(double("double")).unwrap();
        kernel.activate().unwrap();
        for i in 0..4u32 {
            kernel.send(i).unwrap();
        }
        wait_processed(&kernel, 4);
        drop(device.runtime);
        let got: Vec<u32> = (0..4)
            .map(|_| kernel.recv_timeout(TIMEOUT).unwrap())
            .collect();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 2, 4, 6], "{name}");
        let refused = kernel.try_send(9).unwrap_err();
        assert_eq!(refused.message, 9);
        assert!(
            matches!(refused.error, Error::RuntimeGone { .. }),
            "{name}: {}",
            refused.error
        );
        let err = kernel.try_recv().unwrap_err();
        assert!(matches!(err, Error::RuntimeGone { .. }), "{name}: {err}");
    }
}
