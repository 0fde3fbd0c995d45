//! Measures the cost of many idle resident kernels (Linux: reads `/proc/self`).

use std::fmt;
use std::time::{Duration, Instant};

use gyre::{KernelSpec, Runtime};

/// What idle kernels cost.
#[derive(Clone, Copy, Debug)]
pub struct IdleCost {
    /// Kernels launched.
    pub kernels: usize,
    /// Bytes of ring memory per kernel (headers and slots of its two rings).
    pub ring_bytes_per_kernel: usize,
    /// Growth of resident memory per kernel, rings excluded.
    pub overhead_bytes_per_kernel: f64,
    /// Process CPU time over the idle window, as a share of one core.
    pub idle_cpu_share: f64,
    /// The idle window.
    pub window: Duration,
}

impl fmt::Display for IdleCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} idle kernels: {:.2}% CPU over {:.1?} (bound 2%), {:.0} bytes per kernel beyond {} bytes of ring slots (bound 16384)",
            self.kernels,
            self.idle_cpu_share * 100.0,
            self.window,
            self.overhead_bytes_per_kernel,
            self.ring_bytes_per_kernel
        )
    }
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Process CPU time (user + system), from `/proc/self/stat` in clock ticks of 10 ms.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Launches `count` kernels (16-slot inbox and output, 64-byte slots), activates each,
/// sends each one message and receives its echo, then measures `window` of idleness.
///
/// # Errors
/// Any launch or lifecycle error.
pub fn measure(count: usize, window: Duration) -> Result<IdleCost, gyre::Error> {
    let runtime = Runtime::builder().workers(2).build()?;
    let before = rss_bytes();
    let mut kernels = Vec::with_capacity(count);
    for i in 0..count {
        let spec = KernelSpec::<u64, u64>::new(format!("idle-{i}"))
            .capacity(16)
            .host_output(16)
            .slot_bytes(64)
            .cpu(|x, out| Ok(out.emit(*x + 1)?));
        kernels.push(runtime.launch(spec)?);
    }
    for (i, k) in kernels.iter().enumerate() {
        k.activate()?;
        k.send(i as u64)?;
    }
    for (i, k) in kernels.iter().enumerate() {
        assert_eq!(k.recv()?, i as u64 + 1, "every kernel really runs");
    }
    let after = rss_bytes();
    // Let spinning workers settle into parking, then measure.
    std::thread::sleep(Duration::from_millis(300));
    let cpu_before = cpu_time();
    let start = Instant::now();
    std::thread::sleep(window);
    let idle_cpu = cpu_time().saturating_sub(cpu_before);
    let window = start.elapsed();
    // Three rings: the inbox, the single-producer lane and the host output.
    let ring_bytes_per_kernel = 3 * (384 + 16 * 64);
    let growth = after.saturating_sub(before) as f64 / count as f64;
    let cost = IdleCost {
        kernels: count,
        ring_bytes_per_kernel,
        overhead_bytes_per_kernel: growth - ring_bytes_per_kernel as f64,
        idle_cpu_share: idle_cpu.as_secs_f64() / window.as_secs_f64(),
        window,
    };
    drop(kernels);
    let report = runtime.shutdown(Duration::from_secs(30));
    assert_eq!(report.undelivered_count(), 0);
    Ok(cost)
}
