//! `cargo xtask gpu-validate`: on a machine with an NVIDIA GPU, run the GPU-only tests
//! and the CUDA benchmarks, and write what happened to [`REPORT`].
//!
//! 1. a driver must be there (`nvidia-smi` runs, or `ldconfig -p` knows `libcuda.so.1`);
//! 2. the CUDA compilers are found or installed, as `cargo xtask setup` does;
//! 3. the built-ins are compiled ahead of time with `nvcc` (`cargo xtask kernels`), so
//!    the GPU tests load those images;
//! 4. the device is recorded (`nvidia-smi --query-gpu=...`);
//! 5. with the toolkit's environment, every step of `steps` runs, each to the end
//!    even when an earlier one failed;
//! 6. the report (date, commit, device, and per step: command, result, duration, full
//!    stdout and stderr) is written whatever happened, and its path printed.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ci::{self, Outcome, Step};

/// Where the report goes, relative to the workspace root.
pub const REPORT: &str = "target/gpu-validate/report.md";

/// Set for every step: a GPU test may read it to fail, rather than skip, when it
/// finds no usable device.
pub const REQUIRE_GPU_VAR: &str = "GYRE_REQUIRE_GPU";

/// The GPU steps, in order: the GPU-only tests (each `#[ignore]`d elsewhere), the
/// CUDA benchmarks, then the cross-backend conformance suite on the GPU. `env` is the
/// toolkit's environment.
pub(crate) fn steps(env: &[(String, String)]) -> Vec<Step> {
    [
        Step::new(
            "GPU-only tests",
            "cargo",
            &[
                "test",
                "--release",
                "-p",
                "gyre-runtime",
                "--features",
                "cuda",
                "--test",
                "cuda_gpu",
                "--",
                "--ignored",
                "--test-threads=1",
            ],
        ),
        Step::new(
            "CUDA benchmarks",
            "cargo",
            &[
                "run",
                "--release",
                "-p",
                "gyre-bench",
                "--features",
                "cuda",
                "--bin",
                "gyre-bench-cuda",
            ],
        ),
        Step::new(
            "GPU conformance",
            "cargo",
            &[
                "test",
                "--release",
                "-p",
                "gyre",
                "--features",
                "cuda",
                "--test",
                "conformance",
                "--",
                "--ignored",
            ],
        ),
    ]
    .into_iter()
    .map(|step| step.envs(env.iter().cloned()).env(REQUIRE_GPU_VAR, "1"))
    .collect()
}

/// Runs the validation and writes the report.
///
/// # Errors
/// When a step failed, or the report could not be written; the message names the
/// report when there is one.
pub fn gpu_validate(root: &Path) -> Result<PathBuf, String> {
    let mut report = Report {
        date: utc_timestamp(SystemTime::now()),
        commit: commit(root),
        ..Report::default()
    };
    let passed = validate(root, &mut report);
    let path = root.join(REPORT);
    let written = path
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|()| fs::write(&path, render(&report)));
    match (written, passed) {
        (Err(e), _) => Err(format!("cannot write {}: {e}", path.display())),
        (Ok(()), true) => {
            println!("gpu-validate: all steps passed; report: {}", path.display());
            Ok(path)
        }
        (Ok(()), false) => Err(match &report.aborted {
            Some(reason) => format!("{reason}; report: {}", path.display()),
            None => format!("{}; report: {}", report.verdict(), path.display()),
        }),
    }
}

/// Fills `report`; whether everything passed.
fn validate(root: &Path, report: &mut Report) -> bool {
    match find_driver() {
        Ok(driver) => report.preflight.push(format!("driver: {driver}")),
        Err(error) => {
            report.preflight.push(format!("driver: FAILED: {error}"));
            report.aborted = Some(error);
            return false;
        }
    }
    let toolkit = match ci::setup_with_toolkit(root) {
        Ok(toolkit) => toolkit,
        Err(error) => {
            let error = format!("the CUDA compilers could not be set up: {error}");
            report.preflight.push(format!("toolkit: FAILED: {error}"));
            report.aborted = Some(error);
            return false;
        }
    };
    report.preflight.push(format!(
        "toolkit: {} ({})",
        toolkit.dir().display(),
        toolkit
            .verify()
            .unwrap_or_else(|e| format!("verify failed: {e}"))
    ));
    if let Some(rustc) = first_line("rustc", &["--version"], root) {
        report.preflight.push(format!("rustc: {rustc}"));
    }
    // The built-ins prebuilt with nvcc, so the GPU runs load them rather than NVRTC's.
    // Not fatal: without them the runtime compiles through NVRTC.
    report.preflight.push(match crate::kernels::build(root) {
        Ok(crate::kernels::Built::Images { dir, nvcc_wall, .. }) => format!(
            "prebuilt kernels: built in {} ({nvcc_wall:.1?} of nvcc)",
            dir.display()
        ),
        Ok(crate::kernels::Built::NoNvcc(nvcc)) => format!(
            "prebuilt kernels: none ({} not found; the built-ins compile through NVRTC)",
            nvcc.display()
        ),
        Err(error) => {
            format!("prebuilt kernels: FAILED (the built-ins compile through NVRTC): {error}")
        }
    });
    report.device = device_info();
    println!("gpu-validate: device\n{}", report.device);
    let env = toolkit.env();
    report.env_keys = env.iter().map(|(key, _)| key.clone()).collect();
    report.env_keys.push(REQUIRE_GPU_VAR.to_owned());
    for step in steps(&env) {
        report.outcomes.push(step.run_captured(root));
    }
    report.outcomes.iter().all(|outcome| outcome.result.is_ok())
}

/// Whether an NVIDIA driver is installed: `nvidia-smi` runs, or else `ldconfig -p`
/// lists `libcuda.so.1`.
fn find_driver() -> Result<String, String> {
    if Command::new("nvidia-smi")
        .output()
        .is_ok_and(|out| out.status.success())
    {
        return Ok("nvidia-smi runs".to_owned());
    }
    let listed = ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .iter()
        .find_map(|program| Command::new(program).arg("-p").output().ok())
        .filter(|out| out.status.success())
        .is_some_and(|out| String::from_utf8_lossy(&out.stdout).contains("libcuda.so.1"));
    if listed {
        return Ok("libcuda.so.1 found by `ldconfig -p` (nvidia-smi did not run)".to_owned());
    }
    Err(
        "no NVIDIA driver found: `nvidia-smi` does not run and `ldconfig -p` lists no \
         libcuda.so.1. gpu-validate needs a machine with an NVIDIA GPU and its driver \
         installed; without one, `cargo xtask ci` runs every CUDA check that needs no GPU"
            .to_owned(),
    )
}

/// `nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv`,
/// or why it is not available.
fn device_info() -> String {
    let args = [
        "--query-gpu=name,driver_version,compute_cap,memory.total",
        "--format=csv",
    ];
    match Command::new("nvidia-smi").args(args).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => format!(
            "`nvidia-smi {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("nvidia-smi not available: {e}"),
    }
}

/// `git rev-parse HEAD`, marked when the working tree has uncommitted changes.
fn commit(root: &Path) -> String {
    let Some(head) = first_line("git", &["rev-parse", "HEAD"], root) else {
        return "unknown (git rev-parse HEAD failed)".to_owned();
    };
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(root)
        .output()
        .is_ok_and(|out| out.status.success() && !out.stdout.is_empty());
    if dirty {
        format!("{head} (with uncommitted changes)")
    } else {
        head
    }
}

fn first_line(program: &str, args: &[&str], root: &Path) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(root)
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    })
}

/// Everything the report says.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) date: String,
    pub(crate) commit: String,
    /// Driver, toolkit and compiler lines.
    pub(crate) preflight: Vec<String>,
    /// Why nothing ran, when a preflight check failed.
    pub(crate) aborted: Option<String>,
    pub(crate) device: String,
    /// The variables set for every step (their names).
    pub(crate) env_keys: Vec<String>,
    pub(crate) outcomes: Vec<Outcome>,
}

impl Report {
    fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.result.is_err()).count()
    }

    /// One line: PASS, or what failed.
    fn verdict(&self) -> String {
        if self.aborted.is_some() {
            "FAIL: nothing ran (see below)".to_owned()
        } else if self.failed() == 0 {
            format!(
                "PASS ({} of {} steps)",
                self.outcomes.len(),
                self.outcomes.len()
            )
        } else {
            format!(
                "FAIL ({} of {} steps failed)",
                self.failed(),
                self.outcomes.len()
            )
        }
    }
}

/// The report as Markdown.
pub(crate) fn render(report: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# gyre GPU validation\n");
    let _ = writeln!(md, "- date: {}", report.date);
    let _ = writeln!(md, "- commit: {}", report.commit);
    let _ = writeln!(md, "- result: {}", report.verdict());
    for line in &report.preflight {
        let _ = writeln!(md, "- {line}");
    }
    if !report.env_keys.is_empty() {
        let _ = writeln!(
            md,
            "- environment of every step: {}",
            report.env_keys.join(", ")
        );
    }
    let _ = writeln!(md, "\n## Device\n");
    if report.device.is_empty() {
        let _ = writeln!(md, "not queried\n");
    } else {
        let _ = writeln!(md, "{}", fenced(&report.device));
    }
    if report.outcomes.is_empty() {
        return md;
    }
    let _ = writeln!(md, "## Steps\n");
    let _ = writeln!(md, "| step | result | duration |");
    let _ = writeln!(md, "| --- | --- | --- |");
    for outcome in &report.outcomes {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            outcome.name,
            result_word(outcome),
            seconds(outcome.duration)
        );
    }
    for (index, outcome) in report.outcomes.iter().enumerate() {
        let _ = writeln!(md, "\n### {}. {}\n", index + 1, outcome.name);
        let _ = writeln!(md, "- command: `{}`", outcome.command);
        let _ = match &outcome.result {
            Ok(()) => writeln!(md, "- result: pass"),
            Err(why) => writeln!(md, "- result: FAIL ({why})"),
        };
        let _ = writeln!(md, "- duration: {}\n", seconds(outcome.duration));
        for (what, text) in [("stdout", &outcome.stdout), ("stderr", &outcome.stderr)] {
            if text.trim().is_empty() {
                let _ = writeln!(md, "{what}: (empty)\n");
            } else {
                let _ = writeln!(md, "{what}:\n\n{}", fenced(text));
            }
        }
    }
    md
}

fn result_word(outcome: &Outcome) -> &'static str {
    if outcome.result.is_ok() {
        "pass"
    } else {
        "FAIL"
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// `text` in a code fence longer than any run of backticks inside it.
pub(crate) fn fenced(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}text\n{}\n{fence}\n", text.trim_end())
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc_timestamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::Toolkit;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |secs: u64| utc_timestamp(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(1_709_210_096), "2024-02-29 12:34:56 UTC");
        assert_eq!(at(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn fences_outlast_backticks_in_the_text() {
        assert_eq!(fenced("plain\n"), "```text\nplain\n```\n");
        assert_eq!(fenced("a ```` b"), "`````text\na ```` b\n`````\n");
    }

    #[test]
    fn steps_run_the_gpu_tests_then_the_benchmarks_with_the_toolkit() {
        let env = Toolkit::at("/t").env_over(None, None);
        let steps = steps(&env);
        assert_eq!(
            steps[0].command_line(),
            "cargo test --release -p gyre-runtime --features cuda --test cuda_gpu -- \
             --ignored --test-threads=1"
        );
        assert_eq!(
            steps[1].command_line(),
            "cargo run --release -p gyre-bench --features cuda --bin gyre-bench-cuda"
        );
        assert_eq!(
            steps[2].command_line(),
            "cargo test --release -p gyre --features cuda --test conformance -- --ignored"
        );
        for step in &steps {
            assert!(step
                .env
                .iter()
                .any(|(k, v)| k == "GYRE_PTXAS" && v.ends_with("ptxas")));
            assert!(step
                .env
                .iter()
                .any(|(k, v)| k == REQUIRE_GPU_VAR && v == "1"));
        }
    }

    #[test]
    fn the_report_has_every_step_with_its_output() {
        let outcome = |name: &str, result, stdout: &str| Outcome {
            name: name.to_owned(),
            command: format!("cargo {name}"),
            result,
            duration: Duration::from_millis(1500),
            stdout: stdout.to_owned(),
            stderr: String::new(),
        };
        let report = Report {
            date: "2030-01-01 00:00:00 UTC".to_owned(),
            commit: "abc123".to_owned(),
            preflight: vec!["driver: nvidia-smi runs".to_owned()],
            device: "name, compute_cap\nNVIDIA H100, 9.0".to_owned(),
            env_keys: vec!["GYRE_PTXAS".to_owned()],
            outcomes: vec![
                outcome("tests", Ok(()), "test result: ok. 3 passed"),
                outcome("bench", Err("exited with exit status: 101".to_owned()), ""),
            ],
            ..Report::default()
        };
        let md = render(&report);
        for needle in [
            "- date: 2030-01-01 00:00:00 UTC",
            "- commit: abc123",
            "- result: FAIL (1 of 2 steps failed)",
            "NVIDIA H100, 9.0",
            "| tests | pass | 1.5 s |",
            "| bench | FAIL | 1.5 s |",
            "- command: `cargo tests`",
            "test result: ok. 3 passed",
            "- result: FAIL (exited with exit status: 101)",
            "stdout: (empty)",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
    }

    #[test]
    fn an_aborted_run_says_why() {
        let report = Report {
            aborted: Some("no NVIDIA driver found".to_owned()),
            preflight: vec!["driver: FAILED: no NVIDIA driver found".to_owned()],
            ..Report::default()
        };
        let md = render(&report);
        assert!(md.contains("- result: FAIL: nothing ran"));
        assert!(md.contains("- driver: FAILED: no NVIDIA driver found"));
        assert!(md.contains("not queried"));
    }
}
