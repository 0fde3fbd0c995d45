//! Every CUDA source of gyre (the resident loop, the ring protocol, every built-in, and an
//! example user handler) compiled through the runtime's own NVRTC path for compute_80 and
//! compute_90, then assembled by ptxas for sm_80 and sm_90. Fails on any compile error and
//! on register spills to local memory in the group's entry point (the ring loop).
//!
//! Needs libnvrtc and ptxas: `cargo xtask setup` installs them from PyPI and `cargo xtask
//! ci` runs this with them (it sets `GYRE_CUDA_TOOLKIT`; with it set, a missing NVRTC is
//! a failure, not a skip).
#![cfg(feature = "cuda")]

use gyre_runtime::backend::cuda::codegen::{self, HandlerCode};
use gyre_runtime::backend::cuda::{nvrtc, probe, DeviceError};
use gyre_runtime::builtins::Builtin;

/// Whether NVRTC is here; panics when CI asked for it and it is not.
fn nvrtc_available() -> bool {
    match probe::load_nvrtc() {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var_os("GYRE_CUDA_TOOLKIT").is_none(),
                "GYRE_CUDA_TOOLKIT is set but NVRTC cannot be loaded: {e}"
            );
            eprintln!("SKIPPED (no NVRTC here; run `cargo xtask setup`): {e}");
            false
        }
    }
}

/// One of each built-in, in the order of [`codegen::BUILTIN_FUNCTIONS`].
fn every_builtin() -> [Builtin; 7] {
    [
        Builtin::Echo { bytes: 8 },
        Builtin::Affine { a: 1.0, b: 0.0 },
        Builtin::Filter { lo: 0.0, hi: 1.0 },
        Builtin::Window { size: 4 },
        Builtin::Histogram {
            bins: 4,
            lo: 0.0,
            hi: 1.0,
            every: 4,
        },
        Builtin::Scatter { ports: 2 },
        Builtin::Gather,
    ]
}

fn all_handlers() -> Vec<HandlerCode> {
    let mut handlers: Vec<HandlerCode> = every_builtin()
        .iter()
        .map(|b| HandlerCode::Builtin(b.cuda_function()))
        .collect();
    handlers.push(HandlerCode::Source {
        function: "moving_average".into(),
        source: gyre_kernels::EXAMPLE_MOVING_AVERAGE_CU.into(),
        file: "moving_average.cu".into(),
    });
    handlers
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_spills() {
    if !nvrtc_available() {
        return;
    }
    let source = codegen::group_source(&all_handlers(), 256);
    let headers = codegen::headers();
    for (arch, sm) in [("compute_80", "sm_80"), ("compute_90", "sm_90")] {
        let compiled = nvrtc::compile_ptx(&source, "group.cu", &headers, arch, &[])
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert!(
            compiled.ptx.contains(".entry gyre_group_main"),
            "{arch}: no entry point"
        );
        // The protocol's primitives are there, at both scopes.
        for op in [
            "ld.acquire.sys",
            "st.release.sys",
            "ld.acquire.gpu",
            "st.release.gpu",
        ] {
            assert!(
                compiled.ptx.contains(op),
                "{arch}: `{op}` missing from the PTX"
            );
        }
        // No read-modify-write at system scope: nothing atomic crosses PCIe (ABI rule 2).
        for line in compiled.ptx.lines() {
            assert!(
                !(line.contains("atom") && line.contains(".sys")),
                "{arch}: a system-scope atomic: {line}"
            );
        }
        let report = nvrtc::ptxas(&compiled.ptx, sm).unwrap_or_else(|e| panic!("ptxas {sm}: {e}"));
        let entry = report
            .entry("gyre_group_main")
            .unwrap_or_else(|| panic!("ptxas {sm} reported no gyre_group_main:\n{}", report.log));
        eprintln!(
            "{sm}: gyre_group_main uses {} registers, {} bytes of stack, spills {}/{} bytes",
            entry.registers,
            entry.stack_frame_bytes,
            entry.spill_store_bytes,
            entry.spill_load_bytes
        );
        assert_eq!(
            (entry.spill_store_bytes, entry.spill_load_bytes),
            (0, 0),
            "{sm}: the ring loop spills to local memory:\n{}",
            report.log
        );
    }
}

#[test]
fn a_broken_handler_fails_the_compile_with_its_line() {
    if !nvrtc_available() {
        return;
    }
    let broken = HandlerCode::Source {
        function: "broken".into(),
        source: "__device__ int broken(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {\n\
                 \x20   return gyre_emit(ctx, 0, msg 8);\n}\n"
            .into(),
        file: "broken.cu".into(),
    };
    let source = codegen::group_source(&[broken], 64);
    let err = nvrtc::compile_ptx(&source, "group.cu", &codegen::headers(), "compute_80", &[])
        .expect_err("a syntax error must fail the compile");
    match err {
        DeviceError::Compile { compiler, log } => {
            assert!(compiler.starts_with("NVRTC"), "{compiler}");
            assert!(
                log.contains("broken.cu(2)"),
                "the log must name the line:\n{log}"
            );
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn the_builtins_module_dispatches_every_builtin_in_canonical_order() {
    let names: Vec<&str> = every_builtin().iter().map(Builtin::cuda_function).collect();
    assert_eq!(names, codegen::BUILTIN_FUNCTIONS);
    let source = codegen::builtins_source();
    for (case, function) in codegen::BUILTIN_FUNCTIONS.iter().enumerate() {
        assert!(
            source.contains(&format!("case {case}u: return {function}(")),
            "case {case} is not {function}"
        );
    }
    // Any block size a group may ask for launches it.
    assert!(source.contains("__launch_bounds__(256, 1)"));
}

#[test]
fn the_builtins_module_compiles_through_nvrtc() {
    if !nvrtc_available() {
        return;
    }
    let source = codegen::builtins_source();
    let headers = codegen::headers();
    for arch in ["compute_80", "compute_90"] {
        let compiled = nvrtc::compile_ptx(&source, "gyre_builtins.cu", &headers, arch, &[])
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert!(
            compiled.ptx.contains(".entry gyre_group_main"),
            "{arch}: no entry point"
        );
    }
}
