//! Scatter/gather: 20,000 jobs of 64 numbers, each cut into 4 parts over 4 worker
//! kernels, the partial sums combined by job id in a gather kernel. See
//! `src/scatter_gather.rs`.
//!
//! Run with `cargo run --release --example scatter_gather` (add `-- --backend cuda-emulated`,
//! `wgpu-software`, `cuda` or `wgpu` to run the same topology on a device).

use gyre_examples::scatter_gather;

fn main() -> Result<(), gyre::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = gyre_examples::backend::from_args(&args).map_err(gyre::Error::Launch)?;
    println!("on the {backend:?} backend");
    let jobs = scatter_gather::sample_jobs(20_000, 42);
    let outcome = scatter_gather::run(backend, &jobs, 4)?;
    println!("{outcome}");
    let mut seen = vec![false; jobs.len()];
    for (id, result) in &outcome.results {
        let job = &jobs[*id as usize];
        let expected: u64 = job.values.iter().map(|&v| u64::from(v).pow(2)).sum();
        assert_eq!(result.sum_squares, expected, "job {id}");
        assert!(
            !std::mem::replace(&mut seen[*id as usize], true),
            "job {id} twice"
        );
    }
    assert!(seen.iter().all(|&s| s), "a job has no result");
    println!("  every job's result checked against a sum on the host");
    Ok(())
}
