//! The harness of the device benchmarks (`src/bin/gyre-bench-cuda.rs`,
//! `src/bin/gyre-bench-wgpu.rs`), written once: opening the runtime (or saying why not),
//! the command line, a resident group seen from the host through `gyre`'s public API,
//! the drain that checks nothing was lost, and the numbers the reports print.
//!
//! Both binaries drive `gyre` as a user does: a [`Runtime`] built with a device backend,
//! kernels declared with [`gyre::KernelSpec`] and launched with [`Runtime::group`], and
//! messages through a [`Sender`] (blocking, with a timeout) and a [`Receiver`] of the
//! group's kernels. Their baselines (a CUDA launch per message, a wgpu dispatch per
//! message) do not use gyre; every ratio is taken against a baseline measured in the same
//! round, and the median over rounds is reported, as `gyre-bench` does.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use gyre::{
    Backend, Backpressure, Error, Group, Kernel, KernelSpec, Message, Receiver, Runtime, Sender,
};
use hdrhistogram::Histogram;

/// The runtime of a device benchmark on `backend`, or the exit status to leave with when
/// there is none: when `backend` is unavailable this prints why (with `skip_hint`) and
/// gives success, or failure when `required` says why one is required (an environment
/// variable, a flag). `what` names the missing thing ("GPU", "wgpu adapter").
///
/// # Errors
/// The exit status to return from `main`.
pub fn open_runtime(
    bin: &str,
    backend: Backend,
    timeout: Duration,
    what: &str,
    required: Option<&str>,
    skip_hint: &str,
) -> Result<Runtime, ExitCode> {
    // One CPU worker: the benchmarks launch no CPU kernel, so the pool only idles.
    match Runtime::builder()
        .backend(backend)
        .workers(1)
        .command_timeout(timeout)
        .build()
    {
        Ok(runtime) => Ok(runtime),
        Err(Error::BackendUnavailable { reason, .. }) => {
            println!("{bin}: no {what} to benchmark: {reason}");
            if let Some(why) = required {
                eprintln!("{bin}: {why}: a {what} is required");
                return Err(ExitCode::FAILURE);
            }
            println!("{bin}: skipped ({skip_hint})");
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{bin}: building the runtime: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// `VAR=1` when environment variable `var` is set to `1`: the reason a missing device
/// fails the run (see [`open_runtime`]).
pub fn required_by_env(var: &str) -> Option<String> {
    std::env::var(var)
        .is_ok_and(|v| v == "1")
        .then(|| format!("{var}=1"))
}

/// The exit status of a run: success, or the error printed.
pub fn finish(bin: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{bin}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The command line of a benchmark binary: flags one by one, with values checked and a
/// usage message (exit status 2) for anything wrong.
pub struct Args {
    about: &'static str,
    usage: &'static str,
    rest: std::iter::Skip<std::env::Args>,
}

impl Args {
    /// The process's arguments; `about` is what `--help` says before the usage.
    pub fn new(about: &'static str, usage: &'static str) -> Self {
        Self {
            about,
            usage,
            rest: std::env::args().skip(1),
        }
    }

    /// Prints `why` and the usage, and exits with status 2.
    pub fn usage_exit(&self, why: &str) -> ! {
        eprintln!("{why}\n{}", self.usage);
        std::process::exit(2);
    }

    /// Handles a flag no binary knows: `-h`/`--help` prints the usage, anything else is
    /// an error. Both exit.
    pub fn unknown(&self, arg: &str) -> ! {
        match arg {
            "-h" | "--help" => self.usage_exit(self.about),
            other => self.usage_exit(&format!("unknown argument `{other}`")),
        }
    }

    /// The value of `flag`, parsed and accepted by `valid`; else the usage, saying
    /// `expected`.
    pub fn value<T: std::str::FromStr>(
        &mut self,
        flag: &str,
        expected: &str,
        valid: impl Fn(&T) -> bool,
    ) -> T {
        self.rest
            .next()
            .and_then(|v| v.parse::<T>().ok())
            .filter(|v| valid(v))
            .unwrap_or_else(|| self.usage_exit(&format!("{flag} takes {expected}")))
    }

    /// The value of `--rounds`: a positive number.
    pub fn rounds(&mut self) -> usize {
        self.value("--rounds", "a positive number", |n: &usize| *n > 0)
    }
}

impl Iterator for Args {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        self.rest.next()
    }
}

/// Runs `subject` and `baseline` once each for round `round` (counted from 0): the
/// subject first in even rounds, the baseline first in odd ones, so a drift within a
/// round favours neither.
///
/// # Errors
/// The first error of either.
pub fn interleave<E>(
    round: usize,
    subject: impl FnOnce() -> Result<(), E>,
    baseline: impl FnOnce() -> Result<(), E>,
) -> Result<(), E> {
    if round.is_multiple_of(2) {
        subject()?;
        baseline()
    } else {
        baseline()?;
        subject()
    }
}

/// Bounces of [`placement_ns`]: enough for a stable median, few enough not to matter
/// beside a round (a few hundred microseconds near, a few milliseconds far).
const PLACEMENT_BOUNCES: u64 = 2_000;

/// The cache-line ping-pong round trip between this thread and a new one, ns: where the
/// host threads sit this round (near or far vCPU pair), for the plot only (the text
/// report does not print it).
pub fn placement_ns() -> f64 {
    crate::ping_pong(PLACEMENT_BOUNCES).as_nanos() as f64 / PLACEMENT_BOUNCES as f64
}

/// The ping-pongs ([`placement_ns`]) taken before round `i` of each measurement, for the
/// plot's placement panel: one value per round, the median over measurements.
pub struct Placements {
    per_round: Vec<Vec<f64>>,
}

impl Placements {
    /// Room for `rounds` rounds.
    pub fn new(rounds: usize) -> Self {
        Self {
            per_round: vec![Vec::new(); rounds],
        }
    }

    /// Records `ns` for round `round` (counted from 0); a round past the end is ignored.
    pub fn record(&mut self, round: usize, ns: f64) {
        if let Some(r) = self.per_round.get_mut(round) {
            r.push(ns);
        }
    }

    /// The median of each round's ping-pongs (NaN for a round with none).
    pub fn per_round(&self) -> Vec<f64> {
        self.per_round
            .iter()
            .map(|r| crate::median(r.clone()))
            .collect()
    }
}

/// Quantile `q` of `h`, in the histogram's unit (ns).
pub fn ns(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64
}

/// Quantile `q` of `h` (ns), in µs.
pub fn us(h: &Histogram<u64>, q: f64) -> f64 {
    ns(h, q) / 1_000.0
}

/// Adds the round's histogram `round` into the whole run's `all`.
///
/// # Errors
/// When the histograms' bounds differ (they never do: both come from
/// [`crate::round_trip_histogram`]).
pub fn merge(all: &mut Histogram<u64>, round: &Histogram<u64>) -> Result<(), String> {
    all.add(round).map_err(|e| e.to_string())
}

/// A number for a `RESULT` line: `decimals` places, or `na` when not measured (NaN).
pub fn field(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "na".to_owned()
    }
}

/// Launches `specs` as group `name` on the runtime's backend, each kernel's port 0 routed
/// to the next kernel (the last one's to the host; the others have no host output), with
/// `threads` per block when given (CUDA); activates it and returns it with a
/// [`Resident`] over its first and last kernel, sending and receiving with `timeout`.
///
/// # Errors
/// A launch or activation that failed (a missing implementation, a compile error, ...).
pub fn launch_chain<W, T>(
    runtime: &Runtime,
    name: &str,
    threads: Option<u32>,
    load: W,
    specs: Vec<KernelSpec<T, T>>,
    timeout: Duration,
) -> Result<(Group, Resident<W>), String>
where
    W: Workload<In = T, Out = T>,
    T: Message,
{
    let mut builder = runtime.group(name);
    if let Some(threads) = threads {
        builder.threads(threads);
    }
    let n = specs.len();
    let mut stages = Vec::with_capacity(n);
    for (i, spec) in specs.into_iter().enumerate() {
        let spec = if i + 1 == n {
            spec
        } else {
            spec.no_host_output()
        };
        let stage = builder.add(spec);
        if let Some(&prev) = stages.last() {
            builder.route(prev, 0, stage);
        }
        stages.push(stage);
    }
    let group = builder
        .launch()
        .map_err(|e| format!("launching group `{name}`: {e}"))?;
    group
        .activate()
        .map_err(|e| format!("activating group `{name}`: {e}"))?;
    let kernel = |i: usize| -> Result<Kernel<T, T>, String> {
        group
            .kernel(stages[i])
            .map_err(|e| format!("group `{name}`: {e}"))
    };
    let resident = Resident::new(&group, load, &kernel(0)?, &kernel(n - 1)?, timeout)?;
    Ok((group, resident))
}

/// What message number `seq` carries through a resident group, and how its output is
/// checked. The input encodes all of `seq`, so the check also proves order.
pub trait Workload: Sync {
    /// The message sent.
    type In: Message;
    /// The message received back.
    type Out: Message;
    /// Message `seq`.
    fn input(&self, seq: u64) -> Self::In;
    /// Checks the output of message `seq`.
    ///
    /// # Errors
    /// What was expected and what came.
    fn check(&self, seq: u64, output: &Self::Out) -> Result<(), String>;
}

/// 8 bytes, the sequence number; the built-in echo (`Builtin::Echo { bytes: 8 }`)
/// hands them back.
pub struct EchoLoad;

impl Workload for EchoLoad {
    type In = u64;
    type Out = u64;

    fn input(&self, seq: u64) -> u64 {
        seq
    }

    fn check(&self, seq: u64, output: &u64) -> Result<(), String> {
        if *output == seq {
            Ok(())
        } else {
            Err(format!("the echo of {seq} came back as {output}"))
        }
    }
}

/// How long one pass over a resident group took, and how many times its first kernel's
/// heartbeat moved meanwhile (on wgpu: the ticks the group ran).
#[derive(Clone, Copy, Debug, Default)]
pub struct Span {
    /// Wall time of the pass.
    pub took: Duration,
    /// Heartbeats of the group's first kernel during the pass.
    pub beats: u64,
}

/// A launched group seen from the host through `gyre`: a [`Sender`] into its first
/// kernel (blocking while the inbox is full, failing after the timeout) and the
/// [`Receiver`] of its last kernel's host output.
pub struct Resident<W: Workload> {
    group: String,
    load: W,
    sender: Sender<W::In>,
    receiver: Receiver<W::Out>,
    heartbeat: Box<dyn Fn() -> u32 + Send + Sync>,
    timeout: Duration,
}

impl<W: Workload> Resident<W> {
    /// Messages of `load` into `input`, outputs from `output` (the same kernel for a
    /// group of one), each send and receive failing after `timeout`.
    ///
    /// # Errors
    /// When `output`'s receiving end is taken or it has no host output.
    pub fn new<X: Message, Y: Message>(
        group: &Group,
        load: W,
        input: &Kernel<W::In, X>,
        output: &Kernel<Y, W::Out>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let receiver = output
            .receiver()
            .map_err(|e| format!("group `{}`: the output's receiver: {e}", group.name()))?;
        let beats = input.clone();
        Ok(Self {
            group: group.name().to_owned(),
            load,
            sender: input.sender().backpressure(Backpressure::Timeout(timeout)),
            receiver,
            heartbeat: Box::new(move || beats.metrics().heartbeat),
            timeout,
        })
    }

    fn beats_since(&self, before: u32) -> u64 {
        u64::from((self.heartbeat)().wrapping_sub(before))
    }

    /// `count` round trips from `first`, one message in flight, each send-to-receive time
    /// recorded in `histogram` (ns); every output checked.
    ///
    /// # Errors
    /// A send or receive that failed or timed out, or an output that was not the one
    /// expected.
    pub fn round_trips(
        &mut self,
        first: u64,
        count: u64,
        histogram: &mut Histogram<u64>,
    ) -> Result<Span, String> {
        let before = (self.heartbeat)();
        let start = Instant::now();
        for seq in first..first + count {
            let t = Instant::now();
            send(&self.sender, &self.load, &self.group, seq)?;
            recv(
                &mut self.receiver,
                &self.load,
                &self.group,
                self.timeout,
                seq,
            )?;
            histogram.saturating_record(t.elapsed().as_nanos() as u64);
        }
        let took = start.elapsed();
        Ok(Span {
            took,
            beats: self.beats_since(before),
        })
    }

    /// Streams `count` messages from `first` from a sender thread while this thread
    /// receives and checks each, in order. The span runs to the last output.
    ///
    /// # Errors
    /// As [`Resident::round_trips`]; a sender thread that could not start or panicked.
    pub fn stream(&mut self, first: u64, count: u64) -> Result<Span, String> {
        let before = (self.heartbeat)();
        let start = Instant::now();
        let (sender, receiver) = (&self.sender, &mut self.receiver);
        let (load, group, timeout) = (&self.load, self.group.as_str(), self.timeout);
        std::thread::scope(|scope| {
            let sending = std::thread::Builder::new()
                .name("gyre-bench-sender".into())
                .spawn_scoped(scope, || {
                    (first..first + count).try_for_each(|seq| send(sender, load, group, seq))
                })
                .map_err(|e| format!("spawning the sender thread: {e}"))?;
            let received = (first..first + count)
                .try_for_each(|seq| recv(receiver, load, group, timeout, seq));
            let sent = sending
                .join()
                .map_err(|_| "the sender thread panicked".to_owned())?;
            received.and(sent)
        })?;
        let took = start.elapsed();
        Ok(Span {
            took,
            beats: self.beats_since(before),
        })
    }

    /// Drains `group` (this resident's) and checks that nothing was lost: no kernel
    /// timed out, faulted or failed to stop, nothing was handed back, no output is left
    /// unreceived, the runtime holds no dead letter, and every kernel processed `sent`
    /// messages.
    ///
    /// # Errors
    /// The first thing that was not so.
    pub fn drain(mut self, runtime: &Runtime, group: &Group, sent: u64) -> Result<(), String> {
        let name = group.name();
        let report = group.drain(self.timeout);
        for k in &report.kernels {
            let kernel = &k.kernel;
            if k.timed_out {
                return Err(format!("group `{name}`: the drain of `{kernel}` timed out"));
            }
            if let Some(fault) = &k.fault {
                return Err(format!("group `{name}`: `{kernel}` faulted: {fault}"));
            }
            if let Some(error) = &k.error {
                return Err(format!("group `{name}`: stopping `{kernel}`: {error}"));
            }
        }
        let undelivered = report.undelivered_count();
        if undelivered != 0 {
            return Err(format!(
                "group `{name}`: {undelivered} message(s) handed back undelivered"
            ));
        }
        // After the drain an empty output says the kernel stopped (an error): the loop
        // ends there.
        let mut left = 0;
        while let Ok(Some(_)) = self.receiver.try_recv() {
            left += 1;
        }
        if left != 0 {
            return Err(format!(
                "group `{name}`: {left} output(s) received by no one"
            ));
        }
        let dead = runtime.take_dead_letters();
        if let Some(first) = dead.first() {
            return Err(format!(
                "group `{name}`: {} dead letter(s), first from `{}`: {}",
                dead.len(),
                first.kernel,
                first.reason
            ));
        }
        if report.kernels.len() != group.kernel_names().len() {
            return Err(format!(
                "group `{name}`: the drain reported {} kernel(s) of {}",
                report.kernels.len(),
                group.kernel_names().len()
            ));
        }
        for k in &report.kernels {
            if k.processed != sent {
                return Err(format!(
                    "group `{name}`: kernel `{}` processed {} messages, {sent} were sent",
                    k.kernel, k.processed
                ));
            }
        }
        Ok(())
    }
}

/// Sends message `seq` of `load` (its number as the correlation id too).
fn send<W: Workload>(
    sender: &Sender<W::In>,
    load: &W,
    group: &str,
    seq: u64,
) -> Result<(), String> {
    sender
        .send_with_corr(load.input(seq), seq)
        .map_err(|e| format!("group `{group}`: sending {seq}: {}", e.error))
}

/// Receives the output of message `seq` of `load` and checks it.
fn recv<W: Workload>(
    receiver: &mut Receiver<W::Out>,
    load: &W,
    group: &str,
    timeout: Duration,
    seq: u64,
) -> Result<(), String> {
    let output = receiver
        .recv_timeout(timeout)
        .map_err(|e| format!("group `{group}`: receiving {seq}: {e}"))?;
    load.check(seq, &output)
        .map_err(|e| format!("group `{group}`: {e}"))
}
