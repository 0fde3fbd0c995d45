//! A three-stage stream of sensor frames: calibrate → filter → aggregate.
//!
//! Each stage is a resident kernel; the three are launched as one group whose routes carry
//! each stage's output straight into the next stage's inbox (no host hop). The host feeds
//! the first stage and receives the window summaries of the last. At the end the group is
//! drained upstream first, so nothing in flight is lost, and each stage prints its metrics.
//!
//! Run with `cargo run --release --example pipeline` (add a frame count to change the
//! default of 200,000).

use std::thread;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use gyre::{Error, Group, Kernel, KernelSpec, Placement, Runtime};

type Stages = (
    Kernel<Frame, Frame>,
    Kernel<Frame, Frame>,
    Kernel<Frame, Summary>,
);

const SENSORS: u32 = 16;
const WINDOW: u32 = 1000;

/// A raw frame from a sensor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Frame {
    sensor: u32,
    seq: u32,
    raw: f32,
    _pad: u32,
}

/// Mean of one window of calibrated, valid frames of one sensor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Summary {
    sensor: u32,
    count: u32,
    mean: f32,
    max: f32,
}

fn raw_value(sensor: u32, seq: u32) -> f32 {
    // A deterministic signal with an outlier every 97 frames.
    if seq.is_multiple_of(97) {
        1.0e6
    } else {
        (sensor * 10 + seq % 50) as f32
    }
}

/// The three stages as one group: calibrate's output routed into filter's inbox, filter's
/// into aggregate's (kernel-to-kernel, no host hop), aggregate's to the host.
fn launch_stages(runtime: &Runtime) -> Result<(Group, Stages), Error> {
    let mut g = runtime.group("sensors");
    let calibrate = g.add(
        KernelSpec::<Frame, Frame>::new("calibrate")
            .capacity(4096)
            .no_host_output()
            .cpu(|f, out| {
                Ok(out.emit(Frame {
                    raw: f.raw * 0.5 + 1.0,
                    ..*f
                })?)
            }),
    );
    let filter = g.add(
        KernelSpec::<Frame, Frame>::new("filter")
            .capacity(4096)
            .no_host_output()
            .cpu(|f, out| {
                if f.raw.is_finite() && f.raw < 10_000.0 {
                    out.emit(*f)?;
                }
                Ok(())
            }),
    );
    let mut windows = vec![(0u32, 0.0f32, f32::MIN); SENSORS as usize];
    let aggregate = g.add(
        KernelSpec::<Frame, Summary>::new("aggregate")
            .capacity(4096)
            .host_output(1024)
            .placement(Placement::Pool)
            .cpu(move |f, out| {
                let w = &mut windows[(f.sensor % SENSORS) as usize];
                w.0 += 1;
                w.1 += f.raw;
                w.2 = w.2.max(f.raw);
                if w.0 == WINDOW {
                    out.emit(Summary {
                        sensor: f.sensor,
                        count: w.0,
                        mean: w.1 / w.0 as f32,
                        max: w.2,
                    })?;
                    *w = (0, 0.0, f32::MIN);
                }
                Ok(())
            }),
    );
    g.route(calibrate, 0, filter).route(filter, 0, aggregate);
    let group = g.launch()?;
    group.activate()?;
    let stages = (
        group.kernel(calibrate)?,
        group.kernel(filter)?,
        group.kernel(aggregate)?,
    );
    Ok((group, stages))
}

fn main() -> Result<(), Error> {
    let frames: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let runtime = Runtime::builder().build()?;
    println!(
        "pipeline on the {} backend ({} workers): {frames} frames from {SENSORS} sensors",
        runtime.backend_name(),
        runtime.workers()
    );

    let (group, (calibrate, filter, aggregate)) = launch_stages(&runtime)?;
    println!("routes: {:?}", group.routes());

    let start = Instant::now();
    let source = {
        let calibrate = calibrate.clone();
        thread::spawn(move || -> Result<(), Error> {
            let mut input = calibrate.exclusive_sender()?;
            for seq in 0..frames {
                let sensor = seq % SENSORS;
                input.send(Frame {
                    sensor,
                    seq: seq / SENSORS,
                    raw: raw_value(sensor, seq / SENSORS),
                    _pad: 0,
                })?;
            }
            Ok(())
        })
    };
    let drainer = thread::spawn(move || {
        source.join().expect("source thread")?;
        // Upstream first: each stage finishes what it holds and delivers it downstream
        // before the next one drains, so nothing in flight is lost.
        let report = group.drain(Duration::from_secs(30));
        Ok::<_, Error>(report)
    });

    let mut summaries = 0u32;
    let mut summaries_rx = aggregate.receiver()?;
    let mut last_print = Instant::now();
    loop {
        match summaries_rx.recv() {
            Ok(s) => {
                summaries += 1;
                if last_print.elapsed() > Duration::from_millis(250) || summaries % 48 == 1 {
                    println!(
                        "  summary #{summaries}: sensor {:2} mean {:8.2} max {:8.2} over {} frames",
                        s.sensor, s.mean, s.max, s.count
                    );
                    last_print = Instant::now();
                }
            }
            Err(Error::Terminated { .. }) => break,
            Err(other) => return Err(other),
        }
    }
    let report = drainer.join().expect("drain thread")?;
    let elapsed = start.elapsed();
    assert_eq!(report.undelivered_count(), 0, "{report:?}");
    println!("drained in order: {:?}", report.kernel_names());

    println!("\n{frames} frames through 3 stages in {elapsed:.2?} ({:.2} M frames/s); {summaries} window summaries", f64::from(frames) / elapsed.as_secs_f64() / 1e6);
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>10}",
        "kernel", "received", "processed", "emitted", "stalls", "errors", "state"
    );
    for m in [calibrate.metrics(), filter.metrics(), aggregate.metrics()] {
        println!(
            "{:<10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>10?}",
            m.kernel, m.received, m.processed, m.emitted, m.stalls, m.errors, m.state
        );
    }
    let outliers = (0..frames)
        .filter(|seq| (seq / SENSORS).is_multiple_of(97))
        .count() as u64;
    assert_eq!(calibrate.metrics().processed, u64::from(frames));
    assert_eq!(
        filter.metrics().emitted,
        u64::from(frames) - outliers,
        "the filter drops exactly the outliers"
    );
    assert_eq!(u64::from(summaries), aggregate.metrics().emitted);
    let report = runtime.shutdown(Duration::from_secs(5));
    assert_eq!(report.undelivered_count(), 0);
    println!("all stages drained; nothing undelivered");
    Ok(())
}
