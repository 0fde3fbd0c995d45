//! Fan-out: a router kernel routes 100,000 messages over 4 worker kernels, first
//! round-robin, then by key; every message arrives exactly once, and by key each key's
//! messages stay in order. See `src/fan_out.rs`.
//!
//! Run with `cargo run --release --example fan_out` (add `-- --backend cuda-emulated`,
//! `wgpu-software`, `cuda` or `wgpu` to run the same topology on a device).

use gyre_examples::fan_out;

fn main() -> Result<(), gyre::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = gyre_examples::backend::from_args(&args).map_err(gyre::Error::Launch)?;
    println!("on the {backend:?} backend");
    let input = fan_out::sample_input(100_000, 64, 42);
    let outcome = fan_out::run(backend, &input, 4)?;
    println!("{outcome}");
    for run in &outcome.runs {
        assert!(
            run.exactly_once(input.len()),
            "{}: lost or repeated messages",
            run.routing
        );
    }
    let by_key = &outcome.runs[1];
    assert!(
        by_key.keys_split() == 0 && by_key.per_key_ordered(),
        "per-key order broken"
    );
    Ok(())
}
