//! Scenarios shared by the emulated conformance tests and the GPU tests: each takes a
//! device and checks real behaviour (exact outputs, counters, reports).
#![allow(dead_code, clippy::missing_panics_doc)]

use std::sync::Arc;
use std::time::Duration;

use gyre_runtime::abi::State;
use gyre_runtime::backend::cuda::codegen::HandlerCode;
use gyre_runtime::backend::cuda::{CudaGroup, Device, GroupPlan, KernelPlan, Route, Target};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A user handler that emits its 8-byte input back, unchanged.
pub fn echo8() -> HandlerCode {
    HandlerCode::Source {
        function: "test_echo8".into(),
        file: "test_echo8.cu".into(),
        source: "__device__ int test_echo8(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {\n\
                 \x20   return gyre_emit(ctx, 0, msg, 8);\n}\n"
            .into(),
    }
}

pub struct Scenarios {
    device: Arc<dyn Device>,
    threads: u32,
}

impl Scenarios {
    pub fn new(device: Arc<dyn Device>) -> Self {
        let threads = if device.is_emulated() { 4 } else { 64 };
        Self { device, threads }
    }

    fn launch(&self, kernels: Vec<KernelPlan>, routes: Vec<Route>) -> CudaGroup {
        CudaGroup::launch(
            Arc::clone(&self.device),
            GroupPlan {
                name: "test".into(),
                kernels,
                routes,
                threads: self.threads,
            },
            TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("launch failed: {e}"))
    }

    pub fn echo_round_trip(&self) {
        let group = self.launch(vec![KernelPlan::new("echo", echo8())], vec![]);
        group.activate_all().unwrap();
        assert_eq!(group.state(0), State::Active);
        for i in 0..100u64 {
            group
                .send(0, &i.to_ne_bytes(), [i as u32, 7], TIMEOUT)
                .unwrap();
        }
        for i in 0..100u64 {
            let m = group.recv_timeout(0, TIMEOUT).unwrap();
            assert_eq!(u64::from_ne_bytes(m.payload[..8].try_into().unwrap()), i);
            assert_eq!(m.corr, [i as u32, 7]);
            assert_eq!(m.sender(), 0);
        }
        let report = group.drain(TIMEOUT);
        assert!(!report.timed_out);
        assert_eq!(report.kernels[0].state, State::Terminated);
        assert_eq!(report.kernels[0].counters.processed, 100);
        assert_eq!(report.kernels[0].counters.received, 100);
        assert_eq!(report.kernels[0].counters.emitted, 100);
        assert_eq!(report.undelivered_count(), 0);
        let _ = (Route {
            from: 0,
            port: 0,
            to: Target::Host,
        },);
    }
}
