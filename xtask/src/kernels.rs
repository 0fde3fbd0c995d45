//! `cargo xtask kernels`: compiles the built-ins module ahead of time with `nvcc`, for
//! the `gyre-kernels` crate to embed (its `build.rs`).
//!
//! 1. the source: the runtime's `codegen::builtins_source()`, written by the
//!    `write_builtins_source` example of `gyre-runtime` into [`DIR`]`/builtins.cu`, with
//!    the headers it includes copied next to it from `kernels/include`;
//! 2. `nvcc -cubin` for each of [`CUBIN_ARCHS`] and `nvcc -ptx` for [`PTX_ARCH`];
//! 3. last, [`HASH_FILE`]: the [`source_hash`] of the headers and `builtins.cu`.
//!    `kernels/build.rs` embeds the images only when that hash matches the current
//!    headers, so images built from other headers are never embedded.
//!
//! Without `nvcc` it says so and succeeds: the runtime then compiles the built-ins
//! through NVRTC at run time.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::cuda::Toolkit;

/// Where the images go, relative to the workspace root (unless `GYRE_PREBUILT_DIR` says
/// otherwise); where `kernels/build.rs` looks for them.
pub const DIR: &str = "target/gyre-kernels";

/// The variable that overrides [`DIR`] (for `kernels/build.rs` too).
pub const DIR_VAR: &str = "GYRE_PREBUILT_DIR";

/// The real architectures a cubin is built for.
pub const CUBIN_ARCHS: [&str; 4] = ["sm_80", "sm_86", "sm_89", "sm_90"];

/// The virtual architecture the PTX is built for.
pub const PTX_ARCH: &str = "compute_90";

/// The generated source, in [`DIR`].
pub const SOURCE_FILE: &str = "builtins.cu";

/// The hash of the sources the images were built from, in [`DIR`]; written last.
pub const HASH_FILE: &str = "builtins.source-hash";

/// What [`build`] did.
#[derive(Debug)]
pub enum Built {
    /// No `nvcc` here: nothing was built.
    NoNvcc(PathBuf),
    /// The images were built in `dir`; `timings` holds each `nvcc` run's file and time.
    Images {
        /// Where they are.
        dir: PathBuf,
        /// (output file, seconds of its `nvcc` run).
        timings: Vec<(String, Duration)>,
        /// Wall time of all the `nvcc` runs (they run in parallel).
        nvcc_wall: Duration,
    },
}

/// The directory the images go to: `$GYRE_PREBUILT_DIR`, else `root/`[`DIR`].
pub fn output_dir(root: &Path) -> PathBuf {
    env::var_os(DIR_VAR)
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| root.join(DIR), PathBuf::from)
}

/// FNV-1a, 64 bits, continuing from `hash` (start from [`FNV_OFFSET`]). The same
/// function as in `kernels/build.rs`.
pub fn fnv1a64(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The FNV-1a 64 offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The hash of named files, in the given order: per file its name, a 0 byte, its length
/// (u64, little endian) and its bytes, through [`fnv1a64`]. The same function as in
/// `kernels/build.rs`, which hashes the headers sorted by name, then `builtins.cu`.
pub fn source_hash(files: &[(String, Vec<u8>)]) -> u64 {
    let mut hash = FNV_OFFSET;
    for (name, bytes) in files {
        hash = fnv1a64(hash, name.as_bytes());
        hash = fnv1a64(hash, &[0]);
        hash = fnv1a64(hash, &(bytes.len() as u64).to_le_bytes());
        hash = fnv1a64(hash, bytes);
    }
    hash
}

/// The headers the built-ins module includes, from `kernels/include`, sorted by name:
/// `*.cuh` and `gyre_abi.h` (name, contents).
fn headers(root: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let include = root.join("kernels").join("include");
    let mut names: Vec<String> = fs::read_dir(&include)
        .map_err(|e| format!("cannot list {}: {e}", include.display()))?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| {
            Path::new(name)
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("cuh"))
                || name == "gyre_abi.h"
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let path = include.join(&name);
            fs::read(&path)
                .map(|bytes| (name, bytes))
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        })
        .collect()
}

/// The `nvcc` to use: `$GYRE_NVCC` when set, else the toolkit's.
fn nvcc_path(toolkit: &Toolkit) -> PathBuf {
    env::var_os("GYRE_NVCC")
        .filter(|nvcc| !nvcc.is_empty())
        .map_or_else(|| toolkit.nvcc(), PathBuf::from)
}

/// Builds the images into [`output_dir`] (see the module docs).
///
/// # Errors
/// When the source cannot be generated, a file cannot be written, or `nvcc` fails (its
/// output is in the message).
pub fn build(root: &Path) -> Result<Built, String> {
    let toolkit = Toolkit::default_location()?;
    let nvcc = nvcc_path(&toolkit);
    if !nvcc.is_file() {
        return Ok(Built::NoNvcc(nvcc));
    }
    let dir = output_dir(root);
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // The hash goes first and comes back last: a run that fails leaves no images the
    // build would embed.
    for file in std::iter::once(HASH_FILE.to_owned()).chain(image_files()) {
        let path = dir.join(file);
        if path.exists() {
            fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
    }

    let source = dir.join(SOURCE_FILE);
    let status = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args([
            "run",
            "--quiet",
            "-p",
            "gyre-runtime",
            "--features",
            "cuda",
            "--example",
            "write_builtins_source",
            "--",
        ])
        .arg(&source)
        .current_dir(root)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("generating {} failed ({status})", source.display()));
    }
    let mut files = headers(root)?;
    for (name, bytes) in &files {
        let path = dir.join(name);
        fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let generated =
        fs::read(&source).map_err(|e| format!("cannot read {}: {e}", source.display()))?;
    files.push((SOURCE_FILE.to_owned(), generated));

    let start = Instant::now();
    let timings = run_nvcc(&nvcc, &toolkit.env(), &dir)?;
    let nvcc_wall = start.elapsed();

    let hash = dir.join(HASH_FILE);
    fs::write(&hash, format!("{:016x}\n", source_hash(&files)))
        .map_err(|e| format!("cannot write {}: {e}", hash.display()))?;
    Ok(Built::Images {
        dir,
        timings,
        nvcc_wall,
    })
}

/// The `nvcc` arguments of every image: (output file, arguments), run in the directory
/// holding [`SOURCE_FILE`] and its headers.
fn nvcc_jobs() -> Vec<(String, Vec<String>)> {
    CUBIN_ARCHS
        .iter()
        .map(|arch| ("-cubin", *arch))
        .chain(std::iter::once(("-ptx", PTX_ARCH)))
        .map(|(kind, arch)| {
            let output = image_file(arch);
            let args = [
                kind,
                &format!("-arch={arch}"),
                "-std=c++17",
                "-I",
                ".",
                "-o",
                &output,
                SOURCE_FILE,
            ]
            .map(str::to_owned)
            .to_vec();
            (output, args)
        })
        .collect()
}

/// Runs every job of [`nvcc_jobs`] in `dir`, in parallel; each output file with the time
/// its `nvcc` took.
fn run_nvcc(
    nvcc: &Path,
    env: &[(String, String)],
    dir: &Path,
) -> Result<Vec<(String, Duration)>, String> {
    let jobs = nvcc_jobs();
    let results: Vec<Result<(String, Duration), String>> = thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(output, args)| {
                scope.spawn(move || {
                    let begin = Instant::now();
                    let out = Command::new(nvcc)
                        .args(args)
                        .envs(env.iter().map(|(k, v)| (k, v)))
                        .current_dir(dir)
                        .output()
                        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
                    if out.status.success() {
                        Ok((output.clone(), begin.elapsed()))
                    } else {
                        Err(format!(
                            "`nvcc {}` failed ({}):\n{}{}",
                            args.join(" "),
                            out.status,
                            String::from_utf8_lossy(&out.stdout),
                            String::from_utf8_lossy(&out.stderr)
                        ))
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err("an nvcc thread panicked".to_owned()))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// `builtins.ARCH.cubin` or `builtins.ARCH.ptx`.
fn image_file(arch: &str) -> String {
    if arch.starts_with("compute_") {
        format!("builtins.{arch}.ptx")
    } else {
        format!("builtins.{arch}.cubin")
    }
}

/// Every image file [`build`] writes.
fn image_files() -> impl Iterator<Item = String> {
    CUBIN_ARCHS
        .iter()
        .chain(std::iter::once(&PTX_ARCH))
        .map(|arch| image_file(arch))
}

/// `cargo xtask kernels`: [`build`], saying what it did.
///
/// # Errors
/// See [`build`].
pub fn kernels(root: &Path) -> Result<(), String> {
    match build(root)? {
        Built::NoNvcc(nvcc) => println!(
            "kernels: no nvcc ({} not found; `cargo xtask setup` installs it): nothing \
             prebuilt, the runtime compiles the CUDA built-ins with NVRTC at run time",
            nvcc.display()
        ),
        Built::Images {
            dir,
            timings,
            nvcc_wall,
        } => {
            for (file, time) in &timings {
                println!("kernels: {file} in {time:.1?}");
            }
            println!(
                "kernels: {} images in {} ({nvcc_wall:.1?} of nvcc); the next build of \
                 gyre-kernels embeds them",
                timings.len(),
                dir.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_source_hash_is_stable_and_separates_files() {
        let files = |a: &str, b: &str| {
            vec![
                ("a.cuh".to_owned(), a.as_bytes().to_vec()),
                ("builtins.cu".to_owned(), b.as_bytes().to_vec()),
            ]
        };
        let hash = source_hash(&files("int x;", "int y;"));
        assert_eq!(hash, source_hash(&files("int x;", "int y;")));
        assert_eq!(hash, 0xe427_5a42_7b34_4831, "{hash:#018x}");
        // Moving bytes from one file to the next changes the hash.
        assert_ne!(hash, source_hash(&files("int x;int", " y;")));
        assert_eq!(source_hash(&[]), FNV_OFFSET);
    }

    #[test]
    fn image_names_follow_the_architecture() {
        let names: Vec<String> = image_files().collect();
        assert_eq!(
            names,
            [
                "builtins.sm_80.cubin",
                "builtins.sm_86.cubin",
                "builtins.sm_89.cubin",
                "builtins.sm_90.cubin",
                "builtins.compute_90.ptx"
            ]
        );
    }
}
