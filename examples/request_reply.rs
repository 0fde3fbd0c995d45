//! Request/reply: 5,000 concurrent async requests from tokio tasks, then 2,000 blocking
//! requests from 4 threads, through a two-stage pipeline; prints the latency quantiles.
//! See `src/request_reply.rs`.
//!
//! Run with `cargo run --release --example request_reply` (add `-- --backend cuda-emulated`,
//! `wgpu-software`, `cuda` or `wgpu` to run the same topology on a device).

use gyre_examples::request_reply;

fn main() -> Result<(), gyre::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = gyre_examples::backend::from_args(&args).map_err(gyre::Error::Launch)?;
    println!("on the {backend:?} backend");
    let outcome = request_reply::run(backend, 5_000, 2_000, 4)?;
    println!("{outcome}");
    assert_eq!(
        outcome.mismatches(),
        0,
        "a reply does not answer its request"
    );
    Ok(())
}
