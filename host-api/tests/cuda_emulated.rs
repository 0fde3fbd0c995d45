//! What only CUDA has, on the host emulation (`Backend::CudaEmulated`): the CUDA C
//! compiler's errors with file and line, the `Backend::Cuda` probe on a machine without a
//! GPU, and a handler that sleeps on the device (`__nanosleep`) against a bounded
//! terminate. What every device backend shares is in `device_groups.rs`. Skipped (with a
//! message) when the emulation cannot run here (no g++), except under `cargo xtask ci`,
//! where that is a failure.
#![cfg(feature = "cuda")]

#[path = "../../runtime/tests/support/skip.rs"]
mod support;

use std::time::{Duration, Instant};

use gyre::{Backend, Error, KernelSpec, Runtime, State};

const TIMEOUT: Duration = Duration::from_secs(30);

fn emulated(command_timeout: Duration) -> Option<Runtime> {
    match Runtime::builder()
        .backend(Backend::CudaEmulated)
        .workers(1)
        .command_timeout(command_timeout)
        .build()
    {
        Ok(runtime) => {
            assert_eq!(runtime.backend_name(), "cuda-emulated");
            Some(runtime)
        }
        Err(e) => {
            support::skip("the CUDA tests on the emulation", &e);
            None
        }
    }
}

#[test]
fn a_handler_with_a_syntax_error_fails_at_launch_with_file_and_line() {
    let Some(runtime) = emulated(TIMEOUT) else {
        return;
    };
    let err = runtime
        .launch(KernelSpec::<u32, u32>::new("broken").cuda(
            "broken_handler",
            "__device__ int broken_handler(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {\n\
             \x20   return gyre_emit(ctx, 0u, msg, 4) +;\n\
             }\n",
        ))
        .unwrap_err();
    assert!(matches!(err, Error::Compile { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("broken_handler.cu"), "{text}");
    assert!(
        text.contains("broken_handler.cu:2:") || text.contains("broken_handler.cu(2)"),
        "the message must point at line 2: {text}"
    );
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
/// hands back the output nobody received.
#[test]
fn a_terminate_waiting_on_a_busy_handler_is_bounded_and_refuses_sends_as_terminated() {
    let timeout = Duration::from_millis(200);
    let Some(runtime) = emulated(timeout) else {
        return;
    };
    let mut g = runtime.group("busy");
    let stage = g.add(KernelSpec::<u32, u32>::new("slow").cuda("slow_u32", SLOW));
    let group = g.launch().unwrap();
    let slow = group.kernel(stage).unwrap();
    group.activate().unwrap();
    slow.send(7).unwrap();
    // Nothing on the host side says a handler started (counters move when its batch
    // ends): give the kernel, which polls its inbox every few microseconds, 200 ms.
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let report = group.terminate();
    let took = started.elapsed();
    assert!(
        took < timeout + Duration::from_secs(3),
        "terminate took {took:?}"
    );
    assert_eq!(report.undelivered_count(), 0, "{report:?}");
    assert_eq!(
        report.kernel("slow").map(|k| k.processed),
        Some(0),
        "the handler must still be running when the terminate gives up: {report:?}"
    );
    assert_ne!(slow.state(), State::Terminated);
    let error = slow.try_send(8).unwrap_err().error;
    assert!(matches!(error, Error::Terminated { .. }), "{error}");
    // The handler returns; a later terminate finds the kernel stopped and hands back
    // the output nobody received (no Receiver holds it): 7, once, with no input left.
    let deadline = Instant::now() + TIMEOUT;
    let mut outputs = Vec::new();
    while slow.state() != State::Terminated {
        assert!(Instant::now() < deadline, "the kernel never stopped");
        let report = group.terminate();
        assert!(
            report.undelivered_as::<u32>(&["slow"]).is_empty(),
            "{report:?}"
        );
        outputs.extend(report.undelivered_outputs_as::<u32>(&["slow"]));
    }
    if outputs.is_empty() {
        outputs.push(slow.recv_timeout(TIMEOUT).unwrap());
    }
    assert_eq!(outputs, [7]);
    assert!(matches!(slow.try_recv(), Err(Error::Terminated { .. })));
}
