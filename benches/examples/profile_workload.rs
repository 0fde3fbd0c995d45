//! Runs one subject of the pipeline or actor workload five times, for `perf record`:
//!
//! ```text
//! cargo build --release -p gyre-bench --example profile_workload
//! perf record -e cpu-clock -g ./target/release/examples/profile_workload pipeline-1w
//! ```
//!
//! Subjects: `pipeline-1w`, `pipeline-2w`, `rtrb`, `crossbeam`, `actors`, `tokio`; the
//! actor ones take the inbox capacity as a second argument.

use gyre_bench::workloads::{ActorSubject, PipelineSubject, ACTORS, ACTOR_CAPACITY};

fn main() {
    let what = std::env::args().nth(1).unwrap_or_default();
    let messages = 1_000_000;
    let capacity = std::env::args()
        .nth(2)
        .and_then(|c| c.parse().ok())
        .unwrap_or(ACTOR_CAPACITY);
    for _ in 0..5 {
        let took = match what.as_str() {
            "pipeline-1w" => PipelineSubject::GyrePool1.run(messages),
            "pipeline-2w" => PipelineSubject::GyrePool2.run(messages),
            "rtrb" => PipelineSubject::Rtrb.run(messages),
            "crossbeam" => PipelineSubject::Crossbeam.run(messages),
            "actors" => ActorSubject::Gyre.run(messages, ACTORS, capacity),
            "tokio" => ActorSubject::Tokio.run(messages, ACTORS, capacity),
            _ => {
                eprintln!(
                    "usage: profile_workload pipeline-1w|pipeline-2w|rtrb|crossbeam|actors|tokio"
                );
                std::process::exit(2);
            }
        };
        println!(
            "{what}: {:.2} M msg/s",
            messages as f64 / took.as_secs_f64() / 1e6
        );
    }
}
