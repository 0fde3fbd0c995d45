//! Ten thousand resident kernels on two cores: launch, activate, exercise each once,
//! then measure what they cost while idle (CPU share and memory per kernel).
//!
//! Run with `cargo run --release --example idle_kernels` (add a count to change the
//! default of 10,000). The test `examples/tests/idle.rs` asserts the bounds.

fn main() -> Result<(), gyre_examples::idle::IdleError> {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let progress = gyre_examples::progress::bar(count as u64, "idle_kernels");
    let m = gyre_examples::idle::measure_with_progress(
        count,
        std::time::Duration::from_secs(2),
        &progress,
    )?;
    println!("{m}");
    Ok(())
}
