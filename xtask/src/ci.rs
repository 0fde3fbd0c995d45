//! `cargo xtask setup` and `cargo xtask ci`: install what the tests need, then run
//! every check CI runs, in order, stopping at the first failure.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cuda::{self, Toolkit};

/// One step of a pipeline: a name and the command it runs.
pub(crate) struct Step {
    pub(crate) name: String,
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
}

/// What a step did, output included (see [`Step::run_captured`]).
pub(crate) struct Outcome {
    pub(crate) name: String,
    pub(crate) command: String,
    /// `Ok(())` on success, else why it failed (exit status or could not start).
    pub(crate) result: Result<(), String>,
    pub(crate) duration: Duration,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Step {
    pub(crate) fn new(name: impl Into<String>, program: impl Into<String>, args: &[&str]) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: args.iter().map(|&arg| arg.to_owned()).collect(),
            env: Vec::new(),
        }
    }

    pub(crate) fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub(crate) fn envs(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(vars);
        self
    }

    /// `program arg arg ...`, as printed and reported.
    pub(crate) fn command_line(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self, root: &Path) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(root);
        command
    }

    pub(crate) fn run(&self, root: &Path) -> Result<(), String> {
        let start = Instant::now();
        println!("==> {} ({})", self.name, self.command_line());
        let status = self
            .command(root)
            .status()
            .map_err(|e| format!("{}: could not start `{}`: {e}", self.name, self.program))?;
        println!(
            "<== {} {} in {:.1?}",
            self.name,
            if status.success() { "ok" } else { "FAILED" },
            start.elapsed()
        );
        if status.success() {
            Ok(())
        } else {
            Err(format!("step `{}` failed ({status})", self.name))
        }
    }

    /// Runs the step like [`run`](Self::run), its output shown as it comes and also
    /// kept, and never stops at a failure: the outcome says what happened.
    pub(crate) fn run_captured(&self, root: &Path) -> Outcome {
        let start = Instant::now();
        println!("==> {} ({})", self.name, self.command_line());
        let spawned = self
            .command(root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let (result, stdout, stderr) = match spawned {
            Err(e) => (
                Err(format!("could not start `{}`: {e}", self.program)),
                String::new(),
                String::new(),
            ),
            Ok(mut child) => {
                let out = child.stdout.take().map(|pipe| tee(pipe, false));
                let err = child.stderr.take().map(|pipe| tee(pipe, true));
                let status = child.wait();
                let collect = |handle: Option<thread::JoinHandle<Vec<u8>>>| {
                    handle
                        .and_then(|h| h.join().ok())
                        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                        .unwrap_or_default()
                };
                let (stdout, stderr) = (collect(out), collect(err));
                let result = match status {
                    Ok(status) if status.success() => Ok(()),
                    Ok(status) => Err(format!("exited with {status}")),
                    Err(e) => Err(format!("could not wait for `{}`: {e}", self.program)),
                };
                (result, stdout, stderr)
            }
        };
        let duration = start.elapsed();
        println!(
            "<== {} {} in {duration:.1?}",
            self.name,
            if result.is_ok() { "ok" } else { "FAILED" },
        );
        Outcome {
            name: self.name.clone(),
            command: self.command_line(),
            result,
            duration,
            stdout,
            stderr,
        }
    }
}

/// Copies `pipe` to this process's stdout (or stderr) as it comes, and returns all of
/// it when the pipe closes.
fn tee(mut pipe: impl Read + Send + 'static, to_stderr: bool) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buffer = [0u8; 8192];
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    kept.extend_from_slice(&buffer[..n]);
                    // Showing the output is best effort; keeping it is what matters.
                    let _ = if to_stderr {
                        std::io::stderr().write_all(&buffer[..n])
                    } else {
                        std::io::stdout().write_all(&buffer[..n])
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        kept
    })
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs what the tests need when it is missing: the rustfmt and clippy
/// components, a C/C++ compiler (the ABI header test compiles `gyre_abi.h`; `nvcc`
/// uses `g++` as its host compiler), the Vulkan loader and Mesa's software Vulkan
/// driver (lavapipe: the wgpu tests run on it; see `setup_vulkan`), Chromium (the
/// dashboard's browser test drives it headless; see `setup_chromium`), and the CUDA
/// compilers from PyPI (see [`cuda`]; no GPU needed).
///
/// # Errors
/// A message naming what could not be installed.
pub fn setup(root: &Path) -> Result<(), String> {
    setup_with_toolkit(root).map(|_| ())
}

/// [`setup`], returning the CUDA toolkit it found or installed.
///
/// # Errors
/// A message naming what could not be installed.
pub fn setup_with_toolkit(root: &Path) -> Result<Toolkit, String> {
    if !have("rustfmt", "--version") {
        Step::new(
            "install rustfmt",
            "rustup",
            &["component", "add", "rustfmt"],
        )
        .run(root)?;
    }
    if !Command::new("cargo")
        .args(["clippy", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        Step::new("install clippy", "rustup", &["component", "add", "clippy"]).run(root)?;
    }
    if !have("cc", "--version") || !have("c++", "--version") {
        Step::new("apt-get update", "apt-get", &["update", "-q"]).run(root)?;
        Step::new(
            "install gcc and g++",
            "apt-get",
            &["install", "-y", "-q", "gcc", "g++"],
        )
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run(root)?;
    }
    setup_vulkan(root)?;
    setup_chromium(root)?;
    let toolkit = setup_cuda(root)?;
    println!("setup: everything the tests need is installed");
    Ok(toolkit)
}

/// Where Vulkan drivers install their ICD manifests on Debian.
const VULKAN_ICD_DIR: &str = "/usr/share/vulkan/icd.d";

/// The ICD manifests of Mesa's software Vulkan driver (lavapipe) in `dir`:
/// `lvp_icd.<arch>.json`.
fn lavapipe_manifests(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_prefix("lvp_icd."))
                .and_then(|rest| rest.strip_suffix(".json"))
                .is_some_and(|arch| !arch.is_empty())
        })
        .collect();
    found.sort();
    found
}

/// Where the dynamic linker finds the Vulkan loader (`libvulkan.so.1`), from
/// `ldconfig -p`; `None` when it is not installed (or `ldconfig` cannot be run).
fn vulkan_loader() -> Option<String> {
    ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .iter()
        .find_map(|program| {
            let output = Command::new(program).arg("-p").output().ok()?;
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
        })
        .and_then(|cache| find_in_ld_cache(&cache, "libvulkan.so.1"))
}

/// The path `ldconfig -p` lists for `library`, if any. Its lines read
/// `\tlibvulkan.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libvulkan.so.1`.
fn find_in_ld_cache(cache: &str, library: &str) -> Option<String> {
    cache.lines().find_map(|line| {
        let (name, path) = line.trim().split_once(" => ")?;
        (name.split_whitespace().next() == Some(library)).then(|| path.trim().to_owned())
    })
}

/// Installs the Vulkan loader (`libvulkan1`) and Mesa's software Vulkan driver
/// (`mesa-vulkan-drivers`, lavapipe) when missing, so the wgpu tests have an adapter
/// on a machine without a GPU, and says what it found.
fn setup_vulkan(root: &Path) -> Result<(), String> {
    let icd_dir = Path::new(VULKAN_ICD_DIR);
    let mut missing = Vec::new();
    if let Some(path) = vulkan_loader() {
        println!("vulkan: loader {path}");
    } else {
        println!("vulkan: no Vulkan loader (libvulkan.so.1)");
        missing.push("libvulkan1");
    }
    let manifests = lavapipe_manifests(icd_dir);
    if manifests.is_empty() {
        println!("vulkan: no lavapipe driver ({VULKAN_ICD_DIR}/lvp_icd.*.json)");
        missing.push("mesa-vulkan-drivers");
    } else {
        for manifest in &manifests {
            println!("vulkan: lavapipe {}", manifest.display());
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Step::new("apt-get update", "apt-get", &["update", "-q"]).run(root)?;
    let args: Vec<&str> = ["install", "-y", "-q"]
        .into_iter()
        .chain(missing.iter().copied())
        .collect();
    Step::new(
        format!("install {}", missing.join(" and ")),
        "apt-get",
        &args,
    )
    .env("DEBIAN_FRONTEND", "noninteractive")
    .run(root)?;
    let loader = vulkan_loader().ok_or("vulkan: libvulkan.so.1 is still missing after install")?;
    let manifests = lavapipe_manifests(icd_dir);
    if manifests.is_empty() {
        return Err(format!(
            "vulkan: no {VULKAN_ICD_DIR}/lvp_icd.*.json after installing mesa-vulkan-drivers"
        ));
    }
    println!(
        "vulkan: loader {loader}, lavapipe {}",
        manifests[0].display()
    );
    Ok(())
}

/// Installs Debian's `chromium` when missing: the dashboard's browser test
/// (`host-api/tests/dashboard_browser.rs`) loads the page in it, headless.
fn setup_chromium(root: &Path) -> Result<(), String> {
    if have("chromium", "--version") {
        println!("chromium: installed");
        return Ok(());
    }
    println!("chromium: not installed");
    Step::new("apt-get update", "apt-get", &["update", "-q"]).run(root)?;
    Step::new(
        "install chromium",
        "apt-get",
        &["install", "-y", "-q", "chromium"],
    )
    .env("DEBIAN_FRONTEND", "noninteractive")
    .run(root)?;
    if !have("chromium", "--version") {
        return Err("chromium: `chromium --version` still fails after installing chromium".into());
    }
    println!("chromium: installed");
    Ok(())
}

/// Installs the CUDA compilers into [`cuda::default_dir`] when missing (pip first,
/// when there is none), checks them, and says whether `nvcc` builds cubins here.
fn setup_cuda(root: &Path) -> Result<Toolkit, String> {
    let toolkit = Toolkit::default_location()?;
    if !toolkit.is_complete() && !cuda::have_pip() {
        Step::new("apt-get update", "apt-get", &["update", "-q"]).run(root)?;
        Step::new(
            "install pip",
            "apt-get",
            &["install", "-y", "-q", "python3-pip"],
        )
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run(root)?;
    }
    toolkit.install()?;
    let version = toolkit.verify()?;
    println!(
        "cuda: {version}; ptxas {}, NVRTC {}",
        toolkit.ptxas().display(),
        toolkit.nvrtc_lib().display()
    );
    match toolkit.nvcc_cubin_check(&root.join("target").join("xtask-cuda-probe")) {
        Ok(()) => println!(
            "cuda: nvcc builds sm_80 cubins ({})",
            toolkit.nvcc().display()
        ),
        // Not fatal: the runtime compiles through NVRTC; nvcc is optional.
        Err(error) => println!("cuda: warning: nvcc cannot build cubins here: {error}"),
    }
    Ok(toolkit)
}

/// The name of the CI step that compiles the built-ins ahead of time (`cargo xtask
/// kernels`).
pub const KERNELS_STEP: &str = "prebuilt CUDA kernels (nvcc)";

/// The name of the CI step that runs every test of every crate with every feature: the
/// CPU backend, the CUDA backend without a GPU (kernels compiled through NVRTC and
/// ptxas, the CUDA ring code run on the host), the wgpu backend on Mesa's software
/// Vulkan, the `http` endpoint, the Zenoh bridge on all three.
pub const TESTS_STEP: &str =
    "tests (every crate, every feature: CPU, CUDA emulated, wgpu on lavapipe, http, Zenoh)";

/// The variables a wgpu test needs to run on Mesa's software Vulkan (lavapipe).
fn wgpu_env() -> Vec<(String, String)> {
    [
        ("WGPU_BACKEND", "vulkan".to_owned()),
        // The tests may use a software adapter, and fail (not skip) without one.
        ("GYRE_WGPU_ALLOW_SOFTWARE", "1".to_owned()),
        // Mesa's Vulkan loader complains on every device open without one.
        (
            "XDG_RUNTIME_DIR",
            std::env::temp_dir().to_string_lossy().into_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Where cargo puts what it builds for this workspace: `CARGO_TARGET_DIR` when set
/// (relative to `root` when relative), `root/target` otherwise.
fn target_dir(root: &Path) -> std::path::PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// The examples CI runs (step name, example name); each finishes in seconds.
const EXAMPLES: [(&str, &str); 7] = [
    ("example quickstart", "quickstart"),
    ("example pipeline", "pipeline"),
    ("example fan_out", "fan_out"),
    ("example scatter_gather", "scatter_gather"),
    ("example request_reply", "request_reply"),
    ("example coordinator_worker", "coordinator_worker"),
    ("example bsp", "bsp"),
];

/// Runs setup, then every check, in the order CI runs them.
///
/// # Errors
/// The first step that failed.
pub fn ci(root: &Path) -> Result<(), String> {
    let start = Instant::now();
    let toolkit = setup_with_toolkit(root)?;
    let steps = ci_steps(&toolkit, &target_dir(root));
    for step in &steps {
        step.run(root)?;
    }
    println!(
        "ci: all {} steps passed in {:.0?}",
        steps.len() + 1,
        start.elapsed()
    );
    Ok(())
}

/// Set on every CI step: a test whose subject needs a tool (g++, an adapter, the
/// prebuilt images) fails, instead of skipping, when the tool is missing
/// (`runtime/tests/support/skip.rs`).
pub const CI_VAR: &str = "GYRE_CI";

/// The checks `ci` runs after setup, in order, each with [`CI_VAR`] set; `target`: the
/// workspace's target directory (the examples run from there).
fn ci_steps(toolkit: &Toolkit, target: &Path) -> Vec<Step> {
    checks(toolkit, target)
        .into_iter()
        // No incremental caches: a clean checkout builds once, and they took 2.4 GiB.
        .map(|step| step.env(CI_VAR, "1").env("CARGO_INCREMENTAL", "0"))
        .collect()
}

#[allow(clippy::too_many_lines)] // one entry per CI step, in order
fn checks(toolkit: &Toolkit, target: &Path) -> Vec<Step> {
    // One build of the tests serves every backend: the CPU, the CUDA emulation and wgpu
    // run in one `cargo test` with every feature, and the examples it builds run from
    // the target directory (a `cargo run` with other features would build them again).
    // Every step that builds gets the same variables, so no build script reruns.
    let device_env: Vec<(String, String)> = toolkit.env().into_iter().chain(wgpu_env()).collect();
    [
        Step::new("format", "cargo", &["fmt", "--all", "--", "--check"]),
        Step::new(
            "generated ABI files are fresh",
            "cargo",
            &["run", "--quiet", "-p", "xtask", "--", "abi", "--check"],
        ),
        Step::new(
            "clippy",
            "cargo",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ],
        ),
        // Rustdoc of every crate with every feature: broken or private links fail.
        Step::new(
            "docs",
            "cargo",
            &["doc", "--no-deps", "--workspace", "--all-features"],
        )
        .env("RUSTDOCFLAGS", "-D warnings"),
        // The built-ins compiled ahead of time (about 5 s of nvcc), so the tests build
        // gyre-kernels with the images embedded.
        Step::new(
            KERNELS_STEP,
            "cargo",
            &["run", "--quiet", "-p", "xtask", "--", "kernels"],
        )
        .envs(toolkit.env()),
        // Unit, integration and doc tests of every crate with every feature; the
        // examples are built (benches are not run here).
        Step::new(
            TESTS_STEP,
            "cargo",
            &["test", "--workspace", "--all-features"],
        )
        .envs(device_env.clone()),
        // The CUDA benchmark harness, one short round on the emulated device (a smoke
        // test of the harness; its numbers are not GPU numbers and are not kept).
        Step::new(
            "cuda benchmark harness (emulated, smoke)",
            "cargo",
            &[
                "run",
                "--release",
                "-p",
                "gyre-bench",
                "--features",
                "cuda,wgpu",
                "--bin",
                "gyre-bench-cuda",
                "--",
                "--emulated",
                "--rounds",
                "1",
            ],
        )
        .envs(device_env.clone()),
        // The wgpu benchmark harness, one quick run on lavapipe (a smoke test: it checks
        // every output; the README's numbers come from full runs).
        Step::new(
            "wgpu benchmark harness (lavapipe, smoke)",
            "cargo",
            &[
                "run",
                "--release",
                "-p",
                "gyre-bench",
                "--features",
                "cuda,wgpu",
                "--bin",
                "gyre-bench-wgpu",
                "--",
                "--quick",
            ],
        )
        .envs(device_env.clone()),
    ]
    .into_iter()
    .chain(EXAMPLES.iter().map(|&(step, example)| {
        let binary = target.join("debug").join("examples").join(example);
        // Built with every feature: the default backend's probe opens Mesa's Vulkan
        // loader, which complains on stderr without a runtime directory.
        Step::new(step, binary.to_string_lossy().into_owned(), &[]).env(
            "XDG_RUNTIME_DIR",
            std::env::temp_dir().to_string_lossy().into_owned(),
        )
    }))
    .chain([Step::new(
        "loom models",
        "cargo",
        &[
            "test",
            "--release",
            "-p",
            "gyre-runtime",
            "--test",
            "loom_ring",
            "--test",
            "loom_control",
            "--target-dir",
            "target/loom",
        ],
    )
    .env("RUSTFLAGS", "--cfg loom")
    .env("LOOM_MAX_PREEMPTIONS", "3")])
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_test_step_runs_every_backend_after_the_prebuilt_kernels() {
        let toolkit = Toolkit::at("/t");
        let steps = ci_steps(&toolkit, Path::new("/w/target"));
        let names: Vec<&str> = steps.iter().map(|step| step.name.as_str()).collect();
        let tests = names.iter().position(|&n| n == TESTS_STEP).unwrap();
        assert_eq!(
            steps[tests].command_line(),
            "cargo test --workspace --all-features"
        );
        for key in ["GYRE_PTXAS", "GYRE_NVRTC_LIB", "LD_LIBRARY_PATH", "PATH"] {
            assert!(
                steps[tests].env.iter().any(|(k, _)| k == key),
                "{key} not set"
            );
        }
        for (key, value) in [
            ("WGPU_BACKEND", "vulkan"),
            ("GYRE_WGPU_ALLOW_SOFTWARE", "1"),
        ] {
            assert!(
                steps[tests].env.iter().any(|(k, v)| k == key && v == value),
                "{key}={value} not set"
            );
        }
        assert_eq!(names[tests - 1], KERNELS_STEP);
        assert_eq!(
            steps[tests - 1].command_line(),
            "cargo run --quiet -p xtask -- kernels"
        );
        assert!(
            !steps
                .iter()
                .any(|step| step.args.iter().any(|a| a == "--features")
                    && step.args.first().is_some_and(|a| a == "test")),
            "a second test build with other features"
        );
        let clippy = steps.iter().find(|step| step.name == "clippy").unwrap();
        assert!(clippy.args.iter().any(|arg| arg == "--all-features"));
    }

    #[test]
    fn the_harnesses_share_one_release_build_and_the_examples_run_from_the_tests_build() {
        let steps = ci_steps(&Toolkit::at("/t"), Path::new("/w/target"));
        let harnesses: Vec<&Step> = steps
            .iter()
            .filter(|step| {
                step.args.iter().any(|a| a == "--release")
                    && step.args.iter().any(|a| a == "gyre-bench")
            })
            .collect();
        assert_eq!(harnesses.len(), 2);
        for harness in &harnesses {
            assert!(harness.command_line().contains("--features cuda,wgpu"));
            assert_eq!(harness.env, harnesses[0].env, "same variables, same build");
        }
        let quickstart = steps
            .iter()
            .find(|step| step.name == "example quickstart")
            .unwrap();
        assert_eq!(quickstart.program, "/w/target/debug/examples/quickstart");
        assert!(quickstart.args.is_empty());
    }

    #[test]
    fn every_step_turns_skips_into_failures() {
        for step in ci_steps(&Toolkit::at("/t"), Path::new("target")) {
            assert!(
                step.env.iter().any(|(k, v)| k == CI_VAR && v == "1"),
                "step `{}` lacks {CI_VAR}=1",
                step.name
            );
        }
    }

    #[test]
    fn the_vulkan_loader_is_found_in_the_ld_cache() {
        let cache = "1234 libs found in cache `/etc/ld.so.cache'\n\
                     \tlibvulkan.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libvulkan.so.1\n\
                     \tlibvulkan.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libvulkan.so\n";
        assert_eq!(
            find_in_ld_cache(cache, "libvulkan.so.1").as_deref(),
            Some("/lib/x86_64-linux-gnu/libvulkan.so.1")
        );
        assert_eq!(find_in_ld_cache(cache, "libcuda.so.1"), None);
    }

    #[test]
    fn lavapipe_manifests_are_found_by_name() {
        let dir = std::env::temp_dir().join(format!("gyre-xtask-icd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "lvp_icd.x86_64.json",
            "radeon_icd.x86_64.json",
            "lvp_icd..json",
        ] {
            std::fs::write(dir.join(name), "{}").unwrap();
        }
        let found = lavapipe_manifests(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, [dir.join("lvp_icd.x86_64.json")]);
        assert!(lavapipe_manifests(&dir).is_empty());
    }

    #[test]
    fn captured_steps_keep_output_and_failure() {
        let step =
            Step::new("probe", "sh", &["-c", "echo out; echo err >&2; exit 3"]).env("PROBE", "1");
        let outcome = step.run_captured(&std::env::temp_dir());
        assert_eq!(outcome.stdout, "out\n");
        assert_eq!(outcome.stderr, "err\n");
        assert!(outcome.result.unwrap_err().contains('3'));
        let ok = Step::new("probe", "sh", &["-c", "test \"$PROBE\" = 1"])
            .env("PROBE", "1")
            .run_captured(&std::env::temp_dir());
        assert!(ok.result.is_ok());
        let missing =
            Step::new("probe", "/nonexistent/program", &[]).run_captured(&std::env::temp_dir());
        assert!(missing.result.unwrap_err().contains("could not start"));
    }
}
