//! Measures the cost of many idle resident kernels (Linux: reads `/proc/self`).

use std::fmt;
use std::time::{Duration, Instant};

use gyre::{KernelSpec, Runtime};
use indicatif::ProgressBar;

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

/// Why a measurement could not be taken: gyre failed, or the process's own counters
/// (`/proc/self`, Linux only) could not be read. Never a silent zero.
#[derive(Debug, thiserror::Error)]
pub enum IdleError {
    /// A launch, lifecycle or receive error from gyre.
    #[error(transparent)]
    Gyre(#[from] gyre::Error),
    /// `/proc/self/{statm,stat}` could not be read or parsed.
    #[error("cannot read {what} from {path}: {why} (this measurement needs Linux's /proc)")]
    Proc {
        /// The value wanted.
        what: &'static str,
        /// The file read.
        path: &'static str,
        /// What went wrong.
        why: String,
    },
}

fn read_proc(path: &'static str, what: &'static str) -> Result<String, IdleError> {
    std::fs::read_to_string(path).map_err(|e| IdleError::Proc {
        what,
        path,
        why: e.to_string(),
    })
}

/// Resident set size in bytes, from `/proc/self/statm` (pages of 4 KiB).
fn rss_bytes() -> Result<usize, IdleError> {
    const PATH: &str = "/proc/self/statm";
    let statm = read_proc(PATH, "the resident set size")?;
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| IdleError::Proc {
            what: "the resident set size",
            path: PATH,
            why: format!("no page count in {statm:?}"),
        })?;
    Ok(pages * 4096)
}

/// Process CPU time (user + system), from `/proc/self/stat` in clock ticks of 10 ms.
fn cpu_time() -> Result<Duration, IdleError> {
    const PATH: &str = "/proc/self/stat";
    let stat = read_proc(PATH, "the process CPU time")?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15
    // of the line, so the 12th and 13th after the name.
    let ticks = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().skip(11).take(2))
        .map(|fields| fields.map(str::parse::<u64>).collect::<Result<Vec<_>, _>>());
    match ticks {
        Some(Ok(ticks)) if ticks.len() == 2 => {
            Ok(Duration::from_millis((ticks[0] + ticks[1]) * 10))
        }
        _ => Err(IdleError::Proc {
            what: "the process CPU time",
            path: PATH,
            why: format!("no utime/stime fields in {stat:?}"),
        }),
    }
}

/// Launches `count` kernels (16-slot inbox and output, 64-byte slots), activates each,
/// sends each one message and receives its echo, then measures `window` of idleness.
///
/// # Errors
/// Any launch or lifecycle error, or process counters that cannot be read.
pub fn measure(count: usize, window: Duration) -> Result<IdleCost, IdleError> {
    measure_with_progress(count, window, &ProgressBar::hidden())
}

/// [`measure`], advancing `progress` through the launches, activations and echoes
/// (`3 × count` steps; its length is set here) and clearing it before the idle window,
/// so that drawing it costs nothing in the measured CPU share.
///
/// # Errors
/// As [`measure`].
pub fn measure_with_progress(
    count: usize,
    window: Duration,
    progress: &ProgressBar,
) -> Result<IdleCost, IdleError> {
    progress.set_length(3 * count as u64);
    progress.set_message("launching");
    let runtime = Runtime::builder().workers(2).build()?;
    let before = rss_bytes()?;
    let mut kernels = Vec::with_capacity(count);
    for i in 0..count {
        let spec = KernelSpec::<u64, u64>::new(format!("idle-{i}"))
            .capacity(16)
            .host_output(16)
            .slot_bytes(64)
            .cpu(|x, out| Ok(out.emit(*x + 1)?));
        kernels.push(runtime.launch(spec)?);
        progress.inc(1);
    }
    progress.set_message("activating");
    for (i, k) in kernels.iter().enumerate() {
        k.activate()?;
        k.send(i as u64).map_err(gyre::Error::from)?;
        progress.inc(1);
    }
    progress.set_message("echoing");
    for (i, k) in kernels.iter().enumerate() {
        assert_eq!(k.recv()?, i as u64 + 1, "every kernel really runs");
        progress.inc(1);
    }
    progress.finish_and_clear();
    let after = rss_bytes()?;
    // Let spinning workers settle into parking, then measure.
    std::thread::sleep(Duration::from_millis(300));
    let cpu_before = cpu_time()?;
    let start = Instant::now();
    std::thread::sleep(window);
    let idle_cpu = cpu_time()?.saturating_sub(cpu_before);
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
