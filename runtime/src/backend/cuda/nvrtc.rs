//! Compiling CUDA C to PTX at run time with NVRTC, and reading `ptxas` resource reports.
//!
//! [`compile_ptx`] needs only `libnvrtc` (no GPU, no driver): the group module is built
//! from the generated translation unit plus the headers it includes, passed by name and
//! content so nothing is read from disk. [`ptxas`] runs the toolkit's assembler on the
//! result to report registers, spills and stack per entry point (for tests and
//! `cargo xtask`; the driver reports the same for the module it loads).

use std::ffi::{c_char, c_int, CStr, CString};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::nvrtc::sys::{self, nvrtcProgram, nvrtcResult};

use super::device::DeviceError;
use super::probe;

/// The result of a successful compilation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPtx {
    /// The PTX text (no trailing NUL).
    pub ptx: String,
    /// NVRTC's log: warnings, usually empty.
    pub log: String,
}

/// Compiles `source` (called `name` in diagnostics) to PTX for the virtual architecture
/// `arch` (`"compute_80"`).
///
/// `headers` are `(include name, content)` pairs: `#include "ring.cuh"` resolves to the
/// pair named `ring.cuh` without touching the file system. The options are
/// `--gpu-architecture=<arch> --std=c++17 -default-device -lineinfo` followed by
/// `extra_options`.
///
/// # Errors
/// - [`DeviceError::Unavailable`] when NVRTC cannot be loaded ([`probe::load_nvrtc`]).
/// - [`DeviceError::Compile`] when the source does not compile (or an option is
///   rejected); `log` is NVRTC's log verbatim, whose lines read
///   `name(line): error: ...`.
pub fn compile_ptx(
    source: &str,
    name: &str,
    headers: &[(&str, &str)],
    arch: &str,
    extra_options: &[&str],
) -> Result<CompiledPtx, DeviceError> {
    let version = probe::load_nvrtc()?;
    let compiler = format!("NVRTC {version}");
    let invalid = |what: &str| DeviceError::Compile {
        compiler: compiler.clone(),
        log: format!("{what} contains a NUL byte"),
    };

    let c_source = CString::new(source).map_err(|_| invalid("the source"))?;
    let c_name = CString::new(name).map_err(|_| invalid("the source name"))?;
    let mut header_names = Vec::with_capacity(headers.len());
    let mut header_contents = Vec::with_capacity(headers.len());
    for (header_name, content) in headers {
        header_names.push(CString::new(*header_name).map_err(|_| invalid("a header name"))?);
        header_contents
            .push(CString::new(*content).map_err(|_| invalid(&format!("header `{header_name}`")))?);
    }
    let name_ptrs: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();
    let content_ptrs: Vec<*const c_char> = header_contents.iter().map(|s| s.as_ptr()).collect();
    let header_count =
        c_int::try_from(headers.len()).map_err(|_| invalid_count(&compiler, "headers"))?;

    let mut options = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_owned(),
        "-default-device".to_owned(),
        "-lineinfo".to_owned(),
    ];
    options.extend(extra_options.iter().map(|option| (*option).to_owned()));
    let c_options = options
        .into_iter()
        .map(CString::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| invalid("an option"))?;
    let option_ptrs: Vec<*const c_char> = c_options.iter().map(|s| s.as_ptr()).collect();
    let option_count =
        c_int::try_from(option_ptrs.len()).map_err(|_| invalid_count(&compiler, "options"))?;

    let mut raw: nvrtcProgram = ptr::null_mut();
    // SAFETY: NVRTC is loaded (probe above). `raw` is valid for one write; the source and
    // name are NUL-terminated and live until the call returns (NVRTC copies them); the two
    // header arrays hold `header_count` valid NUL-terminated strings each (or are empty,
    // in which case NVRTC does not read them).
    let status = unsafe {
        sys::nvrtcCreateProgram(
            &raw mut raw,
            c_source.as_ptr(),
            c_name.as_ptr(),
            header_count,
            if headers.is_empty() {
                ptr::null()
            } else {
                content_ptrs.as_ptr()
            },
            if headers.is_empty() {
                ptr::null()
            } else {
                name_ptrs.as_ptr()
            },
        )
    };
    if status != nvrtcResult::NVRTC_SUCCESS {
        return Err(DeviceError::Compile {
            compiler,
            log: format!("nvrtcCreateProgram failed: {}", describe(status)),
        });
    }
    let program = Program(raw);

    // SAFETY: `program` is a live program; the options array holds `option_count` valid
    // NUL-terminated strings that outlive the call.
    let status = unsafe { sys::nvrtcCompileProgram(program.0, option_count, option_ptrs.as_ptr()) };
    let log = program.log();
    if status != nvrtcResult::NVRTC_SUCCESS {
        let log = match (status, log) {
            (nvrtcResult::NVRTC_ERROR_COMPILATION, Some(log)) => log,
            (_, Some(log)) if !log.trim().is_empty() => {
                format!("{}\n{log}", describe(status))
            }
            _ => describe(status),
        };
        return Err(DeviceError::Compile { compiler, log });
    }
    let ptx = program.ptx().map_err(|status| DeviceError::Compile {
        compiler: compiler.clone(),
        log: format!("nvrtcGetPTX failed: {}", describe(status)),
    })?;
    Ok(CompiledPtx {
        ptx,
        log: log.unwrap_or_default(),
    })
}

fn invalid_count(compiler: &str, what: &str) -> DeviceError {
    DeviceError::Compile {
        compiler: compiler.to_owned(),
        log: format!("too many {what}"),
    }
}

/// `"NVRTC_ERROR_X (description)"`. Only called once NVRTC is loaded.
fn describe(status: nvrtcResult) -> String {
    // SAFETY: NVRTC is loaded; nvrtcGetErrorString returns a static NUL-terminated string
    // (or null for an unknown code, handled).
    let text = unsafe { sys::nvrtcGetErrorString(status) };
    if text.is_null() {
        format!("{status:?}")
    } else {
        // SAFETY: non-null, static and NUL-terminated (above).
        let text = unsafe { CStr::from_ptr(text) };
        format!("{status:?} ({})", text.to_string_lossy())
    }
}

/// An NVRTC program, destroyed on drop.
struct Program(nvrtcProgram);

impl Program {
    /// The compilation log, if NVRTC gave one.
    fn log(&self) -> Option<String> {
        let mut size = 0usize;
        // SAFETY: live program; `size` is valid for one write.
        let status = unsafe { sys::nvrtcGetProgramLogSize(self.0, &raw mut size) };
        if status != nvrtcResult::NVRTC_SUCCESS {
            return None;
        }
        let mut buffer = vec![0u8; size.max(1)];
        // SAFETY: live program; the buffer holds the `size` bytes NVRTC said it writes.
        let status = unsafe { sys::nvrtcGetProgramLog(self.0, buffer.as_mut_ptr().cast()) };
        (status == nvrtcResult::NVRTC_SUCCESS).then(|| until_nul(buffer))
    }

    /// The PTX of a compiled program.
    fn ptx(&self) -> Result<String, nvrtcResult> {
        let mut size = 0usize;
        // SAFETY: live program; `size` is valid for one write.
        let status = unsafe { sys::nvrtcGetPTXSize(self.0, &raw mut size) };
        if status != nvrtcResult::NVRTC_SUCCESS {
            return Err(status);
        }
        let mut buffer = vec![0u8; size.max(1)];
        // SAFETY: live, compiled program; the buffer holds the `size` bytes NVRTC writes.
        let status = unsafe { sys::nvrtcGetPTX(self.0, buffer.as_mut_ptr().cast()) };
        if status != nvrtcResult::NVRTC_SUCCESS {
            return Err(status);
        }
        Ok(until_nul(buffer))
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program is live and destroyed only here; NVRTC nulls the handle.
        let status = unsafe { sys::nvrtcDestroyProgram(&raw mut self.0) };
        if status != nvrtcResult::NVRTC_SUCCESS {
            tracing::warn!("nvrtcDestroyProgram failed: {status:?}");
        }
    }
}

/// The text before the first NUL, lossily decoded.
fn until_nul(mut buffer: Vec<u8>) -> String {
    if let Some(end) = buffer.iter().position(|&byte| byte == 0) {
        buffer.truncate(end);
    }
    String::from_utf8(buffer)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

/// Resource use of one entry function, as `ptxas -v` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PtxasEntry {
    /// The entry function's (mangled) name.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of spill stores per thread.
    pub spill_store_bytes: u32,
    /// Bytes of spill loads per thread.
    pub spill_load_bytes: u32,
    /// Bytes of stack frame (local memory) per thread.
    pub stack_frame_bytes: u32,
}

/// What `ptxas -v` said about a PTX module.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PtxasReport {
    /// One record per entry function, in the order ptxas reported them.
    pub entries: Vec<PtxasEntry>,
    /// ptxas's whole `-v` output.
    pub log: String,
}

impl PtxasReport {
    /// The record of the entry function `name`.
    pub fn entry(&self, name: &str) -> Option<&PtxasEntry> {
        self.entries.iter().find(|entry| entry.name == name)
    }
}

/// Assembles `ptx` for the real architecture `sm` (`"sm_80"`) with `ptxas -v` and parses
/// its per-entry resource report.
///
/// Runs `$GYRE_PTXAS` when set, else `ptxas` from `PATH`; the output is discarded.
///
/// # Errors
/// A message when ptxas cannot be run, rejects the PTX (its output is included), or
/// reports no entry function.
pub fn ptxas(ptx: &str, sm: &str) -> Result<PtxasReport, String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let program = std::env::var_os("GYRE_PTXAS")
        .filter(|path| !path.is_empty())
        .map_or_else(|| PathBuf::from("ptxas"), PathBuf::from);
    let input = std::env::temp_dir().join(format!(
        "gyre-ptxas-{}-{}.ptx",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&input, ptx)
        .map_err(|error| format!("cannot write {}: {error}", input.display()))?;
    let output = Command::new(&program)
        .arg(format!("-arch={sm}"))
        .arg("-v")
        .arg("-o")
        .arg("/dev/null")
        .arg(&input)
        .output();
    let _ = std::fs::remove_file(&input);
    let output = output.map_err(|error| {
        format!(
            "cannot run {}: {error} (set GYRE_PTXAS to the ptxas of a CUDA toolkit)",
            program.display()
        )
    })?;
    let mut log = String::from_utf8_lossy(&output.stderr).into_owned();
    log.push_str(&String::from_utf8_lossy(&output.stdout));
    if !output.status.success() {
        let mut message = format!("{} failed ({})", program.display(), output.status);
        let _ = write!(message, ":\n{log}");
        return Err(message);
    }
    let entries = parse_ptxas_log(&log);
    if entries.is_empty() {
        return Err(format!("ptxas reported no entry function:\n{log}"));
    }
    Ok(PtxasReport { entries, log })
}

/// Parses the `-v` output of ptxas:
///
/// ```text
/// ptxas info    : Compiling entry function 'k' for 'sm_80'
/// ptxas info    : Function properties for k
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 4 registers, used 0 barriers, 360 bytes cmem[0]
/// ```
fn parse_ptxas_log(log: &str) -> Vec<PtxasEntry> {
    let mut entries: Vec<PtxasEntry> = Vec::new();
    let mut properties_of: Option<String> = None;
    for line in log.lines() {
        let line = line.trim();
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_owned();
            entries.push(PtxasEntry {
                name,
                ..PtxasEntry::default()
            });
            properties_of = None;
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            properties_of = Some(rest.trim().to_owned());
        } else if line.contains("bytes stack frame") {
            // Properties of a non-entry function (a called device function) are reported
            // too; only those of the current entry count.
            let current = entries.last_mut();
            if let Some(entry) = current.filter(|entry| {
                properties_of
                    .as_deref()
                    .is_none_or(|name| name == entry.name)
            }) {
                entry.stack_frame_bytes = number_before(line, "bytes stack frame");
                entry.spill_store_bytes = number_before(line, "bytes spill stores");
                entry.spill_load_bytes = number_before(line, "bytes spill loads");
            }
        } else if line.contains("Used ") && line.contains(" registers") {
            if let Some(entry) = entries.last_mut() {
                let after = line.split("Used ").nth(1).unwrap_or_default();
                entry.registers = after
                    .split_whitespace()
                    .next()
                    .and_then(|count| count.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    entries
}

/// The number right before `marker` in `line` (`"12 bytes spill stores"` → 12), or 0.
fn number_before(line: &str, marker: &str) -> u32 {
    line.split(marker)
        .next()
        .filter(|_| line.contains(marker))
        .and_then(|before| before.split([',', ' ']).rfind(|word| !word.is_empty()))
        .and_then(|word| word.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = "extern \"C\" __global__ void k(unsigned* p) { *p = 1; }\n";

    fn nvrtc_or_skip() -> bool {
        match probe::load_nvrtc() {
            Ok(_) => true,
            Err(error) => {
                eprintln!("skipping: NVRTC unavailable: {error}");
                false
            }
        }
    }

    #[test]
    fn tiny_kernel_compiles_for_ampere_and_hopper() {
        if !nvrtc_or_skip() {
            return;
        }
        for arch in ["compute_80", "compute_90"] {
            let compiled = compile_ptx(TINY, "tiny.cu", &[], arch, &[]).unwrap();
            assert!(compiled.ptx.contains(".entry k"), "{}", compiled.ptx);
            assert!(
                compiled
                    .ptx
                    .contains(&format!(".target sm_{}", &arch["compute_".len()..])),
                "{}",
                compiled.ptx
            );
            assert!(!compiled.ptx.contains('\0'));
        }
    }

    #[test]
    fn syntax_error_reports_the_line() {
        if !nvrtc_or_skip() {
            return;
        }
        let source = "extern \"C\" __global__ void k(unsigned* p) {\n  *p = 1\n}\n";
        match compile_ptx(source, "broken.cu", &[], "compute_80", &[]) {
            Err(DeviceError::Compile { compiler, log }) => {
                assert!(compiler.starts_with("NVRTC "), "{compiler}");
                assert!(
                    log.contains("broken.cu(2)") || log.contains("broken.cu(3)"),
                    "{log}"
                );
                assert!(log.contains("error"), "{log}");
            }
            other => panic!("expected a compile error, got {other:?}"),
        }
    }

    #[test]
    fn headers_resolve_by_name() {
        if !nvrtc_or_skip() {
            return;
        }
        let header = "#pragma once\ninline unsigned gyre_answer() { return 42u; }\n";
        let source = "#include \"answer.cuh\"\n\
                      extern \"C\" __global__ void k(unsigned* p) { *p = gyre_answer(); }\n";
        let compiled = compile_ptx(
            source,
            "main.cu",
            &[("answer.cuh", header)],
            "compute_80",
            &[],
        )
        .unwrap();
        assert!(compiled.ptx.contains(".entry k"));
        assert!(compiled.ptx.contains("42"), "{}", compiled.ptx);

        // Without the header the include fails, naming it.
        match compile_ptx(source, "main.cu", &[], "compute_80", &[]) {
            Err(DeviceError::Compile { log, .. }) => assert!(log.contains("answer.cuh"), "{log}"),
            other => panic!("expected a compile error, got {other:?}"),
        }
    }

    #[test]
    fn extra_options_are_passed_and_checked() {
        if !nvrtc_or_skip() {
            return;
        }
        let compiled = compile_ptx(TINY, "tiny.cu", &[], "compute_80", &["-DGYRE_TEST=1"]);
        assert!(compiled.is_ok(), "{compiled:?}");
        match compile_ptx(TINY, "tiny.cu", &[], "compute_80", &["--no-such-option"]) {
            Err(DeviceError::Compile { log, .. }) => {
                assert!(log.contains("NVRTC_ERROR_INVALID_OPTION"), "{log}");
            }
            other => panic!("expected an option error, got {other:?}"),
        }
    }

    #[test]
    fn ptxas_reports_resources_of_the_tiny_kernel() {
        if !nvrtc_or_skip() {
            return;
        }
        let ptx = compile_ptx(TINY, "tiny.cu", &[], "compute_80", &[])
            .unwrap()
            .ptx;
        match ptxas(&ptx, "sm_80") {
            Ok(report) => {
                let entry = report.entry("k").expect("entry k reported");
                assert!(entry.registers > 0 && entry.registers < 32, "{report:?}");
                assert_eq!(entry.spill_store_bytes, 0);
                assert_eq!(entry.spill_load_bytes, 0);
                assert_eq!(entry.stack_frame_bytes, 0);
            }
            Err(error) if error.starts_with("cannot run") => {
                eprintln!("skipping: {error}");
            }
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn ptxas_log_parses_entries_and_ignores_callees() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Function properties for helper\n\
            \x20   24 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\n\
            ptxas info    : Compiling entry function 'gyre_group_main' for 'sm_90'\n\
            ptxas info    : Function properties for gyre_group_main\n\
            \x20   16 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
            ptxas info    : Used 40 registers, used 1 barriers, 368 bytes cmem[0]\n\
            ptxas info    : Compiling entry function 'k' for 'sm_90'\n\
            ptxas info    : Function properties for k\n\
            \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
            ptxas info    : Used 6 registers, 360 bytes cmem[0]\n";
        let entries = parse_ptxas_log(log);
        assert_eq!(
            entries,
            vec![
                PtxasEntry {
                    name: "gyre_group_main".into(),
                    registers: 40,
                    spill_store_bytes: 4,
                    spill_load_bytes: 12,
                    stack_frame_bytes: 16,
                },
                PtxasEntry {
                    name: "k".into(),
                    registers: 6,
                    ..PtxasEntry::default()
                },
            ]
        );
    }
}
