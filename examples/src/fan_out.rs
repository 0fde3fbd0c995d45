//! Fan-out: a router kernel with one output port per worker kernel.
//!
//! ```text
//!             ┌─ port 0 ─▶ worker-0 ─▶ host
//! host ─▶ router ─ port 1 ─▶ worker-1 ─▶ host
//!             └─ port 2 ─▶ worker-2 ─▶ host
//! ```
//!
//! The router picks a port per message with [`gyre::Emit::emit_to`]; each port is routed
//! to a worker's inbox inside one group, so messages go router → worker without passing
//! through the host. [`run`] runs the same stream twice:
//!
//! - **round-robin** (`seq % N`): the load is spread evenly, but the messages of one key
//!   land on every worker, so their relative order depends on the workers' timing;
//! - **by key** (`hash(key) % N`): every message of a key goes to the same worker through
//!   the same ring, so each key's messages are handled in sequence order.
//!
//! Either way every message arrives exactly once.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use gyre::{Backend, Error, Kernel, KernelSpec, Runtime};

use crate::device;
use crate::rng::XorShift64;

/// One message of the stream.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Item {
    /// Position in the host's stream: 0, 1, 2, ...
    pub seq: u32,
    /// The key (an account, a sensor, a session).
    pub key: u32,
    /// The value; a worker replaces it with [`work`] of it.
    pub value: u32,
    /// The worker that handled it (set by the worker).
    pub worker: u32,
}

/// How the router picks a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// Port `seq % N`.
    RoundRobin,
    /// Port `key_hash(key) % N`.
    ByKey,
}

impl Routing {
    /// The port (worker) for `item` among `workers`.
    pub fn port(self, item: &Item, workers: u32) -> u32 {
        match self {
            Routing::RoundRobin => item.seq % workers,
            Routing::ByKey => key_hash(item.key) % workers,
        }
    }
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Routing::RoundRobin => "round-robin (seq % N)",
            Routing::ByKey => "by key (hash(key) % N)",
        })
    }
}

/// Mixes the bits of a key (the 32-bit finaliser of MurmurHash3), so that neighbouring
/// keys spread over the workers.
pub fn key_hash(key: u32) -> u32 {
    let mut h = key;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^= h >> 16;
    h
}

/// What a worker does to a value: `2 * value + 1`, wrapping.
pub fn work(value: u32) -> u32 {
    value.wrapping_mul(2).wrapping_add(1)
}

/// A reproducible input stream of `messages` (key, value) pairs over `keys` keys, keys
/// drawn at random so that they interleave irregularly.
pub fn sample_input(messages: u32, keys: u32, seed: u64) -> Vec<(u32, u32)> {
    let mut rng = XorShift64::new(seed);
    (0..messages)
        .map(|_| (rng.below(keys.max(1)), rng.below(1_000_000)))
        .collect()
}

/// One pass of the stream through router and workers.
#[derive(Clone, Debug)]
pub struct FanOutRun {
    /// How the router routed.
    pub routing: Routing,
    /// What each worker emitted, in the order the host received it (index = worker).
    pub per_worker: Vec<Vec<Item>>,
    /// Time from the first send to the last receive.
    pub elapsed: Duration,
    /// Messages the group's drain handed back (0 when all went through).
    pub undelivered: usize,
}

impl FanOutRun {
    /// Messages received, over all workers.
    pub fn received(&self) -> usize {
        self.per_worker.iter().map(Vec::len).sum()
    }

    /// Whether the received sequence numbers are exactly `0..sent`, each once.
    pub fn exactly_once(&self, sent: usize) -> bool {
        let seqs: BTreeSet<u32> = self.per_worker.iter().flatten().map(|i| i.seq).collect();
        seqs.len() == sent && self.received() == sent && seqs.iter().copied().eq(0..sent as u32)
    }

    /// Keys whose messages were handled by more than one worker.
    pub fn keys_split(&self) -> usize {
        let mut owners: HashMap<u32, BTreeSet<usize>> = HashMap::new();
        for (w, items) in self.per_worker.iter().enumerate() {
            for item in items {
                owners.entry(item.key).or_default().insert(w);
            }
        }
        owners.values().filter(|o| o.len() > 1).count()
    }

    /// Whether, on every worker, each key's messages came in increasing sequence order.
    pub fn per_key_ordered(&self) -> bool {
        self.per_worker.iter().all(|items| {
            let mut last: HashMap<u32, u32> = HashMap::new();
            items.iter().all(|item| {
                let ordered = last.get(&item.key).is_none_or(|&prev| prev < item.seq);
                last.insert(item.key, item.seq);
                ordered
            })
        })
    }
}

/// What [`run`] did: the same stream routed round-robin, then by key.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Messages sent per pass.
    pub messages: usize,
    /// Distinct keys in the stream.
    pub keys: usize,
    /// Worker kernels.
    pub workers: u32,
    /// The round-robin pass, then the by-key pass.
    pub runs: Vec<FanOutRun>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fan-out: {} messages over {} keys, router → {} workers",
            self.messages, self.keys, self.workers
        )?;
        let yes = |b: bool| if b { "yes" } else { "NO" };
        for run in &self.runs {
            let counts: Vec<String> = run.per_worker.iter().map(|w| w.len().to_string()).collect();
            let split = run.keys_split();
            write!(f, "\n  {}:", run.routing)?;
            write!(f, "\n    per worker            {}", counts.join(" / "))?;
            write!(
                f,
                "\n    exactly once          {} ({} received, {} handed back by the drain)",
                yes(run.exactly_once(self.messages)),
                run.received(),
                run.undelivered
            )?;
            write!(f, "\n    keys on >1 worker     {split} of {}", self.keys)?;
            write!(
                f,
                "\n    per-key order kept    {}{}",
                yes(run.per_key_ordered()),
                if split == 0 {
                    " (each key has one worker)"
                } else {
                    " per worker; across workers a key's order is up to timing"
                }
            )?;
            write!(
                f,
                "\n    time                  {:.1?} ({:.2} M messages/s)",
                run.elapsed,
                self.messages as f64 / run.elapsed.as_secs_f64().max(1e-9) / 1e6
            )?;
        }
        Ok(())
    }
}

/// Streams `input` (key, value pairs; the sequence number is the index) through a router
/// and `workers` workers, once routed round-robin and once by key, receiving every
/// worker's output on its own host thread.
///
/// # Errors
/// A launch, lifecycle, send or receive error of gyre.
pub fn run(backend: Backend, input: &[(u32, u32)], workers: u32) -> Result<Outcome, Error> {
    let workers = workers.max(1);
    let runtime = crate::backend::runtime(backend)?;
    let mut runs = Vec::with_capacity(2);
    for routing in [Routing::RoundRobin, Routing::ByKey] {
        runs.push(run_once(&runtime, input, workers, routing)?);
    }
    // Each pass drained its group; nothing is left to hand back.
    let _ = runtime.shutdown(Duration::from_secs(10));
    let keys: BTreeSet<u32> = input.iter().map(|&(k, _)| k).collect();
    Ok(Outcome {
        messages: input.len(),
        keys: keys.len(),
        workers,
        runs,
    })
}

fn run_once(
    runtime: &Runtime,
    input: &[(u32, u32)],
    workers: u32,
    routing: Routing,
) -> Result<FanOutRun, Error> {
    let mut g = runtime.group(format!("fan-out {routing}"));
    let router = g.add(
        device::FAN_OUT_ROUTER
            .on(KernelSpec::<Item, Item>::new("router"))
            .ports(workers)
            .params(device::params(&[
                workers,
                device::fan_out_routing_word(routing),
            ]))
            .no_host_output()
            .cpu(move |item, out| Ok(out.emit_to(routing.port(item, workers), *item)?)),
    );
    let mut stages = Vec::new();
    for w in 0..workers {
        let stage = g.add(
            device::FAN_OUT_WORKER
                .on(KernelSpec::<Item, Item>::new(format!("worker-{w}")))
                .params(device::params(&[w]))
                .cpu(move |item, out| {
                    Ok(out.emit(Item {
                        value: work(item.value),
                        worker: w,
                        ..*item
                    })?)
                }),
        );
        g.route(router, w, stage);
        stages.push(stage);
    }
    let group = g.launch()?;
    group.activate()?;
    let router = group.kernel(router)?;
    let workers: Vec<Kernel<Item, Item>> = stages
        .iter()
        .map(|&s| group.kernel(s))
        .collect::<Result<_, _>>()?;

    let start = Instant::now();
    thread::scope(|scope| {
        let receivers: Vec<_> = workers
            .iter()
            .map(|worker| {
                let group = &group;
                scope.spawn(move || {
                    let got = receive_all(worker);
                    if got.is_err() {
                        // Unblock the sender and the other receivers.
                        group.terminate();
                    }
                    got
                })
            })
            .collect();
        let sent = send_all(&router, input);
        // Drain upstream first; the receivers end when their worker is drained and
        // everything it emitted was received. Also on a send error, so nothing hangs.
        let report = group.drain(Duration::from_secs(30));
        let per_worker = receivers
            .into_iter()
            .map(|r| r.join().expect("receiver thread panicked"))
            .collect::<Result<Vec<_>, Error>>()?;
        sent?;
        Ok(FanOutRun {
            routing,
            per_worker,
            elapsed: start.elapsed(),
            undelivered: report.undelivered_count(),
        })
    })
}

fn send_all(router: &Kernel<Item, Item>, input: &[(u32, u32)]) -> Result<(), Error> {
    // One thread sends: the exclusive sender skips the compare-and-swap per message.
    let mut tx = router.exclusive_sender()?;
    for (seq, &(key, value)) in input.iter().enumerate() {
        tx.send(Item {
            seq: seq as u32,
            key,
            value,
            worker: u32::MAX,
        })?;
    }
    Ok(())
}

fn receive_all(worker: &Kernel<Item, Item>) -> Result<Vec<Item>, Error> {
    let mut rx = worker.receiver()?;
    let mut got = Vec::new();
    loop {
        match rx.recv() {
            Ok(item) => got.push(item),
            Err(Error::Terminated { .. }) => return Ok(got),
            Err(other) => return Err(other),
        }
    }
}
