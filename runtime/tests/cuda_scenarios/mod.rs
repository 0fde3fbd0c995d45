//! Scenarios shared by the emulated conformance tests and the GPU tests: each takes a
//! device and checks real behaviour (exact outputs, counters, reports).
#![allow(dead_code, clippy::missing_panics_doc)]

use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use gyre_runtime::abi::{Command, State};
use gyre_runtime::backend::cuda::codegen::HandlerCode;
use gyre_runtime::backend::cuda::group::{Message, SendError};
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
    }

    /// Cursors start just below u32::MAX and wrap while 16-slot rings go round 40 laps.
    pub fn wraparound_past_u32_max(&self) {
        let mut k = KernelPlan::new("echo", echo8());
        k.capacity = 16;
        k.out_capacity = 16;
        k.origin = u32::MAX - 37;
        let group = self.launch(vec![k], vec![]);
        group.activate_all().unwrap();
        let total = 640u64;
        let mut next = 0u64;
        let mut got = 0u64;
        let deadline = Instant::now() + TIMEOUT;
        while got < total {
            assert!(Instant::now() < deadline, "stuck at {got} of {total}");
            while next < total && group.try_send(0, &next.to_ne_bytes(), [0, 0]).is_ok() {
                next += 1;
            }
            while let Some(m) = group.try_recv(0).unwrap() {
                assert_eq!(value(&m), got, "out of order");
                got += 1;
            }
        }
        let report = group.drain(TIMEOUT);
        assert_eq!(report.kernels[0].counters.processed, total);
        assert_eq!(report.undelivered_count(), 0);
    }

    /// A kernel not yet active fills its inbox: a send fails with Full; a host that does
    /// not receive fills the outbox: the kernel stalls, counts it, and goes on when the
    /// host receives. Nothing is lost or duplicated.
    pub fn full_rings(&self) {
        let mut k = KernelPlan::new("echo", echo8());
        k.capacity = 8;
        k.out_capacity = 4;
        let group = self.launch(vec![k], vec![]);
        for i in 0..8u64 {
            group.try_send(0, &i.to_ne_bytes(), [0, 0]).unwrap();
        }
        let full = group.try_send(0, &8u64.to_ne_bytes(), [0, 0]);
        assert!(matches!(full, Err(SendError::Full { .. })), "{full:?}");
        group.activate_all().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while group.counters(0).stalls == 0 {
            assert!(
                Instant::now() < deadline,
                "a full outbox must count a stall"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let got: Vec<u64> = (0..8)
            .map(|_| value(&group.recv_timeout(0, TIMEOUT).unwrap()))
            .collect();
        assert_eq!(got, (0..8).collect::<Vec<_>>());
        for i in 8..16u64 {
            group.send(0, &i.to_ne_bytes(), [0, 0], TIMEOUT).unwrap();
        }
        let got: Vec<u64> = (8..16)
            .map(|_| value(&group.recv_timeout(0, TIMEOUT).unwrap()))
            .collect();
        assert_eq!(got, (8..16).collect::<Vec<_>>());
        let report = group.drain(TIMEOUT);
        assert_eq!(report.kernels[0].counters.processed, 16);
        assert_eq!(report.undelivered_count(), 0);
    }

    /// Drain with messages in flight through a 3-kernel pipeline on small rings, the host
    /// not receiving until the drain returned: every output is still received, in order.
    pub fn drain_with_messages_in_flight(&self) {
        let mut kernels = Vec::new();
        for name in ["a", "b", "c"] {
            let mut k = KernelPlan::new(name, echo8());
            k.capacity = 8;
            k.out_capacity = 8;
            kernels.push(k);
        }
        let routes = vec![
            Route {
                from: 0,
                port: 0,
                to: Target::Kernel(1),
            },
            Route {
                from: 1,
                port: 0,
                to: Target::Kernel(2),
            },
        ];
        let group = self.launch(kernels, routes);
        group.activate_all().unwrap();
        // A sender keeps sending while the drain starts; the drain closes the inbox and
        // every accepted message must come out the other end.
        let accepted = std::thread::scope(|scope| {
            let sender = scope.spawn(|| {
                let mut accepted = 0u64;
                while accepted < 10_000 {
                    match group.send(0, &accepted.to_ne_bytes(), [0, 0], TIMEOUT) {
                        Ok(()) => accepted += 1,
                        Err(SendError::Closed { .. }) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                accepted
            });
            std::thread::sleep(Duration::from_millis(30));
            let report = group.drain(TIMEOUT);
            assert!(!report.timed_out, "{report:?}");
            assert_eq!(report.undelivered_count(), 0);
            let accepted = sender.join().unwrap();
            for (k, r) in report.kernels.iter().enumerate() {
                assert_eq!(r.state, State::Terminated, "kernel {k}");
                assert_eq!(r.counters.processed, accepted, "kernel {k}");
            }
            accepted
        });
        assert!(
            accepted >= 24,
            "messages must be in flight when the drain starts: {accepted}"
        );
        let total = accepted;
        let mut got = Vec::new();
        while let Some(m) = group.try_recv(2).unwrap() {
            assert_eq!(m.sender(), 2);
            got.push(value(&m));
        }
        assert_eq!(got, (0..total).collect::<Vec<_>>());
        assert!(
            group.try_send(0, &1u64.to_ne_bytes(), [0, 0]).is_err(),
            "a drained kernel takes nothing more"
        );
    }

    /// Terminate hands back everything: queued inputs, what sits in a kernel-to-kernel
    /// ring, and the output of the message in hand that found no room.
    pub fn terminate_returns_undelivered(&self) {
        let up = KernelPlan::new("up", echo8());
        let mut down = KernelPlan::new("down", echo8());
        down.capacity = 4;
        let group = self.launch(
            vec![up, down],
            vec![Route {
                from: 0,
                port: 0,
                to: Target::Kernel(1),
            }],
        );
        // Only the upstream runs: the route fills (4), then an output waits for room.
        group.command(0, Command::Activate).unwrap();
        let total = 20u64;
        for i in 0..total {
            group
                .send(0, &i.to_ne_bytes(), [i as u32, 0], TIMEOUT)
                .unwrap();
        }
        let deadline = Instant::now() + TIMEOUT;
        while group.counters(0).stalls == 0 {
            assert!(
                Instant::now() < deadline,
                "the upstream must stall on the full route"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let report = group.terminate();
        assert!(report.fault.is_none(), "{report:?}");
        let in_route: Vec<u64> = report.kernels[1].undelivered.iter().map(value).collect();
        let pending: Vec<u64> = report.kernels[0]
            .undelivered_outputs
            .iter()
            .map(|(_, m)| value(m))
            .collect();
        let queued: Vec<u64> = report.kernels[0].undelivered.iter().map(value).collect();
        assert_eq!(
            in_route,
            vec![0, 1, 2, 3],
            "the route's ring comes back, in order"
        );
        assert_eq!(
            pending,
            vec![4],
            "the output of the message in hand comes back"
        );
        let mut all: Vec<u64> = in_route
            .iter()
            .chain(&pending)
            .chain(&queued)
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..total).collect::<Vec<_>>(),
            "every message exactly once"
        );
        assert_eq!(report.kernels[0].state, State::Terminated);
        assert_eq!(report.kernels[1].state, State::Terminated);
        assert_eq!(report.kernels[1].counters.processed, 0);
    }
}

pub fn value(m: &Message) -> u64 {
    u64::from_ne_bytes(m.payload[..8].try_into().unwrap())
}
