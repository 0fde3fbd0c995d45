//! `cargo xtask SUBCOMMAND`: see [`usage`] for the list.

use std::env;
use std::process::ExitCode;

use xtask::abigen::{self, Freshness};
use xtask::workspace_root;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("abi") => abi(&args[2..]),
        Some("setup") => report("setup", xtask::ci::setup(&workspace_root())),
        Some("kernels") => report("kernels", xtask::kernels::kernels(&workspace_root())),
        Some("ci") => report("ci", xtask::ci::ci(&workspace_root())),
        Some("gpu-validate") => report(
            "gpu-validate",
            xtask::gpu::gpu_validate(&workspace_root()).map(|_| ()),
        ),
        Some("help" | "-h" | "--help") => {
            println!("{}", usage());
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("unknown subcommand `{other}`\n\n{}", usage());
            ExitCode::FAILURE
        }
        None => {
            eprintln!("{}", usage());
            ExitCode::FAILURE
        }
    }
}

/// The help text.
fn usage() -> &'static str {
    "usage: cargo xtask <SUBCOMMAND>

subcommands:
  abi            regenerate kernels/include/gyre_abi.h and shaders/gyre_abi.wgsl
                 from runtime/src/abi.rs
  abi --check    fail if those files differ from what the generator produces
  setup          install what the tests need (compilers, rustup components, the
                 CUDA compilers from PyPI into ~/.cache/gyre, Mesa's lavapipe and
                 Chromium; no GPU needed)
  kernels        compile the CUDA built-ins ahead of time with nvcc (cubins for
                 sm_80/86/89/90 and compute_90 PTX, into target/gyre-kernels) for
                 gyre-kernels to embed; without nvcc, says NVRTC will be used at run time
  ci             setup, then format, ABI freshness, clippy, docs, prebuilt CUDA
                 kernels (nvcc), every test with every feature in one build (CPU, CUDA
                 via NVRTC + ptxas on the emulation, wgpu on lavapipe, the dashboard in
                 headless Chromium, Zenoh), harness smoke runs, examples, loom
  gpu-validate   on a machine with an NVIDIA GPU and driver: setup, then the GPU-only
                 tests and the CUDA benchmarks (the built-ins prebuilt with nvcc
                 first); writes target/gpu-validate/report.md
  help           print this text"
}

fn report(what: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask {what}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask abi [--check]`.
fn abi(args: &[String]) -> ExitCode {
    let root = workspace_root();
    match args {
        [] => match abigen::write(&root) {
            Ok(results) => {
                for (path, written) in results {
                    let what = if written { "wrote" } else { "unchanged" };
                    println!("{what} {}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("xtask abi: {error}");
                ExitCode::FAILURE
            }
        },
        [flag] if flag == "--check" => match abigen::check(&root) {
            Ok(results) => {
                let mut fresh = true;
                for (path, freshness) in results {
                    match freshness {
                        Freshness::Fresh => println!("up to date: {}", path.display()),
                        Freshness::Stale => {
                            fresh = false;
                            eprintln!(
                                "stale: {} differs from runtime/src/abi.rs; run `cargo xtask abi`",
                                path.display()
                            );
                        }
                        Freshness::Missing => {
                            fresh = false;
                            eprintln!("missing: {}; run `cargo xtask abi`", path.display());
                        }
                    }
                }
                if fresh {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(error) => {
                eprintln!("xtask abi --check: {error}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("xtask abi: unexpected arguments {args:?}\n\n{}", usage());
            ExitCode::FAILURE
        }
    }
}
