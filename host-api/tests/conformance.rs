//! Conformance of the built-in kernels across backends.
//!
//! One suite runs every built-in (echo, affine, filter, window, histogram, scatter,
//! gather) and two example pipelines (affine → filter → window; scatter(3) → 3 × affine →
//! gather) on every backend available, with the same seeded random inputs (about 300
//! records per case: NaN with several payloads, ±inf, ±0, subnormals, the extremes, values
//! on and next to the filter and histogram edges, random bit patterns and ordinary
//! values), and compares what each backend emits with what the CPU backend emits:
//!
//! - `reference`: the built-ins' CPU references ([`Builtin::reference`]) called directly,
//!   chained the way the case routes them (always);
//! - `cpu`: the same built-in specs (`KernelSpec::builtin`) on [`Backend::Cpu`], where
//!   they run the references in CPU handlers (always; compared with `reference`);
//! - `wgpu-software`: on [`Backend::WgpuSoftware`], running the WGSL built-ins (feature
//!   `wgpu`; skipped with a message when no adapter opens, a failure when
//!   `GYRE_WGPU_ALLOW_SOFTWARE=1`);
//! - `cuda-emulated`: on [`Backend::CudaEmulated`], the CUDA C built-ins compiled with
//!   g++ on the host (feature `cuda`; skipped with a message when the emulation cannot
//!   run);
//! - `cuda`: the same on [`Backend::Cuda`] (feature `cuda`; `#[ignore]`d, run on a GPU
//!   machine by `cargo xtask gpu-validate`, and a failure there when no GPU opens).
//!
//! Under `cargo xtask ci` (`GYRE_CI=1`) a backend that cannot open is a failure, never a
//! skip.
//!
//! Every backend runs the same specs through the same calls (the one API). A case of one
//! kernel (echo, affine, filter, window, histogram) runs through [`gyre::testing`]'s
//! [`Conformance`] (the CPU and the backend under test, with this suite's NaN rule as its
//! comparator); the suite checks that `Conformance` finds a difference exactly when its
//! own comparison does, and prints both. A case of several kernels forms one group per
//! backend; its outputs are read from the group's sink kernels (kernels with no route
//! out), each separately: on device backends every host-bound port of a kernel shares its
//! one host output, so scatter's ports are routed to one kernel each to compare them port
//! by port.
//!
//! What "equal" means:
//! - outputs are compared byte for byte, in order for a sink fed by one ordered source,
//!   as a multiset for a sink fed by several (gather: the order across inboxes is not
//!   defined);
//! - the one tolerance: two f32 fields that are both NaN are equal whatever their
//!   payload and sign bits, in outputs whose floats went through arithmetic (affine, and
//!   the sum/min/max of window, and everything downstream of them): Record.value at byte
//!   8; Aggregate sum, min and max at bytes 8, 12 and 16. The payload of a NaN that
//!   arithmetic produces or propagates is left open by IEEE 754 and is not specified alike
//!   by Rust, CUDA and WGSL: x86 (Rust, the CUDA emulation) propagates the input's
//!   payload, quieted, while GPUs may return a canonical NaN instead (NVIDIA hardware
//!   does), and WGSL does not promise either. A NaN against a number, or any other bit,
//!   is a mismatch. Outputs that only copy (echo, filter, scatter, gather) and histogram
//!   counts are exact. Each case prints how many outputs were equal only through this
//!   tolerance (none on lavapipe and the CUDA emulation, where this was written).
//!
//! Every kernel or group is drained; the test asserts that the drain did not time out, that nothing
//! was left undelivered, that there are no dead letters and that each kernel processed as
//! many messages as the reference chain gave it. Per backend and case it prints the
//! number of outputs compared.

#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[path = "../../runtime/tests/support/skip.rs"]
mod skip;

use std::time::{Duration, Instant};

use gyre::builtins::{Aggregate, Builtin, Histogram, Record};
use gyre::testing::{Conformance, Difference};
use gyre::{Backend, Error, KernelSpec, Runtime, State};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Records per case.
const RECORDS: usize = 300;

/// A 16-byte message: a record (every built-in's input and most outputs) or echo's bytes.
type B16 = [u8; 16];
/// An [`Aggregate`] as bytes (window's output).
type B32 = [u8; 32];
/// A [`Histogram`] as bytes (histogram's output).
type B40 = [u8; 40];

// ---------------------------------------------------------------------------------------
// Cases.

/// One conformance case: kernels (in topological order), routes, and host inputs.
struct Case {
    name: &'static str,
    /// `(name, built-in)`, upstream before downstream.
    nodes: Vec<(&'static str, Builtin)>,
    /// `(from, port, to)`: `from < to`.
    routes: Vec<(usize, u32, usize)>,
    /// What the host sends to which kernel, in this order.
    inputs: Vec<(usize, Vec<B16>)>,
}

impl Case {
    fn new(name: &'static str, nodes: Vec<(&'static str, Builtin)>) -> Self {
        Self {
            name,
            nodes,
            routes: Vec::new(),
            inputs: Vec::new(),
        }
    }

    fn route(mut self, from: usize, port: u32, to: usize) -> Self {
        assert!(from < to, "{}: routes go downstream", self.name);
        self.routes.push((from, port, to));
        self
    }

    fn input(mut self, node: usize, records: &[Record]) -> Self {
        self.inputs
            .push((node, records.iter().map(|r| bytemuck::cast(*r)).collect()));
        self
    }

    fn routed(&self, node: usize) -> bool {
        self.routes.iter().any(|&(from, _, _)| from == node)
    }

    fn target(&self, node: usize, port: u32) -> Option<usize> {
        self.routes
            .iter()
            .find(|&&(from, p, _)| from == node && p == port)
            .map(|&(_, _, to)| to)
    }

    /// Kernels whose outputs go to the host (no route out). A kernel is either a sink or
    /// has every port routed.
    fn sinks(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&n| {
                let routed = self.routes.iter().filter(|r| r.0 == n).count() as u32;
                assert!(
                    routed == 0 || routed == self.nodes[n].1.ports(),
                    "{}: route every port of `{}` or none",
                    self.name,
                    self.nodes[n].0
                );
                routed == 0
            })
            .collect()
    }

    /// Whether the order of `node`'s outputs is defined: one source (the host or one
    /// upstream kernel), itself ordered.
    fn ordered(&self, node: usize) -> bool {
        let upstream: Vec<usize> = self
            .routes
            .iter()
            .filter(|r| r.2 == node)
            .map(|r| r.0)
            .collect();
        let host = usize::from(self.inputs.iter().any(|(n, _)| *n == node));
        upstream.len() + host <= 1 && upstream.iter().all(|&u| self.ordered(u))
    }

    /// Whether `node`'s float outputs went through arithmetic (then NaN payloads are not
    /// compared).
    fn arithmetic(&self, node: usize) -> bool {
        matches!(
            self.nodes[node].1,
            Builtin::Affine { .. } | Builtin::Window { .. }
        ) || self
            .routes
            .iter()
            .any(|r| r.2 == node && self.arithmetic(r.0))
    }

    /// Byte offsets of the f32 fields of `node`'s outputs where two NaN compare equal.
    fn nan_fields(&self, node: usize) -> &'static [usize] {
        if !self.arithmetic(node) {
            return &[];
        }
        match self.nodes[node].1 {
            Builtin::Window { .. } => &[8, 12, 16],
            Builtin::Echo { .. } | Builtin::Histogram { .. } => &[],
            _ => &[8],
        }
    }

    fn kernel_name(&self, node: usize) -> String {
        format!("{}.{}", self.name, self.nodes[node].0)
    }
}

/// splitmix64: a small seeded generator, the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `[-range, range)`, with a random mantissa.
    fn uniform(&mut self, range: f32) -> f32 {
        ((self.u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * range
    }
}

/// Values every case sees: NaN (canonical, signalling, negative, with payloads), ±inf,
/// ±0, subnormals, the extremes.
const SPECIAL_BITS: [u32; 20] = [
    0x7fc0_0000, // canonical quiet NaN
    0x7fa0_0001, // signalling NaN
    0xffc0_0123, // negative quiet NaN with a payload
    0x7fff_ffff, // quiet NaN, every payload bit
    0xff80_0001, // negative signalling NaN
    0x7f80_0000, // +inf
    0xff80_0000, // -inf
    0x0000_0000, // +0
    0x8000_0000, // -0
    0x0000_0001, // least subnormal
    0x8000_0001, // -least subnormal
    0x007f_ffff, // greatest subnormal
    0x807f_ffff, // -greatest subnormal
    0x0040_0000, // a subnormal
    0x0080_0000, // least normal
    0x8080_0000, // -least normal
    0x7f7f_ffff, // f32::MAX
    0xff7f_ffff, // f32::MIN
    0x3f80_0000, // 1
    0xbf80_0000, // -1
];

/// `RECORDS` records from `seed`: every special value, each edge with its neighbours
/// (one and two ulps away), then random bit patterns (a tenth), subnormals (a twentieth)
/// and ordinary values in `[-range, range)`, shuffled. Keys and aux are random; seq counts.
fn records(seed: u64, edges: &[f32], range: f32) -> Vec<Record> {
    let mut rng = Rng(seed);
    let mut values: Vec<f32> = SPECIAL_BITS.iter().map(|&b| f32::from_bits(b)).collect();
    for &e in edges {
        values.extend([
            e,
            e.next_up(),
            e.next_down(),
            e.next_up().next_up(),
            e.next_down().next_down(),
        ]);
    }
    assert!(values.len() < RECORDS);
    while values.len() < RECORDS {
        let v = match rng.below(20) {
            0 | 1 => f32::from_bits(rng.u32()),
            2 => f32::from_bits(rng.u32() & 0x807f_ffff),
            3 => f32::from_bits(SPECIAL_BITS[rng.below(SPECIAL_BITS.len())]),
            _ => rng.uniform(range),
        };
        values.push(v);
    }
    for i in (1..values.len()).rev() {
        values.swap(i, rng.below(i + 1));
    }
    (0u32..)
        .zip(values)
        .map(|(seq, value)| Record {
            key: rng.u32(),
            seq,
            value,
            aux: rng.u32(),
        })
        .collect()
}

fn cases() -> Vec<Case> {
    let mut all = Vec::new();

    let echo = Builtin::Echo { bytes: 16 };
    all.push(Case::new("echo", vec![("echo", echo)]).input(0, &records(1, &[], 100.0)));

    let affine = Builtin::Affine { a: 1.1, b: -0.7 };
    // a·v + b near 0 and where it overflows.
    let edges = [0.7 / 1.1, f32::MAX / 1.1, -f32::MAX / 1.1, 1.0, -1.0];
    all.push(Case::new("affine", vec![("affine", affine)]).input(0, &records(2, &edges, 8.0)));

    let filter = Builtin::Filter { lo: 0.0, hi: 2.5 };
    all.push(Case::new("filter", vec![("filter", filter)]).input(0, &records(3, &[0.0, 2.5], 4.0)));

    let window = Builtin::Window { size: 7 };
    all.push(
        Case::new("window", vec![("window", window)])
            .input(0, &records(4, &[16_777_216.0, 1.0], 8.0)),
    );

    let (bins, lo, hi) = (7, -3.0f32, 4.5f32);
    let histogram = Builtin::Histogram {
        bins,
        lo,
        hi,
        every: 5,
    };
    let scale = bins as f32 / (hi - lo);
    // Values whose (v - lo) · scale lands on or next to each bin edge.
    let edges: Vec<f32> = (0..=bins).map(|k| k as f32 / scale + lo).collect();
    all.push(
        Case::new("histogram", vec![("histogram", histogram)]).input(0, &records(5, &edges, 5.0)),
    );

    let scatter = Builtin::Scatter { ports: 3 };
    all.push(
        Case::new(
            "scatter",
            vec![
                ("scatter", scatter),
                ("port0", Builtin::Gather),
                ("port1", Builtin::Gather),
                ("port2", Builtin::Gather),
            ],
        )
        .route(0, 0, 1)
        .route(0, 1, 2)
        .route(0, 2, 3)
        .input(0, &records(6, &[], 100.0)),
    );

    let inputs = records(7, &[], 100.0);
    let (left, right) = inputs.split_at(RECORDS / 2);
    all.push(
        Case::new(
            "gather",
            vec![
                ("left", echo),
                ("right", Builtin::Gather),
                ("gather", Builtin::Gather),
            ],
        )
        .route(0, 0, 2)
        .route(1, 0, 2)
        .input(0, left)
        .input(1, right),
    );

    let (a, b) = (1.5f32, -2.0f32);
    let (flo, fhi) = (-4.0f32, 6.0f32);
    all.push(
        Case::new(
            "affine-filter-window",
            vec![
                ("affine", Builtin::Affine { a, b }),
                ("filter", Builtin::Filter { lo: flo, hi: fhi }),
                ("window", Builtin::Window { size: 5 }),
            ],
        )
        .route(0, 0, 1)
        .route(1, 0, 2)
        // Inputs whose a·v + b lands on or next to the filter's edges.
        .input(0, &records(8, &[(flo - b) / a, (fhi - b) / a], 8.0)),
    );

    all.push(
        Case::new(
            "scatter-affine-gather",
            vec![
                ("scatter", scatter),
                ("affine0", Builtin::Affine { a: 2.0, b: 1.0 }),
                ("affine1", Builtin::Affine { a: -0.5, b: 0.25 }),
                ("affine2", Builtin::Affine { a: 1.1, b: -0.7 }),
                ("gather", Builtin::Gather),
            ],
        )
        .route(0, 0, 1)
        .route(0, 1, 2)
        .route(0, 2, 3)
        .route(1, 0, 4)
        .route(2, 0, 4)
        .route(3, 0, 4)
        .input(0, &records(9, &[0.5, -0.5, 0.7 / 1.1], 8.0)),
    );

    all
}

// ---------------------------------------------------------------------------------------
// Runs.

/// What one backend made of a case: the outputs of each sink kernel (in the order
/// received), and the messages each kernel processed.
struct Run {
    outputs: Vec<(usize, Vec<Vec<u8>>)>,
    processed: Vec<u64>,
}

/// The case through the built-ins' references, chained as routed: each kernel handles its
/// host inputs, then what its upstream kernels emitted, upstream by upstream.
fn run_reference(case: &Case) -> Run {
    let n = case.nodes.len();
    let mut queues: Vec<Vec<B16>> = vec![Vec::new(); n];
    for (node, messages) in &case.inputs {
        queues[*node].extend_from_slice(messages);
    }
    let mut outputs: Vec<Vec<Vec<u8>>> = vec![Vec::new(); n];
    let mut processed = vec![0u64; n];
    for node in 0..n {
        let mut reference = case.nodes[node].1.reference();
        for message in std::mem::take(&mut queues[node]) {
            processed[node] += 1;
            reference
                .handle(&message, &mut |port, bytes| match case.target(node, port) {
                    Some(to) => queues[to].push(bytes.try_into().expect("a 16-byte record")),
                    None => outputs[node].push(bytes.to_vec()),
                })
                .unwrap_or_else(|e| panic!("{}: reference refused a message: {e}", case.name));
        }
    }
    Run {
        outputs: case
            .sinks()
            .into_iter()
            .map(|s| (s, std::mem::take(&mut outputs[s])))
            .collect(),
        processed,
    }
}

/// A kernel of `builtin` on whatever backend its group runs on (the CPU runs the
/// built-in's Rust reference, the devices its CUDA C or WGSL).
fn builtin_kernel<Out: gyre::Message>(name: String, builtin: Builtin) -> KernelSpec<B16, Out> {
    KernelSpec::<B16, Out>::new(name).builtin(builtin)
}

/// A stage of any of the three output types a built-in has.
enum Staged<R, A, H> {
    Record(R),
    Aggregate(A),
    Histogram(H),
}

/// `$body` with `$s` bound to the stage, whatever its output type.
macro_rules! on_stage {
    ($staged:expr, $s:ident => $body:expr) => {
        match $staged {
            Staged::Record($s) => $body,
            Staged::Aggregate($s) => $body,
            Staged::Histogram($s) => $body,
        }
    };
}

/// Receives up to `count` host outputs of a running kernel (what the run compared with
/// emitted), each within what is left of `deadline`: fewer come back if it emits fewer.
fn recv_expected(
    count: usize,
    deadline: Instant,
    mut recv_timeout: impl FnMut(Duration) -> Result<Vec<u8>, Error>,
) -> Vec<Vec<u8>> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        match recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(bytes) => got.push(bytes),
            Err(_) => break,
        }
    }
    got
}

/// Receives every host output left in a drained kernel: `recv_timeout` until it says the
/// kernel terminated (it does once the outputs are all received).
fn recv_all(
    case: &Case,
    node: usize,
    mut recv_timeout: impl FnMut(Duration) -> Result<Vec<u8>, Error>,
) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    loop {
        match recv_timeout(TIMEOUT) {
            Ok(bytes) => got.push(bytes),
            Err(Error::Terminated { .. }) => return got,
            Err(e) => panic!(
                "{}: receiving from `{}` after the drain: {e}",
                case.name, case.nodes[node].0
            ),
        }
    }
}

fn cpu_runtime() -> Runtime {
    let runtime = Runtime::builder()
        .backend(Backend::Cpu)
        .workers(2)
        .build()
        .expect("the CPU backend always builds");
    assert_eq!(runtime.backend_name(), "cpu");
    runtime
}

/// The case as one group of built-ins on `runtime`'s backend (the same calls on every
/// backend); `expected[i]` outputs of the `i`th sink are received before the drain.
fn run_group(runtime: &Runtime, case: &Case, expected: &[usize]) -> Run {
    let mut g = runtime.group(case.name);
    let stages: Vec<_> = (0..case.nodes.len())
        .map(|node| {
            let (name, builtin) = (case.kernel_name(node), case.nodes[node].1);
            let routed = case.routed(node);
            match builtin.output_bytes() {
                16 => {
                    let spec = builtin_kernel::<B16>(name, builtin);
                    Staged::Record(g.add(if routed { spec.no_host_output() } else { spec }))
                }
                32 => Staged::Aggregate(g.add(builtin_kernel::<B32>(name, builtin))),
                40 => Staged::Histogram(g.add(builtin_kernel::<B40>(name, builtin))),
                other => panic!("no message type of {other} bytes"),
            }
        })
        .collect();
    for &(from, port, to) in &case.routes {
        let Staged::Record(from) = stages[from] else {
            panic!("only records are routed")
        };
        on_stage!(stages[to], to => g.route(from, port, to));
    }
    let group = g
        .launch()
        .unwrap_or_else(|e| panic!("{}: launch: {e}", case.name));
    assert_eq!(
        group.backend(),
        runtime.backend_name().trim_end_matches("-software")
    );
    group.activate().unwrap();
    for (node, messages) in &case.inputs {
        on_stage!(stages[*node], s => {
            let kernel = group.kernel(s).unwrap();
            for &m in messages {
                kernel.send(m).unwrap();
            }
        });
    }
    let deadline = Instant::now() + TIMEOUT;
    let mut outputs: Vec<(usize, Vec<Vec<u8>>)> = case
        .sinks()
        .into_iter()
        .zip(expected)
        .map(|(node, &count)| {
            let got = on_stage!(stages[node], s => {
                let kernel = group.kernel(s).unwrap();
                recv_expected(count, deadline, |t| {
                    kernel.recv_timeout(t).map(|m| bytemuck::bytes_of(&m).to_vec())
                })
            });
            (node, got)
        })
        .collect();
    let report = group.drain(TIMEOUT);
    assert_eq!(report.undelivered_count(), 0, "{}: {report:?}", case.name);
    let mut processed = vec![u64::MAX; case.nodes.len()];
    for kernel in &report.kernels {
        assert!(!kernel.timed_out, "{}: {kernel:?}", case.name);
        assert!(kernel.fault.is_none(), "{}: {kernel:?}", case.name);
        assert!(kernel.error.is_none(), "{}: {kernel:?}", case.name);
        assert_eq!(kernel.final_state, State::Terminated, "{}", case.name);
        let node = (0..case.nodes.len())
            .find(|&n| case.kernel_name(n) == kernel.kernel)
            .expect("a kernel of the case");
        processed[node] = kernel.processed;
    }
    let dead = runtime.take_dead_letters();
    assert!(dead.is_empty(), "{}: dead letters {dead:?}", case.name);
    for (node, got) in &mut outputs {
        let node = *node;
        got.extend(on_stage!(stages[node], s => {
            let kernel = group.kernel(s).unwrap();
            recv_all(case, node, |t| {
                kernel.recv_timeout(t).map(|m| bytemuck::bytes_of(&m).to_vec())
            })
        }));
    }
    Run { outputs, processed }
}

/// A case of one kernel through [`gyre::testing::Conformance`] on `backends` (the CPU
/// first), with the NaN tolerance of the case as its comparator. Returns each backend's
/// run, and the first difference `gyre::testing` found.
fn run_one<Out: gyre::Message + std::fmt::Debug>(
    case: &Case,
    backends: &[Backend],
) -> (Vec<(&'static str, Run)>, Option<Difference>) {
    assert_eq!(case.nodes.len(), 1, "{}: one kernel", case.name);
    let (name, builtin) = (case.kernel_name(0), case.nodes[0].1);
    let fields = case.nan_fields(0);
    let report = Conformance::new(|| builtin_kernel::<Out>(name.clone(), builtin))
        .backends(backends)
        .workers(1)
        .timeout(TIMEOUT)
        .strict()
        .compare(move |a: &Out, b: &Out| {
            canonical(bytemuck::bytes_of(a), fields) == canonical(bytemuck::bytes_of(b), fields)
        })
        .run(&case.inputs[0].1)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    assert_eq!(report.backends().len(), backends.len(), "{report}");
    let runs = report
        .runs
        .iter()
        .map(|run| {
            assert!(
                !run.timed_out
                    && run.fault.is_none()
                    && run.refused.is_empty()
                    && run.undelivered.is_empty()
                    && run.undelivered_outputs.is_empty()
                    && run.dead_letters == 0,
                "{}: {report}",
                case.name
            );
            let outputs = run
                .outputs
                .iter()
                .map(|m| bytemuck::bytes_of(m).to_vec())
                .collect();
            (
                run.name,
                Run {
                    outputs: vec![(0, outputs)],
                    processed: vec![run.processed],
                },
            )
        })
        .collect();
    (runs, report.first_difference().cloned())
}

/// `run_one` for the case's output type.
fn run_one_builtin(
    case: &Case,
    backends: &[Backend],
) -> (Vec<(&'static str, Run)>, Option<Difference>) {
    match case.nodes[0].1.output_bytes() {
        16 => run_one::<B16>(case, backends),
        32 => run_one::<B32>(case, backends),
        40 => run_one::<B40>(case, backends),
        other => panic!("no message type of {other} bytes"),
    }
}

// ---------------------------------------------------------------------------------------
// Comparison.

/// `bytes` with every NaN f32 at `nan_fields` replaced by the canonical NaN.
fn canonical(bytes: &[u8], nan_fields: &[usize]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for &at in nan_fields {
        if let Some(field) = out.get_mut(at..at + 4) {
            let v = f32::from_le_bytes(field.try_into().expect("4 bytes"));
            if v.is_nan() {
                field.copy_from_slice(&f32::NAN.to_bits().to_le_bytes());
            }
        }
    }
    out
}

fn hex(bits: f32) -> String {
    format!("{bits:e} ({:#010x})", bits.to_bits())
}

/// An output, readable: a record, an aggregate or a histogram by its size.
fn show(bytes: &[u8]) -> String {
    match bytes.len() {
        16 => {
            let r: Record = bytemuck::pod_read_unaligned(bytes);
            format!(
                "Record {{ key: {:#x}, seq: {}, value: {}, aux: {:#x} }}",
                r.key,
                r.seq,
                hex(r.value),
                r.aux
            )
        }
        32 => {
            let a: Aggregate = bytemuck::pod_read_unaligned(bytes);
            format!(
                "Aggregate {{ window: {}, count: {}, sum: {}, min: {}, max: {}, seq: {}..={}, \
                 reserved: {} }}",
                a.window,
                a.count,
                hex(a.sum),
                hex(a.min),
                hex(a.max),
                a.first_seq,
                a.last_seq,
                a.reserved
            )
        }
        40 => format!("{:?}", bytemuck::pod_read_unaligned::<Histogram>(bytes)),
        _ => format!("{bytes:02x?}"),
    }
}

/// The inputs a differing output came from (by `seq`), to name them in a failure.
fn inputs_of(case: &Case, bytes: &[u8]) -> String {
    let seqs = match bytes.len() {
        16 => {
            let r: Record = bytemuck::pod_read_unaligned(bytes);
            r.seq..=r.seq
        }
        32 => {
            let a: Aggregate = bytemuck::pod_read_unaligned(bytes);
            a.first_seq..=a.last_seq
        }
        _ => return String::new(),
    };
    let mut found = Vec::new();
    for (node, messages) in &case.inputs {
        for m in messages {
            let r: Record = bytemuck::cast(*m);
            if seqs.contains(&r.seq) {
                found.push(format!(
                    "\n        to `{}`: {}",
                    case.nodes[*node].0,
                    show(m)
                ));
            }
        }
    }
    found.concat()
}

/// Compares `got` (from backend `backend`) with `want` (from `base`); returns the number
/// of outputs compared, or every difference.
fn compare(case: &Case, backend: &str, got: &Run, base: &str, want: &Run) -> Result<usize, String> {
    let mut problems = Vec::new();
    let mut compared = 0;
    // Ordered outputs equal only through the NaN tolerance (NaN payloads that differ).
    let mut tolerated = 0;
    for (node, processed) in want.processed.iter().enumerate() {
        if got.processed[node] != *processed {
            problems.push(format!(
                "`{}` processed {} messages on {backend}, {processed} on {base}",
                case.nodes[node].0, got.processed[node]
            ));
        }
    }
    for ((node, got_out), (want_node, want_out)) in got.outputs.iter().zip(&want.outputs) {
        assert_eq!(node, want_node);
        let node = *node;
        let kernel = case.nodes[node].0;
        let fields = case.nan_fields(node);
        let mut g: Vec<Vec<u8>> = got_out.iter().map(|b| canonical(b, fields)).collect();
        let mut w: Vec<Vec<u8>> = want_out.iter().map(|b| canonical(b, fields)).collect();
        let ordered = case.ordered(node);
        if !ordered {
            g.sort();
            w.sort();
        }
        if g.len() != w.len() {
            problems.push(format!(
                "`{kernel}` emitted {} messages on {backend}, {} on {base}",
                g.len(),
                w.len()
            ));
        }
        let mut shown = 0;
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            if a == b && ordered && got_out[i] != want_out[i] {
                tolerated += 1;
            }
            if a != b {
                if shown < 8 {
                    // The raw bytes (before NaN canonicalisation) of an ordered output.
                    let (a, b) = if ordered {
                        (&got_out[i], &want_out[i])
                    } else {
                        (a, b)
                    };
                    problems.push(format!(
                        "`{kernel}` output {i}{}:\n    {backend}: {}\n    {base}: {}\n    \
                         from the inputs:{}",
                        if ordered { "" } else { " (sorted)" },
                        show(a),
                        show(b),
                        inputs_of(case, b)
                    ));
                }
                shown += 1;
            }
        }
        if shown > 8 {
            problems.push(format!("`{kernel}`: {} more differing outputs", shown - 8));
        }
        compared += g.len().min(w.len());
    }
    if problems.is_empty() {
        eprintln!(
            "conformance: {backend:<14} vs {base:<9} {:<22} {compared:>4} outputs compared, \
             equal ({tolerated} only up to NaN payloads)",
            case.name
        );
        Ok(compared)
    } else {
        Err(format!(
            "case `{}`: {backend} differs from {base}:\n  {}",
            case.name,
            problems.join("\n  ")
        ))
    }
}

/// Outputs per sink.
fn counts(run: &Run) -> Vec<usize> {
    run.outputs.iter().map(|(_, out)| out.len()).collect()
}

/// Runs every case on `backend` and compares each with the CPU backend (and the CPU
/// backend with the reference); fails with every difference found. Cases of one kernel
/// go through [`gyre::testing::Conformance`] (which must find the same difference, or
/// none, as this suite's comparison); cases of several run as one group per backend.
/// `runtime` is a runtime of `backend` (proof that it opens here).
fn conform(backend: Backend, runtime: &Runtime) {
    let name = runtime.backend_name();
    let cpu = cpu_runtime();
    let mut failures = Vec::new();
    let mut total = 0;
    for case in cases() {
        let reference = run_reference(&case);
        let result = if case.nodes.len() == 1 {
            let backends: &[Backend] = if backend == Backend::Cpu {
                &[Backend::Cpu]
            } else {
                &[Backend::Cpu, backend]
            };
            let (runs, difference) = run_one_builtin(&case, backends);
            let on_cpu = &runs[0].1;
            if backend == Backend::Cpu {
                compare(&case, "cpu", on_cpu, "reference", &reference)
            } else {
                assert_eq!(runs[1].0, name);
                let result = compare(&case, name, &runs[1].1, "cpu", on_cpu);
                assert_eq!(
                    difference.is_none(),
                    result.is_ok(),
                    "{}: gyre::testing found {difference:?}, the suite {result:?}",
                    case.name
                );
                result.map_err(|e| {
                    format!(
                        "{e}\n  gyre::testing: first difference: {}",
                        difference.unwrap()
                    )
                })
            }
        } else {
            let on_cpu = run_group(&cpu, &case, &counts(&reference));
            if backend == Backend::Cpu {
                compare(&case, "cpu", &on_cpu, "reference", &reference)
            } else {
                let got = run_group(runtime, &case, &counts(&on_cpu));
                compare(&case, name, &got, "cpu", &on_cpu)
            }
        };
        match result {
            Ok(n) => total += n,
            Err(problem) => failures.push(problem),
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("conformance: {name}: {total} outputs compared, all equal");
    let report = cpu.shutdown(TIMEOUT);
    assert_eq!(report.undelivered_count(), 0);
}
// ---------------------------------------------------------------------------------------
// Tests.

#[test]
fn the_cases_cover_every_builtin_and_the_edges() {
    let cases = cases();
    for name in [
        "echo",
        "affine",
        "filter",
        "window",
        "histogram",
        "scatter",
        "gather",
    ] {
        assert!(
            cases
                .iter()
                .any(|c| c.nodes.iter().any(|n| n.1.name() == name)),
            "{name}"
        );
    }
    for case in &cases {
        let run = run_reference(case);
        assert!(
            run.outputs.iter().all(|(_, out)| !out.is_empty()),
            "{}: every sink emits something",
            case.name
        );
        let inputs: Vec<Record> = case
            .inputs
            .iter()
            .flat_map(|(_, m)| m.iter().map(|b| bytemuck::cast::<B16, Record>(*b)))
            .collect();
        assert_eq!(inputs.len(), RECORDS);
        for bits in SPECIAL_BITS {
            assert!(inputs.iter().any(|r| r.value.to_bits() == bits));
        }
    }
    // The filter keeps some and drops some; ±0 sit on its lower edge.
    let filter = &cases[2];
    let kept = run_reference(filter).outputs[0].1.len();
    assert!(kept > 0 && kept < RECORDS, "{kept}");
}

#[test]
fn the_cpu_backend_matches_the_reference() {
    conform(Backend::Cpu, &cpu_runtime());
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_matches_the_cpu_backend() {
    let runtime = match Runtime::builder()
        .backend(Backend::WgpuSoftware)
        .workers(1)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            assert!(
                std::env::var("GYRE_WGPU_ALLOW_SOFTWARE").as_deref() != Ok("1"),
                "GYRE_WGPU_ALLOW_SOFTWARE=1 but no wgpu adapter opened: {e}"
            );
            skip::skip("wgpu conformance", &format!("no wgpu adapter here: {e}"));
            return;
        }
    };
    conform(Backend::WgpuSoftware, &runtime);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_emulated_matches_the_cpu_backend() {
    let runtime = match Runtime::builder()
        .backend(Backend::CudaEmulated)
        .workers(1)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            skip::skip("cuda-emulated conformance", &e);
            return;
        }
    };
    conform(Backend::CudaEmulated, &runtime);
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs an NVIDIA GPU: `cargo xtask gpu-validate` runs it"]
fn cuda_matches_the_cpu_backend_on_a_gpu() {
    let runtime = Runtime::builder()
        .backend(Backend::Cuda)
        .workers(1)
        .build()
        .unwrap_or_else(|e| panic!("this test needs an NVIDIA GPU and driver: {e}"));
    conform(Backend::Cuda, &runtime);
}

// ---------------------------------------------------------------------------------------
// gyre::testing itself: it finds differences (not only agreement).

/// A `Conformance` over `[Cpu, Cpu]` whose second spec is built by `second` (the first
/// doubles its input): a difference between two CPU runs, on any build.
fn cpu_against(second: fn() -> KernelSpec<u32, u32>) -> gyre::testing::ConformanceReport<u32, u32> {
    let built = std::cell::Cell::new(0);
    Conformance::new(|| {
        built.set(built.get() + 1);
        if built.get() == 1 {
            KernelSpec::<u32, u32>::new("double").cpu(|&x, out| {
                if x == 7 {
                    return Ok(());
                }
                Ok(out.emit(x * 2)?)
            })
        } else {
            second()
        }
    })
    .backends(&[Backend::Cpu, Backend::Cpu])
    .run(&(0..20).collect::<Vec<u32>>())
    .unwrap()
}

#[test]
fn testing_reports_the_first_output_that_differs() {
    let report = cpu_against(|| {
        KernelSpec::<u32, u32>::new("double").cpu(|&x, out| match x {
            7 => Ok(()),
            5 | 9 => Ok(out.emit(x * 3)?),
            _ => Ok(out.emit(x * 2)?),
        })
    });
    let first = report.first_difference().expect("a difference");
    assert_eq!(
        (
            first.what,
            first.index,
            first.value_a.as_str(),
            first.value_b.as_str()
        ),
        ("output", Some(5), "10", "15"),
        "{report}"
    );
    assert_eq!(report.differences().len(), 1);
    assert!(report
        .to_string()
        .contains("differs: output 5: cpu gave 10, cpu gave 15"));
}

#[test]
fn testing_reports_a_missing_output_and_a_handler_error() {
    // One output fewer (the handler fails on 9): the outputs differ from index 8 on.
    let report = cpu_against(|| {
        KernelSpec::<u32, u32>::new("double").cpu(|&x, out| match x {
            7 => Ok(()),
            9 => Err(gyre::HandlerError("nine".into())),
            _ => Ok(out.emit(x * 2)?),
        })
    });
    let first = report.first_difference().expect("a difference");
    assert_eq!((first.what, first.index), ("output", Some(8)), "{report}");
    assert_eq!(report.runs[1].dead_letters, 1, "{report}");
    // The same outputs, but one backend's handler fails where the other's drops: the
    // dead letter is the difference.
    let report = cpu_against(|| {
        KernelSpec::<u32, u32>::new("double").cpu(|&x, out| match x {
            7 => Err(gyre::HandlerError("seven".into())),
            _ => Ok(out.emit(x * 2)?),
        })
    });
    let first = report.first_difference().expect("a difference");
    assert_eq!(
        (first.what, first.value_a.as_str(), first.value_b.as_str()),
        ("dead letters", "0", "1"),
        "{report}"
    );
}

#[test]
fn testing_compares_with_the_comparator_given() {
    let spec = |ulps: u32| {
        move || {
            KernelSpec::<f32, f32>::new("third")
                .cpu(move |&x, out| Ok(out.emit(f32::from_bits((x / 3.0).to_bits() + ulps))?))
        }
    };
    let inputs: Vec<f32> = (1..50u8).map(f32::from).collect();
    let built = std::cell::Cell::new(0u32);
    let off_by_one = || {
        built.set(built.get() + 1);
        spec(built.get() - 1)()
    };
    let exact = Conformance::new(off_by_one)
        .backends(&[Backend::Cpu, Backend::Cpu])
        .run(&inputs)
        .unwrap();
    assert_eq!(exact.first_difference().unwrap().index, Some(0), "{exact}");
    built.set(0);
    let within_one_ulp = Conformance::new(off_by_one)
        .backends(&[Backend::Cpu, Backend::Cpu])
        .compare(|a: &f32, b: &f32| a.to_bits().abs_diff(b.to_bits()) <= 1)
        .run(&inputs)
        .unwrap();
    assert!(
        within_one_ulp.first_difference().is_none(),
        "{within_one_ulp}"
    );
    assert_eq!(within_one_ulp.runs.len(), 2);
    assert_eq!(within_one_ulp.runs[1].outputs.len(), inputs.len());
}

#[test]
fn testing_skips_backends_it_cannot_run_and_says_why() {
    // A spec with a CPU closure only: every device backend is skipped (not built here,
    // no device, or no implementation for it), each with its reason.
    let report = Conformance::new(|| {
        KernelSpec::<u32, u32>::new("cpu-only").cpu(|&x, out| Ok(out.emit(x)?))
    })
    .run(&[1, 2, 3])
    .unwrap();
    assert_eq!(report.backends(), ["cpu"], "{report}");
    let skipped: Vec<Backend> = report.skipped.iter().map(|s| s.backend).collect();
    assert_eq!(
        skipped,
        [
            Backend::CudaEmulated,
            Backend::WgpuSoftware,
            Backend::Cuda,
            Backend::Wgpu
        ],
        "{report}"
    );
    for s in &report.skipped {
        assert!(!s.reason.is_empty(), "{s}");
    }
    #[cfg(feature = "wgpu")]
    if std::env::var("GYRE_WGPU_ALLOW_SOFTWARE").as_deref() == Ok("1") {
        // wgpu opens here: it is skipped for want of WGSL.
        let wgpu = &report.skipped[1];
        assert!(wgpu.reason.contains("no wgpu implementation"), "{wgpu}");
    }
    // Strict: a skip is an error.
    let strict = Conformance::new(|| {
        KernelSpec::<u32, u32>::new("cpu-only").cpu(|&x, out| Ok(out.emit(x)?))
    })
    .backends(&[Backend::Cpu, Backend::CudaEmulated])
    .strict()
    .run(&[1]);
    assert!(
        matches!(
            strict,
            Err(Error::BackendUnavailable { .. } | Error::NoImplementation { .. })
        ),
        "{strict:?}"
    );
}

/// A handler that doubles, except that its device versions triple 5.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn off_on_devices() -> KernelSpec<u32, u32> {
    KernelSpec::<u32, u32>::new("double")
        .cpu(|&x, out| Ok(out.emit(x * 2)?))
        .cuda(
            "twice",
            r"__device__ int twice(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
                gyre_u32 x = *(const gyre_u32 *)msg;
                gyre_u32 y = x == 5u ? x * 3u : x * 2u;
                return gyre_emit(ctx, 0u, &y, sizeof y);
            }",
        )
        .wgsl(
            "twice",
            r"fn twice(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
                let x = (*msg).w[0];
                (*msg).w[0] = select(x * 2u, x * 3u, x == 5u);
                return gyre_emit(ctx, 0u, msg, 4u);
            }",
        )
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
#[test]
fn testing_finds_a_device_handler_that_differs() {
    let wanted = [
        #[cfg(feature = "cuda")]
        Backend::CudaEmulated,
        #[cfg(feature = "wgpu")]
        Backend::WgpuSoftware,
    ];
    let mut backends = vec![Backend::Cpu];
    backends.extend(wanted);
    let report = Conformance::new(off_on_devices)
        .backends(&backends)
        .run(&(0..100).collect::<Vec<u32>>())
        .unwrap();
    for s in &report.skipped {
        skip::skip(&format!("gyre::testing on {:?}", s.backend), &s.reason);
    }
    assert_eq!(
        report.differences().len(),
        report.runs.len() - 1,
        "{report}"
    );
    for d in report.differences() {
        assert_eq!(
            (d.a, d.what, d.index, d.value_a.as_str(), d.value_b.as_str()),
            ("cpu", "output", Some(5), "10", "15"),
            "{report}"
        );
    }
    for run in &report.runs {
        assert_eq!(run.outputs.len(), 100, "{report}");
    }
}

/// A receive on wgpu answers `Terminated` only once every output of the kernel is
/// receivable: the ticker moves a tick's outputs into the host outbox before it mirrors
/// the kernel's state (`runtime/src/backend/wgpu/group/tick.rs`). It once mirrored the
/// state first, and a receiver could read `Terminated` in between (about once in 40 runs
/// on lavapipe: 242 of 300 received, then `Terminated`, then 58 more from `try_recv`).
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_recv_says_terminated_only_after_every_output() {
    let runtime = Runtime::builder()
        .backend(Backend::WgpuSoftware)
        .workers(1)
        .build()
        .unwrap_or_else(|e| panic!("this test needs a wgpu adapter: {e}"));
    for round in 0..100 {
        let kernel = runtime
            .launch(
                KernelSpec::<Record, Record>::new(format!("affine{round}"))
                    .builtin(Builtin::Affine { a: 1.1, b: -0.7 }),
            )
            .unwrap();
        kernel.activate().unwrap();
        let feeder = kernel.clone();
        let fed = std::thread::spawn(move || {
            for seq in 0..300 {
                let value = seq as f32;
                feeder
                    .send(Record {
                        key: 0,
                        seq,
                        value,
                        aux: 0,
                    })
                    .unwrap();
            }
            feeder.drain(TIMEOUT).unwrap()
        });
        let mut received = 0;
        let end = loop {
            match kernel.recv_timeout(TIMEOUT) {
                Ok(_) => received += 1,
                Err(e) => break e,
            }
        };
        let report = fed.join().unwrap();
        assert!(matches!(end, Error::Terminated { .. }), "{end:?}");
        assert_eq!(report.emitted, 300);
        assert!(report.undelivered_outputs.is_empty());
        let mut late = 0;
        while let Ok(Some(_)) = kernel.try_recv() {
            late += 1;
        }
        assert_eq!(
            (received, late),
            (300, 0),
            "round {round}: `Terminated` after {received} of 300 outputs, {late} received after it"
        );
    }
}
