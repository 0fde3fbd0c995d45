//! A three-stage stream of sensor frames: calibrate → filter → aggregate (see
//! `src/sensors.rs`).
//!
//! Each stage is a resident kernel; the three are launched as one group whose routes carry
//! each stage's output straight into the next stage's inbox (no host hop; on a GPU backend
//! the routes stay on the device). The host feeds the first stage and receives the window
//! summaries of the last. At the end the group is drained upstream first, so nothing in
//! flight is lost, and each stage prints its metrics.
//!
//! Run with `cargo run --release --example pipeline` (add a frame count to change the
//! default of 200,000, and `--backend cuda-emulated`, `wgpu-software`, `cuda` or `wgpu` to
//! run the same stages on a device: the window summaries are the same bit for bit).

use gyre::Error;
use gyre_examples::sensors::{self, SENSORS};

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = gyre_examples::backend::from_args(&args).map_err(Error::Launch)?;
    let frames: u32 = gyre_examples::backend::other_args(&args)
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    println!("pipeline: {frames} frames from {SENSORS} sensors, backend {backend:?}");
    let outcome = sensors::run(backend, frames)?;
    println!("ran on the {} backend", outcome.backend);
    for (i, s) in outcome.summaries.iter().enumerate() {
        if i % 48 == 0 || i + 1 == outcome.summaries.len() {
            println!(
                "  summary #{}: sensor {:2} mean {:8.2} max {:8.2} over {} frames",
                i + 1,
                s.sensor,
                s.mean,
                s.max,
                s.count
            );
        }
    }
    println!(
        "\n{frames} frames through 3 stages in {:.2?} ({:.2} M frames/s); {} window summaries",
        outcome.elapsed,
        f64::from(frames) / outcome.elapsed.as_secs_f64() / 1e6,
        outcome.summaries.len()
    );
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>10}",
        "kernel", "received", "processed", "emitted", "stalls", "errors", "state"
    );
    for m in &outcome.metrics {
        println!(
            "{:<10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>10?}",
            m.kernel, m.received, m.processed, m.emitted, m.stalls, m.errors, m.state
        );
    }
    let [calibrate, filter, aggregate] = &outcome.metrics[..] else {
        unreachable!("three stages")
    };
    assert_eq!(calibrate.processed, u64::from(frames));
    assert_eq!(
        filter.emitted,
        u64::from(frames) - sensors::outliers(frames),
        "the filter drops exactly the outliers"
    );
    assert_eq!(outcome.summaries.len() as u64, aggregate.emitted);
    assert_eq!(outcome.undelivered, 0);
    println!("all stages drained upstream first; nothing undelivered");
    Ok(())
}
