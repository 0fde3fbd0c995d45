//! Request/reply: 5,000 concurrent async requests from tokio tasks, then 2,000 blocking
//! requests from 4 threads, through a two-stage pipeline; prints the latency quantiles.
//! See `src/request_reply.rs`.
//!
//! Run with `cargo run --release --example request_reply`.

use gyre_examples::request_reply;

fn main() -> Result<(), gyre::Error> {
    let outcome = request_reply::run(5_000, 2_000, 4)?;
    println!("{outcome}");
    assert_eq!(
        outcome.mismatches(),
        0,
        "a reply does not answer its request"
    );
    Ok(())
}
