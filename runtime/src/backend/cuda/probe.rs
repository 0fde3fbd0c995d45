//! Finding the CUDA libraries without panicking.
//!
//! cudarc loads `libcuda` and `libnvrtc` lazily and panics when it cannot find them. This
//! module checks first, once per process, and turns absence into
//! [`DeviceError::Unavailable`] with a message that says what to install. Nothing else in
//! the backend may call into cudarc before the matching probe here succeeded:
//! [`load_driver`] before any `cudarc::driver` call, [`load_nvrtc`] before any
//! `cudarc::nvrtc` call.
//!
//! NVRTC does not need a GPU, so the toolkit may come from the pip wheels that
//! `cargo xtask setup` installs: when `GYRE_NVRTC_LIB`, `GYRE_CUDA_TOOLKIT` or the gyre
//! cache names a `libnvrtc.so.13`, it is loaded by full path first. cudarc later opens
//! `libnvrtc.so.13` by name, and the dynamic loader hands back the library already loaded
//! under that soname.

use std::env;
use std::ffi::{c_int, OsStr};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::device::DeviceError;

/// The NVRTC library the probe looks for in the toolkit directories.
const NVRTC_FILE: &str = "libnvrtc.so.13";

/// The CUDA release `cargo xtask setup` installs, naming its cache directory.
const TOOLKIT_DIR: &str = "cuda-13.5";

/// How deep below a toolkit root the probe looks for [`NVRTC_FILE`]
/// (pip wheels put it in `nvidia/cu13/lib/`).
const SEARCH_DEPTH: usize = 4;

/// What the probe found out about the CUDA driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverInfo {
    /// CUDA devices visible to this process (at least one).
    pub device_count: usize,
    /// The driver's CUDA version as `cuDriverGetVersion` reports it (`13000` for 13.0).
    pub driver_version: u32,
}

impl DriverInfo {
    /// The driver's CUDA version as `"major.minor"`.
    pub fn driver_version_string(&self) -> String {
        format!(
            "{}.{}",
            self.driver_version / 1000,
            self.driver_version % 1000 / 10
        )
    }
}

/// Loads NVRTC once per process and returns its version (`"13.5"`).
///
/// Looks, in order, at `GYRE_NVRTC_LIB` (the full path of `libnvrtc.so.13`), then for a
/// `libnvrtc.so.13` a few levels below `$GYRE_CUDA_TOOLKIT`,
/// `$XDG_CACHE_HOME/gyre/cuda-13.5` and `$HOME/.cache/gyre/cuda-13.5`, and loads the first
/// one found (with `libnvrtc-builtins` from the same directory). Then it asks cudarc
/// whether an NVRTC can be opened by name, which also covers `LD_LIBRARY_PATH` and the
/// system library directories.
///
/// The result, success or failure, is cached: later calls return it without looking again.
///
/// # Errors
/// [`DeviceError::Unavailable`] when no NVRTC can be loaded, naming the ways to provide one.
pub fn load_nvrtc() -> Result<String, DeviceError> {
    static NVRTC: OnceLock<Result<String, DeviceError>> = OnceLock::new();
    NVRTC.get_or_init(probe_nvrtc).clone()
}

/// Checks for the CUDA driver once per process, initialises it and counts its devices.
///
/// The result, success or failure, is cached.
///
/// # Errors
/// [`DeviceError::Unavailable`] when `libcuda.so.1` is missing, `cuInit` fails, or no
/// device is visible.
pub fn load_driver() -> Result<DriverInfo, DeviceError> {
    static DRIVER: OnceLock<Result<DriverInfo, DeviceError>> = OnceLock::new();
    DRIVER.get_or_init(probe_driver).clone()
}

fn probe_nvrtc() -> Result<String, DeviceError> {
    let explicit = env::var_os("GYRE_NVRTC_LIB").filter(|path| !path.is_empty());
    let mut preload_failure = None;
    if let Some(path) = explicit
        .as_ref()
        .map(PathBuf::from)
        .or_else(find_toolkit_nvrtc)
    {
        if let Err(error) = preload(&path) {
            preload_failure = Some(error);
        }
    }

    // SAFETY: `is_culib_present` only tries to open the candidate library names with
    // libloading and closes them again; it runs no code of the library beyond its
    // initialisers, which is what loading any library does.
    let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    if !present {
        let mut message = String::from(
            "NVRTC (the CUDA runtime compiler) is not available: no libnvrtc.so.13 on the \
             library path. Run `cargo xtask setup`, which installs nvidia-cuda-nvrtc from PyPI \
             into ~/.cache/gyre/cuda-13.5, or set GYRE_NVRTC_LIB to the full path of \
             libnvrtc.so.13, or add its directory to LD_LIBRARY_PATH",
        );
        if let Some(error) = preload_failure {
            message = format!("{message} ({error})");
        }
        return Err(DeviceError::Unavailable(message));
    }
    if let (Some(path), Some(error)) = (explicit, preload_failure) {
        // An NVRTC was found by name, but not the one GYRE_NVRTC_LIB asks for: say so
        // rather than silently compiling with another version.
        return Err(DeviceError::Unavailable(format!(
            "GYRE_NVRTC_LIB={} could not be loaded: {error}; point it at a loadable \
             libnvrtc.so.13, or unset it to search the library path",
            Path::new(&path).display()
        )));
    }

    let mut major: c_int = 0;
    let mut minor: c_int = 0;
    // SAFETY: NVRTC is loadable (checked above); both pointers are valid for writes of a
    // c_int for the duration of the call.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&raw mut major, &raw mut minor) };
    if status != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(DeviceError::Unavailable(format!(
            "NVRTC was found but nvrtcVersion failed with {status:?}: reinstall it (cargo \
             xtask setup), or point GYRE_NVRTC_LIB at another libnvrtc.so.13"
        )));
    }
    Ok(format!("{major}.{minor}"))
}

/// Loads the library at `path` (and `libnvrtc-builtins` from its directory) and keeps it
/// loaded for the life of the process.
fn preload(path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        // NVRTC opens its builtins library by soname when it compiles; loading it here by
        // full path makes that work without LD_LIBRARY_PATH. Best effort: a missing one
        // shows up as a compile error naming it.
        if let Ok(entries) = fs::read_dir(dir) {
            let mut builtins: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|candidate| {
                    candidate
                        .file_name()
                        .and_then(OsStr::to_str)
                        .is_some_and(|name| name.starts_with("libnvrtc-builtins.so"))
                })
                .collect();
            builtins.sort();
            for candidate in builtins {
                // SAFETY: loading runs the library's initialisers; NVRTC's builtins library
                // has no initialisation with preconditions on the host process.
                if let Ok(library) = unsafe { libloading::Library::new(&candidate) } {
                    std::mem::forget(library);
                }
            }
        }
    }
    // SAFETY: as above; libnvrtc's initialisers have no preconditions on the process.
    let library = unsafe { libloading::Library::new(path) }
        .map_err(|error| format!("cannot load {}: {error}", path.display()))?;
    // Never unloaded: cudarc opens the same library by soname and keeps using it.
    std::mem::forget(library);
    Ok(())
}

/// The first `libnvrtc.so.13` below the toolkit directories, if any.
fn find_toolkit_nvrtc() -> Option<PathBuf> {
    let mut roots = Vec::new();
    if let Some(root) = env::var_os("GYRE_CUDA_TOOLKIT").filter(|v| !v.is_empty()) {
        roots.push(PathBuf::from(root));
    }
    if let Some(cache) = env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        roots.push(PathBuf::from(cache).join("gyre").join(TOOLKIT_DIR));
    }
    if let Some(home) = env::var_os("HOME").filter(|v| !v.is_empty()) {
        roots.push(
            PathBuf::from(home)
                .join(".cache")
                .join("gyre")
                .join(TOOLKIT_DIR),
        );
    }
    roots
        .iter()
        .find_map(|root| find_file(root, NVRTC_FILE, SEARCH_DEPTH))
}

/// Breadth-first search for a file called `name` at most `depth` directories below `dir`.
fn find_file(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..=depth {
        let mut next = Vec::new();
        for current in &level {
            let direct = current.join(name);
            if direct.is_file() {
                return Some(direct);
            }
            if let Ok(entries) = fs::read_dir(current) {
                let mut children: Vec<PathBuf> = entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                    .map(|entry| entry.path())
                    .collect();
                children.sort();
                next.extend(children);
            }
        }
        level = next;
    }
    None
}

fn probe_driver() -> Result<DriverInfo, DeviceError> {
    // SAFETY: as for NVRTC: only opens and closes the candidate libcuda names.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        return Err(DeviceError::Unavailable(
            "no NVIDIA driver: libcuda.so.1 not found. Install the NVIDIA driver, or use \
             Backend::Cpu"
                .to_owned(),
        ));
    }
    cudarc::driver::result::init().map_err(|error| {
        DeviceError::Unavailable(format!(
            "the NVIDIA driver is installed but cuInit failed: {}",
            describe_driver_error(error)
        ))
    })?;
    let count = cudarc::driver::result::device::get_count().map_err(|error| {
        DeviceError::Unavailable(format!(
            "cuDeviceGetCount failed: {}",
            describe_driver_error(error)
        ))
    })?;
    if count <= 0 {
        return Err(DeviceError::Unavailable(
            "the NVIDIA driver is present but no CUDA device is visible (check \
             CUDA_VISIBLE_DEVICES)"
                .to_owned(),
        ));
    }
    let mut version: c_int = 0;
    // SAFETY: the driver is loaded and initialised; the pointer is valid for one c_int.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&raw mut version) };
    let driver_version = if status == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        u32::try_from(version).unwrap_or(0)
    } else {
        0
    };
    Ok(DriverInfo {
        device_count: usize::try_from(count).unwrap_or(0),
        driver_version,
    })
}

/// `"CUDA_ERROR_X: description"` for a driver error. Only valid once the driver is loaded.
pub(crate) fn describe_driver_error(error: cudarc::driver::DriverError) -> String {
    match error.error_string() {
        Ok(text) => format!("{:?}: {}", error.0, text.to_string_lossy()),
        Err(_) => format!("{:?}", error.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_probe_reports_absence_without_panicking() {
        match load_driver() {
            Ok(info) => {
                assert!(info.device_count > 0);
                eprintln!(
                    "CUDA driver {} with {} device(s) present",
                    info.driver_version_string(),
                    info.device_count
                );
            }
            Err(DeviceError::Unavailable(message)) => {
                assert!(
                    message.contains("libcuda")
                        || message.contains("cuInit")
                        || message.contains("CUDA device"),
                    "unexpected message: {message}"
                );
            }
            Err(other) => panic!("expected Unavailable, got {other:?}"),
        }
        // Cached: the second call answers the same.
        assert_eq!(load_driver(), load_driver());
    }

    #[test]
    fn nvrtc_probe_finds_the_library_or_says_how_to_get_it() {
        let explicit = env::var_os("GYRE_NVRTC_LIB").filter(|path| Path::new(path).is_file());
        match load_nvrtc() {
            Ok(version) => {
                let (major, minor) = version.split_once('.').expect("version is major.minor");
                assert!(major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok());
            }
            Err(DeviceError::Unavailable(message)) => {
                assert!(
                    explicit.is_none(),
                    "GYRE_NVRTC_LIB names a file but NVRTC did not load: {message}"
                );
                assert!(
                    message.contains("cargo xtask setup") || message.contains("GYRE_NVRTC_LIB="),
                    "{message}"
                );
            }
            Err(other) => panic!("expected Unavailable, got {other:?}"),
        }
        assert_eq!(load_nvrtc(), load_nvrtc());
    }

    #[test]
    fn find_file_searches_a_few_levels_down() {
        let root = env::temp_dir().join(format!("gyre-probe-test-{}", std::process::id()));
        let lib = root.join("nvidia").join("cu13").join("lib");
        fs::create_dir_all(&lib).unwrap();
        fs::write(lib.join(NVRTC_FILE), b"").unwrap();
        assert_eq!(
            find_file(&root, NVRTC_FILE, SEARCH_DEPTH),
            Some(lib.join(NVRTC_FILE))
        );
        assert_eq!(find_file(&root, NVRTC_FILE, 1), None);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn driver_version_formats_as_major_minor() {
        let info = DriverInfo {
            device_count: 1,
            driver_version: 12040,
        };
        assert_eq!(info.driver_version_string(), "12.4");
    }
}
