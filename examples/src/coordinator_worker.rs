//! Coordinator/worker: a coordinator kernel hands tasks to worker kernels as they have
//! capacity, and the workers send their results back to it, a cycle.
//!
//! ```text
//!                ┌── port 1 ─▶ worker-0 ──┐
//! host ─▶ coordinator ─ port 2 ─▶ worker-1 ──┤ (results back to the coordinator)
//!   ▲            └── port 3 ─▶ worker-2 ──┘
//!   └── port 0 (completed results) ◀──────────
//! ```
//!
//! One message type, [`Msg`], carries both tasks (from the host) and results (from the
//! workers), told apart by its `kind`: the coordinator's inbox takes both. The
//! coordinator counts the tasks outstanding at each worker, gives a task to the least
//! loaded worker with fewer than `capacity` outstanding, and queues the rest in its own
//! state; each result frees a place, which the next queued task takes.
//!
//! **Why the flow stays bounded.** A group with a cycle stalls for good if every ring on
//! the cycle fills up (each kernel waits for room in the next). Here a worker's inbox
//! never holds more than `capacity` tasks, and the results in flight back to the
//! coordinator are at most `workers × capacity`; the coordinator's shared inbox (where
//! the worker routes write, since it has several upstreams) is sized for that. The host
//! writes tasks into the coordinator's other inbox ring, its single-producer lane
//! ([`gyre::Kernel::exclusive_sender`]), so however many tasks the host sends, results
//! always find room. The host receives results on its own thread while it sends.

use std::collections::VecDeque;
use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use gyre::{Emit, EmitError, Error, HandlerError, KernelSpec, Runtime};

use crate::rng::XorShift64;

/// `Msg::kind` of a task (host → coordinator → worker).
pub const TASK: u32 = 1;
/// `Msg::kind` of a result (worker → coordinator → host).
pub const RESULT: u32 = 2;

/// A task or a result.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Msg {
    /// [`TASK`] or [`RESULT`].
    pub kind: u32,
    /// The worker the task went to (set by the coordinator).
    pub worker: u32,
    /// The task's id.
    pub task: u64,
    /// The task's input.
    pub input: u64,
    /// The result: [`collatz_steps`] of the input (set by the worker).
    pub output: u64,
    /// Tasks outstanding at the worker right after this one was handed to it.
    pub outstanding: u32,
    /// Tasks waiting in the coordinator's queue when this result left it.
    pub queued: u32,
}

/// The work: steps of the Collatz map from `n` down to 1 (0 for `n` ≤ 1). Cheap, and
/// its cost varies a lot from one input to the next, so workers finish out of order.
pub fn collatz_steps(mut n: u64) -> u64 {
    let mut steps = 0;
    while n > 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

/// A reproducible list of `tasks` task inputs below 2^30 (whose Collatz paths stay far
/// below `u64::MAX`).
pub fn sample_inputs(tasks: usize, seed: u64) -> Vec<u64> {
    let mut rng = XorShift64::new(seed);
    (0..tasks).map(|_| rng.next_u64() >> 34).collect()
}

/// What [`run`] did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Worker kernels.
    pub workers: u32,
    /// Most tasks outstanding per worker.
    pub capacity: u32,
    /// Every result, in the order the host received it.
    pub results: Vec<Msg>,
    /// Time from the first task sent to the last result received.
    pub elapsed: Duration,
    /// Messages the group's drain handed back (0 when all went through).
    pub undelivered: usize,
}

impl Outcome {
    /// Results computed by each worker.
    pub fn per_worker(&self) -> Vec<usize> {
        let mut counts = vec![0; self.workers as usize];
        for r in &self.results {
            if let Some(c) = counts.get_mut(r.worker as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// The most tasks any worker had outstanding at once.
    pub fn peak_outstanding(&self) -> u32 {
        self.results
            .iter()
            .map(|r| r.outstanding)
            .max()
            .unwrap_or(0)
    }

    /// The longest the coordinator's queue was when a result left it.
    pub fn peak_queued(&self) -> u32 {
        self.results.iter().map(|r| r.queued).max().unwrap_or(0)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "coordinator/worker: {} tasks, {} workers taking at most {} at a time",
            self.results.len(),
            self.workers,
            self.capacity
        )?;
        let counts: Vec<String> = self.per_worker().iter().map(ToString::to_string).collect();
        writeln!(f, "  tasks per worker     {}", counts.join(" / "))?;
        writeln!(
            f,
            "  outstanding          at most {} per worker (capacity {})",
            self.peak_outstanding(),
            self.capacity
        )?;
        writeln!(
            f,
            "  coordinator queue    up to {} tasks waiting for a free worker",
            self.peak_queued()
        )?;
        if let Some(r) = self.results.iter().max_by_key(|r| r.output) {
            writeln!(
                f,
                "  longest task         #{}: {} takes {} Collatz steps",
                r.task, r.input, r.output
            )?;
        }
        write!(
            f,
            "  time                 {:.1?} ({:.0} tasks/s), {} handed back by the drain",
            self.elapsed,
            self.results.len() as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.undelivered
        )
    }
}

/// The coordinator's state.
struct Coordinator {
    capacity: u32,
    outstanding: Vec<u32>,
    queue: VecDeque<Msg>,
}

impl Coordinator {
    fn handle(&mut self, msg: &Msg, out: &mut Emit<'_, '_, Msg>) -> Result<(), HandlerError> {
        match msg.kind {
            TASK => {
                // The least loaded worker with room, if any.
                let free = (0..self.outstanding.len())
                    .filter(|&w| self.outstanding[w] < self.capacity)
                    .min_by_key(|&w| self.outstanding[w]);
                match free {
                    Some(w) => self.dispatch(w, *msg, out)?,
                    None => self.queue.push_back(*msg),
                }
            }
            RESULT => {
                let w = msg.worker as usize;
                let Some(count) = self.outstanding.get_mut(w) else {
                    return Err(HandlerError(format!("result from unknown worker {w}")));
                };
                *count = count.checked_sub(1).ok_or_else(|| {
                    HandlerError(format!("worker {w} returned a task it did not have"))
                })?;
                out.emit_to(
                    0,
                    Msg {
                        queued: self.queue.len() as u32,
                        ..*msg
                    },
                )?;
                if let Some(next) = self.queue.pop_front() {
                    self.dispatch(w, next, out)?;
                }
            }
            other => return Err(HandlerError(format!("unknown message kind {other}"))),
        }
        Ok(())
    }

    fn dispatch(
        &mut self,
        worker: usize,
        task: Msg,
        out: &mut Emit<'_, '_, Msg>,
    ) -> Result<(), EmitError> {
        self.outstanding[worker] += 1;
        out.emit_to(
            worker as u32 + 1,
            Msg {
                worker: worker as u32,
                outstanding: self.outstanding[worker],
                ..task
            },
        )
    }
}

/// Runs every input as a task through a coordinator and `workers` workers that take at
/// most `capacity` tasks at a time each.
///
/// # Errors
/// A launch, lifecycle, send or receive error of gyre.
pub fn run(inputs: &[u64], workers: u32, capacity: u32) -> Result<Outcome, Error> {
    let workers = workers.max(1);
    let capacity = capacity.max(1);
    // Room for every result that can be in flight back to the coordinator.
    let coordinator_inbox = (workers * capacity).next_power_of_two().max(64);
    let runtime = Runtime::builder().build()?;
    let mut g = runtime.group("coordinator-worker");
    let coordinator = g.add(
        KernelSpec::<Msg, Msg>::new("coordinator")
            .capacity(coordinator_inbox)
            .ports(workers + 1)
            .cpu({
                let mut state = Coordinator {
                    capacity,
                    outstanding: vec![0; workers as usize],
                    queue: VecDeque::new(),
                };
                move |msg, out| state.handle(msg, out)
            }),
    );
    for w in 0..workers {
        let worker = g.add(
            KernelSpec::<Msg, Msg>::new(format!("worker-{w}"))
                .capacity(capacity.next_power_of_two().max(16))
                .no_host_output()
                .cpu(|task, out| {
                    if task.kind != TASK {
                        return Err(HandlerError(format!("a worker got kind {}", task.kind)));
                    }
                    Ok(out.emit(Msg {
                        kind: RESULT,
                        output: collatz_steps(task.input),
                        ..*task
                    })?)
                }),
        );
        g.route(coordinator, w + 1, worker)
            .route(worker, 0, coordinator);
    }
    g.allow_cycles();
    let group = g.launch()?;
    group.activate()?;
    let coordinator = group.kernel(coordinator)?;

    let start = Instant::now();
    let received = thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            let results = (|| -> Result<Vec<Msg>, Error> {
                let mut rx = coordinator.receiver()?;
                (0..inputs.len()).map(|_| rx.recv()).collect()
            })();
            if results.is_err() {
                // Unblock the sender.
                group.terminate();
            }
            results
        });
        let sent = (|| -> Result<(), Error> {
            let mut tx = coordinator.exclusive_sender()?;
            for (task, &input) in inputs.iter().enumerate() {
                tx.send(Msg {
                    kind: TASK,
                    task: task as u64,
                    input,
                    ..Msg::zeroed()
                })?;
            }
            Ok(())
        })();
        if sent.is_err() {
            // Stop everything so the receiver does not wait for results that never come.
            group.terminate();
        }
        let results = receiver.join().expect("receiver thread panicked");
        sent.and(results)
    });
    let elapsed = start.elapsed();
    // A group with cycles first waits until nothing is in flight, then drains.
    let report = group.drain(Duration::from_secs(10));
    let results = received?;
    let _ = runtime.shutdown(Duration::from_secs(10));
    Ok(Outcome {
        workers,
        capacity,
        results,
        elapsed,
        undelivered: report.undelivered_count(),
    })
}
