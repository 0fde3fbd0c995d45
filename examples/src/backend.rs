//! The `--backend` flag every example takes: the same topology and handler semantics on
//! every backend (the GPU handlers are in [`crate::device`]).

use gyre::{Backend, Error, Runtime};

/// The backends the examples run on, by the name `--backend` takes.
pub const NAMES: [(&str, Backend); 6] = [
    ("cpu", Backend::Cpu),
    ("auto", Backend::Auto),
    ("cuda", Backend::Cuda),
    ("cuda-emulated", Backend::CudaEmulated),
    ("wgpu", Backend::Wgpu),
    ("wgpu-software", Backend::WgpuSoftware),
];

/// The backend named by `--backend NAME` (or `--backend=NAME`) in `args`; the CPU when
/// the flag is absent. Other arguments are left for the example.
///
/// # Errors
/// A sentence naming the backends, for an unknown name or a flag without one.
pub fn from_args(args: &[String]) -> Result<Backend, String> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let name = if arg == "--backend" {
            iter.next().map(String::as_str)
        } else if let Some(name) = arg.strip_prefix("--backend=") {
            Some(name)
        } else {
            continue;
        };
        return match name.and_then(|n| NAMES.iter().find(|(known, _)| *known == n)) {
            Some(&(_, backend)) => Ok(backend),
            None => Err(format!(
                "--backend takes one of: {}",
                NAMES.map(|(n, _)| n).join(", ")
            )),
        };
    }
    Ok(Backend::Cpu)
}

/// The arguments that are not the `--backend` flag, in order.
pub fn other_args(args: &[String]) -> Vec<String> {
    let mut rest = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--backend" {
            iter.next();
        } else if !arg.starts_with("--backend=") {
            rest.push(arg.clone());
        }
    }
    rest
}

/// A runtime on `backend` (two CPU workers on a device backend, whose groups do not use
/// them).
///
/// # Errors
/// [`Error::BackendUnavailable`] saying what is missing.
pub fn runtime(backend: Backend) -> Result<Runtime, Error> {
    let mut builder = Runtime::builder().backend(backend);
    if backend != Backend::Cpu && backend != Backend::Auto {
        builder = builder.workers(2);
    }
    builder.build()
}
