//! Runs one subject of the pipeline or actor workload five times, for `perf record`:
//!
//! ```text
//! cargo build --release -p gyre-bench --example profile_workload
//! perf record -e cpu-clock -g ./target/release/examples/profile_workload pipeline-1w
//! ```
//!
//! Subjects: `pipeline-1w`, `pipeline-2w`, `rtrb`, `crossbeam`, `actors`, `tokio`, `batch`
//! (the echo in batches of 64) and `rtrb-chunk`; the actor ones take the inbox capacity
//! as a second argument. Each line also gives the context switches per message of the
//! whole process (voluntary: a thread parked; forced: two threads shared a core).

use gyre_bench::workloads::{ActorSubject, PipelineSubject, ACTORS, ACTOR_CAPACITY};
use gyre_bench::{batch_throughput, BatchEcho, BatchSubject};

fn main() {
    let what = std::env::args().nth(1).unwrap_or_default();
    let messages = 1_000_000;
    let capacity = std::env::args()
        .nth(2)
        .and_then(|c| c.parse().ok())
        .unwrap_or(ACTOR_CAPACITY);
    for _ in 0..5 {
        let switches = context_switches();
        let took = match what.as_str() {
            "pipeline-1w" => PipelineSubject::GyrePool1.run(messages),
            "pipeline-2w" => PipelineSubject::GyrePool2.run(messages),
            "rtrb" => PipelineSubject::Rtrb.run(messages),
            "crossbeam" => PipelineSubject::Crossbeam.run(messages),
            "actors" => ActorSubject::Gyre.run(messages, ACTORS, capacity),
            "tokio" => ActorSubject::Tokio.run(messages, ACTORS, capacity),
            "batch" | "rtrb-chunk" => {
                let subject = if what == "batch" {
                    BatchSubject::GyreBatch
                } else {
                    BatchSubject::RtrbChunk
                };
                let mut server = subject.start();
                let took = batch_throughput(&mut server, messages, 512);
                server.shutdown();
                took
            }
            _ => {
                eprintln!(
                    "usage: profile_workload pipeline-1w|pipeline-2w|rtrb|crossbeam|actors|tokio|batch|rtrb-chunk"
                );
                std::process::exit(2);
            }
        };
        let switches = context_switches()
            .zip(switches)
            .map(|((v1, n1), (v0, n0))| {
                format!(
                    ", {:.3} voluntary and {:.3} forced context switches per message",
                    (v1 - v0) as f64 / messages as f64,
                    (n1 - n0) as f64 / messages as f64
                )
            });
        println!(
            "{what}: {:.2} M msg/s{}",
            messages as f64 / took.as_secs_f64() / 1e6,
            switches.unwrap_or_default()
        );
    }
}

/// Voluntary and forced context switches of every thread of this process so far, ended
/// threads included (`getrusage(RUSAGE_SELF)`).
fn context_switches() -> Option<(u64, u64)> {
    // SAFETY: `getrusage` fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) == 0).then_some(usage)
    }?;
    Some((usage.ru_nvcsw as u64, usage.ru_nivcsw as u64))
}
