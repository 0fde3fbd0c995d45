//! Scatter/gather: split each job into parts, compute the parts on several workers, and
//! combine the partial results into one result per job.
//!
//! ```text
//!                 ┌─▶ worker-0 ─┐
//! host ─▶ scatter ─┼─▶ worker-1 ─┼─▶ gather ─▶ host
//!                 └─▶ worker-2 ─┘
//! ```
//!
//! A job is a vector of [`VALUES`] numbers; the result is the sum of their squares and
//! their maximum. `scatter` cuts a job into [`PARTS`] chunks and sends chunk `k` of job
//! `j` to worker `(j + k) % W` (one output port per worker). Every worker routes to the
//! one `gather` kernel: W routes into one inbox (fan-in). `gather` keeps partial sums by
//! job and emits a job's result once all its parts arrived, so results come out in
//! completion order while many jobs are in flight.
//!
//! The job id travels as the **correlation id**: the host sends a job with
//! `send_with_corr(job, id)`, and every `emit` carries the correlation id of the message
//! being handled, so chunks, partials and the result all carry it without a field for it.

use std::collections::HashMap;
use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use gyre::{Backend, Emit, Error, Group, HandlerError, Kernel, KernelSpec, Runtime};

use crate::device;
use crate::rng::XorShift64;

/// Numbers per job.
pub const VALUES: usize = 64;
/// Parts a job is cut into.
pub const PARTS: usize = 4;
/// Numbers per part.
pub const CHUNK: usize = VALUES / PARTS;

/// A job: the numbers to reduce.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Job {
    /// The numbers.
    pub values: [u32; VALUES],
}

/// One part of a job, for one worker.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Chunk {
    /// Which part, `0..PARTS`.
    pub part: u32,
    /// Parts in the job.
    pub parts: u32,
    /// Its numbers.
    pub values: [u32; CHUNK],
}

/// A worker's partial result for one part.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Partial {
    /// Sum of the squares of the part's numbers.
    pub sum_squares: u64,
    /// Largest number of the part.
    pub max: u32,
    /// Which part.
    pub part: u32,
    /// Parts in the job.
    pub parts: u32,
    /// The worker that computed it.
    pub worker: u32,
}

/// The combined result of one job.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct JobResult {
    /// Sum of the squares of all the job's numbers.
    pub sum_squares: u64,
    /// Largest number of the job.
    pub max: u32,
    /// Parts combined.
    pub parts: u32,
    /// Bit `w` set when worker `w` computed a part.
    pub workers: u32,
    /// Jobs `gather` held partially combined when this one completed (in flight).
    pub in_flight: u32,
}

/// A reproducible set of `jobs` jobs of random numbers below 2^20.
pub fn sample_jobs(jobs: usize, seed: u64) -> Vec<Job> {
    let mut rng = XorShift64::new(seed);
    (0..jobs)
        .map(|_| Job {
            values: std::array::from_fn(|_| rng.below(1 << 20)),
        })
        .collect()
}

/// What [`run`] did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Jobs sent.
    pub jobs: usize,
    /// Worker kernels.
    pub workers: u32,
    /// Results with their job id (the correlation id), in the order they arrived.
    pub results: Vec<(u64, JobResult)>,
    /// Results that arrived before a job sent earlier had completed.
    pub out_of_order: usize,
    /// Time from the first send to the last result.
    pub elapsed: Duration,
    /// Messages the group's drain handed back (0 when all went through).
    pub undelivered: usize,
}

impl Outcome {
    /// The most jobs `gather` held partially combined at once (as its results report).
    pub fn peak_in_flight(&self) -> u32 {
        self.results
            .iter()
            .map(|(_, r)| r.in_flight)
            .max()
            .unwrap_or(0)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scatter/gather: {} jobs of {VALUES} numbers, {PARTS} parts each, scatter → {} workers → gather",
            self.jobs, self.workers
        )?;
        writeln!(
            f,
            "  results             {} ({} completed ahead of an earlier job)",
            self.results.len(),
            self.out_of_order
        )?;
        writeln!(
            f,
            "  jobs in flight      up to {} partially combined in gather at once",
            self.peak_in_flight()
        )?;
        let mut share = vec![0usize; self.workers as usize];
        for (_, r) in &self.results {
            for (w, n) in share.iter_mut().enumerate() {
                *n += usize::from(r.workers & (1 << w) != 0);
            }
        }
        let share: Vec<String> = share.iter().map(ToString::to_string).collect();
        writeln!(f, "  jobs per worker     {}", share.join(" / "))?;
        if let Some((id, r)) = self.results.first() {
            writeln!(
                f,
                "  first result        job {id}: sum of squares {}, max {}",
                r.sum_squares, r.max
            )?;
        }
        write!(
            f,
            "  time                {:.1?} ({:.0} jobs/s), {} handed back by the drain",
            self.elapsed,
            self.jobs as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.undelivered
        )
    }
}

/// Partial sums of one job inside `gather`.
#[derive(Default)]
struct Pending {
    parts: u32,
    sum_squares: u64,
    max: u32,
    workers: u32,
}

/// The gather kernel's state: partial sums by job id (the correlation id). Public so that
/// tests can run this CPU handler alone (`tests/device_handlers.rs` compares the device
/// handlers with it).
#[derive(Default)]
pub struct Gather {
    pending: HashMap<u64, Pending>,
}

impl Gather {
    /// Adds `partial` to its job (the message's correlation id); once all of the job's
    /// parts arrived, removes the job and emits its [`JobResult`], `in_flight` being the
    /// jobs still pending.
    ///
    /// # Errors
    /// The emit's error.
    pub fn handle(
        &mut self,
        partial: &Partial,
        out: &mut Emit<'_, '_, JobResult>,
    ) -> Result<(), HandlerError> {
        let job = out.corr();
        let acc = self.pending.entry(job).or_default();
        acc.parts += 1;
        acc.sum_squares += partial.sum_squares;
        acc.max = acc.max.max(partial.max);
        acc.workers |= 1 << partial.worker;
        if acc.parts < partial.parts {
            return Ok(());
        }
        let done = self
            .pending
            .remove(&job)
            .ok_or_else(|| HandlerError(format!("job {job} vanished from gather's table")))?;
        Ok(out.emit(JobResult {
            sum_squares: done.sum_squares,
            max: done.max,
            parts: done.parts,
            workers: done.workers,
            in_flight: self.pending.len() as u32,
        })?)
    }
}

/// A launched scatter/gather group: the group, its scatter and its gather kernel.
type Launched = (Group, Kernel<Job, Chunk>, Kernel<Partial, JobResult>);

/// The scatter → workers → gather group on `runtime`, activated: the group, the scatter
/// kernel and the gather kernel.
fn launch(runtime: &Runtime, workers: u32) -> Result<Launched, Error> {
    let mut g = runtime.group("scatter-gather");
    let scatter = g.add(
        device::SCATTER_GATHER_SCATTER
            .on(KernelSpec::<Job, Chunk>::new("scatter"))
            .params(device::params(&[workers]))
            .ports(workers)
            .no_host_output()
            .cpu(move |job, out| {
                let first = (out.corr() % u64::from(workers)) as u32;
                for (k, values) in job.values.chunks_exact(CHUNK).enumerate() {
                    let chunk = Chunk {
                        part: k as u32,
                        parts: PARTS as u32,
                        values: values.try_into().expect("chunks_exact gives CHUNK values"),
                    };
                    out.emit_to((first + k as u32) % workers, chunk)?;
                }
                Ok(())
            }),
    );
    let gather = g.add(
        device::SCATTER_GATHER_GATHER
            .on(KernelSpec::<Partial, JobResult>::new("gather"))
            .capacity(4096)
            .host_output(4096)
            .cpu({
                let mut gather = Gather::default();
                move |partial, out| gather.handle(partial, out)
            }),
    );
    for w in 0..workers {
        let worker = g.add(
            device::SCATTER_GATHER_WORKER
                .on(KernelSpec::<Chunk, Partial>::new(format!("worker-{w}")))
                .params(device::params(&[w]))
                .cpu(move |chunk, out| {
                    let sum_squares = chunk.values.iter().map(|&v| u64::from(v).pow(2)).sum();
                    let max = chunk.values.iter().copied().max().unwrap_or(0);
                    Ok(out.emit(Partial {
                        sum_squares,
                        max,
                        part: chunk.part,
                        parts: chunk.parts,
                        worker: w,
                    })?)
                }),
        );
        g.route(scatter, w, worker).route(worker, 0, gather);
    }
    let group = g.launch()?;
    group.activate()?;
    let (input, output) = (group.kernel(scatter)?, group.kernel(gather)?);
    Ok((group, input, output))
}

/// Sends every job (job id = its index, as correlation id) through scatter, `workers`
/// workers and gather, receiving results on another thread while jobs are sent.
///
/// # Errors
/// A launch, lifecycle, send or receive error of gyre.
pub fn run(backend: Backend, jobs: &[Job], workers: u32) -> Result<Outcome, Error> {
    let workers = workers.clamp(1, 32);
    let runtime = crate::backend::runtime(backend)?;
    let (group, input, output) = launch(&runtime, workers)?;

    let start = Instant::now();
    let received = thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            let results = (|| -> Result<Vec<(u64, JobResult)>, Error> {
                let mut rx = output.receiver()?;
                let mut results = Vec::with_capacity(jobs.len());
                while results.len() < jobs.len() {
                    let (result, job) = rx.recv_with_corr()?;
                    results.push((job, result));
                }
                Ok(results)
            })();
            if results.is_err() {
                // Unblock the sender.
                group.terminate();
            }
            results
        });
        let sent = (|| -> Result<(), Error> {
            let mut tx = input.exclusive_sender()?;
            for (id, job) in jobs.iter().enumerate() {
                tx.send_with_corr(*job, id as u64)?;
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
    let report = group.drain(Duration::from_secs(30));
    let results = received?;
    let _ = runtime.shutdown(Duration::from_secs(10));
    let mut out_of_order = 0;
    let mut highest = None;
    for &(id, _) in &results {
        if highest.is_some_and(|h| id < h) {
            out_of_order += 1;
        }
        highest = highest.max(Some(id));
    }
    Ok(Outcome {
        jobs: jobs.len(),
        workers,
        results,
        out_of_order,
        elapsed,
        undelivered: report.undelivered_count(),
    })
}
