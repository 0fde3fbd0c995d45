//! The built-in kernels: echo, affine map, filter, tumbling window, histogram, scatter and
//! gather.
//!
//! Each [`Builtin`] describes one kernel by its parameters and says everything a backend
//! needs to run it: the CUDA device function in `kernels/include/builtins.cuh`
//! ([`Builtin::cuda_function`]), its parameter words ([`Builtin::params`]), whether it is
//! sequential, its state and message sizes, and how many output ports it emits to. Its
//! [`Reference`] is the CPU implementation with the same semantics and the same float
//! operations, bit for bit: the conformance test feeds a device and the reference the
//! same inputs and compares the bytes they emit.
//!
//! Messages are [`Record`]s (16 bytes) except for echo, which forwards raw bytes; window
//! emits [`Aggregate`]s and histogram emits [`Histogram`]s.
//!
//! Float rules kept by both sides: products and sums are rounded separately (the device
//! writes `__fmul_rn`/`__fadd_rn`, which are never contracted into an FMA; Rust never
//! contracts), sums are taken in arrival order, and comparisons are written the same way
//! so NaN takes the same branch.
//!
//! ```
//! use gyre_runtime::builtins::{Builtin, Record};
//!
//! let affine = Builtin::Affine { a: 2.0, b: 1.0 };
//! affine.validate().unwrap();
//! let mut reference = affine.reference();
//! let input = Record { key: 7, seq: 0, value: 3.0, aux: 0 };
//! let mut out = Vec::new();
//! reference
//!     .handle(bytemuck::bytes_of(&input), &mut |port, bytes| {
//!         out.push((port, *bytemuck::from_bytes::<Record>(bytes)));
//!     })
//!     .unwrap();
//! assert_eq!(out, [(0, Record { value: 7.0, ..input })]);
//! ```

use bytemuck::{Pod, Zeroable};

use crate::abi::{status, MAX_SLOT_BYTES, SLOT_HEADER_BYTES};

/// Handler result of a built-in whose parameters are out of range (what
/// [`Builtin::validate`] rejects): [`status::BUILTIN_ERR_PARAMS`], generated as
/// `GYRE_BUILTIN_ERR_PARAMS`; word 1 of the message's dead letter.
pub const ERR_PARAMS: u32 = status::BUILTIN_ERR_PARAMS.cast_unsigned();

/// Handler result of a built-in whose inbox slot payload is shorter than the message it
/// reads: [`status::BUILTIN_ERR_INPUT`] (`GYRE_BUILTIN_ERR_INPUT`).
pub const ERR_INPUT: u32 = status::BUILTIN_ERR_INPUT.cast_unsigned();

/// Handler result of a stateful built-in launched without state memory:
/// [`status::BUILTIN_ERR_STATE`] (`GYRE_BUILTIN_ERR_STATE`; device only: the reference
/// always has its state).
pub const ERR_STATE: u32 = status::BUILTIN_ERR_STATE.cast_unsigned();

/// Most bins of a [`Builtin::Histogram`].
pub const MAX_BINS: u32 = 8;

/// Most output ports of a [`Builtin::Scatter`] (a kernel's port limit, `GYRE_MAX_PORTS`).
pub const MAX_SCATTER_PORTS: u32 = 8;

/// Words of kernel parameters (`GYRE_PARAM_WORDS`).
pub const PARAM_WORDS: usize = 16;

/// The record every record-based built-in reads and writes (`gyre_rec`). 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct Record {
    /// Key: scatter routes on it; the other built-ins carry it through.
    pub key: u32,
    /// Sequence number, carried through; window reports the first and last of a window.
    pub seq: u32,
    /// The value affine maps, filter tests, window aggregates and histogram counts.
    pub value: f32,
    /// Free for the user, carried through.
    pub aux: u32,
}

/// One full window of [`Builtin::Window`] (`gyre_aggregate`). 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct Aggregate {
    /// Index of the window, from 0.
    pub window: u32,
    /// Records in the window (the window's size).
    pub count: u32,
    /// Sum of the values, added in arrival order, each addition rounded to f32.
    pub sum: f32,
    /// Least value (`v < min` replaces; a NaN never replaces, a first NaN stays).
    pub min: f32,
    /// Greatest value (`v > max` replaces).
    pub max: f32,
    /// `seq` of the window's first record.
    pub first_seq: u32,
    /// `seq` of the window's last record.
    pub last_seq: u32,
    /// Zero.
    pub reserved: u32,
}

/// The cumulative counts of [`Builtin::Histogram`] (`gyre_histogram`). 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Histogram {
    /// Records counted since launch (wrapping).
    pub total: u32,
    /// Bins in use; `counts[bins..]` are zero.
    pub bins: u32,
    /// Records per bin since launch (wrapping).
    pub counts: [u32; MAX_BINS as usize],
}

const RECORD_BYTES: u32 = size_of::<Record>() as u32;
const AGGREGATE_BYTES: u32 = size_of::<Aggregate>() as u32;
const HISTOGRAM_BYTES: u32 = size_of::<Histogram>() as u32;

const _: () = {
    assert!(RECORD_BYTES == 16);
    assert!(std::mem::offset_of!(Record, key) == 0);
    assert!(std::mem::offset_of!(Record, seq) == 4);
    assert!(std::mem::offset_of!(Record, value) == 8);
    assert!(std::mem::offset_of!(Record, aux) == 12);
    assert!(AGGREGATE_BYTES == 32);
    assert!(std::mem::offset_of!(Aggregate, window) == 0);
    assert!(std::mem::offset_of!(Aggregate, count) == 4);
    assert!(std::mem::offset_of!(Aggregate, sum) == 8);
    assert!(std::mem::offset_of!(Aggregate, min) == 12);
    assert!(std::mem::offset_of!(Aggregate, max) == 16);
    assert!(std::mem::offset_of!(Aggregate, first_seq) == 20);
    assert!(std::mem::offset_of!(Aggregate, last_seq) == 24);
    assert!(std::mem::offset_of!(Aggregate, reserved) == 28);
    assert!(HISTOGRAM_BYTES == 40);
    assert!(std::mem::offset_of!(Histogram, total) == 0);
    assert!(std::mem::offset_of!(Histogram, bins) == 4);
    assert!(std::mem::offset_of!(Histogram, counts) == 8);
};

/// Largest message echo forwards: a whole slot payload of the largest slot.
const MAX_ECHO_BYTES: u32 = MAX_SLOT_BYTES - SLOT_HEADER_BYTES;

/// A built-in kernel and its parameters.
///
/// Every built-in emits with the correlation id of the message in hand. Record-based
/// built-ins read the first 16 bytes of the slot payload as a [`Record`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Builtin {
    /// Emits the first `bytes` bytes of each message, unchanged, to port 0. Parallel.
    Echo {
        /// Bytes to forward (1 ..= 65520, and at most the inbox slot payload).
        bytes: u32,
    },
    /// `value' = a * value + b` (rounded after the product and after the sum, never
    /// fused); key, seq and aux unchanged; port 0. Parallel.
    Affine {
        /// Factor.
        a: f32,
        /// Offset.
        b: f32,
    },
    /// Forwards a record unchanged to port 0 iff `lo <= value && value < hi` (NaN never
    /// passes). Parallel.
    Filter {
        /// Least value that passes.
        lo: f32,
        /// First value above `lo` that no longer passes.
        hi: f32,
    },
    /// A tumbling window of `size` records: emits one [`Aggregate`] to port 0 per full
    /// window, then starts the next; a partial window is never emitted. Sequential.
    Window {
        /// Records per window (at least 1).
        size: u32,
    },
    /// Counts values into `bins` equal bins over `[lo, hi)` (values below `lo` and NaN
    /// go to bin 0, values at or above `hi` to the last bin) and emits the cumulative
    /// [`Histogram`] to port 0 after every `every` records. Sequential.
    Histogram {
        /// Bins (1 ..= 8).
        bins: u32,
        /// Lower edge of bin 0.
        lo: f32,
        /// Upper edge of the last bin.
        hi: f32,
        /// Records between emits (at least 1).
        every: u32,
    },
    /// Forwards a record unchanged to port `key % ports`. Parallel.
    Scatter {
        /// Output ports (1 ..= 8).
        ports: u32,
    },
    /// Forwards a record unchanged to port 0; meant to be fed by several upstream
    /// kernels (the order across its inboxes is not defined). Parallel.
    Gather,
}

/// `bins / (hi - lo)` in f32: computed once, on the host, so the device and the reference
/// multiply by the identical f32.
fn histogram_scale(bins: u32, lo: f32, hi: f32) -> f32 {
    bins as f32 / (hi - lo)
}

impl Builtin {
    /// Short name: `"echo"`, `"affine"`, `"filter"`, `"window"`, `"histogram"`,
    /// `"scatter"` or `"gather"`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Echo { .. } => "echo",
            Self::Affine { .. } => "affine",
            Self::Filter { .. } => "filter",
            Self::Window { .. } => "window",
            Self::Histogram { .. } => "histogram",
            Self::Scatter { .. } => "scatter",
            Self::Gather => "gather",
        }
    }

    /// The device function in `builtins.cuh` (`gyre_builtin_` and [`name`](Self::name)).
    pub fn cuda_function(&self) -> &'static str {
        match self {
            Self::Echo { .. } => "gyre_builtin_echo",
            Self::Affine { .. } => "gyre_builtin_affine",
            Self::Filter { .. } => "gyre_builtin_filter",
            Self::Window { .. } => "gyre_builtin_window",
            Self::Histogram { .. } => "gyre_builtin_histogram",
            Self::Scatter { .. } => "gyre_builtin_scatter",
            Self::Gather => "gyre_builtin_gather",
        }
    }

    /// The kernel's parameter words, as the device function reads them (floats as their
    /// bit patterns; unused words zero):
    ///
    /// | built-in  | `[0]`   | `[1]` | `[2]` | `[3]`   | `[4]`                      |
    /// |-----------|---------|-------|-------|---------|----------------------------|
    /// | echo      | `bytes` |       |       |         |                            |
    /// | affine    | `a`     | `b`   |       |         |                            |
    /// | filter    | `lo`    | `hi`  |       |         |                            |
    /// | window    | `size`  |       |       |         |                            |
    /// | histogram | `bins`  | `lo`  | `hi`  | `every` | `scale = bins / (hi - lo)` |
    /// | scatter   | `ports` |       |       |         |                            |
    /// | gather    |         |       |       |         |                            |
    ///
    /// `hi` of histogram is informational: the device reads only `scale`.
    pub fn params(&self) -> [u32; PARAM_WORDS] {
        let mut p = [0u32; PARAM_WORDS];
        match *self {
            Self::Echo { bytes } => p[0] = bytes,
            Self::Affine { a, b } => {
                p[0] = a.to_bits();
                p[1] = b.to_bits();
            }
            Self::Filter { lo, hi } => {
                p[0] = lo.to_bits();
                p[1] = hi.to_bits();
            }
            Self::Window { size } => p[0] = size,
            Self::Histogram {
                bins,
                lo,
                hi,
                every,
            } => {
                p[0] = bins;
                p[1] = lo.to_bits();
                p[2] = hi.to_bits();
                p[3] = every;
                p[4] = histogram_scale(bins, lo, hi).to_bits();
            }
            Self::Scatter { ports } => p[0] = ports,
            Self::Gather => {}
        }
        p
    }

    /// Whether one thread must handle a batch in order (`GYRE_FLAG_SEQUENTIAL`): window
    /// and histogram, which update their state per record.
    pub fn sequential(&self) -> bool {
        matches!(self, Self::Window { .. } | Self::Histogram { .. })
    }

    /// Bytes of device state the kernel needs (zeroed at launch): an [`Aggregate`] for
    /// window (the window being filled), a [`Histogram`] for histogram, none otherwise.
    pub fn state_bytes(&self) -> u32 {
        match self {
            Self::Window { .. } => AGGREGATE_BYTES,
            Self::Histogram { .. } => HISTOGRAM_BYTES,
            _ => 0,
        }
    }

    /// Output ports the kernel emits to: `ports` for scatter, 1 otherwise.
    pub fn ports(&self) -> u32 {
        match *self {
            Self::Scatter { ports } => ports,
            _ => 1,
        }
    }

    /// Bytes of the message the kernel reads: `bytes` for echo, a [`Record`] otherwise.
    pub fn input_bytes(&self) -> u32 {
        match *self {
            Self::Echo { bytes } => bytes,
            _ => RECORD_BYTES,
        }
    }

    /// Bytes of each message the kernel emits: `bytes` for echo, an [`Aggregate`] for
    /// window, a [`Histogram`] for histogram, a [`Record`] otherwise.
    pub fn output_bytes(&self) -> u32 {
        match *self {
            Self::Echo { bytes } => bytes,
            Self::Window { .. } => AGGREGATE_BYTES,
            Self::Histogram { .. } => HISTOGRAM_BYTES,
            _ => RECORD_BYTES,
        }
    }

    /// Checks the parameters. A kernel launched with parameters this rejects sends every
    /// message to the dead letters with [`ERR_PARAMS`].
    ///
    /// # Errors
    /// A message naming the parameter, its value, and what to use instead.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Self::Echo { bytes } => {
                if bytes == 0 || bytes > MAX_ECHO_BYTES {
                    return Err(format!(
                        "echo: bytes is {bytes}; forward 1 ..= {MAX_ECHO_BYTES} bytes \
                         (the message size, at most a slot payload)"
                    ));
                }
            }
            Self::Affine { a, b } => {
                if !a.is_finite() || !b.is_finite() {
                    return Err(format!(
                        "affine: a = {a} and b = {b} must both be finite numbers"
                    ));
                }
            }
            Self::Filter { lo, hi } => {
                if lo.is_nan() || hi.is_nan() || lo >= hi {
                    return Err(format!(
                        "filter: the range [{lo}, {hi}) is empty or not a range; give \
                         lo < hi (use f32::NEG_INFINITY or f32::INFINITY for an open side)"
                    ));
                }
            }
            Self::Window { size } => {
                if size == 0 {
                    return Err(
                        "window: size is 0; give the records per window (at least 1)".to_owned(),
                    );
                }
            }
            Self::Histogram {
                bins,
                lo,
                hi,
                every,
            } => {
                if bins == 0 || bins > MAX_BINS {
                    return Err(format!(
                        "histogram: bins is {bins}; use 1 ..= {MAX_BINS} bins (chain \
                         histograms over split ranges for more)"
                    ));
                }
                if every == 0 {
                    return Err("histogram: every is 0; emit after at least 1 record".to_owned());
                }
                if !lo.is_finite() || !hi.is_finite() || lo >= hi {
                    return Err(format!(
                        "histogram: the range [{lo}, {hi}) must be finite with lo < hi"
                    ));
                }
                let scale = histogram_scale(bins, lo, hi);
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(format!(
                        "histogram: the range [{lo}, {hi}) is too wide or too narrow for \
                         f32 (bins / (hi - lo) = {scale}); narrow or widen it"
                    ));
                }
            }
            Self::Scatter { ports } => {
                if ports == 0 || ports > MAX_SCATTER_PORTS {
                    return Err(format!(
                        "scatter: ports is {ports}; use 1 ..= {MAX_SCATTER_PORTS} ports \
                         (scatter into further scatters for more)"
                    ));
                }
            }
            Self::Gather => {}
        }
        Ok(())
    }

    /// The CPU implementation of this built-in, in its launch state (state zeroed).
    pub fn reference(&self) -> Reference {
        Reference {
            builtin: *self,
            params: self.params(),
            window: Aggregate::zeroed(),
            histogram: Histogram::zeroed(),
        }
    }
}

/// Why a built-in refused a message: the device function returns [`code`](Self::code)
/// and the message goes to the dead letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuiltinError {
    /// The parameters are out of range ([`ERR_PARAMS`]).
    #[error("the built-in's parameters are out of range: Builtin::validate says which")]
    Params,
    /// The slot payload is shorter than the message the built-in reads ([`ERR_INPUT`]).
    #[error("the input has {len} bytes but the built-in reads {need}: raise the inbox slot size")]
    Input {
        /// Bytes given.
        len: usize,
        /// Bytes read.
        need: usize,
    },
}

impl BuiltinError {
    /// The handler result the device function returns for this error.
    pub fn code(&self) -> u32 {
        match self {
            Self::Params => ERR_PARAMS,
            Self::Input { .. } => ERR_INPUT,
        }
    }
}

/// The CPU implementation of a [`Builtin`]: the same semantics and float operations as
/// its device function, working from the same parameter words
/// ([`Builtin::params`]), so parameters that the device refuses are refused here too.
#[derive(Clone, Debug)]
pub struct Reference {
    builtin: Builtin,
    params: [u32; PARAM_WORDS],
    /// Window: the window being filled.
    window: Aggregate,
    /// Histogram: the counts so far.
    histogram: Histogram,
}

impl Reference {
    /// The built-in this implements.
    pub fn builtin(&self) -> Builtin {
        self.builtin
    }

    /// Handles one message: `input` is the inbox slot payload (the message at its start,
    /// it may be longer); `emit(port, bytes)` receives each emitted message in order.
    ///
    /// # Errors
    /// What the device function returns instead of `GYRE_OK`; nothing was emitted then.
    pub fn handle(
        &mut self,
        input: &[u8],
        emit: &mut dyn FnMut(u32, &[u8]),
    ) -> Result<(), BuiltinError> {
        let p = self.params;
        match self.builtin {
            Builtin::Echo { .. } => {
                let n = p[0] as usize;
                if n == 0 {
                    return Err(BuiltinError::Params);
                }
                emit(0, input_prefix(input, n)?);
            }
            Builtin::Affine { .. } => {
                let (a, b) = (f32::from_bits(p[0]), f32::from_bits(p[1]));
                let mut out = read_record(input)?;
                out.value = a * out.value + b;
                emit(0, bytemuck::bytes_of(&out));
            }
            Builtin::Filter { .. } => {
                let (lo, hi) = (f32::from_bits(p[0]), f32::from_bits(p[1]));
                let r = read_record(input)?;
                if lo <= r.value && r.value < hi {
                    emit(0, bytemuck::bytes_of(&r));
                }
            }
            Builtin::Window { .. } => {
                let size = p[0];
                if size == 0 {
                    return Err(BuiltinError::Params);
                }
                let r = read_record(input)?;
                if let Some(full) = self.window_push(&r, size) {
                    emit(0, bytemuck::bytes_of(&full));
                }
            }
            Builtin::Histogram { .. } => {
                let bins = p[0];
                let lo = f32::from_bits(p[1]);
                let every = p[3];
                let scale = f32::from_bits(p[4]);
                if bins == 0 || bins > MAX_BINS || every == 0 || !(scale > 0.0 && scale <= f32::MAX)
                {
                    return Err(BuiltinError::Params);
                }
                let r = read_record(input)?;
                let x = (r.value + -lo) * scale;
                let idx = if x >= 0.0 {
                    // x < bins <= 8 in the second arm, so `as` truncates (== floor).
                    if x >= bins as f32 {
                        bins - 1
                    } else {
                        x as u32
                    }
                } else {
                    0 // below lo, or NaN
                };
                let h = &mut self.histogram;
                h.counts[idx as usize] = h.counts[idx as usize].wrapping_add(1);
                h.total = h.total.wrapping_add(1);
                h.bins = bins;
                if h.total.is_multiple_of(every) {
                    emit(0, bytemuck::bytes_of(h));
                }
            }
            Builtin::Scatter { .. } => {
                let ports = p[0];
                if ports == 0 || ports > MAX_SCATTER_PORTS {
                    return Err(BuiltinError::Params);
                }
                let r = read_record(input)?;
                emit(r.key % ports, input_prefix(input, RECORD_BYTES as usize)?);
            }
            Builtin::Gather => {
                emit(0, input_prefix(input, RECORD_BYTES as usize)?);
            }
        }
        Ok(())
    }

    /// Window: adds one record; returns the window when it is full (and starts the next).
    fn window_push(&mut self, r: &Record, size: u32) -> Option<Aggregate> {
        let s = &mut self.window;
        let v = r.value;
        if s.count == 0 {
            s.sum = v;
            s.min = v;
            s.max = v;
            s.first_seq = r.seq;
        } else {
            s.sum += v;
            s.min = if v < s.min { v } else { s.min };
            s.max = if v > s.max { v } else { s.max };
        }
        s.last_seq = r.seq;
        s.count += 1;
        if s.count < size {
            return None;
        }
        let full = *s;
        *s = Aggregate {
            window: full.window.wrapping_add(1),
            ..Aggregate::zeroed()
        };
        Some(full)
    }
}

/// The first `n` bytes of `input`, or the error the device returns when the slot payload
/// is shorter.
fn input_prefix(input: &[u8], n: usize) -> Result<&[u8], BuiltinError> {
    input.get(..n).ok_or(BuiltinError::Input {
        len: input.len(),
        need: n,
    })
}

/// The [`Record`] at the start of `input` (copied: the slice need not be aligned).
fn read_record(input: &[u8]) -> Result<Record, BuiltinError> {
    input_prefix(input, RECORD_BYTES as usize).map(bytemuck::pod_read_unaligned)
}

#[cfg(test)]
mod tests;
