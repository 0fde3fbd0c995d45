//! A pipeline split over two OS processes, joined by the Zenoh bridge (`gyre-zenoh`).
//!
//! The parent process runs stage 1 and a `collect` kernel; a child process (started by
//! the parent) runs stages 2 and 3 as one group. Two links cross the process boundary:
//!
//! ```text
//! parent: host → stage1 ──link──▶ child: export `stage2` → stage2 → stage3 ──link──▶
//! parent: export `results` → collect → host (checks every record arrived once)
//! ```
//!
//! Every stage is a built-in ([`Builtin::Affine`], [`Builtin::Gather`]), so the same
//! program runs on every backend: stage 1 adds 1 to the record's value, stage 2 doubles
//! it, stage 3 subtracts 1, so record `i` (value `i`) comes back with value `2i + 1`.
//! The parent checks that each of the records `0..N` came back exactly once with that
//! value, and that both links drained with nothing handed back.
//!
//! Drain order, upstream first across both processes: the parent drains stage 1, then
//! its link (which waits until the child's stage 2 took everything); the child sees its
//! export's link finished, drains its group, then its return link, prints that link's
//! metrics and exits; the parent waits for its return export to finish, drains
//! `collect`, and checks the child's exit status.
//!
//! The two processes talk over `tcp/127.0.0.1:PORT` (a free loopback port, multicast
//! scouting off): the parent listens, the child connects. Parent and child exchange lines
//! on the child's stdin/stdout: the child says `gyre-dp ready` once its export and link
//! are up and `gyre-dp done` at the end, and stops (drains what it can and exits non-zero)
//! if its stdin closes early, that is if the parent is gone.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre::builtins::{Builtin, Record};
use gyre::{Backend, KernelSpec};
use gyre_zenoh::{Bridge, BridgeConfig, ExportOptions, LinkMetrics, LinkOptions};
use indicatif::ProgressBar;

/// Environment variable naming the endpoint the child connects to.
pub const ENV_ENDPOINT: &str = "GYRE_DISTRIBUTED_ENDPOINT";
/// Environment variable holding the key prefix of this run.
pub const ENV_PREFIX: &str = "GYRE_DISTRIBUTED_PREFIX";
/// Environment variable naming the child's backend (a `--backend` name).
pub const ENV_BACKEND: &str = "GYRE_DISTRIBUTED_BACKEND";
/// What marks the child's protocol lines on stdout (other lines are ignored).
const LINE: &str = "gyre-dp ";
/// How long any one step (start-up, a drain, the child's exit) may take.
const STEP: Duration = Duration::from_secs(30);
/// Slots of every inbox and host output.
const CAPACITY: u32 = 1024;

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    /// Records sent into stage 1.
    pub sent: u32,
    /// Distinct records that came back, each with the right value.
    pub received_once: u32,
    /// Records that came back more than once (counting each extra copy).
    pub duplicates: u64,
    /// Records that came back with a value other than `2i + 1`, or an id out of range.
    pub wrong: u64,
    /// Records that never came back.
    pub missing: u64,
    /// From the first send until the last record came back.
    pub elapsed: Duration,
    /// The forward link (stage 1 → child) at its drain.
    pub forward: LinkMetrics,
    /// The child's words about its return link and export (one line each).
    pub child_report: Vec<String>,
    /// The parent's return export at the end: received, delivered, consumed, duplicates.
    pub results_export: gyre_zenoh::ExportMetrics,
    /// Messages the forward link handed back undelivered (0 when all went well).
    pub forward_undelivered: usize,
    /// The child's exit status.
    pub child_status: ExitStatus,
}

impl Outcome {
    /// Every record arrived exactly once with its value, nothing was handed back, and
    /// the child exited successfully.
    pub fn all_once(&self) -> bool {
        self.received_once == self.sent
            && self.duplicates == 0
            && self.wrong == 0
            && self.missing == 0
            && self.forward_undelivered == 0
            && self.child_status.success()
    }
}

/// The `--backend` name of `backend`.
fn backend_name(backend: Backend) -> &'static str {
    crate::backend::NAMES
        .iter()
        .find(|(_, b)| *b == backend)
        .map_or("cpu", |(n, _)| n)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The child process, killed if it is still running when this is dropped.
struct ChildGuard {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ChildGuard {
    fn spawn(mut command: Command) -> Result<Self, BoxError> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not start the child process: {e}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("the child's stdout is not piped")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Anywhere in the line: a test harness may print before it.
                if let Some((_, rest)) = line.split_once(LINE) {
                    if tx.send(rest.to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Self { child, lines: rx })
    }

    fn expect(&self, word: &str) -> Result<(), BoxError> {
        match self.lines.recv_timeout(STEP).ok() {
            Some(line) if line == word => Ok(()),
            Some(line) => Err(format!("the child said `{line}` instead of `{word}`").into()),
            None => Err(format!(
                "the child did not say `{word}` within {STEP:?} (see its stderr above)"
            )
            .into()),
        }
    }

    /// Waits for the child's exit, killing it after [`STEP`].
    fn wait(&mut self) -> Result<ExitStatus, BoxError> {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return Err(format!("the child did not exit within {STEP:?}; killed it").into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Record `i` as stage 1 receives it.
fn record(i: u32) -> Record {
    Record {
        key: i % 16,
        seq: i,
        value: i as f32,
        aux: i ^ 0xA5A5,
    }
}

/// The value record `i` comes back with: `((i + 1) * 2) - 1`, exact in `f32` for every
/// `i < 2^22` (each stage's result is a small integer).
fn expected(i: u32) -> f32 {
    2.0 * i as f32 + 1.0
}

/// The parent: runs stage 1 and `collect` on `backend`, starts the child with `child`
/// (a command that runs [`child_from_env`]; this adds the environment it needs), sends
/// `messages` records and checks what comes back.
///
/// # Errors
/// When a runtime, kernel, bridge or link cannot start, a drain times out, or the child
/// fails to start or say what it should in time. Lost or duplicated records are not an
/// error: [`Outcome`] counts them.
pub fn run(backend: Backend, messages: u32, child: Command) -> Result<Outcome, BoxError> {
    run_with_progress(backend, messages, child, &ProgressBar::hidden())
}

/// [`run`], advancing `progress` (its length set here to `messages`) as the records come
/// back, and clearing it before the drain.
///
/// # Errors
/// As [`run`].
#[allow(clippy::too_many_lines)] // one run, in the order it happens
pub fn run_with_progress(
    backend: Backend,
    messages: u32,
    mut child: Command,
    progress: &ProgressBar,
) -> Result<Outcome, BoxError> {
    /// Records between two updates of `progress` (a visible bar redraws at most 20 times
    /// a second anyway; this keeps its lock off the per-record path).
    const PROGRESS_EVERY: u64 = 1024;
    progress.set_length(u64::from(messages));
    progress.set_message("starting the second process");
    let endpoint = format!("tcp/127.0.0.1:{}", free_port()?);
    let prefix = format!("gyre-example/distributed/{}", std::process::id());
    let bridge = Bridge::open(BridgeConfig::peer().listen(&endpoint))?;
    let runtime = crate::backend::runtime(backend)?;
    let stage1 = runtime.launch(
        KernelSpec::<Record, Record>::new("stage1")
            .capacity(CAPACITY)
            .host_output(CAPACITY)
            .builtin(Builtin::Affine { a: 1.0, b: 1.0 }),
    )?;
    let collect = runtime.launch(
        KernelSpec::<Record, Record>::new("collect")
            .capacity(CAPACITY)
            .host_output(CAPACITY)
            .builtin(Builtin::Gather),
    )?;
    stage1.activate()?;
    collect.activate()?;
    let mut results = collect.receiver()?;
    let results_export = bridge.export::<Record>(
        &format!("{prefix}/results"),
        collect.sender(),
        ExportOptions::default(),
    )?;

    child
        .env(ENV_ENDPOINT, &endpoint)
        .env(ENV_PREFIX, &prefix)
        .env(ENV_BACKEND, backend_name(backend));
    let mut child = ChildGuard::spawn(child)?;
    child.expect("ready")?;
    let link = bridge.link(
        &format!("{prefix}/stage2"),
        stage1.receiver()?,
        LinkOptions {
            connect_timeout: STEP,
            ..LinkOptions::default()
        },
    )?;

    progress.set_message("records back");
    let started = Instant::now();
    let feeder = {
        let tx = stage1.sender();
        std::thread::spawn(move || -> Result<(), String> {
            for i in 0..messages {
                tx.send(record(i))
                    .map_err(|e| format!("stage 1 refused record {i}: {e}"))?;
            }
            Ok(())
        })
    };
    let mut seen = vec![0u32; messages as usize];
    let mut wrong = 0u64;
    let mut check = |r: Record| match seen.get_mut(r.seq as usize) {
        Some(count)
            if r.value.to_bits() == expected(r.seq).to_bits() && r.aux == r.seq ^ 0xA5A5 =>
        {
            *count += 1;
        }
        _ => wrong += 1,
    };
    let mut arrived = 0u64;
    while arrived < u64::from(messages) {
        match results.recv_timeout(STEP) {
            Ok(r) => {
                check(r);
                arrived += 1;
                if arrived.is_multiple_of(PROGRESS_EVERY) {
                    progress.set_position(arrived);
                }
            }
            Err(gyre::Error::Timeout { .. }) => break, // some are missing: counted below
            Err(e) => return Err(e.into()),
        }
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    feeder.join().map_err(|_| "the feeder panicked")??;

    // Drain, upstream first across both processes.
    let report = stage1.drain(STEP)?;
    if report.timed_out {
        return Err("stage 1 did not drain in time".into());
    }
    let forward = link.drain(STEP);
    let forward_undelivered = forward.undelivered.len();
    if !forward.finished {
        return Err(format!("the forward link did not drain: {forward:?}").into());
    }
    if !results_export.wait_finished(1, STEP) {
        return Err("the child's return link did not finish within the step timeout".into());
    }
    let report = collect.drain(STEP)?;
    if report.timed_out {
        return Err("collect did not drain in time".into());
    }
    // Anything after the N records is a duplicate (or wrong).
    while let Ok(Some(r)) = results.try_recv() {
        check(r);
    }
    let mut child_report = Vec::new();
    loop {
        match child.lines.recv_timeout(STEP).ok() {
            Some(line) if line == "done" => break,
            Some(line) => child_report.push(line),
            None => return Err("the child did not say `done` in time".into()),
        }
    }
    let child_status = child.wait()?;
    let (mut once, mut duplicates, mut missing) = (0, 0, 0);
    for &n in &seen {
        match n {
            0 => missing += 1,
            1 => once += 1,
            n => {
                once += 1;
                duplicates += u64::from(n - 1);
            }
        }
    }
    let shutdown = runtime.shutdown(STEP);
    if shutdown.undelivered_count() != 0 {
        return Err(format!(
            "the runtime shut down with {} messages left",
            shutdown.undelivered_count()
        )
        .into());
    }
    Ok(Outcome {
        sent: messages,
        received_once: once,
        duplicates,
        wrong,
        missing,
        elapsed,
        forward: forward.metrics,
        child_report,
        results_export: results_export.close(),
        forward_undelivered,
        child_status,
    })
}

/// Whether this process was started as the child (its environment names an endpoint).
pub fn is_child() -> bool {
    std::env::var_os(ENV_ENDPOINT).is_some()
}

/// The child: stages 2 and 3 on the backend its environment names, exported under the
/// run's prefix and linked back to the parent's `results` export. Returns once it drained
/// (or when its stdin closes first: the parent is gone).
///
/// # Errors
/// When its environment is incomplete, a runtime, group, bridge or link cannot start, or
/// a drain fails or times out.
pub fn child_from_env() -> Result<(), BoxError> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| format!("the child needs the environment variable {name}"))
    };
    let endpoint = var(ENV_ENDPOINT)?;
    let prefix = var(ENV_PREFIX)?;
    let backend = crate::backend::from_args(&["--backend".to_owned(), var(ENV_BACKEND)?])?;
    let bridge = Bridge::open(BridgeConfig::peer().connect(&endpoint))?;
    let runtime = crate::backend::runtime(backend)?;
    let mut builder = runtime.group("stages-2-3");
    let s2 = builder.add(
        KernelSpec::<Record, Record>::new("stage2")
            .capacity(CAPACITY)
            .builtin(Builtin::Affine { a: 2.0, b: 0.0 }),
    );
    let s3 = builder.add(
        KernelSpec::<Record, Record>::new("stage3")
            .capacity(CAPACITY)
            .host_output(CAPACITY)
            .builtin(Builtin::Affine { a: 1.0, b: -1.0 }),
    );
    builder.route(s2, 0, s3).to_host(s3, 0);
    let group = builder.launch()?;
    let stage2 = group.kernel(s2)?;
    let stage3 = group.kernel(s3)?;
    group.activate()?;
    let export = bridge.export::<Record>(
        &format!("{prefix}/stage2"),
        stage2.sender(),
        ExportOptions::default(),
    )?;
    let link = bridge.link(
        &format!("{prefix}/results"),
        stage3.receiver()?,
        LinkOptions {
            connect_timeout: STEP,
            ..LinkOptions::default()
        },
    )?;
    // The parent is gone when our stdin closes.
    let orphaned = Arc::new(AtomicBool::new(false));
    {
        let orphaned = Arc::clone(&orphaned);
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut sink);
            orphaned.store(true, Ordering::Relaxed);
        });
    }
    println!("{LINE}ready");
    // The parent drains its link when it has sent everything: wait for that.
    while !export.wait_finished(1, Duration::from_millis(100)) {
        if orphaned.load(Ordering::Relaxed) {
            let report = group.terminate();
            let lost: usize = report.kernels.iter().map(|k| k.undelivered.len()).sum();
            drop(link.terminate());
            return Err(format!(
                "the parent went away before it drained; {lost} records were still here"
            )
            .into());
        }
    }
    let report = group.drain(STEP);
    if let Some(k) = report.kernels.iter().find(|k| k.timed_out) {
        return Err(format!("{} did not drain in time", k.kernel).into());
    }
    let back = link.drain(STEP);
    let m = &back.metrics;
    println!(
        "{LINE}link back (child stage3 → parent collect): sent {}, acknowledged {}, \
         retransmitted {}, credit stalls {}, reconnects {}, round trip avg {:?}",
        m.sent,
        m.acknowledged,
        m.retransmitted,
        m.credit_stalls,
        m.reconnects,
        m.round_trip_avg.unwrap_or_default()
    );
    let e = export.close();
    println!(
        "{LINE}export stage2 (child): received {}, delivered {}, consumed {}, duplicates {}, gaps {}",
        e.received, e.delivered, e.consumed, e.duplicates, e.gaps
    );
    println!("{LINE}done");
    if !back.finished || !back.undelivered.is_empty() {
        return Err(format!("the return link did not drain: {back:?}").into());
    }
    drop(runtime.shutdown(STEP));
    Ok(())
}
