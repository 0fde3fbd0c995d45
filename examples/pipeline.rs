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
//!
//! With `--dashboard` it streams until Ctrl-C instead, serving the live dashboard of the
//! runtime (every kernel's throughput, inbox, stalls, errors and state, the group drawn
//! as its DAG) at the URL it prints: `cargo run --release --example pipeline --
//! --dashboard`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gyre::Error;
use gyre_examples::sensors::{self, Frame, SENSORS};

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = gyre_examples::backend::from_args(&args).map_err(Error::Launch)?;
    let rest = gyre_examples::backend::other_args(&args);
    if rest.iter().any(|a| a == "--dashboard") {
        return dashboard(backend);
    }
    let frames: u32 = rest.first().and_then(|a| a.parse().ok()).unwrap_or(200_000);
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

/// Streams frames through the three stages until Ctrl-C, serving the dashboard; then
/// drains upstream first and prints each stage's metrics.
fn dashboard(backend: gyre::Backend) -> Result<(), Error> {
    let runtime = gyre_examples::backend::runtime(backend)?;
    let (group, (calibrate, filter, aggregate)) = sensors::launch_stages(&runtime)?;
    let server = runtime.serve_dashboard(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
    println!(
        "pipeline on the {} backend, streaming until Ctrl-C\n\n  dashboard: http://{}/\n",
        runtime.backend_name(),
        server.local_addr()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let source = {
        let stop = stop.clone();
        let calibrate = calibrate.clone();
        std::thread::spawn(move || -> Result<u64, Error> {
            let mut input = calibrate.exclusive_sender()?;
            let mut sent = 0u64;
            // Relaxed: a flag read once per frame; the join below orders what follows.
            while !stop.load(Ordering::Relaxed) {
                let seq = (sent / u64::from(SENSORS)) as u32;
                let sensor = (sent % u64::from(SENSORS)) as u32;
                input.send(Frame {
                    sensor,
                    seq,
                    raw: sensors::raw_value(sensor, seq),
                    pad: 0,
                })?;
                sent += 1;
            }
            Ok(sent)
        })
    };
    let sink = std::thread::spawn({
        let aggregate = aggregate.clone();
        move || -> Result<u64, Error> {
            let mut rx = aggregate.receiver()?;
            let mut summaries = 0u64;
            loop {
                match rx.recv() {
                    Ok(_) => summaries += 1,
                    Err(Error::Terminated { .. }) => return Ok(summaries),
                    Err(other) => return Err(other),
                }
            }
        }
    });
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::Launch(format!("could not start a runtime to wait for Ctrl-C: {e}")))?
        .block_on(tokio::signal::ctrl_c())
        .map_err(|e| Error::Launch(format!("could not wait for Ctrl-C: {e}")))?;
    println!("\nCtrl-C: stopping the source and draining upstream first");
    // Relaxed: see the source thread.
    stop.store(true, Ordering::Relaxed);
    let sent = source.join().expect("source thread")?;
    let report = group.drain(Duration::from_mins(1));
    let summaries = sink.join().expect("sink thread")?;
    println!("{sent} frames sent, {summaries} window summaries received");
    for m in [calibrate.metrics(), filter.metrics(), aggregate.metrics()] {
        println!(
            "{:<10} processed {:>12} emitted {:>12} stalls {:>8} errors {:>4} {:?}",
            m.kernel, m.processed, m.emitted, m.stalls, m.errors, m.state
        );
    }
    drop(server);
    let shutdown = runtime.shutdown(Duration::from_secs(10));
    assert_eq!(report.undelivered_count() + shutdown.undelivered_count(), 0);
    println!("nothing undelivered");
    Ok(())
}
