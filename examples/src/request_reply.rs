//! Request/reply over a two-stage pipeline, from async tasks and from threads.
//!
//! ```text
//! Requester ─▶ add ─▶ multiply ─▶ Requester
//!   (corr id)                          (matched by corr id)
//! ```
//!
//! A [`gyre::Requester`] gives each request a fresh correlation id; every stage emits
//! with the id of the message it handles, so the reply comes out of the last stage with
//! the request's id and the requester hands it to the right waiter. There is no
//! background task: whoever waits receives for everyone.
//!
//! [`run`] first sends many requests concurrently from a tokio runtime (one task per
//! request, all in flight at once, awaiting [`gyre::Requester::request_async`]), then
//! from a few threads with the blocking [`gyre::Requester::request`], and reads the
//! request-to-reply latency histogram the pipeline keeps.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use gyre::{Backend, Error, KernelSpec, LatencySummary, Requester};

use crate::device;

/// A request: two operands and the caller's own id for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Request {
    /// The caller's id (echoed in the reply, independent of the correlation id).
    pub id: u64,
    /// First operand.
    pub a: u32,
    /// Second operand.
    pub b: u32,
}

/// What the first stage, `add`, hands to the second, `multiply`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Summed {
    /// The caller's id.
    pub id: u64,
    /// First operand.
    pub a: u32,
    /// Second operand.
    pub b: u32,
    /// `a + b`, computed by the first stage.
    pub sum: u64,
}

/// The reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Reply {
    /// The id of the request it answers.
    pub id: u64,
    /// `a + b`.
    pub sum: u64,
    /// `a * b`.
    pub product: u64,
}

/// The request with id `id`: operands derived from the id so a reply can be checked.
pub fn request_for(id: u64) -> Request {
    Request {
        id,
        a: (id.wrapping_mul(2_654_435_761) >> 7) as u32,
        b: (id % 100_003) as u32,
    }
}

/// What [`run`] did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Every (request, reply) of the async phase, in request-id order.
    pub async_pairs: Vec<(Request, Reply)>,
    /// Every (request, reply) of the blocking phase.
    pub blocking_pairs: Vec<(Request, Reply)>,
    /// Threads of the blocking phase.
    pub threads: usize,
    /// The most async requests sent and not yet answered at one moment.
    pub peak_in_flight: usize,
    /// Duration of the async phase.
    pub async_elapsed: Duration,
    /// Duration of the blocking phase.
    pub blocking_elapsed: Duration,
    /// Request-to-reply latency of the blocking phase (one request at a time per
    /// thread), from the pipeline's histogram read after it.
    pub blocking_latency: Option<LatencySummary>,
    /// Request-to-reply latency over both phases, from the pipeline's histogram read at
    /// the end (the async burst queues thousands of requests at once, so its
    /// latencies are mostly waiting in line).
    pub latency: Option<LatencySummary>,
}

impl Outcome {
    /// Pairs whose reply does not answer its request (checked against `a + b`, `a * b`).
    pub fn mismatches(&self) -> usize {
        self.async_pairs
            .iter()
            .chain(&self.blocking_pairs)
            .filter(|(q, r)| {
                r.id != q.id
                    || r.sum != u64::from(q.a) + u64::from(q.b)
                    || r.product != u64::from(q.a) * u64::from(q.b)
            })
            .count()
    }
}

/// A duration in nanoseconds, in the unit that suits it.
fn human(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        _ => format!("{:.1} ms", ns as f64 / 1e6),
    }
}

fn quantiles(f: &mut fmt::Formatter<'_>, what: &str, l: Option<&LatencySummary>) -> fmt::Result {
    match l {
        Some(l) => write!(
            f,
            "  {what:<10} {} samples: p50 {}, p90 {}, p99 {}, p99.9 {}, max {}",
            l.count,
            human(l.p50),
            human(l.p90),
            human(l.p99),
            human(l.p999),
            human(l.max)
        ),
        None => write!(f, "  {what:<10} none recorded"),
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "request/reply over the pipeline add → multiply")?;
        writeln!(
            f,
            "  blocking   {} requests from {} threads, in {:.1?} ({:.0} req/s)",
            self.blocking_pairs.len(),
            self.threads,
            self.blocking_elapsed,
            self.blocking_pairs.len() as f64 / self.blocking_elapsed.as_secs_f64().max(1e-9)
        )?;
        writeln!(
            f,
            "  async      {} requests from tokio tasks, up to {} in flight at once, in {:.1?} ({:.0} req/s)",
            self.async_pairs.len(),
            self.peak_in_flight,
            self.async_elapsed,
            self.async_pairs.len() as f64 / self.async_elapsed.as_secs_f64().max(1e-9)
        )?;
        writeln!(
            f,
            "  replies    {} matched their request, {} did not",
            self.async_pairs.len() + self.blocking_pairs.len() - self.mismatches(),
            self.mismatches()
        )?;
        writeln!(
            f,
            "  latency (request sent → reply received), from the pipeline's histogram:"
        )?;
        quantiles(f, "blocking", self.blocking_latency.as_ref())?;
        writeln!(f)?;
        quantiles(f, "all", self.latency.as_ref())
    }
}

/// Launches the pipeline, answers `async_requests` requests from tokio tasks (all spawned
/// at once) with ids `0..async_requests`, then `blocking_requests` more from
/// `threads` threads with the following ids.
///
/// # Errors
/// A launch, lifecycle or request error of gyre; [`Error::Timeout`] when the async
/// requests are not all answered within 30 s; [`Error::Launch`] when the tokio runtime
/// cannot start or a request task fails.
pub fn run(
    backend: Backend,
    async_requests: usize,
    blocking_requests: usize,
    threads: usize,
) -> Result<Outcome, Error> {
    let threads = threads.max(1);
    let runtime = crate::backend::runtime(backend)?;
    let pipeline = runtime
        .pipeline::<Request>("request-reply")
        .stage(
            device::REQUEST_REPLY_ADD
                .on(KernelSpec::<Request, Summed>::new("add"))
                .cpu(|q, out| {
                    Ok(out.emit(Summed {
                        id: q.id,
                        a: q.a,
                        b: q.b,
                        sum: u64::from(q.a) + u64::from(q.b),
                    })?)
                }),
        )
        .stage(
            device::REQUEST_REPLY_MULTIPLY
                .on(KernelSpec::<Summed, Reply>::new(LAST_STAGE))
                .cpu(|v, out| {
                    Ok(out.emit(Reply {
                        id: v.id,
                        sum: v.sum,
                        product: u64::from(v.a) * u64::from(v.b),
                    })?)
                }),
        )
        .launch()?;
    pipeline.activate()?;
    let requester = pipeline.requester()?;

    // Blocking first, so that the histogram read after it holds their latencies alone.
    let started = Instant::now();
    let blocking_pairs = request_blocking_all(
        &requester,
        async_requests as u64..(async_requests + blocking_requests) as u64,
        threads,
    )?;
    let blocking_elapsed = started.elapsed();
    let blocking_latency = pipeline.latency();

    let started = Instant::now();
    let (async_pairs, peak_in_flight) = request_async_all(&requester, async_requests)?;
    let async_elapsed = started.elapsed();
    let latency = pipeline.latency();
    drop(requester);
    let report = pipeline.drain(Duration::from_secs(10));
    if report.undelivered_count() > 0 {
        return Err(Error::Launch(format!(
            "the drain handed back {} messages after every reply came",
            report.undelivered_count()
        )));
    }
    let _ = runtime.shutdown(Duration::from_secs(10));
    Ok(Outcome {
        async_pairs,
        blocking_pairs,
        threads,
        peak_in_flight,
        async_elapsed,
        blocking_elapsed,
        blocking_latency,
        latency,
    })
}

type Pairs = Vec<(Request, Reply)>;

/// The pipeline's last stage, whose output the requester reads.
const LAST_STAGE: &str = "multiply";
/// How long the whole async burst may take.
const BURST_TIMEOUT: Duration = Duration::from_secs(30);

/// One tokio task per request, all spawned before any is awaited.
fn request_async_all(
    requester: &Requester<Request, Reply>,
    requests: usize,
) -> Result<(Pairs, usize), Error> {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Launch(format!("could not start a tokio runtime: {e}")))?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut pairs = tokio.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for id in 0..requests as u64 {
            let requester = requester.clone();
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            tasks.spawn(async move {
                let request = request_for(id);
                let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                peak.fetch_max(now, Ordering::Relaxed);
                let reply = requester.request_async(request).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                reply.map(|reply| (request, reply))
            });
        }
        let mut pairs = Vec::with_capacity(requests);
        let all = async {
            while let Some(joined) = tasks.join_next().await {
                let pair =
                    joined.map_err(|e| Error::Launch(format!("a request task failed: {e}")))??;
                pairs.push(pair);
            }
            Ok::<_, Error>(())
        };
        // A reply that never comes fails the run instead of hanging it (dropping the
        // join set cancels the requests still waiting).
        tokio::time::timeout(BURST_TIMEOUT, all)
            .await
            .map_err(|_| Error::Timeout {
                kernel: LAST_STAGE.into(),
                after: BURST_TIMEOUT,
            })??;
        Ok::<_, Error>(pairs)
    })?;
    pairs.sort_by_key(|(q, _)| q.id);
    Ok((pairs, peak.load(Ordering::Relaxed)))
}

/// `threads` threads, each sending its share of `ids` one blocking request at a time.
fn request_blocking_all(
    requester: &Requester<Request, Reply>,
    ids: std::ops::Range<u64>,
    threads: usize,
) -> Result<Pairs, Error> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|t| {
                let ids = ids.clone();
                scope.spawn(move || {
                    ids.filter(|id| id % threads as u64 == t)
                        .map(|id| {
                            let request = request_for(id);
                            requester.request(request).map(|reply| (request, reply))
                        })
                        .collect::<Result<Pairs, Error>>()
                })
            })
            .collect();
        let mut pairs = Vec::new();
        for handle in handles {
            pairs.extend(handle.join().expect("request thread panicked")?);
        }
        Ok(pairs)
    })
}
