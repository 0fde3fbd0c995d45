//! Coordinator/worker: 20,000 tasks handed by a coordinator kernel to 4 worker kernels,
//! at most 4 outstanding per worker, results coming back around the cycle. See
//! `src/coordinator_worker.rs`.
//!
//! Run with `cargo run --release --example coordinator_worker`.

use gyre_examples::coordinator_worker::{self, collatz_steps};

fn main() -> Result<(), gyre::Error> {
    let inputs = coordinator_worker::sample_inputs(20_000, 42);
    let outcome = coordinator_worker::run(&inputs, 4, 4)?;
    println!("{outcome}");
    let mut seen = vec![false; inputs.len()];
    for r in &outcome.results {
        assert_eq!(
            r.output,
            collatz_steps(inputs[r.task as usize]),
            "task {}",
            r.task
        );
        assert!(
            !std::mem::replace(&mut seen[r.task as usize], true),
            "task {} twice",
            r.task
        );
    }
    assert!(seen.iter().all(|&s| s), "a task has no result");
    assert!(outcome.peak_outstanding() <= outcome.capacity);
    Ok(())
}
