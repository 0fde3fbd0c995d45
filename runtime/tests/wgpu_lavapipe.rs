//! The wgpu backend on a real Vulkan driver (Mesa's lavapipe in CI, any adapter
//! elsewhere): resident state, ticked execution. Every test checks exact outputs,
//! counters and reports.
#![cfg(feature = "wgpu")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre_runtime::abi::{Command, State};
use gyre_runtime::backend::group::{Message, Route, SendError, Target};
use gyre_runtime::backend::wgpu::adapter::{self, AdapterChoice, GpuContext};
use gyre_runtime::backend::wgpu::codegen::WgslHandler;
use gyre_runtime::backend::wgpu::group::{WgpuGroup, WgpuGroupPlan, WgpuKernelPlan};

const TIMEOUT: Duration = Duration::from_secs(30);

fn gpu() -> Option<Arc<GpuContext>> {
    static GPU: std::sync::OnceLock<Option<Arc<GpuContext>>> = std::sync::OnceLock::new();
    GPU.get_or_init(|| match adapter::open(AdapterChoice::AllowSoftware) {
        Ok(gpu) => Some(Arc::new(gpu)),
        Err(e) => {
            assert!(
                std::env::var("GYRE_WGPU_ALLOW_SOFTWARE").as_deref() != Ok("1"),
                "CI asked for a wgpu adapter and none opened: {e}"
            );
            eprintln!("SKIPPED (no wgpu adapter): {e}");
            None
        }
    })
    .clone()
}

fn echo8() -> WgslHandler {
    WgslHandler::Source {
        function: "test_echo8".into(),
        file: "test_echo8.wgsl".into(),
        source: "fn test_echo8(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {\n\
                 \x20   return gyre_emit(ctx, 0u, msg, 8u);\n}\n"
            .into(),
    }
}

fn launch(gpu: &Arc<GpuContext>, kernels: Vec<WgpuKernelPlan>, routes: Vec<Route>) -> WgpuGroup {
    WgpuGroup::launch(
        Arc::clone(gpu),
        WgpuGroupPlan {
            name: "test".into(),
            kernels,
            routes,
        },
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("launch failed: {e}"))
}

fn value(m: &Message) -> u64 {
    u64::from_ne_bytes(m.payload[..8].try_into().unwrap())
}

#[test]
fn echo_round_trip() {
    let Some(gpu) = gpu() else { return };
    let group = launch(&gpu, vec![WgpuKernelPlan::new("echo", echo8())], vec![]);
    group.activate_all().unwrap();
    assert_eq!(group.state(0), State::Active);
    for i in 0..100u64 {
        group
            .send(0, &i.to_ne_bytes(), [i as u32, 7], TIMEOUT)
            .unwrap();
    }
    for i in 0..100u64 {
        let m = group.recv_timeout(0, TIMEOUT).unwrap();
        assert_eq!(value(&m), i);
        assert_eq!(m.corr, [i as u32, 7]);
        assert_eq!(m.sender(), 0);
    }
    let report = group.drain(TIMEOUT);
    assert!(!report.timed_out, "{report:?}");
    assert_eq!(report.kernels[0].state, State::Terminated);
    assert_eq!(report.kernels[0].counters.processed, 100);
    assert_eq!(report.undelivered_count(), 0);
    let _ = (
        Command::Pause,
        Target::Host,
        Instant::now(),
        SendError::Faulted(String::new()),
    );
}
