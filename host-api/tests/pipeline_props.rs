//! Property: over random pipelines (a random DAG of kernels with small rings, random
//! sends, receives, pauses, drains and terminates, handlers that fail or panic), every
//! message sent is delivered exactly once to its final sink, or handed back exactly
//! once: by the refused send, in a drain or terminate report, or in the dead letters.
//!
//! Every stage emits exactly one message per input, to port `id % ports`, with one more
//! hop, so each message follows one path through the DAG, fixed by its id and the kernel
//! it was sent to. Besides "exactly once", the test checks that each message turns up
//! where its path allows: received from the path's last kernel with one hop per stage,
//! or handed back by a kernel of its path with the hop count of that point.

use std::collections::HashMap;
use std::sync::Once;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use gyre::{Error, GroupReport, HandlerError, Kernel, KernelSpec, Placement, Report, Runtime};
use proptest::prelude::*;

/// Most kernels in a pipeline.
const MAX_KERNELS: usize = 6;
/// A poisoned stage panics on ids congruent to its residue modulo this.
const POISON_MOD: u64 = 97;
/// A failing stage returns a [`HandlerError`] on ids congruent to its residue modulo this.
const FAIL_MOD: u64 = 13;
/// What a poisoned handler's panic message starts with (the panic hook keeps it quiet).
const POISON_PANIC: &str = "poisoned message";
/// How long a drain op waits before it gives up and terminates the kernel (a timed-out
/// drain hands back what is left, which the property covers as well).
const OP_DRAIN_WAIT: Duration = Duration::from_millis(200);
/// How long the final group drain may take after every kernel was activated: the host
/// keeps receiving, so it only times out when something is stuck.
const FINAL_DRAIN_WAIT: Duration = Duration::from_secs(10);
/// How long the final group drain may take when paused kernels stay paused: an upstream
/// kernel waiting on a paused one times out, and the kernels after it share no time left.
const FINAL_DRAIN_PAUSED_WAIT: Duration = Duration::from_millis(250);
/// How long a waiting send waits for room.
const SEND_WAIT: Duration = Duration::from_millis(1);
/// How long a sink may look live after the final drain before the test gives up on it.
const SETTLE_WAIT: Duration = Duration::from_secs(5);

/// The one message type: an id unique per test case, and the stages it went through.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
struct M {
    id: u64,
    hops: u64,
}

/// How one kernel of the pipeline is set up.
#[derive(Clone, Debug)]
struct KernelPlan {
    /// [`Placement::Dedicated`] rather than the pool.
    dedicated: bool,
    /// Inbox capacity: 2 to 64 slots.
    capacity_log2: u32,
    /// Host output capacity (sinks only): 2 to 64 slots.
    output_log2: u32,
    /// Most messages per scheduling turn.
    quantum: u32,
    /// Panics on ids whose residue modulo [`POISON_MOD`] is this.
    poison: Option<u64>,
    /// Fails ids whose residue modulo [`FAIL_MOD`] is this.
    fail: Option<u64>,
    /// The handler takes batches (`cpu_batch`): a poisoned or failing id in a batch
    /// panics or fails the whole batch, and a single-port kernel answers with `emit_all`.
    batch: bool,
}

fn kernel_plan() -> impl Strategy<Value = KernelPlan> {
    (
        any::<bool>(),
        1..=6u32,
        1..=6u32,
        prop_oneof![Just(1u32), Just(4), Just(64)],
        prop::option::weighted(0.15, 0..POISON_MOD),
        prop::option::weighted(0.25, 0..FAIL_MOD),
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |(dedicated, capacity_log2, output_log2, quantum, poison, fail, batch)| KernelPlan {
                dedicated,
                capacity_log2,
                output_log2,
                quantum,
                poison,
                fail,
                batch,
            },
        )
}

/// One step of the host. Kernel numbers are taken modulo the kernels they may name
/// (sources for sends, sinks for receives, any kernel otherwise).
#[derive(Clone, Debug)]
enum Op {
    /// Sends `count` new messages to a source kernel (in-degree 0), with `try_send` or a
    /// short `send_timeout`.
    Send {
        source: usize,
        count: u8,
        wait: bool,
    },
    /// Receives up to `count` messages from a sink.
    Recv {
        sink: usize,
        count: u8,
    },
    Activate(usize),
    Deactivate(usize),
    /// Drains one kernel while the host receives from every sink.
    Drain(usize),
    Terminate(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..MAX_KERNELS;
    prop_oneof![
        6 => (k.clone(), 1..48u8, any::<bool>())
            .prop_map(|(source, count, wait)| Op::Send { source, count, wait }),
        4 => (k.clone(), 1..48u8).prop_map(|(sink, count)| Op::Recv { sink, count }),
        2 => k.clone().prop_map(Op::Activate),
        1 => k.clone().prop_map(Op::Deactivate),
        1 => k.clone().prop_map(Op::Drain),
        1 => k.prop_map(Op::Terminate),
    ]
}

/// One test case: the runtime, the DAG, and what the host does.
#[derive(Clone, Debug)]
struct Case {
    workers: usize,
    plans: Vec<KernelPlan>,
    /// `out[i]`: the kernels downstream of kernel `i`, ascending; port `p` of kernel `i`
    /// is routed to `out[i][p]`. Edges only go from lower to higher index (acyclic).
    out: Vec<Vec<usize>>,
    activate_first: bool,
    /// Whether every kernel is activated before the final group drain (else paused ones
    /// stay paused and the drain may time out).
    activate_last: bool,
    ops: Vec<Op>,
}

fn case() -> impl Strategy<Value = Case> {
    let pairs = MAX_KERNELS * (MAX_KERNELS - 1) / 2;
    (
        1..=2usize,
        prop::collection::vec(kernel_plan(), 2..=MAX_KERNELS),
        prop::collection::vec(prop::bool::weighted(0.45), pairs),
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.75),
        prop::collection::vec(op(), 1..40),
    )
        .prop_map(
            |(workers, plans, edge_bits, activate_first, activate_last, ops)| {
                let n = plans.len();
                let mut out = vec![Vec::new(); n];
                let mut bits = edge_bits.into_iter();
                for (from, targets) in out.iter_mut().enumerate() {
                    for to in from + 1..MAX_KERNELS {
                        let edge = bits.next().unwrap_or(false);
                        if edge && to < n {
                            targets.push(to);
                        }
                    }
                }
                Case {
                    workers,
                    plans,
                    out,
                    activate_first,
                    activate_last,
                    ops,
                }
            },
        )
}

impl Case {
    /// Kernels nothing is routed to: where the host sends.
    fn sources(&self) -> Vec<usize> {
        (0..self.out.len())
            .filter(|&k| !self.out.iter().any(|targets| targets.contains(&k)))
            .collect()
    }

    /// Kernels without routes out: their port 0 is the host output.
    fn sinks(&self) -> Vec<usize> {
        (0..self.out.len())
            .filter(|&k| self.out[k].is_empty())
            .collect()
    }

    /// The kernels message `id` goes through when sent to `first`.
    fn path(&self, id: u64, first: usize) -> Vec<usize> {
        let mut path = vec![first];
        let mut at = first;
        while !self.out[at].is_empty() {
            at = self.out[at][(id % self.out[at].len() as u64) as usize];
            path.push(at);
        }
        path
    }
}

/// Which side of a kernel a handed-back message was on, which fixes its hop count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// Handed back by a refused send: never entered the kernel (0 hops).
    Refused,
    /// Received from the host output of the path's last kernel (one hop per stage).
    Received,
    /// Not handled by the kernel (still in its inbox) or failed by its handler: as many
    /// hops as kernels before it on the path.
    Input,
    /// Emitted by the kernel but not delivered: one hop more than its inputs.
    Output,
}

/// One place a message turned up.
#[derive(Clone, Debug)]
struct Outcome {
    side: Side,
    kernel: usize,
    hops: u64,
    /// Where exactly, for the failure message.
    place: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} of k{} with {} hops: {}",
            self.side, self.kernel, self.hops, self.place
        )
    }
}

/// Lists outcomes one per line, for failure messages.
fn list(outcomes: &[Outcome]) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    for o in outcomes {
        let _ = write!(text, "\n  - {o}");
    }
    text
}

/// Every message sent and everywhere it turned up.
#[derive(Default)]
struct Ledger {
    /// Id and the kernel it was sent to, for every send attempted.
    sent: Vec<(u64, usize)>,
    outcomes: HashMap<u64, Vec<Outcome>>,
}

impl Ledger {
    fn record(&mut self, message: M, side: Side, kernel: usize, place: impl Into<String>) {
        self.outcomes.entry(message.id).or_default().push(Outcome {
            side,
            kernel,
            hops: message.hops,
            place: place.into(),
        });
    }

    fn absorb(&mut self, report: Report<M, M>, kernel: usize, how: &str) {
        for m in report.undelivered {
            self.record(m, Side::Input, kernel, format!("{how} report: undelivered"));
        }
        for m in report.undelivered_outputs {
            self.record(
                m,
                Side::Output,
                kernel,
                format!("{how} report: undelivered_outputs"),
            );
        }
    }

    fn absorb_group(&mut self, report: &GroupReport, index: &HashMap<String, usize>, how: &str) {
        for k in &report.kernels {
            let kernel = index[&k.kernel];
            for raw in &k.undelivered {
                let place = format!("{how} report: undelivered of {}", k.kernel);
                self.record(raw.read::<M>(), Side::Input, kernel, place);
            }
            for raw in &k.undelivered_outputs {
                let place = format!("{how} report: undelivered_outputs of {}", k.kernel);
                self.record(raw.read::<M>(), Side::Output, kernel, place);
            }
        }
    }

    /// Receives up to `count` messages from `sink` (kernel number `k`) without waiting.
    fn receive(&mut self, sink: &Kernel<M, M>, k: usize, count: usize) {
        for _ in 0..count {
            match sink.try_recv() {
                Ok(Some(m)) => self.record(m, Side::Received, k, "received"),
                Ok(None) | Err(_) => break,
            }
        }
    }
}

fn quiet_poison_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let poisoned = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m.starts_with(POISON_PANIC));
            if !poisoned {
                default(info);
            }
        }));
    });
}

/// The spec of kernel `i` with `ports` routes out: one emit per input, to port
/// `id % ports`, unless the id poisons (panic, before any emit) or fails (handler error,
/// no emit) this stage. A kernel with no route out is a sink: its port 0 is the host
/// output; the others have no host output (every port is routed).
fn spec(i: usize, plan: &KernelPlan, ports: usize) -> KernelSpec<M, M> {
    let (poison, fail) = (plan.poison, plan.fail);
    let ports_u64 = ports.max(1) as u64;
    let spec = KernelSpec::<M, M>::new(format!("k{i}"))
        .capacity(1 << plan.capacity_log2)
        .host_output(1 << plan.output_log2)
        .ports(ports as u32)
        .quantum(plan.quantum)
        .placement(if plan.dedicated {
            Placement::Dedicated
        } else {
            Placement::Pool
        });
    let spec = if plan.batch {
        spec.cpu_batch(move |inputs, out| {
            if let Some(m) = inputs
                .iter()
                .find(|m| poison.is_some_and(|r| m.id % POISON_MOD == r))
            {
                panic!("{POISON_PANIC} {} in k{i}", m.id);
            }
            if let Some(m) = inputs
                .iter()
                .find(|m| fail.is_some_and(|r| m.id % FAIL_MOD == r))
            {
                return Err(HandlerError(format!("k{i} refuses message {}", m.id)));
            }
            let next = |m: &M| M {
                id: m.id,
                hops: m.hops + 1,
            };
            if ports_u64 == 1 {
                let outputs: Vec<M> = inputs.iter().map(next).collect();
                return Ok(out.emit_all(&outputs)?);
            }
            for (n, m) in inputs.iter().enumerate() {
                out.emit_to((m.id % ports_u64) as u32, n, next(m))?;
            }
            Ok(())
        })
    } else {
        spec.cpu(move |m, out| {
            let poisoned = poison.is_some_and(|r| m.id % POISON_MOD == r);
            assert!(!poisoned, "{POISON_PANIC} {} in k{i}", m.id);
            if fail.is_some_and(|r| m.id % FAIL_MOD == r) {
                return Err(HandlerError(format!("k{i} refuses message {}", m.id)));
            }
            let next = M {
                id: m.id,
                hops: m.hops + 1,
            };
            Ok(out.emit_to((m.id % ports_u64) as u32, next)?)
        })
    };
    if ports == 0 {
        spec
    } else {
        spec.no_host_output()
    }
}

/// Runs one case and checks the property; `Err` says which message went wrong and where.
#[expect(
    clippy::too_many_lines,
    reason = "one case from launch to check, in the order it happens"
)]
fn run(case: &Case) -> Result<(), TestCaseError> {
    quiet_poison_panics();
    let runtime = Runtime::builder().workers(case.workers).build().unwrap();
    let mut builder = runtime.group("g");
    let stages: Vec<_> = case
        .plans
        .iter()
        .enumerate()
        .map(|(i, plan)| builder.add(spec(i, plan, case.out[i].len())))
        .collect();
    for (from, targets) in case.out.iter().enumerate() {
        for (port, &to) in targets.iter().enumerate() {
            builder.route(stages[from], port as u32, stages[to]);
        }
    }
    let group = builder.launch().unwrap();
    let kernels: Vec<Kernel<M, M>> = stages.iter().map(|&s| group.kernel(s).unwrap()).collect();
    let index: HashMap<String, usize> = (0..kernels.len()).map(|i| (format!("k{i}"), i)).collect();
    let (sources, sinks) = (case.sources(), case.sinks());
    // Indexed by sink number; kernels that are not sinks have no host output.
    let sink_kernels: Vec<Kernel<M, M>> = sinks.iter().map(|&k| kernels[k].clone()).collect();
    let receive_all = |ledger: &mut Ledger, count: usize| {
        for (sink, &k) in sink_kernels.iter().zip(&sinks) {
            ledger.receive(sink, k, count);
        }
    };
    if case.activate_first {
        group.activate().unwrap();
    }

    let mut ledger = Ledger::default();
    let mut next_id = 1u64;
    let mut problems: Vec<String> = Vec::new();
    let n = kernels.len();
    for op in &case.ops {
        match *op {
            Op::Send {
                source,
                count,
                wait,
            } => {
                let k = sources[source % sources.len()];
                for _ in 0..count {
                    let message = M {
                        id: next_id,
                        hops: 0,
                    };
                    next_id += 1;
                    ledger.sent.push((message.id, k));
                    let sent = if wait {
                        kernels[k].send_timeout(message, SEND_WAIT)
                    } else {
                        kernels[k].try_send(message)
                    };
                    if let Err(e) = sent {
                        let place = format!("refused send ({})", e.error);
                        ledger.record(e.message, Side::Refused, k, place);
                    }
                }
            }
            Op::Recv { sink, count } => {
                let s = sink % sinks.len();
                ledger.receive(&sink_kernels[s], sinks[s], count.into());
            }
            Op::Activate(k) => drop(kernels[k % n].activate()),
            Op::Deactivate(k) => drop(kernels[k % n].deactivate()),
            Op::Drain(k) => {
                let k = k % n;
                let kernel = &kernels[k];
                let drained = std::thread::scope(|scope| {
                    let drainer = scope.spawn(|| kernel.drain(OP_DRAIN_WAIT));
                    while !drainer.is_finished() {
                        receive_all(&mut ledger, 64);
                        std::thread::yield_now();
                    }
                    drainer.join().unwrap()
                });
                if let Ok(report) = drained {
                    ledger.absorb(report, k, &format!("drain of k{k}"));
                }
            }
            Op::Terminate(k) => {
                let k = k % n;
                if let Ok(report) = kernels[k].terminate() {
                    ledger.absorb(report, k, &format!("terminate of k{k}"));
                }
            }
        }
    }

    // Wind down: usually everything live runs first (a paused downstream stalls its
    // upstream's drain), then the group drains upstream first while the host keeps
    // receiving. Only with paused kernels left paused may the drain time out.
    let wait = if case.activate_last {
        for kernel in &kernels {
            drop(kernel.activate());
        }
        FINAL_DRAIN_WAIT
    } else {
        FINAL_DRAIN_PAUSED_WAIT
    };
    let drain_started = Instant::now();
    let report = std::thread::scope(|scope| {
        let drainer = scope.spawn(|| group.drain(wait));
        while !drainer.is_finished() {
            receive_all(&mut ledger, 64);
            std::thread::yield_now();
        }
        drainer.join().unwrap()
    });
    let drain_took = drain_started.elapsed();
    for k in &report.kernels {
        if (k.timed_out && case.activate_last) || k.error.is_some() {
            // Every kernel's counters after the stop, to tell a stall from slowness.
            let metrics: Vec<String> = kernels
                .iter()
                .map(|kernel| format!("{:?}", kernel.metrics()))
                .collect();
            problems.push(format!(
                "final drain of {}: timed_out {}, error {:?}, final state {:?}, after {:?}; \
                 kernels: {}",
                k.kernel,
                k.timed_out,
                k.error,
                k.final_state,
                drain_took,
                metrics.join("; ")
            ));
        }
    }
    ledger.absorb_group(&report, &index, "group drain");
    // Drained sinks keep their host output receivable: take everything left.
    for (s, &k) in sinks.iter().enumerate() {
        let settle = Instant::now() + SETTLE_WAIT;
        loop {
            match sink_kernels[s].try_recv() {
                Ok(Some(m)) => ledger.record(m, Side::Received, k, "received after drain"),
                Ok(None) if Instant::now() < settle => std::thread::yield_now(),
                Ok(None) => {
                    problems.push(format!(
                        "sink k{k} still looks live after the group drain (state {:?})",
                        sink_kernels[s].state()
                    ));
                    break;
                }
                Err(Error::Terminated { .. } | Error::Faulted { .. }) => break,
                Err(e) => {
                    problems.push(format!("sink k{k}: unexpected receive error {e}"));
                    break;
                }
            }
        }
    }
    for letter in runtime.take_dead_letters() {
        let kernel = index[&letter.kernel];
        let m: M = bytemuck::pod_read_unaligned(&letter.payload[..std::mem::size_of::<M>()]);
        let side = if letter.is_input {
            Side::Input
        } else {
            Side::Output
        };
        let place = format!("dead letter of {} ({})", letter.kernel, letter.reason);
        ledger.record(m, side, kernel, place);
    }
    let shutdown = runtime.shutdown(Duration::from_secs(5));
    ledger.absorb_group(&shutdown, &index, "runtime shutdown");

    check(case, &ledger)?;
    prop_assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// Every message sent turned up exactly once, where its path allows, and nothing else
/// turned up.
fn check(case: &Case, ledger: &Ledger) -> Result<(), TestCaseError> {
    for &(id, first) in &ledger.sent {
        let path = case.path(id, first);
        let outcomes = ledger.outcomes.get(&id).map_or(&[][..], Vec::as_slice);
        prop_assert!(
            outcomes.len() == 1,
            "message {} (sent to k{}, path {:?}) turned up {} times:{}",
            id,
            first,
            path,
            outcomes.len(),
            list(outcomes)
        );
        let o = &outcomes[0];
        let at = path.iter().position(|&k| k == o.kernel);
        let plausible = match (o.side, at) {
            (Side::Refused, Some(0)) => o.hops == 0,
            (Side::Received, Some(at)) => at + 1 == path.len() && o.hops == path.len() as u64,
            (Side::Input, Some(at)) => o.hops == at as u64,
            (Side::Output, Some(at)) => o.hops == at as u64 + 1,
            _ => false,
        };
        prop_assert!(
            plausible,
            "message {} (sent to k{}, path {:?}) turned up off its path:{}",
            id,
            first,
            path,
            list(outcomes)
        );
    }
    let sent: HashMap<u64, usize> = ledger.sent.iter().copied().collect();
    for (id, outcomes) in &ledger.outcomes {
        prop_assert!(
            sent.contains_key(id),
            "message {} was never sent but turned up:{}",
            id,
            list(outcomes)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_message_reaches_its_sink_once_or_is_handed_back(case in case()) {
        run(&case)?;
    }
}
