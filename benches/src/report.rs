//! Where a benchmark binary's report goes: its text (everything it prints to stdout,
//! through [`say!`](crate::say)) and an SVG of its per-round values
//! ([`plot::Chart`](crate::plot::Chart)), written side by side when the run ends.
//!
//! The directory is `$GYRE_BENCH_REPORT_DIR` when that is set, else `bench-reports/` in
//! the Cargo target directory the binary was built into (`target/bench-reports/` for
//! `cargo run --release`; `$CARGO_TARGET_DIR/bench-reports/` when that is set): never the
//! source tree. The files are `<bin>.txt` and `<bin>.svg`; [`write()`] says where on
//! stderr, so stdout (whose last line some binaries promise is a `RESULT` line) stays as
//! it was.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use indicatif::ProgressBar;

use crate::plot::{render_svg, Chart};

/// Environment variable naming the directory reports are written to.
pub const DIR_VAR: &str = "GYRE_BENCH_REPORT_DIR";

/// Everything printed through [`say_line`] so far: the text report.
static TEXT: Mutex<String> = Mutex::new(String::new());
/// The progress bar drawn on stderr while the run goes on, if any: lines printed
/// through [`say_line`] suspend it so the two do not mix on a terminal.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Prints a line to stdout, as `println!` does, and keeps it for the text report
/// ([`write()`]). Use it through [`say!`](crate::say).
pub fn say_line(args: fmt::Arguments<'_>) {
    let line = args.to_string();
    let bar = ACTIVE_BAR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    match bar {
        Some(bar) if !bar.is_hidden() => bar.suspend(|| println!("{line}")),
        _ => println!("{line}"),
    }
    let mut text = TEXT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    text.push_str(&line);
    text.push('\n');
}

/// `println!` that also keeps the line for the text report ([`report::write`](write())).
#[macro_export]
macro_rules! say {
    () => {
        $crate::report::say_line(::std::format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::report::say_line(::std::format_args!($($arg)*))
    };
}

/// The text printed through [`say_line`] so far.
pub fn text() -> String {
    TEXT.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Makes `bar` the one [`say_line`] suspends while it prints (`None`: no bar).
pub(crate) fn set_active_bar(bar: Option<ProgressBar>) {
    *ACTIVE_BAR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = bar;
}

/// The directory reports go to: `$GYRE_BENCH_REPORT_DIR`, else `bench-reports` in the
/// target directory this binary was built into (the parent of its profile directory).
///
/// # Errors
/// When neither the variable nor the binary's own path says where.
pub fn dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(DIR_VAR).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(|e| {
        format!("cannot find this program's path to put its report beside it ({e}); set {DIR_VAR}")
    })?;
    target_dir_of(&exe)
        .map(|t| t.join("bench-reports"))
        .ok_or_else(|| {
            format!(
                "{} is not in a Cargo target directory (target/<profile>/); set {DIR_VAR} to \
             say where reports go",
                exe.display()
            )
        })
}

/// The Cargo target directory of a binary at `exe`: `<target>/<profile>/<bin>` (or
/// `<target>/<profile>/deps/<bin>` for tests and benches) gives `<target>`.
fn target_dir_of(exe: &Path) -> Option<PathBuf> {
    let mut profile = exe.parent()?;
    if profile.file_name()? == "deps" || profile.file_name()? == "examples" {
        profile = profile.parent()?;
    }
    profile.parent().map(Path::to_path_buf)
}

/// The paths of one binary's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The text report: everything printed through [`say!`](crate::say).
    pub text: PathBuf,
    /// The plot.
    pub svg: PathBuf,
}

/// Writes `bin`'s text report (everything said so far) and `chart` as `<bin>.txt` and
/// `<bin>.svg` in [`dir`], and says where on stderr.
///
/// # Errors
/// When the directory cannot be made, a file cannot be written, or the plot cannot be
/// drawn.
pub fn write(bin: &str, chart: &Chart) -> Result<Written, String> {
    let dir = dir()?;
    let written = write_in(&dir, bin, &text(), chart)?;
    eprintln!(
        "{bin}: report written to {} and {}",
        written.text.display(),
        written.svg.display()
    );
    Ok(written)
}

/// [`write()`] into `dir`, with `text` as the text report; says nothing.
///
/// # Errors
/// As [`write()`].
pub fn write_in(dir: &Path, bin: &str, text: &str, chart: &Chart) -> Result<Written, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the report directory {}: {e}", dir.display()))?;
    let written = Written {
        text: dir.join(format!("{bin}.txt")),
        svg: dir.join(format!("{bin}.svg")),
    };
    let svg = render_svg(chart)?;
    for (path, contents) in [(&written.text, text), (&written.svg, svg.as_str())] {
        std::fs::write(path, contents)
            .map_err(|e| format!("cannot write the report {}: {e}", path.display()))?;
    }
    Ok(written)
}

/// One line naming this machine for a plot's caption: the CPU model (from
/// `/proc/cpuinfo` where there is one) and how many CPUs this process may use.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    format!("{model}, {cpus} CPUs ({})", std::env::consts::OS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_dir_is_above_the_profile_dir() {
        assert_eq!(
            target_dir_of(Path::new("/w/target/release/gyre-bench")),
            Some(PathBuf::from("/w/target"))
        );
        assert_eq!(
            target_dir_of(Path::new("/w/target/debug/deps/gyre_bench-0123")),
            Some(PathBuf::from("/w/target"))
        );
    }

    #[test]
    fn write_in_puts_both_files_in_the_directory() {
        let dir = std::env::temp_dir().join(format!("gyre-bench-report-{}", std::process::id()));
        let chart = crate::plot::tests::sample_chart();
        let written = write_in(&dir, "sample", "line one\nline two\n", &chart).unwrap();
        assert_eq!(written.text, dir.join("sample.txt"));
        assert_eq!(
            std::fs::read_to_string(&written.text).unwrap(),
            "line one\nline two\n"
        );
        assert!(std::fs::read_to_string(&written.svg)
            .unwrap()
            .contains("</svg>"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
