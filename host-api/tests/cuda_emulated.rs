//! Typed CUDA groups on the host emulation (`Backend::CudaEmulated`): built-in pipelines
//! against the built-ins' CPU references, user handlers, compile errors, and backend
//! choice on a machine without a GPU. Skipped (with a message) when the emulation cannot
//! run here (no g++), except under `cargo xtask ci`, where that is a failure.
#![cfg(feature = "cuda")]

#[path = "../../runtime/tests/support/skip.rs"]
mod skip;

use std::time::Duration;

use gyre::cuda::{Builtin, CudaKernel, Record};
use gyre::{Backend, Error, Runtime, State};

const TIMEOUT: Duration = Duration::from_secs(30);

fn emulated() -> Option<Runtime> {
    match Runtime::builder()
        .backend(Backend::CudaEmulated)
        .workers(1)
        .build()
    {
        Ok(runtime) => {
            assert_eq!(runtime.backend_name(), "cuda-emulated");
            Some(runtime)
        }
        Err(e) => {
            skip::skip("the typed CUDA tests on the emulation", &e);
            None
        }
    }
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

#[test]
fn an_affine_then_filter_pipeline_matches_the_reference() {
    let Some(runtime) = emulated() else { return };
    let affine = Builtin::Affine { a: 1.5, b: -3.25 };
    let filter = Builtin::Filter { lo: 0.0, hi: 100.0 };
    let mut g = runtime.cuda_group("affine-filter").unwrap();
    let scale = g.add(CudaKernel::<Record, Record>::builtin("scale", affine).capacity(64));
    let keep = g.add(CudaKernel::<Record, Record>::builtin("keep", filter).capacity(64));
    g.route(&scale, 0, &keep);
    let group = g.launch().unwrap();
    assert_eq!(group.state(&scale), State::Launched);
    group.activate().unwrap();
    assert_eq!(group.state(&keep), State::Active);

    let inputs: Vec<Record> = (0..200u32)
        .map(|i| Record {
            key: i % 7,
            seq: i,
            value: i as f32 * 0.75 - 20.0,
            aux: i ^ 0x5a5a,
        })
        .collect();
    for record in &inputs {
        group.send(&scale, *record).unwrap();
    }
    let expected = reference_chain(&[affine, filter], &inputs);
    assert!(
        !expected.is_empty() && expected.len() < inputs.len(),
        "the filter must keep some records and drop others"
    );
    let mut got: Vec<Record> = (0..expected.len())
        .map(|_| group.recv_timeout(&keep, TIMEOUT).unwrap())
        .collect();
    // Parallel kernels keep no order across threads of a batch: compare by sequence.
    got.sort_by_key(|r| r.seq);
    assert_eq!(got, expected);

    let report = group.drain(TIMEOUT);
    assert!(!report.timed_out(), "{report:?}");
    assert_eq!(report.undelivered_count(), 0);
    assert_eq!(report.processed(&scale), inputs.len() as u64);
    assert_eq!(report.processed(&keep), inputs.len() as u64);
    assert_eq!(report.final_state(&keep), State::Terminated);
    assert!(group.take_dead_letters().is_empty());
    assert!(
        matches!(group.try_recv(&keep), Err(Error::Terminated { .. })),
        "a drained kernel whose outputs were all received reports it is terminated"
    );
    assert!(matches!(
        group.try_send(&scale, inputs[0]).map_err(|e| e.error),
        Err(Error::Terminated { .. } | Error::Draining { .. })
    ));
}

const DOUBLE: &str = r"
__device__ int double_u32(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    gyre_u32 x = *(const gyre_u32 *)msg * 2u;
    return gyre_emit(ctx, 0u, &x, sizeof x);
}
";

#[test]
fn a_user_handler_doubles_u32() {
    let Some(runtime) = emulated() else { return };
    let mut g = runtime.cuda_group("double").unwrap();
    let double = g.add(
        CudaKernel::<u32, u32>::source("double", "double_u32", DOUBLE)
            .capacity(16)
            .max_emits(1),
    );
    g.threads(2);
    let group = g.launch().unwrap();
    group.activate().unwrap();
    let mut got = Vec::new();
    for i in 0..100u32 {
        group.send(&double, i).unwrap();
        got.push(group.recv_timeout(&double, TIMEOUT).unwrap());
    }
    assert_eq!(got, (0..100).map(|i| i * 2).collect::<Vec<_>>());
    assert!(group.try_recv(&double).unwrap().is_none());
    assert_eq!(group.counters(&double).processed, 100);
    let report = group.terminate();
    assert_eq!(report.undelivered_count(), 0);
    assert_eq!(report.final_state(&double), State::Terminated);
}

#[test]
fn a_terminate_hands_back_queued_messages_typed() {
    let Some(runtime) = emulated() else { return };
    let mut g = runtime.cuda_group("held").unwrap();
    let double = g.add(CudaKernel::<u32, u32>::source("double", "double_u32", DOUBLE).capacity(8));
    let group = g.launch().unwrap();
    // Never activated: the inbox fills, then a send fails with the message handed back.
    for i in 0..8u32 {
        group.try_send(&double, i).unwrap();
    }
    let full = group.try_send(&double, 8).unwrap_err();
    assert!(matches!(full.error, Error::Full { .. }), "{full:?}");
    assert_eq!(full.into_message(), 8);
    let report = group.terminate();
    assert_eq!(report.undelivered(&double), (0..8).collect::<Vec<u32>>());
    assert_eq!(report.processed(&double), 0);
}

#[test]
fn a_handler_with_a_syntax_error_fails_at_launch_with_file_and_line() {
    let Some(runtime) = emulated() else { return };
    let mut g = runtime.cuda_group("broken").unwrap();
    g.add(CudaKernel::<u32, u32>::source(
        "broken",
        "broken_handler",
        "__device__ int broken_handler(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {\n\
         \x20   return gyre_emit(ctx, 0u, msg, 4) +;\n\
         }\n",
    ));
    let err = g.launch().unwrap_err();
    assert!(matches!(err, Error::Compile { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("broken_handler.cu"), "{text}");
    assert!(
        text.contains("broken_handler.cu:2:") || text.contains("broken_handler.cu(2)"),
        "the message must point at line 2: {text}"
    );
}

#[test]
fn wrong_types_for_a_builtin_are_refused_at_launch() {
    let Some(runtime) = emulated() else { return };
    let mut g = runtime.cuda_group("mistyped").unwrap();
    g.add(CudaKernel::<u32, u32>::builtin(
        "affine",
        Builtin::Affine { a: 1.0, b: 0.0 },
    ));
    let err = g.launch().unwrap_err();
    assert!(matches!(err, Error::Launch(_)), "{err:?}");
    assert!(err.to_string().contains("16-byte"), "{err}");
}

#[test]
fn a_message_type_too_large_for_a_slot_is_refused_at_launch() {
    let Some(runtime) = emulated() else { return };
    let mut g = runtime.cuda_group("huge").unwrap();
    g.add(CudaKernel::<[u8; 70_000], u32>::source(
        "huge",
        "huge",
        "/* unused */",
    ));
    let err = g.launch().unwrap_err();
    assert!(err.to_string().contains("largest slot"), "{err}");
}

#[test]
fn cpu_kernels_still_run_on_a_cuda_runtime() {
    let Some(runtime) = emulated() else { return };
    let echo = runtime
        .launch(gyre::KernelSpec::<u32, u32>::new("echo").cpu(|x, out| Ok(out.emit(*x)?)))
        .unwrap();
    echo.activate().unwrap();
    echo.send(5).unwrap();
    assert_eq!(echo.recv().unwrap(), 5);
}

#[test]
fn the_cuda_backend_without_a_gpu_is_unavailable_and_says_why() {
    match Runtime::builder().backend(Backend::Cuda).build() {
        Ok(runtime) => {
            eprintln!("a CUDA device is present: nothing to check here");
            assert_eq!(runtime.backend_name(), "cuda");
        }
        Err(Error::BackendUnavailable { backend, reason }) => {
            assert_eq!(backend, "cuda");
            assert!(
                reason.contains("libcuda") || reason.contains("device"),
                "the probe's message must say what is missing: {reason}"
            );
        }
        Err(other) => panic!("expected BackendUnavailable, got {other:?}"),
    }
}

#[test]
fn auto_builds_the_cpu_backend_and_cuda_groups_need_a_cuda_backend() {
    let runtime = Runtime::builder().backend(Backend::Auto).build().unwrap();
    assert_eq!(runtime.backend_name(), "cpu");
    let err = runtime.cuda_group("nowhere").unwrap_err();
    assert!(matches!(err, Error::BackendUnavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("Backend::CudaEmulated"), "{err}");
}

#[test]
fn a_stage_of_another_group_is_an_error_not_a_panic() {
    let Some(runtime) = emulated() else { return };
    let mut other = runtime.cuda_group("other").unwrap();
    let _ = other.add(CudaKernel::<Record, Record>::builtin("o0", Builtin::Gather));
    let foreign = other.add(CudaKernel::<Record, Record>::builtin("o1", Builtin::Gather));
    // A route with it fails the launch.
    let mut g = runtime.cuda_group("g").unwrap();
    let a = g.add(CudaKernel::<Record, Record>::builtin("a", Builtin::Gather));
    let _ = g.add(CudaKernel::<Record, Record>::builtin("b", Builtin::Gather));
    g.route(&a, 0, &foreign);
    let err = g.launch().map(|_| ()).unwrap_err();
    assert!(
        matches!(&err, Error::ForeignStage { group } if group == "g"),
        "{err:?}"
    );
    // A launched group's sends and receives refuse it, handing the message back.
    let mut g = runtime.cuda_group("h").unwrap();
    let own = g.add(CudaKernel::<Record, Record>::builtin("a", Builtin::Gather));
    let _ = g.add(CudaKernel::<Record, Record>::builtin("b", Builtin::Gather));
    let group = g.launch().unwrap();
    let record = Record {
        key: 1,
        seq: 2,
        value: 3.0,
        aux: 4,
    };
    let refused = group.try_send(&foreign, record).unwrap_err();
    assert!(
        matches!(refused.error, Error::ForeignStage { .. }),
        "{refused:?}"
    );
    assert_eq!(refused.into_message(), record);
    let refused = group.send(&foreign, record).unwrap_err();
    assert!(
        matches!(refused.error, Error::ForeignStage { .. }),
        "{refused:?}"
    );
    let err = group.try_recv(&foreign).unwrap_err();
    assert!(matches!(err, Error::ForeignStage { .. }), "{err:?}");
    let err = group
        .recv_timeout(&foreign, Duration::from_millis(10))
        .unwrap_err();
    assert!(matches!(err, Error::ForeignStage { .. }), "{err:?}");
    group.try_send(&own, record).unwrap();
    assert_eq!(group.terminate().undelivered(&own), [record]);
}

#[test]
fn a_topology_error_names_the_group_once_and_says_what_to_change() {
    let Some(runtime) = emulated() else { return };
    let mut g = runtime.cuda_group("g").unwrap();
    let a = g.add(CudaKernel::<Record, Record>::builtin("a", Builtin::Gather));
    let b = g.add(CudaKernel::<Record, Record>::builtin("b", Builtin::Gather));
    g.route(&a, 3, &b);
    let text = g.launch().map(|_| ()).unwrap_err().to_string();
    assert_eq!(
        text,
        "could not launch: CUDA group `g`: kernel `a` has no port 3 (it has 1): use a port \
         below 1, or give it more ports (`.ports(n)`)"
    );
}

#[test]
fn a_kernel_with_no_ports_is_refused_at_launch() {
    let Some(runtime) = emulated() else { return };
    let mut g = runtime.cuda_group("portless").unwrap();
    g.add(CudaKernel::<u32, u32>::source("double", "double_u32", DOUBLE).ports(0));
    let err = g.launch().expect_err("a kernel needs at least one port");
    let text = err.to_string();
    assert!(
        matches!(err, Error::Launch(_)) && text.contains("0 ports but a kernel has 1 to 8"),
        "{text}"
    );
}

#[test]
fn a_send_after_terminate_says_the_kernel_is_terminated() {
    let Some(runtime) = emulated() else { return };
    for activate in [false, true] {
        let mut g = runtime.cuda_group("stopped").unwrap();
        let double = g.add(CudaKernel::<u32, u32>::source(
            "double",
            "double_u32",
            DOUBLE,
        ));
        let group = g.launch().unwrap();
        if activate {
            group.activate().unwrap();
        }
        group.try_send(&double, 1).unwrap();
        group.terminate();
        for refused in [group.try_send(&double, 2), group.send(&double, 3)] {
            let error = refused.unwrap_err().error;
            assert!(
                matches!(error, Error::Terminated { .. }),
                "activated {activate}: {error}"
            );
        }
    }
}

const SLOW: &str = r"
__device__ int slow_u32(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    for (int i = 0; i < 2000; ++i) {
        __nanosleep(1000000u);
    }
    return gyre_emit(ctx, 0u, msg, 4u);
}
";

/// A terminate that waits on a handler busy for 2 s returns after the command timeout,
/// the kernel not stopped yet; a send refused meanwhile says the kernel is terminated
/// (not draining); once the handler returns, a later terminate completes the stop and
/// the output is received.
#[test]
fn a_terminate_waiting_on_a_busy_handler_is_bounded_and_refuses_sends_as_terminated() {
    let timeout = Duration::from_millis(200);
    let runtime = match Runtime::builder()
        .backend(Backend::CudaEmulated)
        .workers(1)
        .command_timeout(timeout)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => panic!("the CUDA emulation must run here: {e}"),
    };
    let mut g = runtime.cuda_group("busy").unwrap();
    let slow = g.add(CudaKernel::<u32, u32>::source("slow", "slow_u32", SLOW));
    let group = g.launch().unwrap();
    group.activate().unwrap();
    group.send(&slow, 7).unwrap();
    // Nothing on the host side says a handler started (counters move when its batch
    // ends): give the kernel, which polls its inbox every few microseconds, 200 ms.
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let report = group.terminate();
    let took = started.elapsed();
    assert!(
        took < timeout + Duration::from_secs(3),
        "terminate took {took:?}"
    );
    assert_eq!(report.undelivered_count(), 0, "{report:?}");
    assert_eq!(
        report.processed(&slow),
        0,
        "the handler must still be running when the terminate gives up"
    );
    assert_ne!(group.state(&slow), State::Terminated);
    let error = group.try_send(&slow, 8).unwrap_err().error;
    assert!(matches!(error, Error::Terminated { .. }), "{error}");
    // The handler returns; a later terminate finds the kernel stopped.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while group.state(&slow) != State::Terminated {
        assert!(
            std::time::Instant::now() < deadline,
            "the kernel never stopped"
        );
        assert_eq!(group.terminate().undelivered_count(), 0);
    }
    assert_eq!(group.recv_timeout(&slow, TIMEOUT).unwrap(), 7);
    assert!(matches!(
        group.try_recv(&slow),
        Err(Error::Terminated { .. })
    ));
}
