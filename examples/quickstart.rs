//! Quick start: launch a kernel, send it messages, receive its outputs, drain it.
//!
//! Run with `cargo run --release --example quickstart`.

use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use gyre::{KernelSpec, Placement, Runtime};

/// A sensor reading: what the host sends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Reading {
    sensor: u32,
    celsius: f32,
}

/// The same reading in Fahrenheit: what the kernel emits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Converted {
    sensor: u32,
    fahrenheit: f32,
}

fn main() -> Result<(), gyre::Error> {
    // The default backend (CPU here) with one worker per core.
    let runtime = Runtime::builder().build()?;
    println!(
        "runtime: {} backend, {} workers",
        runtime.backend_name(),
        runtime.workers()
    );

    // A kernel is resident from launch; it processes once activated.
    let spec = KernelSpec::<Reading, Converted>::new("to-fahrenheit")
        .capacity(256)
        .placement(Placement::Dedicated)
        .cpu(|r, out| {
            Ok(out.emit(Converted {
                sensor: r.sensor,
                fahrenheit: r.celsius * 9.0 / 5.0 + 32.0,
            })?)
        });
    let kernel = runtime.launch(spec)?;
    kernel.activate()?;

    for i in 0..5u8 {
        kernel.send(Reading {
            sensor: u32::from(i),
            celsius: f32::from(i) * 10.0,
        })?;
    }
    for _ in 0..5 {
        let c = kernel.recv()?;
        println!("sensor {} -> {:.1} °F", c.sensor, c.fahrenheit);
    }

    // Drain: refuse new messages, finish queued ones, stop. Nothing is lost.
    let report = kernel.drain(Duration::from_secs(5))?;
    println!(
        "drained `{}`: processed {}, emitted {}, undelivered {}",
        report.kernel,
        report.processed,
        report.emitted,
        report.undelivered.len()
    );
    assert_eq!(report.processed, 5);
    Ok(())
}
