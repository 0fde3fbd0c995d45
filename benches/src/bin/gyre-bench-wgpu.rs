//! The wgpu backend's benchmarks through `gyre`: resident state in ticks against one
//! dispatch per message.
//!
//! ```text
//! cargo run --release -p gyre-bench --features wgpu --bin gyre-bench-wgpu [--rounds N] [--quick] \
//!     [--pipeline-quantum N]
//! ```
//!
//! It drives gyre as a user does: `Runtime::builder().backend(Backend::WgpuSoftware)` (the
//! best adapter, else Mesa's lavapipe), kernels declared as `KernelSpec` with
//! `.builtin(..)`, `.capacity`, `.host_output`, `.quantum` and `.max_emits`, launched with
//! `runtime.group(..)` (`add`, `route`, `launch`, `activate`), messages sent with
//! `Kernel::sender()` (`Backpressure::Timeout`, `send_with_corr`) and received with
//! `Kernel::receiver()` (`recv_timeout`), every group stopped with `Group::drain`. Ticks
//! are counted from the first kernel's heartbeat (`Kernel::metrics().heartbeat`, which a
//! wgpu kernel bumps once per tick). The harness (timing, rounds, drain checks) is
//! `gyre_bench::device`. The baselines run on a wgpu device of their own, opened on the
//! adapter the runtime's choice picks, which is printed first. Five measurements, each in
//! rounds that interleave the subject with its baseline (the order alternating from round
//! to round), every ratio taken within a round and the median over rounds reported (as
//! `gyre-bench` does):
//!
//! 1. **Ticked throughput**: a sender thread streams 8-byte messages into a resident echo
//!    (the built-in echo, 4,096-slot rings, quantum 2,048) while the main thread receives
//!    and checks every one, in order. Messages per second.
//! 2. **Baseline: one dispatch per message**, in the same rounds: the honest way without
//!    gyre. For each message, `write_buffer` its 8 bytes into a storage buffer, one compute
//!    dispatch of a shader that copies them to an output buffer, a copy of the output into
//!    a `MAP_READ` buffer, submit, `map_async` + `poll` (wait), read, unmap. Pipeline,
//!    bind group and buffers are made once. Messages per second, and the ratio ticked /
//!    dispatch (acceptance: ≥ 500×).
//! 3. **Round trip** through the same resident echo, one message in flight, every round
//!    trip in an HDR histogram (p50, p99). **Floor**, in the same rounds: a bare
//!    submission that only copies 4 bytes from a buffer to a `MAP_READ` buffer, then map,
//!    poll, read, unmap: the least one submission and readback costs on this adapter.
//!    The ratio round trip p50 / floor p50 (acceptance: ≤ 2×).
//! 4. **Pipeline throughput**: `Record`s streamed through three kernels in one group
//!    (affine → filter that passes all → gather, each hop a device ring), checked in order
//!    and by value. Their quantum is 2,048 like the echo's unless `--pipeline-quantum N`
//!    says otherwise (a smaller quantum makes shorter ticks).
//! 5. **Tick overhead**: measured as the wall time per tick while the round trips of 3
//!    run (ticks counted before and after; the group ticks back to back while a message is
//!    in flight and parks when idle, so this is the time of one tick of an active group
//!    with at most one message in it), and derived as round trip p50 − floor p50 (what a
//!    round trip costs beyond one bare submission). Ticks per round trip are printed too.
//!
//! Every group is drained at the end; the run fails if anything was left undelivered or
//! dead-lettered. Without an adapter it prints why and exits 0, or 1 when
//! `GYRE_WGPU_ALLOW_SOFTWARE=1` (as CI sets). The acceptance targets are reported, not
//! enforced: the exit status says whether the run worked, not whether the targets were
//! met. The last line is `RESULT adapter="…" tick_throughput=… dispatch_throughput=…
//! ratio=… rt_p50_us=… floor_p50_us=… rt_ratio=… pipeline_throughput=…
//! tick_overhead_us=… tick_overhead_derived_us=…`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre::builtins::{Builtin, Record};
use gyre::{Backend, KernelSpec, Message, Runtime};
use gyre_bench::device::{
    field, finish, interleave, launch_chain, merge, open_runtime, placement_ns, required_by_env,
    us, Args, EchoLoad, Placements, Span, Workload,
};
use gyre_bench::plot::{Chart, Panel, Series};
use gyre_bench::{median, progress, rate, report, round_trip_histogram, say};
use gyre_runtime::backend::wgpu::adapter::{self, AdapterChoice, GpuContext};
use hdrhistogram::Histogram;

const BIN: &str = "gyre-bench-wgpu";
/// Set to `1` to make a missing adapter a failure (CI sets it).
const REQUIRE_VAR: &str = "GYRE_WGPU_ALLOW_SOFTWARE";
/// Command timeout of the runtime, and how long one message or readback may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Slots of every ring, and messages per tick (quantum = capacity).
const CAPACITY: u32 = 4096;
/// Messages per kernel per tick asked for (an adapter with a loop limit, like lavapipe,
/// may lower it; see runtime/docs/WGPU.md).
const QUANTUM: u32 = 2048;
/// Acceptance: ticked throughput at least this many times dispatch-per-message.
const TARGET_RATIO: f64 = 500.0;
/// Acceptance: round trip p50 at most this many times the floor p50.
const TARGET_RT_RATIO: f64 = 2.0;
const USAGE: &str = "usage: gyre-bench-wgpu [--rounds N] [--quick] [--pipeline-quantum N]";

/// How much to measure.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    rounds: usize,
    /// Unrecorded round trips, floors and dispatches before the first round.
    warm_up: u64,
    /// Round trips (and floors) per round.
    rt_per_round: u64,
    /// Messages streamed through the echo per round.
    tp_per_round: u64,
    /// Messages of the dispatch-per-message baseline per round.
    dispatch_per_round: u64,
    /// Records streamed through the pipeline per round.
    pipe_per_round: u64,
}

impl Sizes {
    const FULL: Self = Self {
        rounds: 5,
        warm_up: 200,
        rt_per_round: 1_000,
        tp_per_round: 400_000,
        dispatch_per_round: 2_000,
        pipe_per_round: 200_000,
    };
    /// A CI smoke run (well under 20 s on lavapipe).
    const QUICK: Self = Self {
        rounds: 2,
        warm_up: 20,
        rt_per_round: 200,
        tp_per_round: 40_000,
        dispatch_per_round: 300,
        pipe_per_round: 20_000,
    };
}

/// A built-in with the benchmark's rings: `CAPACITY` slots in and out, `quantum` messages
/// per tick, one emit per message (every built-in used here emits at most one).
fn kernel<T: Message>(name: &str, builtin: Builtin, quantum: u32) -> KernelSpec<T, T> {
    KernelSpec::new(name)
        .builtin(builtin)
        .capacity(CAPACITY)
        .host_output(CAPACITY)
        .quantum(quantum)
        .max_emits(1)
}

/// A `Record` per message through affine (`2v + 1`) → filter (passes all) → gather.
struct PipeLoad;

impl PipeLoad {
    const A: f32 = 2.0;
    const B: f32 = 1.0;

    fn record(seq: u64) -> Record {
        Record {
            key: seq as u32 ^ 0x5a5a,
            seq: seq as u32,
            value: (seq % (1 << 20)) as f32,
            aux: (seq >> 32) as u32,
        }
    }
}

impl Workload for PipeLoad {
    type In = Record;
    type Out = Record;

    fn input(&self, seq: u64) -> Record {
        Self::record(seq)
    }

    fn check(&self, seq: u64, got: &Record) -> Result<(), String> {
        let mut expected = Self::record(seq);
        let product = Self::A * expected.value;
        expected.value = product + Self::B;
        if *got != expected {
            return Err(format!(
                "pipeline output of {seq}: expected {expected:?}, got {got:?}"
            ));
        }
        Ok(())
    }
}

/// The dispatch-per-message baseline and the submission floor, on a device of their own
/// (the runtime keeps its device to itself).
struct Direct {
    gpu: Arc<GpuContext>,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    input: wgpu::Buffer,
    output: wgpu::Buffer,
    readback: wgpu::Buffer,
    floor_src: wgpu::Buffer,
    floor_readback: wgpu::Buffer,
    /// Set by the map callback: 1 mapped, 2 failed.
    mapped: Arc<AtomicU32>,
}

/// What the floor's source buffer holds.
const FLOOR_WORD: u32 = 0x6779_7265;

/// The shader dispatched per message: copies one 8-byte message from input to output.
const COPY_SHADER: &str = "\
@group(0) @binding(0) var<storage, read> input: array<u32, 2>;
@group(0) @binding(1) var<storage, read_write> output: array<u32, 2>;

@compute @workgroup_size(1)
fn main() {
    output[0] = input[0];
    output[1] = input[1];
}
";

impl Direct {
    fn new(gpu: &Arc<GpuContext>) -> Result<Self, String> {
        let device = &gpu.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("dispatch-per-message"),
            source: wgpu::ShaderSource::Wgsl(COPY_SHADER.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("dispatch-per-message"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            cache: None,
        });
        let buffer = |label: &str, size: u64, usage: wgpu::BufferUsages| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        };
        use wgpu::BufferUsages as U;
        let input = buffer("input", 8, U::STORAGE | U::COPY_DST);
        let output = buffer("output", 8, U::STORAGE | U::COPY_SRC);
        let readback = buffer("readback", 8, U::MAP_READ | U::COPY_DST);
        let floor_src = buffer("floor source", 4, U::STORAGE | U::COPY_SRC | U::COPY_DST);
        let floor_readback = buffer("floor readback", 4, U::MAP_READ | U::COPY_DST);
        gpu.queue
            .write_buffer(&floor_src, 0, &FLOOR_WORD.to_ne_bytes());
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("dispatch-per-message"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: input.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: output.as_entire_binding(),
                },
            ],
        });
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(format!("setting up the dispatch baseline: {error}"));
        }
        Ok(Self {
            gpu: Arc::clone(gpu),
            pipeline,
            bind_group,
            input,
            output,
            readback,
            floor_src,
            floor_readback,
            mapped: Arc::new(AtomicU32::new(0)),
        })
    }

    /// Maps `buffer` after `submission`, waits, hands its bytes to `read`, unmaps.
    fn read_back<T>(
        &self,
        buffer: &wgpu::Buffer,
        submission: wgpu::SubmissionIndex,
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<T, String> {
        self.mapped.store(0, Ordering::Relaxed);
        let flag = Arc::clone(&self.mapped);
        buffer.map_async(wgpu::MapMode::Read, .., move |r| {
            flag.store(if r.is_ok() { 1 } else { 2 }, Ordering::Release);
        });
        self.gpu
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: Some(TIMEOUT),
            })
            .map_err(|e| format!("waiting for a submission: {e}"))?;
        if self.mapped.load(Ordering::Acquire) != 1 {
            return Err("mapping a readback buffer failed".to_owned());
        }
        let value = {
            let view = buffer
                .get_mapped_range(..)
                .map_err(|e| format!("reading a readback buffer: {e}"))?;
            read(&view)
        };
        buffer.unmap();
        Ok(value)
    }

    /// One message the dispatch-per-message way; returns what came back.
    fn dispatch(&self, value: u64) -> Result<u64, String> {
        let gpu = &self.gpu;
        gpu.queue.write_buffer(&self.input, 0, &value.to_ne_bytes());
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &self.bind_group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        encoder.copy_buffer_to_buffer(&self.output, 0, &self.readback, 0, 8);
        let submission = gpu.queue.submit([encoder.finish()]);
        self.read_back(&self.readback, submission, |b| {
            u64::from_ne_bytes(b[..8].try_into().unwrap_or_default())
        })
    }

    /// The floor: one submission that copies 4 bytes to a mappable buffer, then the map.
    fn floor(&self) -> Result<(), String> {
        let gpu = &self.gpu;
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        encoder.copy_buffer_to_buffer(&self.floor_src, 0, &self.floor_readback, 0, 4);
        let submission = gpu.queue.submit([encoder.finish()]);
        let word = self.read_back(&self.floor_readback, submission, |b| {
            u32::from_ne_bytes(b[..4].try_into().unwrap_or_default())
        })?;
        if word != FLOOR_WORD {
            return Err(format!("floor: read back {word:#x}, wrote {FLOOR_WORD:#x}"));
        }
        Ok(())
    }

    /// `count` dispatches from `first`, each checked. Returns the total time.
    fn dispatches(&self, first: u64, count: u64) -> Result<Duration, String> {
        let start = Instant::now();
        for seq in first..first + count {
            let back = self.dispatch(seq)?;
            if back != seq {
                return Err(format!("dispatch baseline: wrote {seq}, read back {back}"));
            }
        }
        Ok(start.elapsed())
    }

    /// `count` floors, each recorded in `histogram` (ns).
    fn floors(&self, count: u64, histogram: &mut Histogram<u64>) -> Result<(), String> {
        for _ in 0..count {
            let t = Instant::now();
            self.floor()?;
            histogram.saturating_record(t.elapsed().as_nanos() as u64);
        }
        Ok(())
    }
}

/// A rate per tick and the µs per tick of `span` over `count` messages.
fn per_tick(count: u64, span: Span) -> (f64, f64) {
    let ticks = span.beats as f64;
    (count as f64 / ticks, span.took.as_secs_f64() * 1e6 / ticks)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "MET"
    } else {
        "NOT MET"
    }
}

fn main() -> ExitCode {
    let mut args = Args::new("gyre-bench-wgpu: wgpu backend benchmarks", USAGE);
    let mut sizes = Sizes::FULL;
    let (mut rounds, mut pipeline_quantum) = (None, QUANTUM);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => sizes = Sizes::QUICK,
            "--rounds" => rounds = Some(args.rounds()),
            "--pipeline-quantum" => {
                pipeline_quantum = args.value("--pipeline-quantum", "1 ..= 2048", |n: &u32| {
                    (1..=QUANTUM).contains(n)
                });
            }
            other => args.unknown(other),
        }
    }
    if let Some(rounds) = rounds {
        sizes.rounds = rounds;
    }
    let skip = format!("set {REQUIRE_VAR}=1 to fail instead");
    let required = required_by_env(REQUIRE_VAR);
    let runtime = match open_runtime(
        BIN,
        Backend::WgpuSoftware,
        TIMEOUT,
        "wgpu adapter",
        required.as_deref(),
        &skip,
    ) {
        Ok(runtime) => runtime,
        Err(status) => return status,
    };
    finish(BIN, run(&runtime, sizes, pipeline_quantum))
}

#[allow(clippy::too_many_lines)] // one straight report
fn run(runtime: &Runtime, sizes: Sizes, pq: u32) -> Result<(), String> {
    // The baselines' device, on the adapter `Backend::WgpuSoftware` chooses (the same
    // choice, made again: the runtime does not hand out its device).
    let gpu = Arc::new(
        adapter::open(AdapterChoice::AllowSoftware)
            .map_err(|e| format!("opening the baselines' wgpu device: {e}"))?,
    );
    let adapter_name = adapter::describe(&gpu.info);
    say!(
        "adapter: {adapter_name} (backend {})",
        runtime.backend_name()
    );
    say!(
        "{} rounds; rings of {CAPACITY} slots, quantum {QUANTUM}; every ratio is taken within a \
         round, median over rounds",
        sizes.rounds
    );
    let started = Instant::now();
    let bar = progress::bar(3 * sizes.rounds as u64, BIN);
    let mut placements = Placements::new(sizes.rounds);

    let direct = Direct::new(&gpu)?;
    let (echo_group, mut one) = launch_chain(
        runtime,
        "bench-echo",
        None,
        EchoLoad,
        vec![kernel("echo", Builtin::Echo { bytes: 8 }, QUANTUM)],
        TIMEOUT,
    )?;
    let mut seq = 0u64;

    // Warm-up: every path once.
    one.round_trips(seq, sizes.warm_up, &mut round_trip_histogram())?;
    seq += sizes.warm_up;
    one.stream(seq, u64::from(CAPACITY) * 2)?;
    seq += u64::from(CAPACITY) * 2;
    direct.dispatches(0, sizes.warm_up)?;
    direct.floors(sizes.warm_up, &mut round_trip_histogram())?;

    // 1, 2: ticked throughput against one dispatch per message.
    say!(
        "\n[1,2] echo throughput: {} 8-byte messages streamed per round (sender thread -> \
         resident echo -> main thread, all checked in order); baseline: {} messages, one \
         write + dispatch + copy + submit + map + poll + read + unmap each",
        sizes.tp_per_round,
        sizes.dispatch_per_round
    );
    say!(
        "  {:>5} {:>14} {:>14} {:>9} {:>10} {:>11}",
        "round",
        "ticked msg/s",
        "dispatch msg/s",
        "ratio",
        "msgs/tick",
        "us/tick"
    );
    let (mut tp_ticked, mut tp_dispatch, mut tp_ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut streamed = 0u64;
    bar.set_message("[1,2] throughput");
    for round in 0..sizes.rounds {
        placements.record(round, placement_ns());
        let (mut ticked, mut dispatch) = (f64::NAN, f64::NAN);
        let mut span = Span::default();
        interleave(
            round,
            || {
                span = one.stream(seq, sizes.tp_per_round)?;
                seq += sizes.tp_per_round;
                streamed += sizes.tp_per_round;
                ticked = rate(sizes.tp_per_round, span.took);
                Ok(())
            },
            || {
                let took = direct.dispatches(0, sizes.dispatch_per_round)?;
                dispatch = rate(sizes.dispatch_per_round, took);
                Ok::<(), String>(())
            },
        )?;
        tp_ticked.push(ticked);
        tp_dispatch.push(dispatch);
        tp_ratios.push(ticked / dispatch);
        bar.inc(1);
        let (msgs_per_tick, us_per_tick) = per_tick(sizes.tp_per_round, span);
        say!(
            "  {:>5} {:>14.0} {:>14.0} {:>9.1} {:>10.0} {:>11.1}",
            round + 1,
            ticked,
            dispatch,
            ticked / dispatch,
            msgs_per_tick,
            us_per_tick
        );
    }
    let mut plot = PerRound {
        ticked: tp_ticked.clone(),
        dispatch: tp_dispatch.clone(),
        tp_ratio: tp_ratios.clone(),
        ..PerRound::default()
    };
    let tick_throughput = median(tp_ticked);
    let dispatch_throughput = median(tp_dispatch);
    let ratio = median(tp_ratios);

    // 3, 5: round trips against the bare submission floor; time per tick meanwhile.
    say!(
        "\n[3,5] round trip, one 8-byte message in flight, against the floor (a 4-byte copy \
         to a MAP_READ buffer, submit, map, poll, read, unmap), {} each per round (us)",
        sizes.rt_per_round
    );
    say!(
        "  {:>5} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10} {:>9}",
        "round",
        "rt p50",
        "rt p99",
        "floor p50",
        "floor p99",
        "ratio",
        "ticks/rt",
        "us/tick"
    );
    let mut rt_all = round_trip_histogram();
    let mut floor_all = round_trip_histogram();
    let (mut rt_ratios, mut per_tick_us, mut overheads) = (Vec::new(), Vec::new(), Vec::new());
    let mut ticks_per_rt = Vec::new();
    bar.set_message("[3,5] round trips");
    for round in 0..sizes.rounds {
        placements.record(round, placement_ns());
        let mut rt = round_trip_histogram();
        let mut floor = round_trip_histogram();
        let mut span = Span::default();
        interleave(
            round,
            || {
                span = one.round_trips(seq, sizes.rt_per_round, &mut rt)?;
                seq += sizes.rt_per_round;
                Ok(())
            },
            || direct.floors(sizes.rt_per_round, &mut floor),
        )?;
        merge(&mut rt_all, &rt)?;
        merge(&mut floor_all, &floor)?;
        let r = us(&rt, 0.5) / us(&floor, 0.5);
        let (rts_per_tick, us_per_tick) = per_tick(sizes.rt_per_round, span);
        rt_ratios.push(r);
        per_tick_us.push(us_per_tick);
        overheads.push(us(&rt, 0.5) - us(&floor, 0.5));
        ticks_per_rt.push(1.0 / rts_per_tick);
        plot.rt_p50.push(us(&rt, 0.5));
        plot.floor_p50.push(us(&floor, 0.5));
        bar.inc(1);
        say!(
            "  {:>5} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8.2} {:>10.2} {:>9.1}",
            round + 1,
            us(&rt, 0.5),
            us(&rt, 0.99),
            us(&floor, 0.5),
            us(&floor, 0.99),
            r,
            1.0 / rts_per_tick,
            us_per_tick
        );
    }
    let rt_p50 = us(&rt_all, 0.5);
    let floor_p50 = us(&floor_all, 0.5);
    plot.rt_ratio.clone_from(&rt_ratios);
    plot.tick_us.clone_from(&per_tick_us);
    let rt_ratio = median(rt_ratios);
    let tick_us = median(per_tick_us);
    let overhead_derived = median(overheads);
    let ticks_rt = median(ticks_per_rt);

    // 4: pipeline throughput, three kernels in one group.
    let (pipe_group, mut three) = launch_chain(
        runtime,
        "bench-pipeline",
        None,
        PipeLoad,
        vec![
            kernel(
                "affine",
                Builtin::Affine {
                    a: PipeLoad::A,
                    b: PipeLoad::B,
                },
                pq,
            ),
            kernel(
                "filter",
                Builtin::Filter {
                    lo: -1.0e30,
                    hi: 1.0e30,
                },
                pq,
            ),
            kernel("gather", Builtin::Gather, pq),
        ],
        TIMEOUT,
    )?;
    let mut pseq = 0u64;
    three.stream(pseq, u64::from(CAPACITY) * 2)?;
    pseq += u64::from(CAPACITY) * 2;
    say!(
        "\n[4] pipeline throughput: {} 16-byte records per round through affine -> filter \
         (all pass) -> gather in one group, quantum {pq}, all checked in order",
        sizes.pipe_per_round
    );
    say!(
        "  {:>5} {:>14} {:>10} {:>11}",
        "round",
        "records/s",
        "recs/tick",
        "us/tick"
    );
    let mut tp_pipe = Vec::new();
    bar.set_message("[4] pipeline");
    for round in 0..sizes.rounds {
        placements.record(round, placement_ns());
        let span = three.stream(pseq, sizes.pipe_per_round)?;
        pseq += sizes.pipe_per_round;
        let r = rate(sizes.pipe_per_round, span.took);
        tp_pipe.push(r);
        bar.inc(1);
        let (recs_per_tick, us_per_tick) = per_tick(sizes.pipe_per_round, span);
        say!(
            "  {:>5} {:>14.0} {:>10.0} {:>11.1}",
            round + 1,
            r,
            recs_per_tick,
            us_per_tick
        );
    }
    plot.pipeline.clone_from(&tp_pipe);
    let pipeline_throughput = median(tp_pipe);
    progress::done(&bar);

    one.drain(runtime, &echo_group, seq)?;
    three.drain(runtime, &pipe_group, pseq)?;

    say!(
        "\nsummary ({} rounds, {:.1} s) on {adapter_name}",
        sizes.rounds,
        started.elapsed().as_secs_f64()
    );
    say!(
        "  {:<40} {:>12.0}   ({streamed} messages streamed, all checked)",
        "ticked echo throughput (msg/s)",
        tick_throughput
    );
    say!(
        "  {:<40} {:>12.0}",
        "dispatch-per-message (msg/s)",
        dispatch_throughput
    );
    say!(
        "  {:<40} {:>11.1}x   target >= {TARGET_RATIO}x: {}",
        "ticked / dispatch (median of rounds)",
        ratio,
        verdict(ratio >= TARGET_RATIO)
    );
    say!(
        "  {:<40} {:>12.1}   p99 {:.1}, p999 {:.1}",
        "round trip p50 (us)",
        rt_p50,
        us(&rt_all, 0.99),
        us(&rt_all, 0.999)
    );
    say!(
        "  {:<40} {:>12.1}   p99 {:.1}",
        "submit + readback floor p50 (us)",
        floor_p50,
        us(&floor_all, 0.99)
    );
    say!(
        "  {:<40} {:>11.2}x   target <= {TARGET_RT_RATIO}x: {}",
        "round trip p50 / floor p50 (median)",
        rt_ratio,
        verdict(rt_ratio <= TARGET_RT_RATIO)
    );
    say!(
        "  {:<40} {:>12.0}",
        "pipeline throughput (records/s)",
        pipeline_throughput
    );
    say!(
        "  {:<40} {:>12.1}   (measured: wall time / ticks during the round trips; {ticks_rt:.2} \
         ticks per round trip)",
        "tick overhead (us)",
        tick_us
    );
    say!(
        "  {:<40} {:>12.1}   (derived: round trip p50 - floor p50, median of rounds)",
        "round trip beyond the floor (us)",
        overhead_derived
    );
    say!("  drained: {seq} + {pseq} messages processed, none undelivered, no dead letters");
    say!(
        "RESULT adapter=\"{}\" tick_throughput={} dispatch_throughput={} ratio={} rt_p50_us={} \
         floor_p50_us={} rt_ratio={} pipeline_throughput={} tick_overhead_us={} \
         tick_overhead_derived_us={}",
        adapter_name.replace('"', "'"),
        field(tick_throughput, 0),
        field(dispatch_throughput, 0),
        field(ratio, 1),
        field(rt_p50, 1),
        field(floor_p50, 1),
        field(rt_ratio, 2),
        field(pipeline_throughput, 0),
        field(tick_us, 1),
        field(overhead_derived, 1),
    );
    let chart = plot.chart(&adapter_name, sizes.rounds, placements.per_round());
    report::write(BIN, &chart)?;
    Ok(())
}

/// What the plot shows: each round's numbers of every measurement.
#[derive(Default)]
struct PerRound {
    ticked: Vec<f64>,
    dispatch: Vec<f64>,
    tp_ratio: Vec<f64>,
    rt_p50: Vec<f64>,
    floor_p50: Vec<f64>,
    rt_ratio: Vec<f64>,
    pipeline: Vec<f64>,
    tick_us: Vec<f64>,
}

impl PerRound {
    /// The run's plot on adapter `adapter`.
    fn chart(self, adapter: &str, rounds: usize, ping_pong_ns: Vec<f64>) -> Chart {
        let k = |v: Vec<f64>| v.into_iter().map(|x| x / 1e3).collect();
        Chart {
            title: "gyre-bench-wgpu: ticked resident kernels against a dispatch per message"
                .to_owned(),
            caption: format!(
                "one run on {adapter}, {}; {rounds} rounds; placement: host ping-pong before \
                 each round, median of the three measurements' rounds",
                report::machine()
            ),
            rounds,
            ping_pong_ns,
            panels: vec![
                Panel::new("[1,2] echo throughput, 8-byte messages", "k msg/s")
                    .log()
                    .with(Series::subject("ticked echo", k(self.ticked)))
                    .with(Series::baseline("dispatch per message", k(self.dispatch))),
                Panel::new("[1,2] ticked / dispatch within each round", "ratio")
                    .line(TARGET_RATIO, format!("target >= {TARGET_RATIO}x"))
                    .with(Series::subject("ticked / dispatch", self.tp_ratio)),
                Panel::new("[3] round trip p50, one message in flight", "us")
                    .with(Series::subject("resident echo", self.rt_p50))
                    .with(Series::baseline("submit + readback floor", self.floor_p50)),
                Panel::new("[3] round trip p50 / floor p50 within each round", "ratio")
                    .line(1.0, "parity")
                    .line(TARGET_RT_RATIO, format!("target <= {TARGET_RT_RATIO}x"))
                    .with(Series::subject("round trip / floor", self.rt_ratio)),
                Panel::new("[4] pipeline affine -> filter -> gather", "k records/s")
                    .with(Series::subject("3-kernel group", k(self.pipeline))),
                Panel::new("[5] time per tick during the round trips", "us")
                    .with(Series::subject("tick", self.tick_us)),
            ],
        }
    }
}
