//! Scenarios shared by the emulated conformance tests and the GPU tests: each takes a
//! device and checks real behaviour (exact outputs, counters, reports).
#![allow(dead_code, clippy::missing_panics_doc)]

use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use gyre_runtime::abi::{Command, State};
use gyre_runtime::backend::cuda::codegen::HandlerCode;
use gyre_runtime::backend::cuda::group::{GroupReport, Message, SendError};
use gyre_runtime::backend::cuda::seam::WatchedCudaGroup;
use gyre_runtime::backend::cuda::{CudaGroup, Device, GroupPlan, KernelPlan, Route, Target};
use gyre_runtime::backend::seam::DeviceGroup as _;

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

/// `group` with its watcher thread: what waits on it (sends, receives) waits on a
/// signal, as the public API does.
fn watched(group: CudaGroup) -> WatchedCudaGroup {
    WatchedCudaGroup::new(group).expect("watcher thread")
}

impl Scenarios {
    pub fn new(device: Arc<dyn Device>) -> Self {
        let threads = if device.is_emulated() { 4 } else { 64 };
        Self { device, threads }
    }

    fn launch(&self, kernels: Vec<KernelPlan>, routes: Vec<Route>) -> WatchedCudaGroup {
        watched(
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
            .unwrap_or_else(|e| panic!("launch failed: {e}")),
        )
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
        let so_far = std::sync::atomic::AtomicU64::new(0);
        let accepted = std::thread::scope(|scope| {
            let sender = scope.spawn(|| {
                let mut accepted = 0u64;
                while accepted < 10_000 {
                    match group.send(0, &accepted.to_ne_bytes(), [0, 0], TIMEOUT) {
                        Ok(()) => {
                            accepted += 1;
                            so_far.store(accepted, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(SendError::Closed { .. }) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                accepted
            });
            // Drain once the rings are full of messages in flight (however slow the
            // machine), while the sender still sends.
            let deadline = Instant::now() + TIMEOUT;
            while so_far.load(std::sync::atomic::Ordering::Relaxed) < 24 {
                assert!(Instant::now() < deadline, "the sender made no progress");
                std::thread::sleep(Duration::from_millis(1));
            }
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

    /// A handler that reports an error: the message goes to the dead letters with the
    /// code, the error is counted, the other messages flow, and the kernel keeps running.
    pub fn handler_error_goes_to_dead_letters(&self) {
        let handler = HandlerCode::Source {
            function: "odd_fails".into(),
            file: "odd_fails.cu".into(),
            source: "__device__ int odd_fails(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {\n\
                     \x20   unsigned long long v = *(const unsigned long long *)msg;\n\
                     \x20   if (v % 2u == 1u) { return 7; }\n\
                     \x20   return gyre_emit(ctx, 0, msg, 8);\n}\n"
                .into(),
        };
        let group = self.launch(vec![KernelPlan::new("odd", handler)], vec![]);
        group.activate_all().unwrap();
        for i in 0..50u64 {
            group
                .send(0, &i.to_ne_bytes(), [i as u32, 1], TIMEOUT)
                .unwrap();
        }
        let got: Vec<u64> = (0..25)
            .map(|_| value(&group.recv_timeout(0, TIMEOUT).unwrap()))
            .collect();
        assert_eq!(got, (0..50).filter(|v| v % 2 == 0).collect::<Vec<_>>());
        let report = group.drain(TIMEOUT);
        assert_eq!(report.kernels[0].counters.errors, 25);
        assert_eq!(report.kernels[0].counters.processed, 50);
        let letters = group.take_dead_letters();
        assert_eq!(letters.len(), 25);
        for (n, letter) in letters.iter().enumerate() {
            let v = u64::from_ne_bytes(letter.payload[..8].try_into().unwrap());
            assert_eq!(v, 2 * n as u64 + 1, "in order");
            assert!(letter.is_input);
            assert_eq!(letter.corr, [v as u32, 1]);
            assert!(letter.reason.contains("error code 7"), "{}", letter.reason);
            assert_eq!(letter.kernel, "odd");
        }
    }

    /// The heartbeat moves while the kernel is resident, idle or not; counters are exact.
    pub fn heartbeat_and_counters(&self) {
        let group = self.launch(vec![KernelPlan::new("echo", echo8())], vec![]);
        group.activate_all().unwrap();
        let before = group.sample(0).heartbeat;
        std::thread::sleep(Duration::from_millis(50));
        let after = group.sample(0).heartbeat;
        assert_ne!(before, after, "an idle resident kernel still beats");
        for i in 0..10u64 {
            group.send(0, &i.to_ne_bytes(), [0, 0], TIMEOUT).unwrap();
        }
        for _ in 0..10 {
            group.recv_timeout(0, TIMEOUT).unwrap();
        }
        let health = group.health(0, &gyre_runtime::health::HealthPolicy::default());
        assert_eq!(
            health.status,
            gyre_runtime::health::HealthStatus::Healthy,
            "{health:?}"
        );
        let c = group.counters(0);
        assert_eq!(
            (c.received, c.processed, c.emitted, c.errors),
            (10, 10, 10, 0)
        );
        // Pause: messages queue, none is processed, none is lost.
        assert_eq!(group.command(0, Command::Pause).unwrap(), State::Paused);
        for i in 10..20u64 {
            group.send(0, &i.to_ne_bytes(), [0, 0], TIMEOUT).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            group.counters(0).processed,
            10,
            "a paused kernel processes nothing"
        );
        assert_eq!(group.sample(0).inbox_depth, 10);
        assert_eq!(group.command(0, Command::Activate).unwrap(), State::Active);
        let got: Vec<u64> = (0..10)
            .map(|_| value(&group.recv_timeout(0, TIMEOUT).unwrap()))
            .collect();
        assert_eq!(got, (10..20).collect::<Vec<_>>());
        let report = group.drain(TIMEOUT);
        assert_eq!(report.kernels[0].counters.processed, 20);
    }

    /// A port bound to the dead letters, and a route to a kernel that stopped: both land
    /// in the dead letters with their reason; nothing is lost.
    pub fn dead_letter_routes(&self) {
        let split = HandlerCode::Source {
            function: "split".into(),
            file: "split.cu".into(),
            source: "__device__ int split(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {\n\
                     \x20   unsigned long long v = *(const unsigned long long *)msg;\n\
                     \x20   return gyre_emit(ctx, v % 2u == 0u ? 0u : 1u, msg, 8);\n}\n"
                .into(),
        };
        let mut up = KernelPlan::new("split", split);
        up.ports = 2;
        let mut down = KernelPlan::new("down", echo8());
        down.capacity = 2;
        let group = self.launch(
            vec![up, down],
            vec![
                Route {
                    from: 0,
                    port: 0,
                    to: Target::Kernel(1),
                },
                Route {
                    from: 0,
                    port: 1,
                    to: Target::DeadLetters,
                },
            ],
        );
        group.activate_all().unwrap();
        // Stop the downstream: even values then find it stopped once its ring is full.
        group.command(1, Command::Terminate).unwrap();
        let total = 40u64;
        for i in 0..total {
            group.send(0, &i.to_ne_bytes(), [0, 0], TIMEOUT).unwrap();
        }
        let deadline = Instant::now() + TIMEOUT;
        while group.counters(0).processed < total {
            assert!(
                Instant::now() < deadline,
                "the upstream must not block on a stopped kernel"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let report = group.terminate();
        let letters = group.take_dead_letters();
        let odd: Vec<u64> = letters
            .iter()
            .filter(|l| l.reason.contains("bound to the dead letters"))
            .map(|l| u64::from_ne_bytes(l.payload[..8].try_into().unwrap()))
            .collect();
        let stopped: Vec<u64> = letters
            .iter()
            .filter(|l| l.reason.contains("has stopped"))
            .map(|l| u64::from_ne_bytes(l.payload[..8].try_into().unwrap()))
            .collect();
        assert_eq!(odd, (0..total).filter(|v| v % 2 == 1).collect::<Vec<_>>());
        assert!(letters.iter().all(|l| !l.is_input));
        let in_ring: Vec<u64> = report.kernels[1].undelivered.iter().map(value).collect();
        let mut even: Vec<u64> = stopped.iter().chain(&in_ring).copied().collect();
        even.sort_unstable();
        assert_eq!(
            even,
            (0..total).filter(|v| v % 2 == 0).collect::<Vec<_>>(),
            "every even value once"
        );
        assert_eq!(in_ring.len(), 2, "the stopped kernel's ring holds what fit");
    }

    /// Two handlers that each define a helper of the same name compile into one group
    /// (each user source has its own namespace), and each kernel calls its own.
    pub fn handlers_have_their_own_namespaces(&self) {
        let handler = |function: &str, add: u32| {
            HandlerCode::Source {
            function: function.into(),
            file: format!("{function}.cu"),
            source: format!(
                "__device__ unsigned long long helper(unsigned long long v) {{ return v + {add}u; }}\n\
                 __device__ int {function}(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {{\n\
                 \x20   unsigned long long v = helper(*(const unsigned long long *)msg);\n\
                 \x20   return gyre_emit(ctx, 0, &v, 8);\n}}\n"
            ),
        }
        };
        let group = self.launch(
            vec![
                KernelPlan::new("plus1", handler("plus1", 1)),
                KernelPlan::new("plus10", handler("plus10", 10)),
            ],
            vec![Route {
                from: 0,
                port: 0,
                to: Target::Kernel(1),
            }],
        );
        group.activate_all().unwrap();
        for i in 0..20u64 {
            group.send(0, &i.to_ne_bytes(), [0, 0], TIMEOUT).unwrap();
        }
        let got: Vec<u64> = (0..20)
            .map(|_| value(&group.recv_timeout(1, TIMEOUT).unwrap()))
            .collect();
        assert_eq!(got, (11..31).collect::<Vec<_>>());
        assert_eq!(group.drain(TIMEOUT).undelivered_count(), 0);
    }

    /// A port bound to the dead letters takes far more messages than the dead-letter ring
    /// holds while the host never asks for them: the host collects them as it sends and
    /// receives, the group never stalls, and every one is there at the end.
    pub fn dead_letters_never_stall_the_group(&self) {
        let mut k = KernelPlan::new("to-dead", echo8());
        k.capacity = 16;
        let group = self.launch(
            vec![k],
            vec![Route {
                from: 0,
                port: 0,
                to: Target::DeadLetters,
            }],
        );
        group.activate_all().unwrap();
        let total = 2_000u64;
        for i in 0..total {
            group
                .send(0, &i.to_ne_bytes(), [0, 0], Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("message {i}: {e}"));
        }
        let report = group.drain(TIMEOUT);
        assert!(!report.timed_out, "{report:?}");
        assert_eq!(report.undelivered_count(), 0);
        let letters: Vec<u64> = group
            .take_dead_letters()
            .iter()
            .map(|l| u64::from_ne_bytes(l.payload[..8].try_into().unwrap()))
            .collect();
        assert_eq!(letters, (0..total).collect::<Vec<_>>());
    }

    /// A receiver that reads the kernel's state, then finds nothing to receive, while the
    /// kernel said `Terminated`, has everything: nothing more comes (outputs moving from
    /// the outbox ring to the host's queue during a terminate are never invisible).
    pub fn terminated_means_nothing_more_comes(&self) {
        let total = 1000u64;
        for round in 0..50 {
            let mut k = KernelPlan::new("echo", echo8());
            k.capacity = 1024;
            k.out_capacity = 1024;
            let group = self.launch(vec![k], vec![]);
            group.activate_all().unwrap();
            for i in 0..total {
                group.send(0, &i.to_ne_bytes(), [0, 0], TIMEOUT).unwrap();
            }
            let deadline = Instant::now() + TIMEOUT;
            while group.counters(0).processed < total {
                assert!(Instant::now() < deadline, "the kernel made no progress");
                std::thread::sleep(Duration::from_millis(1));
            }
            // The receiver takes outputs one by one while a terminate moves the rest to
            // the host's queue.
            let got = std::thread::scope(|scope| {
                let receiver = scope.spawn(|| {
                    let mut got = 0u64;
                    let mut ended = false;
                    loop {
                        let state = group.state(0);
                        match group.try_recv(0).unwrap() {
                            Some(_) => {
                                assert!(
                                    !ended,
                                    "round {round}: an output came after `Terminated` and \
                                     nothing to receive (output {got})"
                                );
                                got += 1;
                            }
                            None if state == State::Terminated => {
                                if ended {
                                    return got;
                                }
                                ended = true;
                            }
                            None => std::thread::yield_now(),
                        }
                    }
                });
                let report = group.terminate();
                assert_eq!(report.undelivered_count(), 0);
                receiver.join().unwrap()
            });
            assert_eq!(got, total, "round {round}");
        }
    }

    /// A handler that does not compile: the launch fails with the compiler's log, which
    /// names the handler's file and line.
    pub fn compile_error_names_the_line(&self) {
        let broken = HandlerCode::Source {
            function: "broken".into(),
            file: "broken.cu".into(),
            source: "__device__ int broken(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {\n\
                     \x20   return gyre_emit(ctx, 0, msg 8);\n}\n"
                .into(),
        };
        let err = CudaGroup::launch(
            Arc::clone(&self.device),
            GroupPlan {
                name: "broken".into(),
                kernels: vec![KernelPlan::new("broken", broken)],
                routes: vec![],
                threads: self.threads,
            },
            TIMEOUT,
        )
        .expect_err("a syntax error must fail the launch");
        let text = err.to_string();
        assert!(
            text.contains("broken.cu:2") || text.contains("broken.cu(2)"),
            "the error must name the file and line: {text}"
        );
    }

    /// Every built-in, fed the same random records as its CPU reference, emits the same
    /// bytes to the same ports in the same order.
    pub fn builtins_match_reference(&self) {
        use gyre_runtime::builtins::{Builtin, Record};
        let builtins = [
            Builtin::Echo { bytes: 16 },
            Builtin::Affine { a: 1.5, b: -0.25 },
            Builtin::Filter { lo: -1.0, hi: 2.5 },
            Builtin::Window { size: 7 },
            Builtin::Histogram {
                bins: 5,
                lo: -3.0,
                hi: 4.0,
                every: 9,
            },
            Builtin::Scatter { ports: 3 },
            Builtin::Gather,
        ];
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let inputs: Vec<Record> = (0..300u32)
            .map(|seq| {
                let r = next();
                let value = match r % 17 {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => -0.0,
                    _ => ((r >> 16) % 20_000) as f32 / 1000.0 - 10.0,
                };
                Record {
                    key: (r >> 40) as u32,
                    seq,
                    value,
                    aux: r as u32,
                }
            })
            .collect();
        for builtin in builtins {
            let plan = KernelPlan::builtin(builtin.name(), &builtin).unwrap();
            let ports = plan.ports as usize;
            let group = self.launch(vec![plan], vec![]);
            // Several ports to the host share the kernel's outbox, in emit order.
            let mut expected: Vec<(u32, Vec<u8>)> = Vec::new();
            let mut reference = builtin.reference();
            for input in &inputs {
                reference
                    .handle(bytemuck::bytes_of(input), &mut |port, bytes| {
                        expected.push((port, bytes.to_vec()));
                    })
                    .unwrap();
            }
            group.activate_all().unwrap();
            let mut got: Vec<Vec<u8>> = Vec::new();
            for input in &inputs {
                group
                    .send(0, bytemuck::bytes_of(input), [0, 0], TIMEOUT)
                    .unwrap();
                while let Some(m) = group.try_recv(0).unwrap() {
                    got.push(m.payload);
                }
            }
            let report = group.drain(TIMEOUT);
            assert_eq!(report.undelivered_count(), 0);
            while let Some(m) = group.try_recv(0).unwrap() {
                got.push(m.payload);
            }
            assert_eq!(
                got.len(),
                expected.len(),
                "{}: output count",
                builtin.name()
            );
            for (n, ((_, want), have)) in expected.iter().zip(&got).enumerate() {
                assert_eq!(
                    &have[..want.len()],
                    &want[..],
                    "{}: output {n} differs",
                    builtin.name()
                );
            }
            assert_eq!(group.take_dead_letters().len(), 0, "{}", builtin.name());
            let _ = ports;
        }
    }
}

/// Where one id of the soak ended, for the exactly-once check.
fn tally(
    seen: &mut std::collections::HashMap<u32, Vec<&'static str>>,
    id: u32,
    place: &'static str,
) {
    seen.entry(id).or_default().push(place);
}

/// The seq of a record payload.
fn seq_of(payload: &[u8]) -> u32 {
    bytemuck::pod_read_unaligned::<gyre_runtime::builtins::Record>(&payload[..16]).seq
}

/// Checks that every id in `accepted` came back exactly once in round `round` (stop
/// `action`): received, in a report, or in the dead letters; and no other id came back.
fn check_exactly_once(
    round: u32,
    action: u64,
    accepted: &[u32],
    received: Vec<u32>,
    reports: &[GroupReport],
    letters: &[gyre_runtime::routing::DeadLetter],
) {
    let mut seen: std::collections::HashMap<u32, Vec<&'static str>> =
        std::collections::HashMap::new();
    for n in received {
        tally(&mut seen, n, "received");
    }
    for report in reports {
        assert!(report.fault.is_none(), "round {round}: {report:?}");
        for k in &report.kernels {
            assert_eq!(k.state, State::Terminated, "round {round}: {}", k.name);
            for m in &k.undelivered {
                tally(&mut seen, seq_of(&m.payload), "undelivered");
            }
            for (_, m) in &k.undelivered_outputs {
                tally(&mut seen, seq_of(&m.payload), "undelivered output");
            }
        }
    }
    for letter in letters {
        tally(&mut seen, seq_of(&letter.payload), "dead letter");
    }
    for n in accepted {
        match seen.remove(n).as_deref() {
            Some([_]) => {}
            Some(places) => panic!(
                "round {round} (action {action}): id {n} came back {} times: {places:?}",
                places.len()
            ),
            None => panic!("round {round} (action {action}): id {n} was lost"),
        }
    }
    assert!(
        seen.is_empty(),
        "round {round}: ids never sent came back: {:?}",
        seen.keys().collect::<Vec<_>>()
    );
}

/// The soak's sender: `try_send`s ids from `first` on until the inbox is closed, or
/// full after `stop`; returns the ids accepted.
fn soak_sender(
    group: &WatchedCudaGroup,
    first: u32,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<u32> {
    let mut accepted = Vec::new();
    let mut n = first;
    loop {
        let record = gyre_runtime::builtins::Record {
            key: n,
            seq: n,
            value: 1.0,
            aux: 0,
        };
        match group.try_send(0, bytemuck::bytes_of(&record), [n, 0]) {
            Ok(()) => {
                accepted.push(n);
                n += 1;
            }
            Err(SendError::Full { .. }) => {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                std::thread::yield_now();
            }
            Err(SendError::Closed { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    accepted
}

/// The soak's receiver: takes the gather's outputs until `stop`, checking that none
/// comes after an empty look once the gather had acknowledged its stop (the state read
/// first); returns the ids and whether it saw that end.
fn soak_receiver(
    group: &WatchedCudaGroup,
    round: u32,
    stop: &std::sync::atomic::AtomicBool,
) -> (Vec<u32>, bool) {
    let mut got = Vec::new();
    let mut ended = false;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let state = group.state(3);
        match group.try_recv(3) {
            Ok(Some(m)) => {
                assert!(
                    !ended,
                    "round {round}: an output came after the gather had stopped and nothing \
                     was left"
                );
                got.push(seq_of(&m.payload));
            }
            Ok(None) => {
                ended |= state == State::Terminated;
                std::thread::yield_now();
            }
            Err(e) => panic!("{e}"),
        }
    }
    (got, ended)
}

impl Scenarios {
    /// The soak group: scatter → two affines → gather, 16-slot rings.
    fn soak_group(&self, threads: u32, command_timeout: Duration) -> WatchedCudaGroup {
        use gyre_runtime::builtins::Builtin;
        let mut kernels = vec![
            KernelPlan::builtin("scatter", &Builtin::Scatter { ports: 2 }).unwrap(),
            KernelPlan::builtin("affine0", &Builtin::Affine { a: 1.0, b: 0.0 }).unwrap(),
            KernelPlan::builtin("affine1", &Builtin::Affine { a: 1.0, b: 0.0 }).unwrap(),
            KernelPlan::builtin("gather", &Builtin::Gather).unwrap(),
        ];
        for k in &mut kernels {
            k.capacity = 16;
            k.out_capacity = 16;
        }
        let route = |from, port, to| Route {
            from,
            port,
            to: Target::Kernel(to),
        };
        watched(
            CudaGroup::launch(
                Arc::clone(&self.device),
                GroupPlan {
                    name: "soak".into(),
                    kernels,
                    routes: vec![
                        route(0, 0, 1),
                        route(0, 1, 2),
                        route(1, 0, 3),
                        route(2, 0, 3),
                    ],
                    threads,
                },
                command_timeout,
            )
            .unwrap_or_else(|e| panic!("launch failed: {e}")),
        )
    }

    /// Random stops under load: one `try_send` sender and one receiver run while the group
    /// is drained with short timeouts or terminated, repeatedly and concurrently. Every
    /// accepted id comes back exactly once: received, in a report (inputs left in a ring or
    /// outputs left unpublished) or in the dead letters; no stop takes longer than its
    /// timeout plus 3 s. `rounds` rounds of `load` of load each (random up to it). The
    /// seed is printed; `GYRE_SOAK_SEED` reruns one, `GYRE_SOAK_ACTION` (0 to 5) picks one
    /// kind of stop for every round.
    pub fn random_stops_hand_back_every_message_once(&self, rounds: u32, load: Duration) {
        use std::sync::atomic::{AtomicBool, Ordering};
        let command_timeout = Duration::from_secs(5);
        let slack = Duration::from_secs(3);
        let mut rng = std::env::var("GYRE_SOAK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            });
        eprintln!("soak seed {rng} (GYRE_SOAK_SEED reruns it)");
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut id = 0u32;
        for round in 0..rounds {
            let group = self.soak_group(self.threads, command_timeout);
            group.activate_all().unwrap();
            let first = id;
            let load_for = Duration::from_micros(next() % (load.as_micros() as u64).max(1));
            let action = std::env::var("GYRE_SOAK_ACTION")
                .ok()
                .and_then(|a| a.parse().ok())
                .unwrap_or(next() % 6);
            let drain_for = Duration::from_micros(next() % 3000);
            let stop_sender = AtomicBool::new(false);
            let (accepted, received, reports) = std::thread::scope(|scope| {
                let sender = scope.spawn(|| soak_sender(&group, first, &stop_sender));
                let receiver = scope.spawn(|| soak_receiver(&group, round, &stop_sender));
                // A failed assertion below must not leave the sender and receiver running.
                struct Stop<'a>(&'a AtomicBool);
                impl Drop for Stop<'_> {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::Relaxed);
                    }
                }
                let _stop = Stop(&stop_sender);
                std::thread::sleep(load_for);
                let timed = |what: &str, limit: Duration, stop: &dyn Fn() -> GroupReport| {
                    let started = Instant::now();
                    let report = stop();
                    let took = started.elapsed();
                    assert!(
                        took <= limit + slack,
                        "round {round}: {what} took {took:?} (limit {limit:?} + {slack:?})"
                    );
                    report
                };
                let terminate = || timed("terminate", command_timeout, &|| group.terminate());
                let drain = || timed("drain", drain_for, &|| group.drain(drain_for));
                let mut reports = match action {
                    0 => vec![terminate()],
                    1 => vec![drain()],
                    2 => vec![terminate(), terminate()],
                    3 => vec![drain(), drain(), terminate()],
                    4 => std::thread::scope(|s| {
                        let a = s.spawn(terminate);
                        let b = s.spawn(terminate);
                        vec![a.join().unwrap(), b.join().unwrap()]
                    }),
                    _ => std::thread::scope(|s| {
                        let a = s.spawn(drain);
                        let b = s.spawn(terminate);
                        vec![a.join().unwrap(), b.join().unwrap()]
                    }),
                };
                stop_sender.store(true, Ordering::Relaxed);
                let accepted = sender.join().unwrap();
                let (mut received, ended) = receiver.join().unwrap();
                // A last stop hands back nothing new; then every output left is receivable.
                reports.push(group.terminate());
                while let Some(m) = group.try_recv(3).unwrap() {
                    assert!(!ended, "round {round}: an output came after the end");
                    received.push(seq_of(&m.payload));
                }
                (accepted, received, reports)
            });
            id = accepted.last().map_or(id, |last| last + 1);
            let letters = group.take_dead_letters();
            check_exactly_once(round, action, &accepted, received, &reports, &letters);
        }
    }
}

pub fn value(m: &Message) -> u64 {
    u64::from_ne_bytes(m.payload[..8].try_into().unwrap())
}
