//! The CUDA backend's benchmarks: a resident echo kernel against one launch per message.
//!
//! ```text
//! cargo run --release -p gyre-bench --features cuda --bin gyre-bench-cuda [--emulated] [--rounds N]
//! ```
//!
//! `cargo xtask gpu-validate` runs it on a machine with an NVIDIA GPU. Four measurements,
//! each in rounds that interleave the subject with its baseline, every ratio taken within
//! a round and the median over rounds reported (as `gyre-bench` does):
//!
//! 1. **Round trip** host → resident echo kernel → host, one 8-byte message in flight,
//!    every round trip in an HDR histogram (p50, p99, p999). The kernel is the built-in
//!    echo (`gyre_builtin_echo`, `params[0] = 8`) in a one-kernel group that stays resident
//!    for the whole run.
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
//!    port 0 of kernel 0 routed to kernel 1) against the one-kernel group, in the same
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre_bench::{median, round_trip_histogram};
use gyre_runtime::backend::cuda::codegen::HandlerCode;
use gyre_runtime::backend::cuda::group::SendError;
use gyre_runtime::backend::cuda::{
    self as cuda, CudaGroup, Device, GroupPlan, KernelPlan, Route, Target,
};
use hdrhistogram::Histogram;

/// Set to `1` to make a missing GPU a failure (`cargo xtask gpu-validate` does).
const REQUIRE_GPU_VAR: &str = "GYRE_REQUIRE_GPU";
/// Command timeout of the groups, and how long one message may take before the run fails.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Wait steps between two sends into a full inbox.
const FULL_SPINS: u32 = 32;
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
fn echo_kernel(name: &str) -> KernelPlan {
    let mut kernel = KernelPlan::new(name, HandlerCode::Builtin("gyre_builtin_echo"));
    kernel.params[0] = 8;
    kernel
}

fn launch_group(
    device: &Arc<dyn Device>,
    name: &str,
    kernels: Vec<KernelPlan>,
    routes: Vec<Route>,
    threads: u32,
) -> Result<CudaGroup, String> {
    let group = CudaGroup::launch(
        Arc::clone(device),
        GroupPlan {
            name: name.to_owned(),
            kernels,
            routes,
            threads,
        },
        TIMEOUT,
    )
    .map_err(|e| format!("launching group `{name}`: {e}"))?;
    group
        .activate_all()
        .map_err(|e| format!("activating group `{name}`: {e}"))?;
    Ok(group)
}

/// A resident group seen from the host: kernel `input` takes the messages, kernel
/// `output` hands the echoes back.
struct Resident<'g> {
    group: &'g CudaGroup,
    input: usize,
    output: usize,
    /// Yield while waiting instead of spinning (the emulated device's blocks are host
    /// threads that need the CPU).
    yield_while_waiting: bool,
}

impl Resident<'_> {
    /// One wait step: a spin (a yield under emulation), `spins` of them in all; every
    /// 4,096 steps checks the group and how long the wait has taken (the clock is read
    /// only then, to keep it off the measured path).
    fn wait(&self, spins: &mut u32, since: &mut Option<Instant>, what: &str) {
        *spins = spins.wrapping_add(1);
        if spins.is_multiple_of(4096) {
            if let Some(fault) = self.group.fault() {
                panic!(
                    "group `{}` faulted while {what}: {fault}",
                    self.group.name()
                );
            }
            let since = since.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < TIMEOUT,
                "group `{}`: {what} took longer than {TIMEOUT:?}",
                self.group.name()
            );
        }
        if self.yield_while_waiting {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }

    /// Sends `seq` as an 8-byte message, spinning while the inbox is full.
    fn send(&self, seq: u64) {
        let (mut spins, mut since) = (0, None);
        let corr = [seq as u32, (seq >> 32) as u32];
        loop {
            match self.group.try_send(self.input, &seq.to_ne_bytes(), corr) {
                Ok(()) => return,
                Err(SendError::Full { .. }) => {
                    // A full inbox empties a batch at a time: wait a little before trying
                    // again (each refused send also queries the grid's stream).
                    for _ in 0..FULL_SPINS {
                        self.wait(&mut spins, &mut since, "sending");
                    }
                }
                Err(e) => panic!("send to group `{}`: {e}", self.group.name()),
            }
        }
    }

    /// Receives the next echo, spinning until it is there; returns its value.
    fn recv(&self) -> u64 {
        let (mut spins, mut since) = (0, None);
        loop {
            let got = self.group.try_recv_with(self.output, |_, corr, payload| {
                let value = u64::from_ne_bytes(
                    payload[..8]
                        .try_into()
                        .expect("an echo slot holds at least 8 bytes"),
                );
                assert_eq!(
                    corr,
                    [value as u32, (value >> 32) as u32],
                    "the correlation id comes back with the message"
                );
                value
            });
            if let Some(value) = got {
                return value;
            }
            self.wait(&mut spins, &mut since, "waiting for an echo");
        }
    }

    /// `count` round trips from `first`, one message in flight, recorded in `histogram`
    /// (ns). Checks every echo.
    fn round_trips(&self, first: u64, count: u64, histogram: &mut Histogram<u64>) {
        for seq in first..first + count {
            let start = Instant::now();
            self.send(seq);
            let back = self.recv();
            let took = start.elapsed();
            assert_eq!(back, seq, "the echo is the message sent");
            histogram.saturating_record(took.as_nanos() as u64);
        }
    }

    /// Streams `count` messages from `first` from a sender thread while this thread
    /// receives them, checking each (in order). Returns the time from the start to the
    /// last echo.
    fn stream(&self, first: u64, count: u64) -> Duration {
        let start = Instant::now();
        std::thread::scope(|scope| {
            let sender = std::thread::Builder::new()
                .name("gyre-bench-cuda-sender".into())
                .spawn_scoped(scope, || {
                    for seq in first..first + count {
                        self.send(seq);
                    }
                })
                .expect("spawn the sender thread");
            for expected in first..first + count {
                assert_eq!(self.recv(), expected, "echoes come back in order");
            }
            sender.join().expect("the sender thread panicked");
        });
        start.elapsed()
    }
}

/// Drains a group; fails if anything was left undelivered or the drain timed out.
/// Returns the messages its first kernel processed.
fn drain(group: &CudaGroup) -> Result<u64, String> {
    let report = group.drain(TIMEOUT);
    let name = group.name();
    if report.timed_out {
        return Err(format!("group `{name}`: the drain timed out"));
    }
    if let Some(fault) = &report.fault {
        return Err(format!("group `{name}` faulted: {fault}"));
    }
    let undelivered = report.undelivered_count();
    if undelivered != 0 {
        return Err(format!(
            "group `{name}`: {undelivered} message(s) left undelivered"
        ));
    }
    let mut left = 0;
    while group.try_recv_with(group.len() - 1, |_, _, _| ()).is_some() {
        left += 1;
    }
    if left != 0 {
        return Err(format!(
            "group `{name}`: {left} echo(es) received by no one"
        ));
    }
    let dead = group.take_dead_letters();
    if !dead.is_empty() {
        return Err(format!(
            "group `{name}`: {} dead letter(s), first: {}",
            dead.len(),
            dead[0].reason
        ));
    }
    let processed: Vec<u64> = report
        .kernels
        .iter()
        .map(|k| k.counters.processed)
        .collect();
    if processed.windows(2).any(|w| w[0] != w[1]) {
        return Err(format!(
            "group `{name}`: its kernels processed different counts {processed:?}"
        ));
    }
    Ok(processed[0])
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
        /// Sets up on device 0. Must only be called once the driver probe succeeded
        /// (`cuda::default_device()` returned a device), and before any persistent group
        /// is launched.
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

fn p(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64
}

/// A number for the RESULT line, `na` when not measured.
fn field(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "na".to_owned(),
    }
}

struct Options {
    emulated: bool,
    rounds: Option<usize>,
}

fn usage_exit(why: &str) -> ! {
    eprintln!("{why}\n{USAGE}");
    std::process::exit(2);
}

fn parse_args() -> Options {
    let mut options = Options {
        emulated: false,
        rounds: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--emulated" => options.emulated = true,
            "--rounds" => {
                options.rounds = Some(
                    args.next()
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|n| *n > 0)
                        .unwrap_or_else(|| usage_exit("--rounds takes a positive number")),
                );
            }
            "-h" | "--help" => usage_exit("gyre-bench-cuda: CUDA backend benchmarks"),
            other => usage_exit(&format!("unknown argument `{other}`")),
        }
    }
    options
}

fn main() -> ExitCode {
    let options = parse_args();
    let device = if options.emulated {
        match cuda::emulated_device() {
            Ok(device) => device,
            Err(e) => {
                eprintln!("gyre-bench-cuda: the emulated device is not available: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        match cuda::default_device() {
            Ok(device) => device,
            Err(e) => {
                let required = std::env::var(REQUIRE_GPU_VAR).is_ok_and(|v| v == "1");
                println!("gyre-bench-cuda: no GPU to benchmark: {e}");
                if required {
                    eprintln!("gyre-bench-cuda: {REQUIRE_GPU_VAR}=1: a GPU is required");
                    return ExitCode::FAILURE;
                }
                println!(
                    "gyre-bench-cuda: skipped (set {REQUIRE_GPU_VAR}=1 to fail instead, or pass \
                     --emulated for a smoke run on the host emulation)"
                );
                return ExitCode::SUCCESS;
            }
        }
    };
    match run(&device, &options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gyre-bench-cuda: {e}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::too_many_lines)] // one straight report
fn run(device: &Arc<dyn Device>, options: &Options) -> Result<(), String> {
    let emulated = device.is_emulated();
    let mut sizes = if emulated {
        Sizes::EMULATED
    } else {
        Sizes::GPU
    };
    if let Some(rounds) = options.rounds {
        sizes.rounds = rounds;
    }
    let label = if emulated { "EMULATED " } else { "" };
    println!("device: {}", device.describe());
    if emulated {
        println!(
            "EMULATED: the CUDA C runs in host threads (g++), not on a GPU; these numbers say \
             nothing about a GPU. No launch baseline (there is no launch to measure)."
        );
    }
    println!(
        "{} rounds, {} threads per block; every ratio is taken within a round, median over rounds",
        sizes.rounds, sizes.threads
    );
    let started = Instant::now();

    // Set up the launch baseline before any persistent grid runs.
    let mut launcher = if emulated {
        None
    } else {
        Some(launch::Launcher::new()?)
    };

    let echo = launch_group(
        device,
        "bench-echo",
        vec![echo_kernel("echo")],
        vec![],
        sizes.threads,
    )?;
    let one = Resident {
        group: &echo,
        input: 0,
        output: 0,
        yield_while_waiting: emulated,
    };
    let mut seq = 0u64;

    // Warm-up: the resident path and the launch path.
    one.round_trips(seq, sizes.warm_up, &mut round_trip_histogram());
    seq += sizes.warm_up;
    if let Some(launcher) = launcher.as_mut() {
        launches(launcher, 0, sizes.warm_up, None)?;
    }

    // 1 and 2: round trips, resident against one launch per message.
    println!(
        "\n[1,2] {label}round trip, one 8-byte message in flight, {} per subject per round (ns)",
        sizes.rt_per_round
    );
    println!(
        "  {:>5} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "round", "resident p50", "resident p99", "launch p50", "launch p99", "ratio"
    );
    let mut resident_all = round_trip_histogram();
    let mut launch_all = round_trip_histogram();
    let mut rt_ratios = Vec::new();
    for round in 0..sizes.rounds {
        let mut resident = round_trip_histogram();
        let mut launched = round_trip_histogram();
        // Alternate which goes first, so a drift within a round favours neither.
        for turn in 0..2 {
            if (round + turn) % 2 == 0 {
                one.round_trips(seq, sizes.rt_per_round, &mut resident);
                seq += sizes.rt_per_round;
            } else if let Some(launcher) = launcher.as_mut() {
                launches(launcher, 0, sizes.rt_per_round, Some(&mut launched))?;
            }
        }
        resident_all.add(&resident).map_err(|e| e.to_string())?;
        let ratio = if launched.is_empty() {
            f64::NAN
        } else {
            launch_all.add(&launched).map_err(|e| e.to_string())?;
            p(&launched, 0.5) / p(&resident, 0.5)
        };
        rt_ratios.push(ratio);
        let cell = |h: &Histogram<u64>, q| {
            if h.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.0}", p(h, q))
            }
        };
        println!(
            "  {:>5} {:>12.0} {:>12.0} {:>12} {:>12} {:>8}",
            round + 1,
            p(&resident, 0.5),
            p(&resident, 0.99),
            cell(&launched, 0.5),
            cell(&launched, 0.99),
            field(Some(ratio), 2)
        );
    }
    let rt_p50 = p(&resident_all, 0.5);
    let launch_p50 = (!launch_all.is_empty()).then(|| p(&launch_all, 0.5));
    let rt_ratio = launch_p50.map(|_| median(rt_ratios));

    // 3: throughput, a sender thread streaming into the resident echo, against a batch
    // of launches each synchronised.
    if emulated {
        println!(
            "\n[3] {label}echo throughput: {} messages streamed per round (no launch baseline)",
            sizes.tp_per_round
        );
    } else {
        println!(
            "\n[3] echo throughput: {} messages streamed per round; launch baseline: {} launches \
             per round, each synchronised",
            sizes.tp_per_round, sizes.launches_per_round
        );
    }
    println!(
        "  {:>5} {:>14} {:>14} {:>8}",
        "round", "resident msg/s", "launch msg/s", "ratio"
    );
    let mut tp_resident = Vec::new();
    let mut tp_ratios = Vec::new();
    let mut streamed = 0u64;
    for round in 0..sizes.rounds {
        let mut resident_rate = f64::NAN;
        let mut launch_rate = f64::NAN;
        for turn in 0..2 {
            if (round + turn) % 2 == 0 {
                let took = one.stream(seq, sizes.tp_per_round);
                seq += sizes.tp_per_round;
                streamed += sizes.tp_per_round;
                resident_rate = sizes.tp_per_round as f64 / took.as_secs_f64();
            } else if let Some(launcher) = launcher.as_mut() {
                let took = launches(launcher, 0, sizes.launches_per_round, None)?;
                launch_rate = sizes.launches_per_round as f64 / took.as_secs_f64();
            }
        }
        tp_resident.push(resident_rate);
        tp_ratios.push(resident_rate / launch_rate);
        println!(
            "  {:>5} {:>14.0} {:>14} {:>8}",
            round + 1,
            resident_rate,
            field(Some(launch_rate), 0),
            field(Some(resident_rate / launch_rate), 1)
        );
    }
    let throughput = median(tp_resident);
    let tp_ratio = launcher.as_ref().map(|_| median(tp_ratios));

    // The launch baseline is done: free it before the hop groups.
    drop(launcher);

    // 4: one hop through a device ring: two kernels against one.
    let pipe = launch_group(
        device,
        "bench-hop",
        vec![echo_kernel("first"), echo_kernel("second")],
        vec![Route {
            from: 0,
            port: 0,
            to: Target::Kernel(1),
        }],
        sizes.threads,
    )?;
    let two = Resident {
        group: &pipe,
        input: 0,
        output: 1,
        yield_while_waiting: emulated,
    };
    two.round_trips(0, sizes.warm_up, &mut round_trip_histogram());
    let mut seq2 = sizes.warm_up;
    println!(
        "\n[4] {label}kernel-to-kernel hop: round trips through 1 kernel and through 2 (echo -> echo), {} each per round (ns)",
        sizes.rt_per_round
    );
    println!(
        "  {:>5} {:>12} {:>12} {:>12}",
        "round", "1-kernel p50", "2-kernel p50", "hop"
    );
    let mut one_all = round_trip_histogram();
    let mut two_all = round_trip_histogram();
    let mut hops = Vec::new();
    for round in 0..sizes.rounds {
        let mut h1 = round_trip_histogram();
        let mut h2 = round_trip_histogram();
        for turn in 0..2 {
            if (round + turn) % 2 == 0 {
                one.round_trips(seq, sizes.rt_per_round, &mut h1);
                seq += sizes.rt_per_round;
            } else {
                two.round_trips(seq2, sizes.rt_per_round, &mut h2);
                seq2 += sizes.rt_per_round;
            }
        }
        one_all.add(&h1).map_err(|e| e.to_string())?;
        two_all.add(&h2).map_err(|e| e.to_string())?;
        let hop = p(&h2, 0.5) - p(&h1, 0.5);
        hops.push(hop);
        println!(
            "  {:>5} {:>12.0} {:>12.0} {:>12.0}",
            round + 1,
            p(&h1, 0.5),
            p(&h2, 0.5),
            hop
        );
    }
    let hop = median(hops);

    // Drain: everything sent was received; nothing is left anywhere.
    let processed = drain(&echo)?;
    if processed != seq {
        return Err(format!(
            "group `bench-echo` processed {processed} messages, {seq} were sent"
        ));
    }
    let processed = drain(&pipe)?;
    if processed != seq2 {
        return Err(format!(
            "group `bench-hop` processed {processed} messages, {seq2} were sent"
        ));
    }

    println!(
        "\n{label}summary ({} rounds, {:.1} s)",
        sizes.rounds,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  {:<34} {:>10} {:>10} {:>10}",
        "round trip (ns)", "p50", "p99", "p999"
    );
    println!(
        "  {:<34} {:>10.0} {:>10.0} {:>10.0}",
        "resident echo (1 kernel)",
        rt_p50,
        p(&resident_all, 0.99),
        p(&resident_all, 0.999)
    );
    if launch_all.is_empty() {
        println!(
            "  {:<34} {:>10}",
            "launch + sync per message", "skipped (emulated)"
        );
    } else {
        println!(
            "  {:<34} {:>10.0} {:>10.0} {:>10.0}",
            "launch + sync per message",
            p(&launch_all, 0.5),
            p(&launch_all, 0.99),
            p(&launch_all, 0.999)
        );
    }
    println!(
        "  {:<34} {:>10.0} {:>10.0} {:>10.0}",
        "resident echo -> echo (2 kernels)",
        p(&two_all, 0.5),
        p(&two_all, 0.99),
        p(&two_all, 0.999)
    );
    println!(
        "  {:<34} {:>10}",
        "launch p50 / resident p50",
        rt_ratio.map_or_else(|| "skipped".to_owned(), |r| format!("{r:.2}x"))
    );
    println!(
        "  {:<34} {:>10.0}   ({} messages streamed, all checked)",
        "resident throughput (msg/s)", throughput, streamed
    );
    println!(
        "  {:<34} {:>10}",
        "resident / launch throughput",
        tp_ratio.map_or_else(|| "skipped".to_owned(), |r| format!("{r:.1}x"))
    );
    println!(
        "  {:<34} {:>10.0}   (median of per-round 2-kernel p50 - 1-kernel p50)",
        "hop (ns)", hop
    );
    println!("  drained: {seq} + {seq2} messages processed, none undelivered, no dead letters");
    println!(
        "RESULT round_trip_p50_ns={} launch_sync_p50_ns={} ratio={} throughput_msgs={} hop_ns={}{}",
        field(Some(rt_p50), 0),
        field(launch_p50, 0),
        field(rt_ratio, 2),
        field(Some(throughput), 0),
        field(Some(hop), 0),
        if emulated { " device=EMULATED" } else { "" }
    );
    Ok(())
}
