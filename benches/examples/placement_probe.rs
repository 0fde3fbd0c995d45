//! Shows where Linux puts the threads of a fresh one-worker gyre pipeline, and what that
//! costs: eight times, the crossbeam baseline runs (as a round of `gyre-bench-pipeline`
//! does before the next round's `gyre-pool-1w`), then a new gyre pipeline streams twelve
//! chunks of 20,000 messages; each line gives every chunk's rate in M msg/s and, after
//! the first and the last chunk, the core each thread of the process was on.
//!
//! ```text
//! cargo run --release -p gyre-bench --example placement_probe
//! ```
//!
//! On the 2-vCPU test VM, a pipeline whose host thread and pool worker start on the same
//! core streams at ~2.9 M msg/s until the scheduler moves one of them (5–35 ms), then at
//! ~10.5; the benchmarks' warm-up (`workloads::WARM_UP_MIN`) is long enough to keep that
//! out of their measurements. Linux only (reads `/proc/self/task`).

use std::fmt::Write as _;
use std::time::Instant;

use gyre_bench::workloads::{drive_pipeline, GyrePipeline, Pipeline, PipelineSubject};

/// Messages per chunk.
const CHUNK: u64 = 20_000;

/// `name@core` for every thread of this process, from `/proc/self/task/*/stat`.
fn placement() -> String {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return "(no /proc/self/task)".to_owned();
    };
    let mut threads = Vec::new();
    for task in tasks.flatten() {
        let path = task.path();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        // `processor` is field 39 of stat; fields after the `(comm)` start at field 3.
        let core = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(39 - 3))
            .unwrap_or("?");
        threads.push(format!("{}@{core}", name.trim()));
    }
    threads.join(" ")
}

fn main() {
    for run in 0..8 {
        PipelineSubject::Crossbeam.run(200_000);
        let mut pipeline = GyrePipeline::start(1);
        let started = Instant::now();
        let mut line = String::new();
        for chunk in 0..12 {
            let t = Instant::now();
            drive_pipeline(&mut pipeline, chunk * CHUNK, CHUNK, 512);
            let rate = CHUNK as f64 / t.elapsed().as_secs_f64() / 1e6;
            let _ = write!(line, "{rate:.1} ");
            if chunk == 0 || chunk == 11 {
                let _ = write!(line, "[{}] ", placement());
            }
        }
        println!(
            "run {run} ({:.1} ms): {line}",
            started.elapsed().as_secs_f64() * 1e3
        );
        pipeline.shutdown();
    }
}
