//! The CUDA backend's benchmarks through `gyre`: a resident echo kernel against one launch
//! per message.
//!
//! ```text
//! cargo run --release -p gyre-bench --features cuda --bin gyre-bench-cuda [--emulated] [--rounds N]
//! ```
//!
//! `cargo xtask gpu-validate` runs it on a machine with an NVIDIA GPU. It drives gyre as a
//! user does: `Runtime::builder().backend(Backend::Cuda)` (or `CudaEmulated`), kernels
//! declared as `KernelSpec::<u64, u64>::new(..).builtin(Builtin::Echo { bytes: 8 })` and
//! launched with `runtime.group(..)` (`threads`, `add`, `route`, `launch`, `activate`),
//! messages sent with `Kernel::sender()` (`Backpressure::Timeout`, `send_with_corr`) and
//! received with `Kernel::receiver()` (`recv_timeout`), every group stopped with
//! `Group::drain`. The harness (timing, rounds, drain checks) is `gyre_bench::device`.
//! Four measurements, each in rounds that interleave the subject with its baseline, every
//! ratio taken within a round and the median over rounds reported (as `gyre-bench` does):
//!
//! 1. **Round trip** host → resident echo kernel → host, one 8-byte message in flight,
//!    every round trip in an HDR histogram (p50, p99, p999). The kernel is the built-in
//!    echo in a one-kernel group that stays resident for the whole run.
//! 2. **Baseline: one launch per message**, in the same rounds: a trivial kernel
//!    (`*out = *in`), compiled once through the runtime's NVRTC path, launched per message
//!    on a non-blocking stream of its own with its input and output in pinned mapped host
//!    memory, then the stream is synchronised and the output read. Its p50/p99, and the
//!    ratio launch p50 / resident p50. It runs while the resident group is on the device
//!    (on other SMs), as it would beside one in use.
//! 3. **Echo throughput**: a sender thread streams 8-byte messages into the resident echo
//!    while the main thread receives and checks every one, in order; against the
//!    launch-per-message rate (a batch of launches, each synchronised).
//! 4. **Kernel-to-kernel hop**: round trips through a two-kernel group (echo → echo,
//!    port 0 of the first routed to the second) against the one-kernel group, in the same
//!    rounds; the difference of the p50s is the cost of one hop through a device ring.
//!
//! With `--emulated` everything runs on the emulated device (the CUDA C compiled with g++
//! and run in host threads): a smoke run whose numbers are labelled EMULATED and say
//! nothing about a GPU. There is no launch to measure there, so the launch baselines are
//! skipped. Without `--emulated` and without a usable GPU it prints why and exits 0, or 1
//! when `GYRE_REQUIRE_GPU=1` (as `cargo xtask gpu-validate` sets).
//!
//! Every group is drained at the end; the run fails if anything was left undelivered.
//! The last line is `RESULT round_trip_p50_ns=… launch_sync_p50_ns=… ratio=…
//! throughput_msgs=… hop_ns=…` for the validation report (`na` where not measured).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use gyre::builtins::Builtin;
use gyre::{Backend, KernelSpec, Runtime};
use gyre_bench::device::{
    field, finish, interleave, launch_chain, merge, ns, open_runtime, placement_ns,
    required_by_env, Args, EchoLoad, Placements,
};
use gyre_bench::plot::{Chart, Panel, Series};
use gyre_bench::{median, progress, rate, report, round_trip_histogram, say};
use hdrhistogram::Histogram;

const BIN: &str = "gyre-bench-cuda";
/// Set to `1` to make a missing GPU a failure (`cargo xtask gpu-validate` does).
const REQUIRE_GPU_VAR: &str = "GYRE_REQUIRE_GPU";
/// Command timeout of the runtime, and how long one message may take before the run fails.
const TIMEOUT: Duration = Duration::from_secs(20);
const USAGE: &str = "usage: gyre-bench-cuda [--emulated] [--rounds N]";

/// How much to measure: on a GPU, or on the (much slower) emulated device.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    /// Threads per block of every group.
    threads: u32,
    /// Rounds of every measurement.
    rounds: usize,
    /// Unrecorded round trips (and launches) before the first round.
    warm_up: u64,
    /// Round trips per subject per round (round trip and hop).
    rt_per_round: u64,
    /// Messages streamed per round (throughput).
    tp_per_round: u64,
    /// Launches, each synchronised, per round (throughput baseline).
    launches_per_round: u64,
}

impl Sizes {
    /// N = 20,000 round trips and M = 1,000,000 streamed messages over 10 rounds.
    const GPU: Self = Self {
        threads: 64,
        rounds: 10,
        warm_up: 2_000,
        rt_per_round: 2_000,
        tp_per_round: 100_000,
        launches_per_round: 2_000,
    };
    /// A smoke run: small counts, four host threads per block.
    const EMULATED: Self = Self {
        threads: 4,
        rounds: 5,
        warm_up: 200,
        rt_per_round: 1_000,
        tp_per_round: 40_000,
        launches_per_round: 0,
    };
}

/// The built-in echo of the first 8 bytes of each message.
fn echo(name: &str) -> KernelSpec<u64, u64> {
    KernelSpec::new(name).builtin(Builtin::Echo { bytes: 8 })
}

/// The launch-per-message baseline on a GPU (see the module documentation).
mod launch {
    use std::ffi::c_void;
    use std::sync::Arc;

    use cudarc::driver::sys;
    use cudarc::driver::{
        result, CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg,
    };
    use cudarc::nvrtc::Ptx;
    use gyre_runtime::backend::cuda::nvrtc;

    /// The kernel launched per message.
    const SOURCE: &str = "extern \"C\" __global__ void one(const unsigned long long *in, \
                          unsigned long long *out) { *out = *in; }\n";

    /// A compiled `one`, a non-blocking stream, and two words of pinned mapped memory.
    pub struct Launcher {
        stream: Arc<CudaStream>,
        function: CudaFunction,
        /// Host address of the two words: input, output.
        host: *mut u64,
        /// Device addresses of the same words.
        device_in: u64,
        device_out: u64,
        ctx: Arc<CudaContext>,
    }

    impl Launcher {
        /// Sets up on device 0, the device `Backend::Cuda` runs on. Must only be called
        /// once a runtime was built with `Backend::Cuda` (the driver probe succeeded),
        /// and before any persistent group is launched.
        pub fn new() -> Result<Self, String> {
            let driver = |what: &str| {
                let what = what.to_owned();
                move |e: result::DriverError| format!("launch baseline: {what}: {e}")
            };
            let ctx = CudaContext::new(0).map_err(driver("open device 0"))?;
            // SAFETY: this context makes no `CudaSlice`; with event tracking off, making a
            // stream does not synchronise the whole context, which would wait forever for
            // a persistent grid.
            unsafe { ctx.disable_event_tracking() };
            let (major, minor) = ctx
                .compute_capability()
                .map_err(driver("compute capability"))?;
            let arch = format!("compute_{major}{minor}");
            let ptx = nvrtc::compile_ptx(SOURCE, "one.cu", &[], &arch, &[])
                .map_err(|e| format!("launch baseline: compiling `one`: {e}"))?;
            let stream = ctx.new_stream().map_err(driver("cuStreamCreate"))?;
            let module = ctx
                .load_module(Ptx::from_src(ptx.ptx))
                .map_err(driver("cuModuleLoadData"))?;
            let function = module
                .load_function("one")
                .map_err(driver("cuModuleGetFunction"))?;
            ctx.bind_to_thread().map_err(driver("cuCtxSetCurrent"))?;
            // SAFETY: the context is current; 16 bytes, mapped and portable (cached, not
            // write-combined: the host reads the output back).
            let host = unsafe {
                result::malloc_host(
                    16,
                    sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE,
                )
            }
            .map_err(driver("cuMemHostAlloc"))?;
            let mut device: sys::CUdeviceptr = 0;
            // SAFETY: `host` came from cuMemHostAlloc with DEVICEMAP; `device` is valid
            // for one write.
            let mapped =
                unsafe { sys::cuMemHostGetDevicePointer_v2(&raw mut device, host, 0) }.result();
            let launcher = Self {
                stream,
                function,
                host: host.cast::<u64>(),
                device_in: device,
                device_out: device + 8,
                ctx,
            };
            mapped.map_err(driver("cuMemHostGetDevicePointer"))?;
            Ok(launcher)
        }

        /// The device: name, compute capability and multiprocessors.
        pub fn describe(&self) -> Result<String, String> {
            let driver = |e: result::DriverError| format!("describing device 0: {e}");
            let name = self.ctx.name().map_err(driver)?;
            let (major, minor) = self.ctx.compute_capability().map_err(driver)?;
            let sms = self
                .ctx
                .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(driver)?;
            Ok(format!("{name} (sm_{major}{minor}, {sms} SMs)"))
        }

        /// One message: writes `value` to the input, launches `one`, synchronises the
        /// stream, reads the output.
        pub fn one(&mut self, value: u64) -> Result<u64, String> {
            // SAFETY: `host` holds two u64 words, alive while `self` is; no kernel runs
            // (the last one was synchronised).
            unsafe { self.host.write_volatile(value) };
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            let config = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut args = self.stream.launch_builder(&self.function);
            args.arg(&self.device_in).arg(&self.device_out);
            // SAFETY: `one` takes two device pointers, passed as the device addresses of
            // the two mapped words, which outlive the launch (synchronised below).
            unsafe { args.launch(config) }.map_err(|e| format!("cuLaunchKernel: {e}"))?;
            self.stream
                .synchronize()
                .map_err(|e| format!("cuStreamSynchronize: {e}"))?;
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            // SAFETY: as above; the kernel finished (synchronised).
            Ok(unsafe { self.host.add(1).read_volatile() })
        }
    }

    impl Drop for Launcher {
        fn drop(&mut self) {
            if self.ctx.bind_to_thread().is_ok() {
                // SAFETY: from cuMemHostAlloc, freed once; no kernel uses it (each launch
                // was synchronised).
                let _ = unsafe { result::free_host(self.host.cast::<c_void>()) };
            }
        }
    }
}

/// `count` launches from `first`, each synchronised, each time recorded in `histogram`
/// when one is given. Returns the total time.
fn launches(
    launcher: &mut launch::Launcher,
    first: u64,
    count: u64,
    mut histogram: Option<&mut Histogram<u64>>,
) -> Result<Duration, String> {
    let start = Instant::now();
    for seq in first..first + count {
        let t = Instant::now();
        let back = launcher.one(seq)?;
        let took = t.elapsed();
        if back != seq {
            return Err(format!("launch baseline: wrote {seq}, read back {back}"));
        }
        if let Some(h) = histogram.as_deref_mut() {
            h.saturating_record(took.as_nanos() as u64);
        }
    }
    Ok(start.elapsed())
}

fn main() -> ExitCode {
    let mut args = Args::new("gyre-bench-cuda: CUDA backend benchmarks", USAGE);
    let (mut emulated, mut rounds) = (false, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--emulated" => emulated = true,
            "--rounds" => rounds = Some(args.rounds()),
            other => args.unknown(other),
        }
    }
    let (backend, required) = if emulated {
        // Asked for explicitly: its absence is a failure.
        (Backend::CudaEmulated, Some("--emulated".to_owned()))
    } else {
        (Backend::Cuda, required_by_env(REQUIRE_GPU_VAR))
    };
    let skip = format!(
        "set {REQUIRE_GPU_VAR}=1 to fail instead, or pass --emulated for a smoke run on the \
         host emulation"
    );
    let what = if emulated { "CUDA emulation" } else { "GPU" };
    let runtime = match open_runtime(BIN, backend, TIMEOUT, what, required.as_deref(), &skip) {
        Ok(runtime) => runtime,
        Err(status) => return status,
    };
    let mut sizes = if emulated {
        Sizes::EMULATED
    } else {
        Sizes::GPU
    };
    if let Some(rounds) = rounds {
        sizes.rounds = rounds;
    }
    finish(BIN, run(&runtime, sizes, emulated))
}

#[allow(clippy::too_many_lines)] // one straight report
fn run(runtime: &Runtime, sizes: Sizes, emulated: bool) -> Result<(), String> {
    let label = if emulated { "EMULATED " } else { "" };
    // Set up the launch baseline before any persistent grid runs.
    let mut launcher = if emulated {
        None
    } else {
        Some(launch::Launcher::new()?)
    };
    match &launcher {
        Some(launcher) => say!(
            "device: {} (backend {})",
            launcher.describe()?,
            runtime.backend_name()
        ),
        None => say!(
            "device: emulated CUDA device (backend {}: g++ on the host; not a GPU)",
            runtime.backend_name()
        ),
    }
    if emulated {
        say!(
            "EMULATED: the CUDA C runs in host threads (g++), not on a GPU; these numbers say \
             nothing about a GPU. No launch baseline (there is no launch to measure)."
        );
    }
    say!(
        "{} rounds, {} threads per block; every ratio is taken within a round, median over rounds",
        sizes.rounds,
        sizes.threads
    );
    let started = Instant::now();
    let bar = progress::bar(3 * sizes.rounds as u64, BIN);
    let mut placements = Placements::new(sizes.rounds);
    let mut plot = PerRound::default();

    let threads = Some(sizes.threads);
    let (echo_group, mut one) = launch_chain(
        runtime,
        "bench-echo",
        threads,
        EchoLoad,
        vec![echo("echo")],
        TIMEOUT,
    )?;
    let mut seq = 0u64;

    // Warm-up: the resident path and the launch path.
    one.round_trips(seq, sizes.warm_up, &mut round_trip_histogram())?;
    seq += sizes.warm_up;
    if let Some(launcher) = launcher.as_mut() {
        launches(launcher, 0, sizes.warm_up, None)?;
    }

    // 1 and 2: round trips, resident against one launch per message.
    say!(
        "\n[1,2] {label}round trip, one 8-byte message in flight, {} per subject per round (ns)",
        sizes.rt_per_round
    );
    say!(
        "  {:>5} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "round",
        "resident p50",
        "resident p99",
        "launch p50",
        "launch p99",
        "ratio"
    );
    let mut resident_all = round_trip_histogram();
    let mut launch_all = round_trip_histogram();
    let mut rt_ratios = Vec::new();
    bar.set_message("[1,2] round trips");
    for round in 0..sizes.rounds {
        placements.record(round, placement_ns());
        let mut resident = round_trip_histogram();
        let mut launched = round_trip_histogram();
        interleave(
            round,
            || {
                one.round_trips(seq, sizes.rt_per_round, &mut resident)?;
                seq += sizes.rt_per_round;
                Ok(())
            },
            || match launcher.as_mut() {
                Some(launcher) => {
                    launches(launcher, 0, sizes.rt_per_round, Some(&mut launched)).map(drop)
                }
                None => Ok::<(), String>(()),
            },
        )?;
        merge(&mut resident_all, &resident)?;
        let ratio = if launched.is_empty() {
            f64::NAN
        } else {
            merge(&mut launch_all, &launched)?;
            ns(&launched, 0.5) / ns(&resident, 0.5)
        };
        rt_ratios.push(ratio);
        plot.resident_p50.push(ns(&resident, 0.5));
        plot.launch_p50.push(if launched.is_empty() {
            f64::NAN
        } else {
            ns(&launched, 0.5)
        });
        plot.rt_ratio.push(ratio);
        bar.inc(1);
        let cell = |h: &Histogram<u64>, q| {
            if h.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.0}", ns(h, q))
            }
        };
        say!(
            "  {:>5} {:>12.0} {:>12.0} {:>12} {:>12} {:>8}",
            round + 1,
            ns(&resident, 0.5),
            ns(&resident, 0.99),
            cell(&launched, 0.5),
            cell(&launched, 0.99),
            field(ratio, 2)
        );
    }
    let rt_p50 = ns(&resident_all, 0.5);
    let launch_p50 = if launch_all.is_empty() {
        f64::NAN
    } else {
        ns(&launch_all, 0.5)
    };
    let rt_ratio = launcher.as_ref().map_or(f64::NAN, |_| median(rt_ratios));

    // 3: throughput, a sender thread streaming into the resident echo, against a batch
    // of launches each synchronised.
    if emulated {
        say!(
            "\n[3] {label}echo throughput: {} messages streamed per round (no launch baseline)",
            sizes.tp_per_round
        );
    } else {
        say!(
            "\n[3] echo throughput: {} messages streamed per round; launch baseline: {} launches \
             per round, each synchronised",
            sizes.tp_per_round,
            sizes.launches_per_round
        );
    }
    say!(
        "  {:>5} {:>14} {:>14} {:>8}",
        "round",
        "resident msg/s",
        "launch msg/s",
        "ratio"
    );
    let mut tp_resident = Vec::new();
    let mut tp_ratios = Vec::new();
    let mut streamed = 0u64;
    bar.set_message("[3] throughput");
    for round in 0..sizes.rounds {
        placements.record(round, placement_ns());
        let mut resident_rate = f64::NAN;
        let mut launch_rate = f64::NAN;
        interleave(
            round,
            || {
                let span = one.stream(seq, sizes.tp_per_round)?;
                seq += sizes.tp_per_round;
                streamed += sizes.tp_per_round;
                resident_rate = rate(sizes.tp_per_round, span.took);
                Ok(())
            },
            || {
                if let Some(launcher) = launcher.as_mut() {
                    let took = launches(launcher, 0, sizes.launches_per_round, None)?;
                    launch_rate = rate(sizes.launches_per_round, took);
                }
                Ok::<(), String>(())
            },
        )?;
        tp_resident.push(resident_rate);
        tp_ratios.push(resident_rate / launch_rate);
        plot.resident_rate.push(resident_rate);
        plot.launch_rate.push(launch_rate);
        plot.tp_ratio.push(resident_rate / launch_rate);
        bar.inc(1);
        say!(
            "  {:>5} {:>14.0} {:>14} {:>8}",
            round + 1,
            resident_rate,
            field(launch_rate, 0),
            field(resident_rate / launch_rate, 1)
        );
    }
    let throughput = median(tp_resident);
    let tp_ratio = launcher.as_ref().map_or(f64::NAN, |_| median(tp_ratios));

    // The launch baseline is done: free it before the hop group.
    drop(launcher);

    // 4: one hop through a device ring: two kernels against one.
    let (hop_group, mut two) = launch_chain(
        runtime,
        "bench-hop",
        threads,
        EchoLoad,
        vec![echo("first"), echo("second")],
        TIMEOUT,
    )?;
    two.round_trips(0, sizes.warm_up, &mut round_trip_histogram())?;
    let mut seq2 = sizes.warm_up;
    say!(
        "\n[4] {label}kernel-to-kernel hop: round trips through 1 kernel and through 2 (echo -> echo), {} each per round (ns)",
        sizes.rt_per_round
    );
    say!(
        "  {:>5} {:>12} {:>12} {:>12}",
        "round",
        "1-kernel p50",
        "2-kernel p50",
        "hop"
    );
    let mut two_all = round_trip_histogram();
    let mut hops = Vec::new();
    bar.set_message("[4] hop");
    for round in 0..sizes.rounds {
        placements.record(round, placement_ns());
        let mut h1 = round_trip_histogram();
        let mut h2 = round_trip_histogram();
        interleave(
            round,
            || {
                one.round_trips(seq, sizes.rt_per_round, &mut h1)?;
                seq += sizes.rt_per_round;
                Ok::<(), String>(())
            },
            || {
                two.round_trips(seq2, sizes.rt_per_round, &mut h2)?;
                seq2 += sizes.rt_per_round;
                Ok(())
            },
        )?;
        merge(&mut two_all, &h2)?;
        let hop = ns(&h2, 0.5) - ns(&h1, 0.5);
        hops.push(hop);
        plot.one_p50.push(ns(&h1, 0.5));
        plot.two_p50.push(ns(&h2, 0.5));
        plot.hop.push(hop);
        bar.inc(1);
        say!(
            "  {:>5} {:>12.0} {:>12.0} {:>12.0}",
            round + 1,
            ns(&h1, 0.5),
            ns(&h2, 0.5),
            hop
        );
    }
    let hop = median(hops);
    progress::done(&bar);

    // Drain: everything sent was received; nothing is left anywhere.
    one.drain(runtime, &echo_group, seq)?;
    two.drain(runtime, &hop_group, seq2)?;

    say!(
        "\n{label}summary ({} rounds, {:.1} s)",
        sizes.rounds,
        started.elapsed().as_secs_f64()
    );
    say!(
        "  {:<34} {:>10} {:>10} {:>10}",
        "round trip (ns)",
        "p50",
        "p99",
        "p999"
    );
    let row = |what: &str, h: &Histogram<u64>| {
        say!(
            "  {what:<34} {:>10.0} {:>10.0} {:>10.0}",
            ns(h, 0.5),
            ns(h, 0.99),
            ns(h, 0.999)
        );
    };
    row("resident echo (1 kernel)", &resident_all);
    if launch_all.is_empty() {
        say!(
            "  {:<34} {:>10}",
            "launch + sync per message",
            "skipped (emulated)"
        );
    } else {
        row("launch + sync per message", &launch_all);
    }
    row("resident echo -> echo (2 kernels)", &two_all);
    let times = |r: f64, decimals: usize| {
        if r.is_finite() {
            format!("{r:.decimals$}x")
        } else {
            "skipped".to_owned()
        }
    };
    say!(
        "  {:<34} {:>10}",
        "launch p50 / resident p50",
        times(rt_ratio, 2)
    );
    say!(
        "  {:<34} {:>10.0}   ({} messages streamed, all checked)",
        "resident throughput (msg/s)",
        throughput,
        streamed
    );
    say!(
        "  {:<34} {:>10}",
        "resident / launch throughput",
        times(tp_ratio, 1)
    );
    say!(
        "  {:<34} {:>10.0}   (median of per-round 2-kernel p50 - 1-kernel p50)",
        "hop (ns)",
        hop
    );
    say!("  drained: {seq} + {seq2} messages processed, none undelivered, no dead letters");
    say!(
        "RESULT round_trip_p50_ns={} launch_sync_p50_ns={} ratio={} throughput_msgs={} hop_ns={}{}",
        field(rt_p50, 0),
        field(launch_p50, 0),
        field(rt_ratio, 2),
        field(throughput, 0),
        field(hop, 0),
        if emulated { " device=EMULATED" } else { "" }
    );
    report::write(BIN, &plot.chart(&sizes, emulated, placements.per_round()))?;
    Ok(())
}

/// What the plot shows: each round's numbers of every measurement.
#[derive(Default)]
struct PerRound {
    resident_p50: Vec<f64>,
    launch_p50: Vec<f64>,
    rt_ratio: Vec<f64>,
    resident_rate: Vec<f64>,
    launch_rate: Vec<f64>,
    tp_ratio: Vec<f64>,
    one_p50: Vec<f64>,
    two_p50: Vec<f64>,
    hop: Vec<f64>,
}

impl PerRound {
    /// The run's plot; the launch baseline's series are left out where not measured
    /// (emulated).
    fn chart(self, sizes: &Sizes, emulated: bool, ping_pong_ns: Vec<f64>) -> Chart {
        let device = if emulated {
            "EMULATED CUDA device (g++ threads on the host, not a GPU)"
        } else {
            "GPU"
        };
        let k = |v: Vec<f64>| v.into_iter().map(|x| x / 1e3).collect();
        Chart {
            title: format!(
                "gyre-bench-cuda: resident kernels against a launch per message ({device})"
            ),
            caption: format!(
                "one run on {}; {} rounds; placement: host ping-pong before each round, \
                 median of the three measurements' rounds",
                report::machine(),
                sizes.rounds
            ),
            rounds: sizes.rounds,
            ping_pong_ns,
            panels: vec![
                Panel::new("[1,2] round trip p50, one 8-byte message in flight", "ns")
                    .log()
                    .with(Series::subject("resident echo", self.resident_p50))
                    .with(Series::baseline("launch + sync", self.launch_p50)),
                Panel::new("[1,2] launch p50 / resident p50 within each round", "ratio")
                    .line(1.0, "parity")
                    .with(Series::subject("launch / resident", self.rt_ratio)),
                Panel::new("[3] echo throughput", "k msg/s")
                    .log()
                    .with(Series::subject("resident echo", k(self.resident_rate)))
                    .with(Series::baseline("launch + sync", k(self.launch_rate))),
                Panel::new(
                    "[3] resident / launch throughput within each round",
                    "ratio",
                )
                .line(1.0, "parity")
                .with(Series::subject("resident / launch", self.tp_ratio)),
                Panel::new("[4] kernel-to-kernel hop", "ns")
                    .with(Series::subject("2-kernel p50", self.two_p50))
                    .with(Series::baseline("1-kernel p50", self.one_p50))
                    .with(Series::subject("hop (difference)", self.hop)),
            ],
        }
    }
}
