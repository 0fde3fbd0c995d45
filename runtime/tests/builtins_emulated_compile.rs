//! `kernels/include/builtins.cuh` compiles for the host emulation: g++ (C++20, every
//! warning an error, no FP contraction) with `gyre_emu.h` force-included, over a
//! translation unit shaped like a generated group source (persistent.cuh, then
//! builtins.cuh, then a dispatch over the seven built-ins).
//!
//! Skipped, with a note on stderr, when g++ is not installed, except under
//! `cargo xtask ci` (which installs it), where that is a failure.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use gyre_runtime::builtins::Builtin;

#[path = "support/skip.rs"]
mod skip;

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/include")
}

/// Whether g++ runs; when it does not, the test is skipped (a failure under CI).
fn have_gxx() -> bool {
    let runs = Command::new("g++")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !runs {
        skip::skip("this g++ compile check", &"g++ is not installed");
    }
    runs
}

/// The built-ins in dispatch order, one of each.
fn all_builtins() -> [Builtin; 7] {
    [
        Builtin::Echo { bytes: 16 },
        Builtin::Affine { a: 2.0, b: 1.0 },
        Builtin::Filter { lo: 0.0, hi: 1.0 },
        Builtin::Window { size: 4 },
        Builtin::Histogram {
            bins: 4,
            lo: 0.0,
            hi: 1.0,
            every: 8,
        },
        Builtin::Scatter { ports: 2 },
        Builtin::Gather,
    ]
}

/// A group-like translation unit: the headers, then a dispatch whose cases call the
/// functions [`Builtin::cuda_function`] names.
fn translation_unit() -> String {
    let mut tu = String::from(
        "#include \"persistent.cuh\"\n\
         #include \"builtins.cuh\"\n\n\
         __device__ int gyre_dispatch(gyre_u32 handler, gyre_ctx *ctx, const void *msg,\n\
         \x20                            gyre_u32 bytes) {\n    switch (handler) {\n",
    );
    for (i, b) in all_builtins().iter().enumerate() {
        writeln!(
            tu,
            "    case {i}u:\n        return {}(ctx, msg, bytes);",
            b.cuda_function()
        )
        .unwrap();
    }
    tu.push_str("    default:\n        return GYRE_ERR_NO_HANDLER;\n    }\n}\n");
    tu
}

/// Runs g++ in syntax-only mode over `source`; returns its stderr on failure.
fn gxx_syntax(name: &str, source: &str) -> Result<(), String> {
    // One directory per call: the tests of this file run in parallel.
    let dir = std::env::temp_dir().join(format!(
        "gyre-builtins-compile-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, source).unwrap();
    let include = include_dir();
    let out = Command::new("g++")
        .args([
            "-std=c++20",
            "-fsyntax-only",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-ffp-contract=off",
            "-x",
            "c++",
            "-include",
        ])
        .arg(include.join("gyre_emu.h"))
        .arg("-I")
        .arg(&include)
        .arg(&file)
        .output()
        .expect("g++ runs");
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir(&dir);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn persistent_cuh_compiles_alone_without_warnings() {
    if !have_gxx() {
        return;
    }
    // The includer defines the dispatch (persistent.cuh declares it inline).
    let tu = "#include \"persistent.cuh\"\n\
              __device__ __forceinline__ int gyre_dispatch(gyre_u32, gyre_ctx *, const void *, \
              gyre_u32) { return GYRE_ERR_NO_HANDLER; }\n";
    if let Err(log) = gxx_syntax("persistent_only.cu", tu) {
        panic!("persistent.cuh does not compile cleanly under the emulation:\n{log}");
    }
}

#[test]
fn builtins_cuh_compiles_for_the_emulation() {
    if !have_gxx() {
        return;
    }
    let tu = translation_unit();
    if let Err(log) = gxx_syntax("builtins_group.cu", &tu) {
        panic!("builtins.cuh does not compile under the emulation:\n{log}\nsource:\n{tu}");
    }
}

#[test]
fn builtins_cuh_needs_persistent_cuh_first() {
    if !have_gxx() {
        return;
    }
    let log = gxx_syntax("builtins_alone.cu", "#include \"builtins.cuh\"\n")
        .expect_err("builtins.cuh alone must not compile");
    assert!(
        log.contains("include persistent.cuh before builtins.cuh"),
        "unexpected error:\n{log}"
    );
}

#[test]
fn every_builtin_function_is_defined_in_the_header() {
    let header = std::fs::read_to_string(include_dir().join("builtins.cuh")).unwrap();
    for b in all_builtins() {
        let definition = format!(
            "int {}(gyre_ctx *ctx, const void *msg, gyre_u32 bytes)",
            b.cuda_function()
        );
        assert!(
            header.contains(&definition),
            "builtins.cuh lacks `{definition}`"
        );
    }
}
