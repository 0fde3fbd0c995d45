//! Property, on the wgpu backend (Mesa's lavapipe in CI): over random chains of one to
//! three kernels (a → b → c) with small rings and quanta, random sends, receives, pauses
//! and activations, then a drain or a terminate, every message sent is delivered exactly
//! once or handed back exactly once: by the refused send, in the report (a kernel's
//! `undelivered` or `undelivered_outputs`), or in the dead letters.
//!
//! Every kernel runs the same WGSL handler: it forwards the 8-byte id it receives
//! unchanged, except that a kernel with its fail flag (parameter 0) set returns an error
//! on ids divisible by 7, which sends the id to the dead letters as an input. Outputs of
//! the last kernel are received from the host, including those still receivable after
//! the drain or terminate returned.
//!
//! A third of the cases end in random stops under load (issue 10, defect 11): one to
//! three drains (most with a timeout of a few milliseconds or none) and terminates, one
//! after the other or from several threads at once, while a sender keeps sending and a
//! receiver keeps receiving. A message is handed back once, ever: no id may turn up in
//! two reports.
#![cfg(feature = "wgpu")]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gyre_runtime::abi::Command;
use gyre_runtime::backend::group::{GroupReport, Message, Route, Target};
use gyre_runtime::backend::seam::DeviceGroup as _;
use gyre_runtime::backend::wgpu::adapter::{self, AdapterChoice, GpuContext};
use gyre_runtime::backend::wgpu::codegen::WgslHandler;
use gyre_runtime::backend::wgpu::group::{WgpuGroup, WgpuGroupPlan, WgpuKernelPlan};
use proptest::prelude::*;
use proptest::test_runner::{contextualize_config, TestRunner};

/// Most kernels in a chain.
const MAX_KERNELS: usize = 3;
/// A failing kernel fails ids divisible by this (the handler below says so too).
const FAIL_MOD: u64 = 7;
/// The handler's error code for a failed id.
const FAIL_CODE: u32 = 7;
/// How long a command may wait for its acknowledgement (a tick on lavapipe takes about
/// a millisecond; this only runs out when something is stuck).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the final drain may take while the host receives: it only runs out when
/// something is stuck, and the test then fails.
const DRAIN_WAIT: Duration = Duration::from_secs(10);
/// How long the final drain may take while the host does not receive: the last kernel
/// may stall on a full outbox, and the drain then times out and terminates the rest,
/// which the property covers as well.
const DRAIN_NO_RECV_WAIT: Duration = Duration::from_millis(150);
/// How long a waiting send waits for room.
const SEND_WAIT: Duration = Duration::from_millis(5);

fn gpu() -> Option<Arc<GpuContext>> {
    static GPU: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
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

/// Forwards the id unchanged; fails ids divisible by 7 when parameter 0 is set.
fn forward() -> WgslHandler {
    WgslHandler::Source {
        function: "prop_forward".into(),
        file: "prop_forward.wgsl".into(),
        source: "fn prop_forward(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {\n\
                 \x20   if (gyre_param(ctx, 0u) != 0u && (*msg).w[0] % 7u == 0u) {\n\
                 \x20       return 7u;\n\
                 \x20   }\n\
                 \x20   return gyre_emit(ctx, 0u, msg, 8u);\n}\n"
            .into(),
    }
}

/// How one kernel of the chain is set up.
#[derive(Clone, Debug)]
struct KernelPlan {
    /// Inbox capacity: 2 to 16 slots.
    capacity_log2: u32,
    /// Host outbox capacity: 2 to 16 slots (only the last kernel's is used).
    out_capacity_log2: u32,
    /// Most messages per tick: 1 to 8.
    quantum: u32,
    /// Fails ids divisible by [`FAIL_MOD`].
    fail: bool,
    /// Runs as a workgroup per batch (the handler is stateless): staged emits, prefix sums.
    parallel: bool,
}

fn kernel_plan() -> impl Strategy<Value = KernelPlan> {
    (
        1..=4u32,
        1..=4u32,
        1..=8u32,
        prop::bool::weighted(0.3),
        prop::bool::ANY,
    )
        .prop_map(
            |(capacity_log2, out_capacity_log2, quantum, fail, parallel)| KernelPlan {
                capacity_log2,
                out_capacity_log2,
                quantum,
                fail,
                parallel,
            },
        )
}

/// One step of the host. Kernel numbers are taken modulo the chain's length.
#[derive(Clone, Debug)]
enum Op {
    /// Sends `count` fresh ids to the first kernel, with `try_send` or a `send` that
    /// waits a little for room.
    Send {
        count: u8,
        wait: bool,
    },
    /// Receives up to `count` outputs of the last kernel with `try_recv`.
    Recv(u8),
    Pause(usize),
    Activate(usize),
    /// Lets the ticker run for a few milliseconds.
    Sleep(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..MAX_KERNELS;
    prop_oneof![
        6 => (1..16u8, any::<bool>()).prop_map(|(count, wait)| Op::Send { count, wait }),
        4 => (1..24u8).prop_map(Op::Recv),
        2 => k.clone().prop_map(Op::Pause),
        2 => k.prop_map(Op::Activate),
        3 => (1..4u8).prop_map(Op::Sleep),
    ]
}

/// How the case ends.
#[derive(Clone, Debug)]
enum End {
    /// `drain`, with the host receiving from the last kernel while it runs (or not).
    Drain { receive: bool },
    /// `terminate`.
    Terminate,
    /// Several stops, in sequence or from one thread each at once, while a sender keeps
    /// sending fresh ids and a receiver keeps receiving.
    Stops { stops: Vec<Stop>, concurrent: bool },
}

/// One stop of [`End::Stops`].
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// `drain` with this many milliseconds (short: it often times out under load).
    Drain(u8),
    Terminate,
}

fn stop_op() -> impl Strategy<Value = Stop> {
    prop_oneof![
        3 => (0..4u8).prop_map(Stop::Drain),
        1 => Just(Stop::Drain(50)),
        3 => Just(Stop::Terminate),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    plans: Vec<KernelPlan>,
    /// `activate_all` before the first op.
    activate_first: bool,
    ops: Vec<Op>,
    end: End,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(kernel_plan(), 1..=MAX_KERNELS),
        prop::bool::weighted(0.8),
        prop::collection::vec(op(), 1..32),
        prop_oneof![
            2 => Just(End::Drain { receive: true }),
            1 => Just(End::Drain { receive: false }),
            2 => Just(End::Terminate),
            3 => (prop::collection::vec(stop_op(), 1..=3), any::<bool>())
                .prop_map(|(stops, concurrent)| End::Stops { stops, concurrent }),
        ],
    )
        .prop_map(|(plans, activate_first, ops, end)| Case {
            plans,
            activate_first,
            ops,
            end,
        })
}

/// What an output received from the last kernel while the group runs counts as.
const RECEIVED: &str = "received";
/// What an output received after the drain or terminate returned counts as.
const RECEIVED_AFTER: &str = "received after the group stopped";

/// Where each id ended up.
#[derive(Default)]
struct Ledger {
    sent: Vec<u64>,
    /// Ids received while the group ran (ops and the final drain), in order.
    received_running: Vec<u64>,
    outcomes: HashMap<u64, Vec<String>>,
}

impl Ledger {
    fn record(&mut self, id: u64, how: impl Into<String>) {
        self.outcomes.entry(id).or_default().push(how.into());
    }
}

fn id_of(payload: &[u8]) -> u64 {
    u64::from_ne_bytes(payload[..8].try_into().unwrap())
}

/// Receives up to `count` outputs of the last kernel, checking each is a forwarded id.
fn receive_some(
    group: &WgpuGroup,
    last: usize,
    count: usize,
    ledger: &mut Ledger,
    how: &str,
) -> Result<usize, TestCaseError> {
    let mut n = 0;
    while n < count {
        let Some(m) = group.try_recv(last) else { break };
        check_output(&m, last)?;
        ledger.record(id_of(&m.payload), how);
        if how == RECEIVED {
            ledger.received_running.push(id_of(&m.payload));
        }
        n += 1;
    }
    Ok(n)
}

fn check_output(m: &Message, last: usize) -> Result<(), TestCaseError> {
    let id = id_of(&m.payload);
    prop_assert_eq!(
        m.sender(),
        last as u32,
        "output of id {} from the last kernel",
        id
    );
    prop_assert_eq!(m.corr, [id as u32, 0], "output of id {} keeps its corr", id);
    Ok(())
}

fn absorb(report: &GroupReport, ledger: &mut Ledger) {
    for (k, kernel) in report.kernels.iter().enumerate() {
        for m in &kernel.undelivered {
            ledger.record(id_of(&m.payload), format!("undelivered at k{k}"));
        }
        for (port, m) in &kernel.undelivered_outputs {
            ledger.record(
                id_of(&m.payload),
                format!("undelivered output of k{k} port {port}"),
            );
        }
    }
}

fn launch(gpu: &Arc<GpuContext>, plans: &[KernelPlan]) -> WgpuGroup {
    let kernels = plans
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut plan = WgpuKernelPlan::new(format!("k{i}"), forward());
            plan.capacity = 1 << p.capacity_log2;
            plan.out_capacity = 1 << p.out_capacity_log2;
            plan.quantum = p.quantum;
            // One emit per message: an output ring must have room for max_emits messages
            // before a message is handled, so max_emits must not exceed a 2-slot ring.
            plan.max_emits = 1;
            plan.params[0] = u32::from(p.fail);
            plan.backend.parallel = p.parallel;
            plan
        })
        .collect();
    let routes = (1..plans.len())
        .map(|i| Route {
            from: i - 1,
            port: 0,
            to: Target::Kernel(i),
        })
        .collect();
    WgpuGroup::launch(
        Arc::clone(gpu),
        WgpuGroupPlan {
            name: "props".into(),
            kernels,
            routes,
        },
        COMMAND_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("launch failed: {e}"))
}

/// First id the load sender of [`End::Stops`] sends (the ops' ids stay below it; the
/// handler tests the low word, so ids stay below 2^32).
const LOAD_IDS: u64 = 1 << 31;
/// Most ids the load sender sends.
const LOAD_MAX: u64 = 4096;

/// Runs `stops` (in sequence, or one thread each at once) while one thread sends fresh
/// ids to the first kernel and another receives from the last, until every stop
/// returned. Every report goes into the ledger: an id handed back twice is in it twice.
fn stops_under_load(
    group: &WgpuGroup,
    last: usize,
    stops: &[Stop],
    concurrent: bool,
    ledger: &mut Ledger,
) -> Result<(), TestCaseError> {
    let done = std::sync::atomic::AtomicBool::new(false);
    let run_stop = |stop: Stop| match stop {
        Stop::Drain(ms) => group.drain(Duration::from_millis(ms.into())),
        Stop::Terminate => group.terminate(),
    };
    let (reports, sent, received) = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            // (id, refusal) for each id sent.
            let mut sent: Vec<(u64, Option<String>)> = Vec::new();
            let mut id = LOAD_IDS;
            while !done.load(std::sync::atomic::Ordering::SeqCst) && id < LOAD_IDS + LOAD_MAX {
                let refused = group
                    .try_send(0, &id.to_ne_bytes(), [id as u32, 0])
                    .err()
                    .map(|e| format!("refused: {e}"));
                sent.push((id, refused));
                id += 1;
                std::thread::yield_now();
            }
            sent
        });
        let receiver = s.spawn(|| {
            let mut received = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                match group.try_recv(last) {
                    Some(m) => received.push(m),
                    None => std::thread::yield_now(),
                }
            }
            received
        });
        // Let the load reach the kernels before the first stop.
        std::thread::sleep(Duration::from_millis(2));
        let reports: Vec<GroupReport> = if concurrent {
            let threads: Vec<_> = stops
                .iter()
                .map(|&stop| s.spawn(move || run_stop(stop)))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        } else {
            stops.iter().map(|&stop| run_stop(stop)).collect()
        };
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (reports, sender.join().unwrap(), receiver.join().unwrap())
    });
    for (id, refused) in sent {
        ledger.sent.push(id);
        if let Some(refused) = refused {
            ledger.record(id, refused);
        }
    }
    for m in &received {
        check_output(m, last)?;
        ledger.record(id_of(&m.payload), "received during the stops");
    }
    for (i, report) in reports.iter().enumerate() {
        prop_assert!(report.fault.is_none(), "the group faulted: {report:?}");
        // Only the first stop hands messages back; a later one reports nothing.
        let mut ledger_for = |id: u64, how: String| ledger.record(id, format!("{how} (stop {i})"));
        for (k, kernel) in report.kernels.iter().enumerate() {
            for m in &kernel.undelivered {
                ledger_for(id_of(&m.payload), format!("undelivered at k{k}"));
            }
            for (port, m) in &kernel.undelivered_outputs {
                ledger_for(
                    id_of(&m.payload),
                    format!("undelivered output of k{k} port {port}"),
                );
            }
        }
    }
    // Outputs stay receivable after the group stopped.
    while receive_some(group, last, usize::MAX, ledger, RECEIVED_AFTER)? > 0 {}
    Ok(())
}

/// Drains or terminates the group, then takes every output of the last kernel that is
/// still receivable.
fn stop(
    group: &WgpuGroup,
    last: usize,
    end: &End,
    ledger: &mut Ledger,
) -> Result<(), TestCaseError> {
    let report = match *end {
        End::Drain { receive: true } => {
            // The last kernel needs room for its outputs: receive while the drain runs.
            let (report, received) = std::thread::scope(|s| {
                let drainer = s.spawn(|| group.drain(DRAIN_WAIT));
                let mut received = Vec::new();
                while !drainer.is_finished() {
                    match group.try_recv(last) {
                        Some(m) => received.push(m),
                        None => std::thread::yield_now(),
                    }
                }
                (drainer.join().unwrap(), received)
            });
            for m in &received {
                check_output(m, last)?;
                ledger.record(id_of(&m.payload), "received during the drain");
                ledger.received_running.push(id_of(&m.payload));
            }
            prop_assert!(
                !report.timed_out,
                "a drain with the host receiving timed out: {report:?}"
            );
            report
        }
        End::Drain { receive: false } => group.drain(DRAIN_NO_RECV_WAIT),
        End::Terminate => group.terminate(),
        End::Stops {
            ref stops,
            concurrent,
        } => return stops_under_load(group, last, stops, concurrent, ledger),
    };
    prop_assert!(report.fault.is_none(), "the group faulted: {report:?}");
    absorb(&report, ledger);
    // Outputs stay receivable after the group stopped.
    while receive_some(group, last, usize::MAX, ledger, RECEIVED_AFTER)? > 0 {}
    Ok(())
}

/// Takes the dead letters: ids a failing kernel failed on (inputs), or anything else
/// the backend put there.
fn absorb_dead_letters(
    group: &WgpuGroup,
    plans: &[KernelPlan],
    ledger: &mut Ledger,
) -> Result<(), TestCaseError> {
    for letter in group.take_dead_letters() {
        let id = id_of(&letter.payload);
        let k: usize = letter.kernel[1..].parse().unwrap();
        if letter.is_input {
            prop_assert!(
                plans[k].fail && id.is_multiple_of(FAIL_MOD),
                "id {} failed at {} which should not fail it: {:?}",
                id,
                letter.kernel,
                letter
            );
            prop_assert!(
                letter.reason.contains(&format!("error code {FAIL_CODE}")),
                "{:?}",
                letter
            );
        }
        ledger.record(
            id,
            format!(
                "dead letter of {} ({}{})",
                letter.kernel,
                letter.reason,
                if letter.is_input { ", input" } else { "" }
            ),
        );
    }
    Ok(())
}

/// The property: every id sent ended up exactly once, nothing else turned up, and the
/// outputs received while the group ran came in the order sent.
fn check(plans: &[KernelPlan], ledger: &Ledger) -> Result<(), TestCaseError> {
    for id in &ledger.sent {
        let outcomes = ledger.outcomes.get(id).cloned().unwrap_or_default();
        prop_assert_eq!(
            outcomes.len(),
            1,
            "id {} should end up exactly once, but ended as {:?}",
            id,
            outcomes
        );
        // A failing kernel lets no id divisible by 7 through.
        if plans.iter().any(|p| p.fail) && id.is_multiple_of(FAIL_MOD) {
            prop_assert!(
                !outcomes[0].starts_with("received"),
                "id {} passed a failing kernel",
                id
            );
        }
    }
    let mut unknown: Vec<_> = ledger
        .outcomes
        .keys()
        .filter(|id| !ledger.sent.contains(id))
        .collect();
    unknown.sort();
    prop_assert!(unknown.is_empty(), "ids never sent turned up: {unknown:?}");
    // Each id takes the one path of the chain through FIFO rings: outputs come out in
    // the order sent. (Only while the group runs: after a stop, outputs the host outbox
    // had no room for come back before the older ones it holds.)
    for pair in ledger.received_running.windows(2) {
        prop_assert!(
            pair[0] < pair[1],
            "output {} came after output {}: {:?}",
            pair[1],
            pair[0],
            ledger.received_running
        );
    }
    Ok(())
}

fn run(gpu: &Arc<GpuContext>, case: &Case) -> Result<(), TestCaseError> {
    let n = case.plans.len();
    let last = n - 1;
    let group = launch(gpu, &case.plans);
    if case.activate_first {
        group.activate_all().unwrap();
    }
    let mut ledger = Ledger::default();
    let mut next_id = 1u64;
    for op in &case.ops {
        match *op {
            Op::Send { count, wait } => {
                for _ in 0..count {
                    let id = next_id;
                    next_id += 1;
                    ledger.sent.push(id);
                    let (payload, corr) = (id.to_ne_bytes(), [id as u32, 0]);
                    let sent = if wait {
                        group.send(0, &payload, corr, SEND_WAIT)
                    } else {
                        group.try_send(0, &payload, corr)
                    };
                    if let Err(e) = sent {
                        ledger.record(id, format!("refused: {e}"));
                    }
                }
            }
            Op::Recv(count) => {
                receive_some(&group, last, count.into(), &mut ledger, RECEIVED)?;
            }
            // Lifecycle errors (say, pausing a paused kernel) are part of the game.
            Op::Pause(k) => drop(group.command(k % n, Command::Pause)),
            Op::Activate(k) => drop(group.command(k % n, Command::Activate)),
            Op::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms.into())),
        }
    }
    stop(&group, last, &case.end, &mut ledger)?;
    absorb_dead_letters(&group, &case.plans, &mut ledger)?;
    drop(group);
    check(&case.plans, &ledger)
}

#[test]
fn every_id_ends_up_exactly_once() {
    // Outside the property, so a missing adapter skips (or fails) once, not per case.
    let Some(gpu) = gpu() else { return };
    // Each case launches a group (one pipeline compile on lavapipe, about 100 ms).
    // As `proptest!` does: PROPTEST_CASES and friends override, failures persist.
    let config = contextualize_config(ProptestConfig {
        cases: 24,
        max_shrink_iters: 64,
        source_file: Some(file!()),
        test_name: Some("every_id_ends_up_exactly_once"),
        ..ProptestConfig::default()
    });
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&case(), |case| run(&gpu, &case)) {
        panic!("{e}");
    }
}
