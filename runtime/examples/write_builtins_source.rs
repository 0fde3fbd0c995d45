//! Writes the CUDA C of the built-ins module (`codegen::builtins_source()`) to the path
//! given as the only argument. `cargo xtask kernels` runs it, then compiles that file
//! with `nvcc` for the images the `gyre-kernels` crate embeds.
//!
//! ```text
//! cargo run -p gyre-runtime --features cuda --example write_builtins_source -- OUT.cu
//! ```

use std::process::ExitCode;

use gyre_runtime::backend::cuda::codegen;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path] = args.as_slice() else {
        eprintln!("usage: write_builtins_source OUT.cu");
        return ExitCode::FAILURE;
    };
    match std::fs::write(path, codegen::builtins_source()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cannot write {path}: {error}");
            ExitCode::FAILURE
        }
    }
}
