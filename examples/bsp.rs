//! BSP supersteps: connected components of a random graph (2,000 vertices, 2,400 edges)
//! by min-label propagation over 4 partition kernels and a barrier kernel, checked
//! against a union-find on the host. See `src/bsp.rs`.
//!
//! Run with `cargo run --release --example bsp`.

use gyre_examples::bsp::{self, Graph};

fn main() -> Result<(), gyre::Error> {
    let graph = Graph::random(2_000, 2_400, 42);
    let outcome = bsp::run(&graph, 4)?;
    println!("{outcome}");
    assert!(
        outcome.matches_union_find,
        "labels differ from the union-find"
    );
    Ok(())
}
