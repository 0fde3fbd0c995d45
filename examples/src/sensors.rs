//! The `pipeline` example's job: a three-stage stream of sensor frames, calibrate →
//! filter → aggregate, launched as one group whose routes carry each stage's output
//! straight into the next stage's inbox (on the device, on GPU backends). The same
//! topology and handler semantics on every backend: the CPU closures here, their CUDA C
//! and WGSL twins in [`crate::device`].

use std::thread;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use gyre::{Backend, Error, Group, Kernel, KernelMetrics, KernelSpec, Placement, Runtime};

use crate::device;

/// The three stages' handles.
pub type Stages = (
    Kernel<Frame, Frame>,
    Kernel<Frame, Frame>,
    Kernel<Frame, Summary>,
);

/// Sensors the frames come from.
pub const SENSORS: u32 = 16;
/// Frames per window summary.
pub const WINDOW: u32 = 1000;

/// A raw frame from a sensor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Frame {
    /// The sensor.
    pub sensor: u32,
    /// Its sequence number.
    pub seq: u32,
    /// The raw reading.
    pub raw: f32,
    /// Padding (the frame has a built-in `Record`'s layout).
    pub pad: u32,
}

/// Mean of one window of calibrated, valid frames of one sensor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Summary {
    /// The sensor.
    pub sensor: u32,
    /// Frames in the window.
    pub count: u32,
    /// Their mean.
    pub mean: f32,
    /// Their maximum.
    pub max: f32,
}

/// The raw reading of `sensor` at `seq`.
pub fn raw_value(sensor: u32, seq: u32) -> f32 {
    // A deterministic signal with an outlier every 97 frames.
    if seq.is_multiple_of(97) {
        1.0e6
    } else {
        (sensor * 10 + seq % 50) as f32
    }
}

/// The three stages as one group: calibrate's output routed into filter's inbox, filter's
/// into aggregate's (kernel-to-kernel, no host hop), aggregate's to the host.
pub fn launch_stages(runtime: &Runtime) -> Result<(Group, Stages), Error> {
    let mut g = runtime.group("sensors");
    let calibrate = g.add(
        device::PIPELINE_CALIBRATE
            .on(KernelSpec::<Frame, Frame>::new("calibrate"))
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
        device::PIPELINE_FILTER
            .on(KernelSpec::<Frame, Frame>::new("filter"))
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
        device::PIPELINE_AGGREGATE
            .on(KernelSpec::<Frame, Summary>::new("aggregate"))
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

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    /// The backend it ran on.
    pub backend: &'static str,
    /// Frames sent.
    pub frames: u32,
    /// Every window summary, in the order received.
    pub summaries: Vec<Summary>,
    /// How long from the first send to the last summary.
    pub elapsed: Duration,
    /// The stages' metrics after the drain, upstream first.
    pub metrics: Vec<KernelMetrics>,
    /// Messages the final drain handed back (0 when nothing was lost).
    pub undelivered: usize,
}

/// Streams `frames` frames from [`SENSORS`] sensors through the three stages on
/// `backend` and receives every window summary; drains upstream first.
///
/// # Errors
/// A launch, lifecycle, send or receive error of gyre.
pub fn run(backend: Backend, frames: u32) -> Result<Outcome, Error> {
    let runtime = crate::backend::runtime(backend)?;
    let (group, (calibrate, filter, aggregate)) = launch_stages(&runtime)?;
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
                    pad: 0,
                })?;
            }
            Ok(())
        })
    };
    let drainer = thread::spawn(move || {
        source.join().expect("source thread")?;
        // Upstream first: each stage finishes what it holds and delivers it downstream
        // before the next one drains, so nothing in flight is lost.
        Ok::<_, Error>(group.drain(Duration::from_mins(1)))
    });
    let mut summaries = Vec::new();
    let mut rx = aggregate.receiver()?;
    loop {
        match rx.recv() {
            Ok(s) => summaries.push(s),
            Err(Error::Terminated { .. }) => break,
            Err(other) => return Err(other),
        }
    }
    drop(rx);
    let elapsed = start.elapsed();
    let report = drainer.join().expect("drain thread")?;
    let metrics = vec![calibrate.metrics(), filter.metrics(), aggregate.metrics()];
    let backend = runtime.backend_name();
    let shutdown = runtime.shutdown(Duration::from_secs(10));
    Ok(Outcome {
        backend,
        frames,
        summaries,
        elapsed,
        metrics,
        undelivered: report.undelivered_count() + shutdown.undelivered_count(),
    })
}

/// Frames the filter drops (the outliers `raw_value` makes) among `frames` frames.
pub fn outliers(frames: u32) -> u64 {
    (0..frames)
        .filter(|seq| (seq / SENSORS).is_multiple_of(97))
        .count() as u64
}
