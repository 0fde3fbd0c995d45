//! `cargo xtask setup` and `cargo xtask ci`: install what the tests need, then run
//! every check CI runs, in order, stopping at the first failure.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// One step of a pipeline: a name and the command it runs.
struct Step {
    name: &'static str,
    program: &'static str,
    args: Vec<&'static str>,
    env: Vec<(&'static str, &'static str)>,
}

impl Step {
    fn new(name: &'static str, program: &'static str, args: &[&'static str]) -> Self {
        Self {
            name,
            program,
            args: args.to_vec(),
            env: Vec::new(),
        }
    }

    fn env(mut self, key: &'static str, value: &'static str) -> Self {
        self.env.push((key, value));
        self
    }

    fn run(&self, root: &Path) -> Result<(), String> {
        let start = Instant::now();
        println!(
            "==> {} ({} {})",
            self.name,
            self.program,
            self.args.join(" ")
        );
        let status = Command::new(self.program)
            .args(&self.args)
            .envs(self.env.iter().copied())
            .current_dir(root)
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
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs what the tests need when it is missing: the rustfmt and clippy
/// components and a C/C++ compiler (the ABI header test compiles `gyre_abi.h`).
///
/// # Errors
/// A message naming what could not be installed.
pub fn setup(root: &Path) -> Result<(), String> {
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
    println!("setup: everything the tests need is installed");
    Ok(())
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
    setup(root)?;
    let steps: Vec<Step> = [
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
        // Unit, integration and doc tests; examples are built (benches are not run here).
        Step::new("tests", "cargo", &["test", "--workspace"]),
        Step::new(
            "tests of the http feature",
            "cargo",
            &[
                "test",
                "-p",
                "gyre",
                "--features",
                "http",
                "--test",
                "http_metrics",
            ],
        ),
    ]
    .into_iter()
    .chain(EXAMPLES.iter().map(|&(step, example)| {
        Step::new(
            step,
            "cargo",
            &[
                "run",
                "--quiet",
                "-p",
                "gyre-examples",
                "--example",
                example,
            ],
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
    .collect();
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
