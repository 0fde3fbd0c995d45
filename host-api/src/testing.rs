//! Conformance across backends: run one [`KernelSpec`]'s implementations (its CPU
//! closure, CUDA C, WGSL or built-in) on every backend over the same inputs and find the
//! first output that differs.
//!
//! Someone who writes a handler three times (`.cpu(..)`, `.cuda(..)`, `.wgsl(..)`) needs
//! to know that the three agree. [`Conformance`] launches the spec alone on a fresh
//! [`Runtime`] per backend, sends the same inputs in the same order, receives every
//! host-bound output while the kernel drains, and compares each backend with the first
//! one that ran (the *baseline*: the CPU by default):
//!
//! - the outputs, one by one in the order received, byte for byte (or with the
//!   comparator given to [`Conformance::compare`], e.g. a ULP tolerance for floats);
//! - how many outputs each emitted;
//! - how many inputs each processed, refused (a send that failed: a faulted kernel), or
//!   handed back undelivered; how many outputs it handed back undelivered; how many dead
//!   letters it left (a handler that fails on an input on one backend and not on another
//!   is a difference); whether it faulted, and whether its drain timed out.
//!
//! ```
//! use gyre::testing::Conformance;
//! use gyre::{Backend, KernelSpec};
//!
//! // A spec is consumed by its launch, so `Conformance` takes a closure that builds one.
//! let report = Conformance::new(|| {
//!     KernelSpec::<u32, u32>::new("double").cpu(|x, out| Ok(out.emit(x.wrapping_mul(2))?))
//! })
//! .backends(&[Backend::Cpu]) // this example runs anywhere; the default is every backend
//! .run(&[1, 2, 3, 0xffff_ffff])?;
//! assert_eq!(report.run("cpu").unwrap().outputs, [2, 4, 6, 0xffff_fffe]);
//! assert!(report.first_difference().is_none(), "{report}");
//! # Ok::<(), gyre::Error>(())
//! ```
//!
//! On every backend this build has (features `cuda`, `wgpu`), with the CUDA C and WGSL
//! versions of the handler and a float comparator (backends this build or machine lacks
//! are skipped, so this runs anywhere too):
//!
//! ```
//! use gyre::testing::Conformance;
//! use gyre::{Backend, KernelSpec};
//!
//! const CUDA: &str = r"
//!     __device__ int half(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
//!         float x = *(const float *)msg * 0.5f;
//!         return gyre_emit(ctx, 0u, &x, sizeof x);
//!     }";
//! const WGSL: &str = r"
//!     fn half(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
//!         (*msg).w[0] = bitcast<u32>(bitcast<f32>((*msg).w[0]) * 0.5);
//!         return gyre_emit(ctx, 0u, msg, 4u);
//!     }";
//!
//! let inputs: Vec<f32> = (0..1000u16).map(|i| f32::from(i) * 0.37 - 100.0).collect();
//! let report = Conformance::new(|| {
//!     KernelSpec::<f32, f32>::new("half")
//!         .cpu(|x, out| Ok(out.emit(x * 0.5)?))
//!         .cuda("half", CUDA)
//!         .wgsl("half", WGSL)
//! })
//! .backends(&[Backend::Cpu, Backend::CudaEmulated, Backend::WgpuSoftware])
//! // Equal up to one unit in the last place (any NaN equal to any NaN).
//! .compare(|a: &f32, b: &f32| {
//!     (a.is_nan() && b.is_nan()) || a.to_bits().abs_diff(b.to_bits()) <= 1
//! })
//! .run(&inputs)?;
//! for skipped in &report.skipped {
//!     eprintln!("not compared: {skipped}");
//! }
//! if let Some(difference) = report.first_difference() {
//!     panic!("the backends disagree: {difference}");
//! }
//! assert_eq!(report.runs[0].outputs.len(), inputs.len());
//! # Ok::<(), gyre::Error>(())
//! ```
//!
//! A backend this build or machine does not have (no feature, no GPU, no adapter, no
//! g++), or that the spec has no implementation for, is skipped: the report's `skipped`
//! says which and why. [`Conformance::strict`] makes that an error instead.

use std::fmt;
use std::time::{Duration, Instant};

use crate::{Backend, Error, KernelSpec, Message, Runtime};

/// Every backend, in the order [`Conformance`] tries them by default (the CPU first: it
/// is the baseline).
const ALL: [Backend; 5] = [
    Backend::Cpu,
    Backend::CudaEmulated,
    Backend::WgpuSoftware,
    Backend::Cuda,
    Backend::Wgpu,
];

/// A count of a run that must be equal on every backend.
type Count<In, Out> = fn(&BackendRun<In, Out>) -> usize;

/// How outputs are compared: `true` when equal.
type Comparator<Out> = Box<dyn Fn(&Out, &Out) -> bool>;

/// Runs one kernel spec on several backends over the same inputs and compares what each
/// did (see [the module](self)).
pub struct Conformance<In, Out, F> {
    make: F,
    backends: Vec<Backend>,
    compare: Option<Comparator<Out>>,
    timeout: Duration,
    workers: usize,
    strict: bool,
    _types: std::marker::PhantomData<fn(In) -> Out>,
}

impl<In, Out, F> fmt::Debug for Conformance<In, Out, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conformance")
            .field("backends", &self.backends)
            .field("comparator", &self.compare.is_some())
            .field("timeout", &self.timeout)
            .field("workers", &self.workers)
            .field("strict", &self.strict)
            .finish_non_exhaustive()
    }
}

impl<In, Out, F> Conformance<In, Out, F>
where
    In: Message,
    Out: Message + fmt::Debug,
    F: Fn() -> KernelSpec<In, Out>,
{
    /// A conformance run of the spec `make` builds (called once per backend). By
    /// default: every backend ([`Backend::Cpu`] first, then `CudaEmulated`,
    /// `WgpuSoftware`, `Cuda`, `Wgpu`; those this build or machine lacks are skipped),
    /// outputs compared byte for byte, a 30-second drain timeout, 2 CPU workers.
    pub fn new(make: F) -> Self {
        Self {
            make,
            backends: ALL.to_vec(),
            compare: None,
            timeout: Duration::from_secs(30),
            workers: 2,
            strict: false,
            _types: std::marker::PhantomData,
        }
    }

    /// The backends to run on, in order; the first that runs is the baseline every other
    /// is compared with. [`Backend::Auto`] is the CPU backend.
    #[must_use]
    pub fn backends(mut self, backends: &[Backend]) -> Self {
        self.backends = backends.to_vec();
        self
    }

    /// How to compare two outputs (`true`: equal), instead of byte for byte: for example
    /// a tolerance of a few ULPs for floats, or NaN equal to NaN whatever its payload.
    #[must_use]
    pub fn compare(mut self, equal: impl Fn(&Out, &Out) -> bool + 'static) -> Self {
        self.compare = Some(Box::new(equal));
        self
    }

    /// How long each backend's drain may take (default 30 s): past it the kernel is
    /// terminated, and the report says its drain timed out and hands back what was left.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// CPU worker threads of each runtime (default 2).
    #[must_use]
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Fail instead of skipping a backend that is not available or that the spec has no
    /// implementation for.
    #[must_use]
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Runs the spec on each backend over `inputs` and compares them.
    ///
    /// Per backend: a fresh [`Runtime`] launches the spec alone and activates it; one
    /// thread sends `inputs` in order (blocking while the inbox is full) and then drains
    /// the kernel, while this thread receives every host-bound output until the kernel
    /// has stopped and everything was received. Then the runtime's dead letters are
    /// counted and the runtime shut down.
    ///
    /// # Errors
    /// A backend that fails to launch the spec for another reason than a missing
    /// implementation (for example [`Error::Compile`] for CUDA C or WGSL that does not
    /// compile); a kernel whose host output cannot be received (for example
    /// [`Error::NoHostOutput`]); with [`Conformance::strict`], a skipped backend
    /// ([`Error::BackendUnavailable`] or [`Error::NoImplementation`]).
    pub fn run(&self, inputs: &[In]) -> Result<ConformanceReport<In, Out>, Error> {
        let mut runs = Vec::new();
        let mut skipped = Vec::new();
        let mut kernel = String::new();
        for &backend in &self.backends {
            let spec = (self.make)();
            spec.name().clone_into(&mut kernel);
            let runtime = match Runtime::builder()
                .backend(backend)
                .workers(self.workers)
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) if !self.strict => {
                    skipped.push(Skipped {
                        backend,
                        reason: e.to_string(),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            match self.run_on(backend, &runtime, spec, inputs) {
                Ok(run) => runs.push(run),
                Err(e @ Error::NoImplementation { .. }) if !self.strict => {
                    skipped.push(Skipped {
                        backend,
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
            runtime.shutdown(self.timeout);
        }
        let differences = match runs.split_first() {
            Some((base, others)) => others
                .iter()
                .filter_map(|run| self.difference(base, run))
                .collect(),
            None => Vec::new(),
        };
        Ok(ConformanceReport {
            kernel,
            inputs: inputs.len(),
            runs,
            skipped,
            differences,
        })
    }

    /// The spec on `runtime`'s backend.
    fn run_on(
        &self,
        backend: Backend,
        runtime: &Runtime,
        spec: KernelSpec<In, Out>,
        inputs: &[In],
    ) -> Result<BackendRun<In, Out>, Error> {
        let kernel = runtime.launch(spec)?;
        kernel.activate()?;
        let feeder = kernel.clone();
        let timeout = self.timeout;
        // `In` is `Send` but need not be `Sync`: the feeder gets its own copy.
        let inputs = inputs.to_vec();
        let (outputs, stopped) = std::thread::scope(|scope| {
            let fed = scope.spawn(move || {
                let mut refused = Vec::new();
                for input in inputs {
                    if let Err(e) = feeder.send(input) {
                        refused.push(e.message);
                    }
                }
                (refused, feeder.drain(timeout))
            });
            // The drain returns within its timeout plus about a second and a half; then
            // every output left is receivable at once.
            let deadline = Instant::now() + timeout + Duration::from_secs(5);
            let mut outputs = Vec::new();
            let received = loop {
                match kernel.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(output) => outputs.push(output),
                    Err(
                        Error::Terminated { .. } | Error::Faulted { .. } | Error::Timeout { .. },
                    ) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            let stopped = fed.join().expect("the conformance feeder thread panicked");
            received.map(|()| (outputs, stopped))
        })?;
        let (refused, report) = stopped;
        let report = report?;
        let letters = runtime.take_dead_letters();
        Ok(BackendRun {
            backend,
            name: runtime.backend_name(),
            outputs,
            processed: report.processed,
            emitted: report.emitted,
            refused,
            undelivered: report.undelivered,
            undelivered_outputs: report.undelivered_outputs,
            dead_letters: letters.len(),
            fault: report.fault,
            timed_out: report.timed_out,
        })
    }

    /// The first way `run` differs from `base`.
    fn difference(
        &self,
        base: &BackendRun<In, Out>,
        run: &BackendRun<In, Out>,
    ) -> Option<Difference> {
        let differ = |what: &'static str, index: Option<usize>, a: String, b: String| {
            Some(Difference {
                a: base.name,
                b: run.name,
                what,
                index,
                value_a: a,
                value_b: b,
            })
        };
        let equal = |a: &Out, b: &Out| match &self.compare {
            Some(compare) => compare(a, b),
            None => bytemuck::bytes_of(a) == bytemuck::bytes_of(b),
        };
        for (i, (a, b)) in base.outputs.iter().zip(&run.outputs).enumerate() {
            if !equal(a, b) {
                return differ("output", Some(i), format!("{a:?}"), format!("{b:?}"));
            }
        }
        let (na, nb) = (base.outputs.len(), run.outputs.len());
        if na != nb {
            let extra = |outputs: &[Out]| {
                outputs
                    .get(na.min(nb))
                    .map_or_else(|| "nothing".to_owned(), |m| format!("{m:?}"))
            };
            return differ(
                "output",
                Some(na.min(nb)),
                extra(&base.outputs),
                extra(&run.outputs),
            );
        }
        let counts: [(&'static str, Count<In, Out>); 5] = [
            ("refused inputs", |r| r.refused.len()),
            ("undelivered inputs", |r| r.undelivered.len()),
            ("undelivered outputs", |r| r.undelivered_outputs.len()),
            ("dead letters", |r| r.dead_letters),
            ("processed inputs", |r| {
                usize::try_from(r.processed).unwrap_or(usize::MAX)
            }),
        ];
        for (what, count) in counts {
            let (a, b) = (count(base), count(run));
            if a != b {
                return differ(what, None, a.to_string(), b.to_string());
            }
        }
        if base.fault.is_some() != run.fault.is_some() {
            let fault = |f: &Option<String>| f.clone().unwrap_or_else(|| "no fault".to_owned());
            return differ("fault", None, fault(&base.fault), fault(&run.fault));
        }
        if base.timed_out != run.timed_out {
            return differ(
                "drain timed out",
                None,
                base.timed_out.to_string(),
                run.timed_out.to_string(),
            );
        }
        None
    }
}

/// What one backend did with the inputs.
#[derive(Clone, Debug)]
pub struct BackendRun<In, Out> {
    /// The backend asked for.
    pub backend: Backend,
    /// Its name, as [`Runtime::backend_name`] says it (`"cpu"`, `"cuda-emulated"`,
    /// `"wgpu-software"`, `"cuda"`, `"wgpu"`).
    pub name: &'static str,
    /// Host-bound outputs, in the order received. Every port bound to the host shares
    /// the kernel's one host output, so outputs of several ports are interleaved here as
    /// the kernel emitted them.
    pub outputs: Vec<Out>,
    /// Inputs the kernel processed.
    pub processed: u64,
    /// Messages the kernel emitted (to any port).
    pub emitted: u64,
    /// Inputs whose send failed (the kernel had faulted or stopped), in order.
    pub refused: Vec<In>,
    /// Inputs the drain handed back unprocessed, in order.
    pub undelivered: Vec<In>,
    /// Outputs the drain handed back (emits still waiting for room when it timed out).
    pub undelivered_outputs: Vec<Out>,
    /// Dead letters the kernel left: inputs its handler failed on, emits to a port bound
    /// to the dead letters.
    pub dead_letters: usize,
    /// Its fault, if it faulted.
    pub fault: Option<String>,
    /// Whether its drain timed out (it was then terminated).
    pub timed_out: bool,
}

/// A backend that was not run, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The backend.
    pub backend: Backend,
    /// Why: the error that building its runtime or launching the spec gave.
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.backend, self.reason)
    }
}

/// The first way one backend differs from the baseline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// The baseline backend (the first that ran).
    pub a: &'static str,
    /// The backend that differs from it.
    pub b: &'static str,
    /// What differs: `"output"` (a value, or one backend has fewer: `"nothing"`),
    /// `"refused inputs"`, `"undelivered inputs"`, `"undelivered outputs"`, `"dead
    /// letters"`, `"processed inputs"`, `"fault"` or `"drain timed out"`.
    pub what: &'static str,
    /// For an output: its index in the order received.
    pub index: Option<usize>,
    /// What `a` gave (an output's `Debug`, or a count).
    pub value_a: String,
    /// What `b` gave.
    pub value_b: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{} {i}", self.what)?,
            None => write!(f, "{}", self.what)?,
        }
        write!(
            f,
            ": {} gave {}, {} gave {}",
            self.a, self.value_a, self.b, self.value_b
        )
    }
}

/// What [`Conformance::run`] found.
#[derive(Clone, Debug)]
pub struct ConformanceReport<In, Out> {
    /// The kernel's name.
    pub kernel: String,
    /// How many inputs each backend was sent.
    pub inputs: usize,
    /// Per backend that ran, in the order run; the first is the baseline.
    pub runs: Vec<BackendRun<In, Out>>,
    /// Backends not run, and why.
    pub skipped: Vec<Skipped>,
    differences: Vec<Difference>,
}

impl<In, Out> ConformanceReport<In, Out> {
    /// The first difference found: backends are compared with the baseline in the order
    /// they ran, and within one the outputs first (in order), then the counts, the fault
    /// and the drain.
    pub fn first_difference(&self) -> Option<&Difference> {
        self.differences.first()
    }

    /// The first difference of each backend that differs from the baseline.
    pub fn differences(&self) -> &[Difference] {
        &self.differences
    }

    /// The run of the backend named `name` (as [`Runtime::backend_name`] says it).
    pub fn run(&self, name: &str) -> Option<&BackendRun<In, Out>> {
        self.runs.iter().find(|r| r.name == name)
    }

    /// The names of the backends that ran, baseline first.
    pub fn backends(&self) -> Vec<&'static str> {
        self.runs.iter().map(|r| r.name).collect()
    }
}

impl<In, Out> fmt::Display for ConformanceReport<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conformance of `{}` over {} inputs:",
            self.kernel, self.inputs
        )?;
        for run in &self.runs {
            write!(
                f,
                "\n  {}: {} outputs, {} processed, {} refused, {} undelivered, {} dead letters{}",
                run.name,
                run.outputs.len(),
                run.processed,
                run.refused.len(),
                run.undelivered.len() + run.undelivered_outputs.len(),
                run.dead_letters,
                run.fault
                    .as_ref()
                    .map_or_else(String::new, |f| format!(", faulted: {f}"))
            )?;
        }
        for skipped in &self.skipped {
            write!(f, "\n  skipped {skipped}")?;
        }
        if self.differences.is_empty() {
            write!(f, "\n  no difference")
        } else {
            for d in &self.differences {
                write!(f, "\n  differs: {d}")?;
            }
            Ok(())
        }
    }
}
