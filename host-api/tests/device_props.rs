//! Property, through the one API on every backend this build and machine have (the CPU,
//! the CUDA emulation, wgpu on lavapipe): over random pipelines (a chain of 1 to 4
//! stages, pass-through built-ins and user handlers that fail some messages, small rings)
//! with random sends, receives, pauses and resumes, then a group drain or terminate while
//! the host keeps receiving, every message sent is delivered exactly once to the sink or
//! handed back exactly once: in the stop's report (inputs or outputs), or in the dead
//! letters (the messages a stage failed).
//!
//! Device groups stop as a unit, so stops here are group-wide (per-kernel drains and
//! terminates, and panicking handlers, are the CPU property test's: `pipeline_props.rs`).
//! A device launch compiles its group (g++ for the emulation, naga and llvmpipe for
//! wgpu), so the case count is small.

use std::collections::HashMap;
use std::time::Duration;

use gyre::builtins::{Builtin, Record};
use gyre::{Error, HandlerError, KernelSpec, Runtime};
use proptest::prelude::*;

#[path = "support/backends.rs"]
mod backends;

/// A failing stage fails the messages whose id is congruent to its residue modulo this.
const FAIL_MOD: u32 = 7;
const WAIT: Duration = Duration::from_secs(30);

const FAIL_CUDA: &str = r"
__device__ int fail_some(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    const gyre_rec *r = (const gyre_rec *)msg;
    if (r->seq % 7u == ctx->params[0]) {
        return 1;
    }
    return gyre_emit(ctx, 0u, msg, 16u);
}";

const FAIL_WGSL: &str = r"
fn fail_some(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    if ((*msg).w[1] % 7u == gyre_param(ctx, 0u)) {
        return 1u;
    }
    return gyre_emit(ctx, 0u, msg, 16u);
}";

/// One stage of the chain.
#[derive(Clone, Copy, Debug)]
enum Stage {
    /// `Affine { a: 1, b: 0 }`: every record passes unchanged.
    Pass,
    /// Fails ids congruent to the residue modulo [`FAIL_MOD`] (dead letters), passes the
    /// others.
    Fail(u32),
}

#[derive(Clone, Debug)]
struct Plan {
    stages: Vec<(Stage, u32)>,
    sink_output_log2: u32,
    ops: Vec<Op>,
    terminate: bool,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Send { count: u8, wait: bool },
    Recv { count: u8 },
    Pause(usize),
    Resume(usize),
}

fn plan() -> impl Strategy<Value = Plan> {
    let stage = prop_oneof![Just(Stage::Pass), (0..FAIL_MOD).prop_map(Stage::Fail)];
    let op = prop_oneof![
        4 => (1..40u8, any::<bool>()).prop_map(|(count, wait)| Op::Send { count, wait }),
        3 => (1..40u8).prop_map(|count| Op::Recv { count }),
        1 => (0..4usize).prop_map(Op::Pause),
        2 => (0..4usize).prop_map(Op::Resume),
    ];
    (
        prop::collection::vec((stage, 1..=6u32), 1..=4),
        1..=6u32,
        prop::collection::vec(op, 1..24),
        any::<bool>(),
    )
        .prop_map(|(stages, sink_output_log2, ops, terminate)| Plan {
            stages,
            sink_output_log2,
            ops,
            terminate,
        })
}

fn spec(index: usize, stage: Stage, capacity_log2: u32) -> KernelSpec<Record, Record> {
    let name = format!("s{index}");
    // Each stage emits at most one message per message: a device reserves room for that.
    let spec = KernelSpec::<Record, Record>::new(name)
        .capacity(1 << capacity_log2)
        .max_emits(1);
    match stage {
        Stage::Pass => spec.builtin(Builtin::Affine { a: 1.0, b: 0.0 }),
        Stage::Fail(residue) => {
            let mut params = [0u32; gyre::builtins::PARAM_WORDS];
            params[0] = residue;
            spec.cuda("fail_some", FAIL_CUDA)
                .wgsl("fail_some", FAIL_WGSL)
                .params(params)
                .cpu(move |r, out| {
                    if r.seq % FAIL_MOD == residue {
                        return Err(HandlerError(format!("failed id {}", r.seq)));
                    }
                    Ok(out.emit(*r)?)
                })
        }
    }
}

fn record(id: u32) -> Record {
    Record {
        key: id,
        seq: id,
        value: 1.0,
        aux: 0,
    }
}

/// Runs `plan` on `runtime` and checks that every id sent comes out exactly once.
#[allow(clippy::too_many_lines)] // one property, read top to bottom: build, drive, stop, count
fn check(name: &str, runtime: &Runtime, plan: &Plan) {
    let n = plan.stages.len();
    let mut g = runtime.group("props");
    let mut stages = Vec::new();
    for (i, &(stage, capacity_log2)) in plan.stages.iter().enumerate() {
        let spec = spec(i, stage, capacity_log2);
        let spec = if i + 1 == n {
            spec.host_output(1 << plan.sink_output_log2)
        } else {
            spec.no_host_output()
        };
        stages.push(g.add(spec));
    }
    for pair in stages.windows(2) {
        g.route(pair[0], 0, pair[1]);
    }
    let group = g.launch().unwrap_or_else(|e| panic!("{name}: launch: {e}"));
    let kernels: Vec<_> = stages.iter().map(|&s| group.kernel(s).unwrap()).collect();
    let (source, sink) = (&kernels[0], &kernels[n - 1]);
    group.activate().unwrap();
    let mut sent = Vec::new();
    let mut got: Vec<u32> = Vec::new();
    let mut next = 0u32;
    for op in &plan.ops {
        match *op {
            Op::Send { count, wait } => {
                for _ in 0..count {
                    let result = if wait {
                        source.send_timeout(record(next), Duration::from_millis(1))
                    } else {
                        source.try_send(record(next))
                    };
                    match result {
                        Ok(()) => sent.push(next),
                        Err(e) => assert!(
                            matches!(e.error, Error::Full { .. } | Error::Timeout { .. }),
                            "{name}: {}",
                            e.error
                        ),
                    }
                    next += 1;
                }
            }
            Op::Recv { count } => {
                for _ in 0..count {
                    match sink.try_recv().unwrap() {
                        Some(r) => got.push(r.seq),
                        None => break,
                    }
                }
            }
            // Pause and resume one kernel while the others run.
            Op::Pause(k) => kernels[k % n]
                .deactivate()
                .unwrap_or_else(|e| panic!("{name}: {e}")),
            Op::Resume(k) => kernels[k % n]
                .activate()
                .unwrap_or_else(|e| panic!("{name}: {e}")),
        }
    }
    // The stop, while the host keeps receiving (the sink's output may be small).
    let report = std::thread::scope(|scope| {
        let stopping = scope.spawn(|| {
            if plan.terminate {
                group.terminate()
            } else {
                // Paused kernels resume for the drain (as a drain does on its own).
                group.activate().unwrap_or_else(|e| panic!("{name}: {e}"));
                group.drain(WAIT)
            }
        });
        loop {
            match sink.recv_timeout(Duration::from_millis(200)) {
                Ok(r) => got.push(r.seq),
                Err(Error::Timeout { .. }) if !stopping.is_finished() => {}
                Err(Error::Timeout { .. } | Error::Terminated { .. }) => break,
                Err(e) => panic!("{name}: receive: {e}"),
            }
        }
        stopping.join().unwrap()
    });
    while let Ok(Some(r)) = sink.try_recv() {
        got.push(r.seq);
    }
    let mut seen: HashMap<u32, Vec<&str>> = HashMap::new();
    for id in &got {
        seen.entry(*id).or_default().push("received");
    }
    for k in &report.kernels {
        for m in &k.undelivered {
            seen.entry(m.read::<Record>().seq)
                .or_default()
                .push("undelivered");
        }
        for m in &k.undelivered_outputs {
            seen.entry(m.read::<Record>().seq)
                .or_default()
                .push("undelivered output");
        }
    }
    for letter in runtime.take_dead_letters() {
        let r: Record = bytemuck::pod_read_unaligned(&letter.payload[..16]);
        seen.entry(r.seq).or_default().push("dead letter");
    }
    for id in &sent {
        let places = seen.remove(id).unwrap_or_default();
        assert_eq!(
            places.len(),
            1,
            "{name}: id {id} came out {} times ({places:?}); plan {plan:?}; report {report:?}",
            places.len()
        );
    }
    assert!(seen.is_empty(), "{name}: ids never sent came out: {seen:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn every_message_comes_out_once_on_every_backend(plan in plan()) {
        for (name, runtime) in backends::runtimes() {
            check(name, &runtime, &plan);
        }
    }
}
