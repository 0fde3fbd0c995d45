//! The two workloads of the pipeline report (`src/bin/gyre-bench-pipeline.rs`) and their
//! baselines.
//!
//! # Workload A: a three-stage pipeline
//!
//! One host thread streams [`Msg`]s (64 bytes) through three stages and receives what the
//! last stage emits, keeping at most [`PIPELINE_WINDOW`] messages in flight ([`drive_pipeline`]).
//! The stages are [`stage1`], [`stage2`] and [`stage3`] ([`STAGES`]); the host checks every
//! output against [`expected_output`] (order and values), so a broken pipeline panics.
//! Baselines, behind the [`Pipeline`] trait:
//!
//! - [`RtrbPipeline`]: four `rtrb` rings of [`PIPELINE_CAPACITY`] slots, one thread per
//!   stage; every wait (empty ring, full ring) spins [`SPIN_TRIES`] times, then yields
//!   once per further try. Three stage threads and the host are four threads on what may
//!   be two cores: intended, it is the baseline the issue asks for.
//! - [`CrossbeamPipeline`]: four bounded `crossbeam-channel`s of the same capacity, one
//!   thread per stage doing blocking `recv`/`send`.
//!
//! # Workload B: round-robin actors
//!
//! The host sends messages round-robin over [`ACTORS`] actors (message `i` goes to actor
//! [`actor_of`]`(i)`), then one [`flush_message`] to every actor; each actor keeps an
//! [`ActorState`] (count and running sum of a payload word) and answers the flush with
//! an [`ActorResult`] on one shared collector. The host waits for every result and checks
//! them against [`expected_results`] ([`drive_actors`]). Baseline, behind the
//! [`ActorSystem`] trait:
//!
//! - [`TokioActors`]: a multi-thread tokio runtime of two workers, one task per actor with
//!   a bounded `tokio::sync::mpsc` inbox of [`ACTOR_CAPACITY`] slots; the host sends from
//!   a plain thread with `blocking_send` and receives the results with `blocking_recv`.
//!
//! # Adding a subject
//!
//! A subject implements [`Pipeline`] or [`ActorSystem`] (reusing the stage functions,
//! [`ActorState`] and the checks here, so every subject does the same work), gets a
//! variant in [`PipelineSubject`] or [`ActorSubject`] with its name and one arm in `run`,
//! and is listed in `ALL`. The report then measures it in every round and prints its
//! ratios over each baseline; nothing else changes.

use std::sync::atomic::{fence, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Msg;

/// Messages per pipeline measurement in the report.
pub const PIPELINE_MESSAGES: u64 = 200_000;
/// Most messages the host keeps in the pipeline at once.
pub const PIPELINE_WINDOW: u64 = 512;
/// Slots in each of the pipeline's rings and channels.
pub const PIPELINE_CAPACITY: usize = 1024;
/// Actors in the actor workload.
pub const ACTORS: usize = 1000;
/// Messages per actor measurement in the report (flushes not counted).
pub const ACTOR_MESSAGES: u64 = 500_000;
/// Bound of each actor's inbox, the same for every subject (the report takes
/// `--actor-capacity N`). Round-robin over 1,000 actors keeps every inbox nearly empty, so
/// the bound is never reached; 16 is enough. It matters for gyre because gyre rings are
/// allocated up front (device-mappable memory): 1,000 actors × 16 slots × 128 bytes is
/// 2 MB of ring that stays in cache, where 1,024 slots would be 128 MB streamed through
/// DRAM. tokio allocates channel blocks as messages come, so its speed does not depend on
/// the bound. The README reports 16, 64 and 1,024.
pub const ACTOR_CAPACITY: usize = 16;
/// Sequence number that marks a flush; no workload message uses it.
pub const FLUSH_SEQ: u64 = u64::MAX;
/// Failed tries the spinning baselines spin for before they start to yield.
pub const SPIN_TRIES: u32 = 64;
/// A measurement of `n` messages is preceded by untimed ones, `n / WARM_UP_DIVISOR` at a
/// time, for at least [`WARM_UP_MIN`].
pub const WARM_UP_DIVISOR: u64 = 10;
/// The shortest warm-up of a measurement. A subject's threads are new in every round, and
/// Linux sometimes starts a new thread on the core of the thread that spawned it and moves
/// it only 5–35 ms later (seen with `examples/placement_probe.rs`: the host and gyre's one
/// pool worker on one core, ~2.9 instead of ~10.5 M msg/s, until one of them moved). A
/// warm-up of a fixed ~2 ms let that transient into single rounds of any subject; 50 ms of
/// untimed messages keeps it out for all of them alike.
pub const WARM_UP_MIN: Duration = Duration::from_millis(50);

/// Runs `chunk` (untimed messages from the given first sequence number, returning how many
/// it used) until [`WARM_UP_MIN`] has passed; returns the next sequence number.
fn warm_up(mut chunk: impl FnMut(u64) -> u64) -> u64 {
    let started = Instant::now();
    let mut next = 0;
    loop {
        next += chunk(next);
        if started.elapsed() >= WARM_UP_MIN {
            return next;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Workload A: the pipeline.
// ---------------------------------------------------------------------------------------

/// The message the host feeds into stage 1 as number `seq`.
pub fn pipeline_input(seq: u64) -> Msg {
    Msg::new(seq)
}

/// Stage 1: adds 1 to payload word 0; `seq` and the other words unchanged.
#[inline]
pub fn stage1(mut msg: Msg) -> Msg {
    msg.body[0] = msg.body[0].wrapping_add(1);
    msg
}

/// Stage 2: multiplies payload word 0 by 3 (wrapping).
#[inline]
pub fn stage2(mut msg: Msg) -> Msg {
    msg.body[0] = msg.body[0].wrapping_mul(3);
    msg
}

/// Stage 3: xors payload word 0 with `seq`.
#[inline]
pub fn stage3(mut msg: Msg) -> Msg {
    msg.body[0] ^= msg.seq;
    msg
}

/// The stages in pipeline order.
pub const STAGES: [fn(Msg) -> Msg; 3] = [stage1, stage2, stage3];

/// What stage 3 emits for input number `seq`, computed directly (not through the stage
/// functions, so a wrong stage shows).
pub fn expected_output(seq: u64) -> Msg {
    let mut msg = pipeline_input(seq);
    msg.body[0] = seq.wrapping_add(1).wrapping_mul(3) ^ seq;
    msg
}

/// Panics unless `output` is what the pipeline must emit as its output number `seq`.
#[inline]
pub fn check_output(seq: u64, output: &Msg) {
    assert_eq!(
        *output,
        expected_output(seq),
        "pipeline output {seq} is wrong or out of order"
    );
}

/// A running three-stage pipeline seen from the host thread.
pub trait Pipeline {
    /// Sends one message into stage 1, waiting while its queue is full.
    fn send(&mut self, msg: Msg);
    /// Receives the next output of stage 3, waiting for it.
    fn recv(&mut self) -> Msg;
    /// Stops the stages and joins their threads; everything sent must have been
    /// received. Panics when a stage did not stop cleanly or left outputs behind.
    fn shutdown(self);
}

/// Streams inputs `first_seq..first_seq + count` through `pipeline`, sending while fewer
/// than `window` are in flight and receiving otherwise, and checks every output
/// ([`check_output`]). Returns the time from the first send to the last receive.
pub fn drive_pipeline<P: Pipeline>(
    pipeline: &mut P,
    first_seq: u64,
    count: u64,
    window: u64,
) -> Duration {
    assert!(window > 0, "a window of zero sends nothing");
    let end = first_seq + count;
    let (mut sent, mut received) = (first_seq, first_seq);
    let start = Instant::now();
    while received < end {
        if sent < end && sent - received < window {
            pipeline.send(pipeline_input(sent));
            sent += 1;
        } else {
            let output = pipeline.recv();
            check_output(received, &output);
            received += 1;
        }
    }
    start.elapsed()
}

/// One measurement on a started pipeline: untimed messages for at least [`WARM_UP_MIN`]
/// (`messages / WARM_UP_DIVISOR` at a time), then `messages` timed ones
/// ([`PIPELINE_WINDOW`] in flight), then a clean stop. Returns the timed part.
pub fn measure_pipeline<P: Pipeline>(mut pipeline: P, messages: u64) -> Duration {
    let chunk = (messages / WARM_UP_DIVISOR).max(1);
    let first = warm_up(|from| {
        drive_pipeline(&mut pipeline, from, chunk, PIPELINE_WINDOW);
        chunk
    });
    let took = drive_pipeline(&mut pipeline, first, messages, PIPELINE_WINDOW);
    pipeline.shutdown();
    took
}

/// Which pipeline to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PipelineSubject {
    /// Baseline: [`RtrbPipeline`].
    Rtrb,
    /// Baseline: [`CrossbeamPipeline`].
    Crossbeam,
    /// [`GyrePipeline`] on a pool of one worker (host + worker fill the two cores).
    GyrePool1,
    /// [`GyrePipeline`] on a pool of two workers.
    GyrePool2,
}

impl PipelineSubject {
    /// Everything the report measures, in interleaving order.
    pub const ALL: &'static [Self] = &[
        Self::GyrePool1,
        Self::Rtrb,
        Self::GyrePool2,
        Self::Crossbeam,
    ];
    /// The baselines the report divides by.
    pub const BASELINES: &'static [Self] = &[Self::Rtrb, Self::Crossbeam];

    /// Short name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rtrb => "rtrb",
            Self::Crossbeam => "crossbeam",
            Self::GyrePool1 => "gyre-pool-1w",
            Self::GyrePool2 => "gyre-pool-2w",
        }
    }

    /// Whether this is one of the [`BASELINES`](Self::BASELINES).
    pub fn is_baseline(self) -> bool {
        Self::BASELINES.contains(&self)
    }

    /// Starts a fresh pipeline, measures `messages` through it ([`measure_pipeline`]) and
    /// stops it. Returns the timed part.
    pub fn run(self, messages: u64) -> Duration {
        match self {
            Self::Rtrb => measure_pipeline(RtrbPipeline::start(), messages),
            Self::Crossbeam => measure_pipeline(CrossbeamPipeline::start(), messages),
            Self::GyrePool1 => measure_pipeline(GyrePipeline::start(1), messages),
            Self::GyrePool2 => measure_pipeline(GyrePipeline::start(2), messages),
        }
    }
}

/// One wait: spins for the first [`SPIN_TRIES`] failed tries, then yields the thread
/// once per further try.
#[derive(Debug, Default)]
struct SpinThenYield {
    tries: u32,
}

impl SpinThenYield {
    /// One failed try: spin or yield.
    #[inline]
    fn wait(&mut self) {
        if self.tries < SPIN_TRIES {
            self.tries += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Pushes `msg`, waiting (spin, then yield) while the ring is full. Returns `false`
/// (dropping the message) when the consumer is gone, which only a panicking reader causes.
fn rtrb_push(tx: &mut rtrb::Producer<Msg>, msg: Msg) -> bool {
    let mut wait = SpinThenYield::default();
    let mut msg = msg;
    loop {
        match tx.push(msg) {
            Ok(()) => return true,
            Err(rtrb::PushError::Full(back)) => {
                if tx.is_abandoned() {
                    return false;
                }
                msg = back;
                wait.wait();
            }
        }
    }
}

/// Pops the next message, waiting (spin, then yield) while the ring is empty. Returns
/// `None` once the producer is gone and the ring is empty.
fn rtrb_pop(rx: &mut rtrb::Consumer<Msg>) -> Option<Msg> {
    let mut wait = SpinThenYield::default();
    loop {
        if let Ok(msg) = rx.pop() {
            return Some(msg);
        }
        if rx.is_abandoned() {
            // ORDERING: the abandonment check reads a reference count without ordering;
            // this fence makes every push the producer made before it was dropped visible
            // to the emptiness check below (as rtrb documents for `is_abandoned`).
            fence(Ordering::Acquire);
            if rx.is_empty() {
                return None;
            }
        } else {
            wait.wait();
        }
    }
}

/// Spawns a named thread running `body`.
fn spawn_named<F: FnOnce() + Send + 'static>(name: &str, body: F) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .unwrap_or_else(|e| panic!("spawning thread {name}: {e}"))
}

/// The rtrb baseline: host → ring → stage 1 → ring → stage 2 → ring → stage 3 → ring →
/// host, every wait spin-then-yield.
pub struct RtrbPipeline {
    tx: rtrb::Producer<Msg>,
    rx: rtrb::Consumer<Msg>,
    stages: Vec<JoinHandle<()>>,
}

impl RtrbPipeline {
    /// Four rings of [`PIPELINE_CAPACITY`] slots and a thread per stage.
    ///
    /// # Panics
    /// When a thread cannot be spawned.
    pub fn start() -> Self {
        let (tx, mut upstream) = rtrb::RingBuffer::<Msg>::new(PIPELINE_CAPACITY);
        let mut stages = Vec::with_capacity(STAGES.len());
        for (index, work) in STAGES.into_iter().enumerate() {
            let (mut out, next) = rtrb::RingBuffer::<Msg>::new(PIPELINE_CAPACITY);
            let mut input = upstream;
            stages.push(spawn_named(
                &format!("rtrb-stage{}", index + 1),
                move || {
                    while let Some(msg) = rtrb_pop(&mut input) {
                        if !rtrb_push(&mut out, work(msg)) {
                            return;
                        }
                    }
                    // Dropping `out` here tells the next stage this one is done.
                },
            ));
            upstream = next;
        }
        Self {
            tx,
            rx: upstream,
            stages,
        }
    }
}

impl Pipeline for RtrbPipeline {
    #[inline]
    fn send(&mut self, msg: Msg) {
        assert!(rtrb_push(&mut self.tx, msg), "the rtrb stage 1 is alive");
    }

    #[inline]
    fn recv(&mut self) -> Msg {
        rtrb_pop(&mut self.rx).expect("the rtrb pipeline stopped before emitting everything")
    }

    fn shutdown(self) {
        let Self { tx, mut rx, stages } = self;
        // Closing the input stops stage 1 once it is empty, which closes its output, and so on.
        drop(tx);
        for stage in stages {
            stage.join().expect("an rtrb stage exits cleanly");
        }
        assert!(
            rtrb_pop(&mut rx).is_none(),
            "the benchmark received every output before stopping"
        );
    }
}

/// The crossbeam baseline: four bounded channels and a thread per stage with blocking
/// `recv`/`send`.
pub struct CrossbeamPipeline {
    tx: crossbeam_channel::Sender<Msg>,
    rx: crossbeam_channel::Receiver<Msg>,
    stages: Vec<JoinHandle<()>>,
}

impl CrossbeamPipeline {
    /// Four channels of [`PIPELINE_CAPACITY`] slots and a thread per stage.
    ///
    /// # Panics
    /// When a thread cannot be spawned.
    pub fn start() -> Self {
        let (tx, mut upstream) = crossbeam_channel::bounded::<Msg>(PIPELINE_CAPACITY);
        let mut stages = Vec::with_capacity(STAGES.len());
        for (index, work) in STAGES.into_iter().enumerate() {
            let (out, next) = crossbeam_channel::bounded::<Msg>(PIPELINE_CAPACITY);
            let input = upstream;
            stages.push(spawn_named(
                &format!("crossbeam-stage{}", index + 1),
                move || {
                    // Ends when the upstream sender is dropped and the channel is empty;
                    // dropping `out` then ends the next stage.
                    while let Ok(msg) = input.recv() {
                        if out.send(work(msg)).is_err() {
                            return;
                        }
                    }
                },
            ));
            upstream = next;
        }
        Self {
            tx,
            rx: upstream,
            stages,
        }
    }
}

impl Pipeline for CrossbeamPipeline {
    #[inline]
    fn send(&mut self, msg: Msg) {
        self.tx.send(msg).expect("the crossbeam stages are alive");
    }

    #[inline]
    fn recv(&mut self) -> Msg {
        self.rx.recv().expect("the crossbeam stages are alive")
    }

    fn shutdown(self) {
        let Self { tx, rx, stages } = self;
        drop(tx);
        for stage in stages {
            stage.join().expect("a crossbeam stage exits cleanly");
        }
        assert!(
            rx.recv().is_err(),
            "the benchmark received every output before stopping"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Workload B: round-robin actors.
// ---------------------------------------------------------------------------------------

/// The actor message number `i` goes to, of `actors`.
#[inline]
pub fn actor_of(i: u64, actors: usize) -> usize {
    (i % actors as u64) as usize
}

/// Message number `i`: `seq = i`, payload word 0 (the one actors add up) `= i`.
#[inline]
pub fn actor_message(i: u64) -> Msg {
    Msg::new(i)
}

/// The flush message: `seq` is [`FLUSH_SEQ`].
pub fn flush_message() -> Msg {
    Msg::new(FLUSH_SEQ)
}

/// What an actor reports on a flush.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ActorResult {
    /// The actor's index.
    pub actor: u64,
    /// Messages it handled since the previous flush.
    pub count: u64,
    /// Wrapping sum of their payload word 0.
    pub sum: u64,
}

/// An actor's state: what it has counted since the last flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActorState {
    result: ActorResult,
}

impl ActorState {
    /// Actor number `actor`, nothing counted.
    pub fn new(actor: usize) -> Self {
        Self {
            result: ActorResult {
                actor: actor as u64,
                count: 0,
                sum: 0,
            },
        }
    }

    /// Handles one message: a flush returns the result so far and starts counting
    /// afresh; anything else is counted and added up, returning `None`.
    #[inline]
    pub fn handle(&mut self, msg: &Msg) -> Option<ActorResult> {
        if msg.seq == FLUSH_SEQ {
            let result = self.result;
            self.result.count = 0;
            self.result.sum = 0;
            Some(result)
        } else {
            self.result.count += 1;
            self.result.sum = self.result.sum.wrapping_add(msg.body[0]);
            None
        }
    }
}

/// What every actor must report after messages `first..first + count` went round-robin
/// over `actors` actors, indexed by actor.
pub fn expected_results(first: u64, count: u64, actors: usize) -> Vec<ActorResult> {
    let mut states: Vec<ActorState> = (0..actors).map(ActorState::new).collect();
    for i in first..first + count {
        states[actor_of(i, actors)].handle(&actor_message(i));
    }
    states
        .iter_mut()
        .map(|state| {
            state
                .handle(&flush_message())
                .expect("a flush always reports")
        })
        .collect()
}

/// Panics unless `results` (in any order) are exactly the [`expected_results`]: one per
/// actor, with the right counts and sums.
pub fn check_results(results: &[ActorResult], first: u64, count: u64, actors: usize) {
    assert_eq!(results.len(), actors, "one result per actor");
    let mut by_actor: Vec<Option<ActorResult>> = vec![None; actors];
    for result in results {
        let slot = by_actor
            .get_mut(result.actor as usize)
            .unwrap_or_else(|| panic!("result from unknown actor {}", result.actor));
        assert!(slot.is_none(), "actor {} reported twice", result.actor);
        *slot = Some(*result);
    }
    for (got, want) in by_actor
        .into_iter()
        .zip(expected_results(first, count, actors))
    {
        assert_eq!(
            got,
            Some(want),
            "actor {} reported a wrong count or sum",
            want.actor
        );
    }
}

/// Running actors seen from the host thread.
pub trait ActorSystem {
    /// How many actors there are.
    fn actors(&self) -> usize;
    /// Sends `msg` to actor `actor`, waiting while its inbox is full.
    fn send(&mut self, actor: usize, msg: Msg);
    /// Receives the next result from the shared collector, waiting for it.
    fn recv_result(&mut self) -> ActorResult;
    /// Stops every actor and joins them; every result must have been received. Panics
    /// when an actor did not stop cleanly or left results behind.
    fn shutdown(self);
}

/// Sends messages `first..first + count` round-robin ([`actor_of`]), then a flush to every
/// actor, receives one result per actor and checks them ([`check_results`], after the
/// clock stops). Returns the time from the first send to the last result.
pub fn drive_actors<A: ActorSystem>(system: &mut A, first: u64, count: u64) -> Duration {
    let actors = system.actors();
    let mut results = Vec::with_capacity(actors);
    let start = Instant::now();
    for i in first..first + count {
        system.send(actor_of(i, actors), actor_message(i));
    }
    for actor in 0..actors {
        system.send(actor, flush_message());
    }
    for _ in 0..actors {
        results.push(system.recv_result());
    }
    let took = start.elapsed();
    check_results(&results, first, count, actors);
    took
}

/// One measurement on started actors: untimed messages for at least [`WARM_UP_MIN`]
/// (`messages / WARM_UP_DIVISOR` and their flush at a time), then `messages` timed ones
/// and their flush, then a clean stop. Returns the timed part.
pub fn measure_actors<A: ActorSystem>(mut system: A, messages: u64) -> Duration {
    let chunk = (messages / WARM_UP_DIVISOR).max(1);
    let first = warm_up(|from| {
        drive_actors(&mut system, from, chunk);
        chunk
    });
    let took = drive_actors(&mut system, first, messages);
    system.shutdown();
    took
}

/// Which actor system to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActorSubject {
    /// Baseline: [`TokioActors`].
    Tokio,
    /// [`GyreActors`]: one pooled kernel per actor, two workers.
    Gyre,
}

impl ActorSubject {
    /// Everything the report measures, in interleaving order.
    pub const ALL: &'static [Self] = &[Self::Gyre, Self::Tokio];
    /// The baselines the report divides by.
    pub const BASELINES: &'static [Self] = &[Self::Tokio];

    /// Short name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tokio => "tokio",
            Self::Gyre => "gyre",
        }
    }

    /// Whether this is one of the [`BASELINES`](Self::BASELINES).
    pub fn is_baseline(self) -> bool {
        Self::BASELINES.contains(&self)
    }

    /// Starts `actors` fresh actors, measures `messages` over them ([`measure_actors`]) and
    /// stops them. Returns the timed part.
    pub fn run(self, messages: u64, actors: usize, capacity: usize) -> Duration {
        match self {
            Self::Tokio => measure_actors(TokioActors::start(actors, capacity), messages),
            Self::Gyre => measure_actors(GyreActors::start(actors, capacity), messages),
        }
    }
}

/// The tokio baseline: one task per actor on a two-worker multi-thread runtime, each with
/// a bounded mpsc inbox; results on one bounded mpsc with room for every actor's.
///
/// The host must be a plain thread (not inside a tokio runtime): it uses `blocking_send`
/// and `blocking_recv`.
pub struct TokioActors {
    runtime: tokio::runtime::Runtime,
    inboxes: Vec<tokio::sync::mpsc::Sender<Msg>>,
    results: tokio::sync::mpsc::Receiver<ActorResult>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TokioActors {
    /// Worker threads of the runtime.
    pub const WORKERS: usize = 2;

    /// The runtime and `actors` actor tasks, inboxes of `capacity` slots
    /// ([`ACTOR_CAPACITY`] by default).
    ///
    /// # Panics
    /// When `actors` is zero or the runtime cannot start.
    pub fn start(actors: usize, capacity: usize) -> Self {
        assert!(actors > 0, "the actor workload needs at least one actor");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(Self::WORKERS)
            .thread_name("tokio-actors")
            .build()
            .expect("the tokio runtime starts");
        // Room for one result per actor: a flush never waits for the host.
        let (collector, results) = tokio::sync::mpsc::channel::<ActorResult>(actors);
        let mut inboxes = Vec::with_capacity(actors);
        let mut tasks = Vec::with_capacity(actors);
        for actor in 0..actors {
            let (inbox, mut rx) = tokio::sync::mpsc::channel::<Msg>(capacity);
            let collector = collector.clone();
            tasks.push(runtime.spawn(async move {
                let mut state = ActorState::new(actor);
                // Ends when the host drops the inbox's sender and the inbox is empty.
                while let Some(msg) = rx.recv().await {
                    if let Some(result) = state.handle(&msg) {
                        if collector.send(result).await.is_err() {
                            return;
                        }
                    }
                }
            }));
            inboxes.push(inbox);
        }
        Self {
            runtime,
            inboxes,
            results,
            tasks,
        }
    }
}

impl ActorSystem for TokioActors {
    fn actors(&self) -> usize {
        self.inboxes.len()
    }

    #[inline]
    fn send(&mut self, actor: usize, msg: Msg) {
        self.inboxes[actor]
            .blocking_send(msg)
            .expect("the tokio actor is alive");
    }

    #[inline]
    fn recv_result(&mut self) -> ActorResult {
        self.results
            .blocking_recv()
            .expect("the tokio actors are alive")
    }

    fn shutdown(self) {
        let Self {
            runtime,
            inboxes,
            mut results,
            tasks,
        } = self;
        drop(inboxes);
        runtime.block_on(async {
            for task in tasks {
                task.await.expect("a tokio actor exits cleanly");
            }
        });
        // Every task ended, so every collector sender is gone.
        assert!(
            matches!(
                results.try_recv(),
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
            ),
            "the benchmark received every result before stopping"
        );
        runtime.shutdown_timeout(Duration::from_secs(10));
    }
}

/// The gyre pipeline: three pooled kernels in one group, each stage routed into the next
/// one's single-producer lane (a kernel-to-kernel route, no host hop), the host sending
/// through the first stage's `ExclusiveSender` and receiving through the last stage's
/// `Receiver`.
pub struct GyrePipeline {
    /// A dashboard watching the runtime (`GYRE_BENCH_DASHBOARD=1`, [`crate::watch`]).
    _watched: Option<Box<crate::watch::Watched>>,
    runtime: gyre::Runtime,
    group: gyre::Group,
    tx: gyre::ExclusiveSender<Msg>,
    rx: gyre::Receiver<Msg>,
}

impl GyrePipeline {
    /// The pipeline on a pool of `workers` threads, rings of [`PIPELINE_CAPACITY`] slots.
    ///
    /// # Panics
    /// When the runtime or a kernel cannot start.
    pub fn start(workers: usize) -> Self {
        let runtime = gyre::Runtime::builder()
            .backend(gyre::Backend::Cpu)
            .workers(workers)
            .build()
            .expect("the gyre runtime starts");
        let capacity = PIPELINE_CAPACITY as u32;
        let spec = |name: &str, stage: fn(Msg) -> Msg| {
            gyre::KernelSpec::<Msg, Msg>::new(name)
                .capacity(capacity)
                .host_output(capacity)
                .cpu(move |m, out| Ok(out.emit(stage(*m))?))
        };
        let mut g = runtime.group("bench-pipeline");
        let s1 = g.add(spec("stage1", stage1).no_host_output());
        let s2 = g.add(spec("stage2", stage2).no_host_output());
        let s3 = g.add(spec("stage3", stage3));
        g.route(s1, 0, s2).route(s2, 0, s3);
        let group = g.launch().expect("the pipeline launches");
        group.activate().expect("the pipeline activates");
        let tx = group
            .kernel(s1)
            .expect("a stage of this group")
            .exclusive_sender()
            .expect("a fresh kernel's lane is free");
        let rx = group
            .kernel(s3)
            .expect("a stage of this group")
            .receiver()
            .expect("a fresh kernel's output is free");
        Self {
            _watched: crate::watch::attach(&runtime),
            runtime,
            group,
            tx,
            rx,
        }
    }
}

impl Pipeline for GyrePipeline {
    fn send(&mut self, msg: Msg) {
        self.tx.send(msg).expect("the pipeline takes messages");
    }

    fn recv(&mut self) -> Msg {
        self.rx.recv().expect("the pipeline emits")
    }

    fn shutdown(self) {
        let Self {
            _watched: watched,
            runtime,
            group,
            tx,
            rx,
        } = self;
        drop((watched, tx, rx));
        let report = group.drain(Duration::from_secs(10));
        assert_eq!(report.undelivered_count(), 0, "{report:?}");
        drop(runtime.shutdown(Duration::from_secs(10)));
    }
}

/// The gyre actors: one pooled kernel per actor (its [`ActorState`] in the handler), two
/// workers like the tokio baseline; every actor's port 0 routed into one collector
/// kernel's inbox (fan-in), whose host output the host reads. The host sends through
/// each actor's `ExclusiveSender`.
pub struct GyreActors {
    /// A dashboard watching the runtime (`GYRE_BENCH_DASHBOARD=1`, [`crate::watch`]).
    _watched: Option<Box<crate::watch::Watched>>,
    runtime: gyre::Runtime,
    group: gyre::Group,
    senders: Vec<gyre::ExclusiveSender<Msg>>,
    results: gyre::Receiver<ActorResult>,
}

impl GyreActors {
    /// Worker threads of the pool.
    pub const WORKERS: usize = 2;

    /// `actors` actor kernels with inboxes of `capacity` slots (a power of two;
    /// [`ACTOR_CAPACITY`] by default) and the collector.
    ///
    /// # Panics
    /// When `actors` is zero or a kernel cannot start.
    pub fn start(actors: usize, capacity: usize) -> Self {
        assert!(actors > 0, "the actor workload needs at least one actor");
        let runtime = gyre::Runtime::builder()
            .backend(gyre::Backend::Cpu)
            .workers(Self::WORKERS)
            .build()
            .expect("the gyre runtime starts");
        let mut g = runtime.group("bench-actors");
        let collector = g.add(
            gyre::KernelSpec::<ActorResult, ActorResult>::new("collector")
                .capacity((actors as u32).next_power_of_two())
                .host_output((actors as u32).next_power_of_two())
                .cpu(|r, out| Ok(out.emit(*r)?)),
        );
        let stages: Vec<_> = (0..actors)
            .map(|a| {
                let mut state = ActorState::new(a);
                let stage = g.add(
                    gyre::KernelSpec::<Msg, ActorResult>::new(format!("actor-{a}"))
                        .capacity(capacity as u32)
                        .no_host_output()
                        .cpu(move |m, out| match state.handle(m) {
                            Some(result) => Ok(out.emit(result)?),
                            None => Ok(()),
                        }),
                );
                g.route(stage, 0, collector);
                stage
            })
            .collect();
        let group = g.launch().expect("the actors launch");
        group.activate().expect("the actors activate");
        let senders = stages
            .iter()
            .map(|&s| {
                group
                    .kernel(s)
                    .expect("a stage of this group")
                    .exclusive_sender()
                    .expect("a fresh kernel's lane is free")
            })
            .collect();
        let results = group
            .kernel(collector)
            .expect("a stage of this group")
            .receiver()
            .expect("a fresh kernel's output is free");
        Self {
            _watched: crate::watch::attach(&runtime),
            runtime,
            group,
            senders,
            results,
        }
    }
}

impl ActorSystem for GyreActors {
    fn actors(&self) -> usize {
        self.senders.len()
    }

    fn send(&mut self, actor: usize, msg: Msg) {
        self.senders[actor]
            .send(msg)
            .expect("the actor takes messages");
    }

    fn recv_result(&mut self) -> ActorResult {
        self.results
            .recv_timeout(Duration::from_secs(30))
            .expect("every actor answers its flush")
    }

    fn shutdown(self) {
        let Self {
            _watched: watched,
            runtime,
            group,
            senders,
            results,
        } = self;
        drop((watched, senders, results));
        let report = group.drain(Duration::from_secs(30));
        assert_eq!(report.undelivered_count(), 0, "{report:?}");
        drop(runtime.shutdown(Duration::from_secs(10)));
    }
}
