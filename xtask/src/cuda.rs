//! The CUDA compiler pieces the CUDA backend's tests need, installed from PyPI.
//!
//! NVIDIA publishes the CUDA compilers as Python wheels. Installed with
//! `pip install --target DIR`, they form a small toolkit under `DIR/nvidia/cu13`:
//!
//! ```text
//! DIR/nvidia/cu13/bin/{nvcc,ptxas,nvlink,fatbinary,cudafe++}   nvidia-cuda-nvcc
//! DIR/nvidia/cu13/nvvm/{bin/cicc,libdevice/libdevice.10.bc}     nvidia-nvvm (nvcc's front end)
//! DIR/nvidia/cu13/include/crt/*.h                              nvidia-cuda-crt (nvcc's headers)
//! DIR/nvidia/cu13/include/{cuda_runtime.h,...}                 nvidia-cuda-runtime
//! DIR/nvidia/cu13/include/cccl/{cuda,cub,thrust,nv}            nvidia-cuda-cccl (libcu++)
//! DIR/nvidia/cu13/lib/{libnvrtc.so.13,libnvrtc-builtins.so.13.5,libcudart.so.13}
//! ```
//!
//! None of it needs a GPU: NVRTC compiles CUDA C to PTX, `ptxas` assembles PTX to a
//! cubin for any architecture, and `nvcc` (with the host `g++`) builds cubins ahead of
//! time. Only running a kernel needs a driver (`libcuda.so.1`), which comes with the GPU.
//!
//! [`Toolkit::ensure`] finds or installs the toolkit in [`default_dir`] (outside the
//! repository: `~/.cache/gyre/cuda-13.5` unless `GYRE_CUDA_TOOLKIT` says otherwise);
//! [`Toolkit::env`] is the environment a child process needs to use it.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The CUDA release the toolkit is pinned to.
pub const CUDA_VERSION: &str = "13.5";

/// The pip requirements installed, one `--target` install for all of them (pip does
/// not merge a second `--target` install into an existing tree). `nvidia-nvvm` and
/// `nvidia-cuda-crt` are `nvcc`'s own dependencies (its front end `cicc` and the
/// `crt/` headers); `--no-deps` keeps pip from pulling anything else.
pub const REQUIREMENTS: [&str; 6] = [
    "nvidia-cuda-nvcc==13.5.*",
    "nvidia-cuda-nvrtc==13.5.*",
    "nvidia-cuda-runtime==13.5.*",
    "nvidia-cuda-crt==13.5.*",
    "nvidia-nvvm==13.5.*",
    "nvidia-cuda-cccl==13.*",
];

/// The environment variable that overrides [`default_dir`].
pub const DIR_VAR: &str = "GYRE_CUDA_TOOLKIT";

/// The file written into a toolkit directory this code installed. Only a directory
/// carrying it is ever deleted (to replace an incomplete install).
pub const MARKER: &str = "gyre-cuda-toolkit.txt";

/// The NVRTC library the runtime loads.
pub const NVRTC_LIB: &str = "libnvrtc.so.13";

/// Where the toolkit lives when nothing says otherwise: `$GYRE_CUDA_TOOLKIT` if set,
/// else `$XDG_CACHE_HOME/gyre/cuda-13.5`, else `$HOME/.cache/gyre/cuda-13.5`.
///
/// # Errors
/// When none of those variables is set.
pub fn default_dir() -> Result<PathBuf, String> {
    default_dir_from(|key| env::var_os(key))
}

/// [`default_dir`] with the environment read through `var` (for tests). Empty values
/// count as unset; a relative `XDG_CACHE_HOME` is ignored, as the XDG spec says.
///
/// # Errors
/// When none of the variables is set.
pub fn default_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, String> {
    let set = |key: &str| {
        var(key)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = set(DIR_VAR) {
        return Ok(dir);
    }
    let leaf = format!("cuda-{CUDA_VERSION}");
    if let Some(cache) = set("XDG_CACHE_HOME").filter(|path| path.is_absolute()) {
        return Ok(cache.join("gyre").join(leaf));
    }
    if let Some(home) = set("HOME") {
        return Ok(home.join(".cache").join("gyre").join(leaf));
    }
    Err(format!(
        "cannot tell where to install the CUDA toolkit: set {DIR_VAR} (or HOME)"
    ))
}

/// A CUDA toolkit installed from PyPI in [`dir`](Self::dir). The paths are where the
/// pieces are once installed; [`missing`](Self::missing) says which are not there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toolkit {
    dir: PathBuf,
}

impl Toolkit {
    /// The toolkit in `dir` (installed or not).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The toolkit in [`default_dir`].
    ///
    /// # Errors
    /// See [`default_dir`].
    pub fn default_location() -> Result<Self, String> {
        default_dir().map(Self::at)
    }

    /// Finds the toolkit in [`default_dir`], installs it there with pip when something
    /// is missing, and checks that `ptxas` runs and NVRTC is there.
    ///
    /// # Errors
    /// A message saying what failed (no pip, no network, a piece missing after install).
    pub fn ensure() -> Result<Self, String> {
        let toolkit = Self::default_location()?;
        toolkit.install()?;
        toolkit.verify()?;
        Ok(toolkit)
    }

    /// The directory pip installs into (`GYRE_CUDA_TOOLKIT`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CUDA home inside it: `DIR/nvidia/cu13` (what `CUDA_HOME` would be).
    pub fn home(&self) -> PathBuf {
        self.dir.join("nvidia").join("cu13")
    }

    /// `nvcc`, `ptxas`, `nvlink`, `fatbinary`.
    pub fn bin_dir(&self) -> PathBuf {
        self.home().join("bin")
    }

    /// `ptxas`: PTX to cubin.
    pub fn ptxas(&self) -> PathBuf {
        self.bin_dir().join("ptxas")
    }

    /// `nvcc`: CUDA C to cubin ahead of time (needs `g++` on the `PATH`).
    pub fn nvcc(&self) -> PathBuf {
        self.bin_dir().join("nvcc")
    }

    /// `libnvrtc.so.13`, `libnvrtc-builtins.so.13.x`, `libcudart.so.13`, `libnvvm.so`.
    pub fn lib_dir(&self) -> PathBuf {
        self.home().join("lib")
    }

    /// `libnvrtc.so.13`.
    pub fn nvrtc_lib(&self) -> PathBuf {
        self.lib_dir().join(NVRTC_LIB)
    }

    /// `libnvrtc-builtins.so.13.x`, which NVRTC loads from its own directory at run
    /// time; `None` when not installed.
    pub fn nvrtc_builtins(&self) -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(self.lib_dir())
            .ok()?
            .filter_map(Result::ok)
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("libnvrtc-builtins.so")
            })
            .map(|entry| entry.path())
            .collect();
        found.sort();
        found.pop()
    }

    /// The include directories, in search order: the CUDA headers (`cuda_runtime.h`,
    /// `crt/`, `nvrtc.h`), then CCCL (`cuda/atomic`, `cub/`, `thrust/`). Both are
    /// passed to NVRTC with `-I`; `nvcc` finds them by itself.
    pub fn include_dirs(&self) -> Vec<PathBuf> {
        let include = self.home().join("include");
        vec![include.clone(), include.join("cccl")]
    }

    /// Every file a complete install has (the builtins library is checked apart, as its
    /// minor version is in its name).
    fn required(&self) -> Vec<PathBuf> {
        let home = self.home();
        let include = home.join("include");
        vec![
            self.ptxas(),
            self.nvcc(),
            self.nvrtc_lib(),
            home.join("nvvm").join("bin").join("cicc"),
            home.join("nvvm").join("libdevice").join("libdevice.10.bc"),
            include.join("cuda_runtime.h"),
            include.join("crt").join("host_config.h"),
            include.join("cccl").join("cuda").join("atomic"),
        ]
    }

    /// The pieces not installed (empty when the toolkit is complete).
    pub fn missing(&self) -> Vec<PathBuf> {
        let mut missing: Vec<PathBuf> = self
            .required()
            .into_iter()
            .filter(|path| !path.exists())
            .collect();
        if self.nvrtc_builtins().is_none() {
            missing.push(self.lib_dir().join("libnvrtc-builtins.so.*"));
        }
        missing
    }

    /// Whether every piece is installed.
    pub fn is_complete(&self) -> bool {
        self.missing().is_empty()
    }

    /// Installs the toolkit into [`dir`](Self::dir) with pip, unless it is complete.
    ///
    /// pip installs into `DIR.tmp-<pid>`, which is renamed to `DIR` once complete, so
    /// `DIR` is never half-installed. An incomplete `DIR` is replaced only if this code
    /// installed it (it holds [`MARKER`]) or it is empty; anything else is an error
    /// rather than a deletion.
    ///
    /// # Errors
    /// No `python3 -m pip`, pip failed (no network?), or pieces missing after install.
    pub fn install(&self) -> Result<(), String> {
        if self.is_complete() {
            println!(
                "cuda: toolkit {CUDA_VERSION} already installed in {}",
                self.dir.display()
            );
            return Ok(());
        }
        if self.dir.exists() {
            self.replaceable()?;
        }
        if !have_pip() {
            return Err(format!(
                "installing the CUDA compilers needs `python3 -m pip` (install python3 and \
                 python3-pip), or point {DIR_VAR} at a directory holding them"
            ));
        }
        let parent = self.dir.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        let staging = staging_dir(&self.dir, std::process::id());
        if staging.exists() {
            fs::remove_dir_all(&staging)
                .map_err(|e| format!("cannot remove {}: {e}", staging.display()))?;
        }
        println!(
            "==> cuda: installing CUDA {CUDA_VERSION} compilers from PyPI into {}",
            self.dir.display()
        );
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
                "--no-deps",
                "--target",
            ])
            .arg(&staging)
            .args(REQUIREMENTS)
            // Installing into a directory of our own as root is fine.
            .env("PIP_ROOT_USER_ACTION", "ignore")
            .status()
            .map_err(|e| format!("could not start `python3 -m pip`: {e}"))?;
        let staged = Self::at(&staging);
        if !status.success() {
            let _ = fs::remove_dir_all(&staging);
            return Err(format!(
                "`python3 -m pip install --target ... {}` failed ({status}); it needs to \
                 reach PyPI (or a pip index that has these wheels)",
                REQUIREMENTS.join(" ")
            ));
        }
        let missing = staged.missing();
        if !missing.is_empty() {
            let _ = fs::remove_dir_all(&staging);
            return Err(format!(
                "pip installed the CUDA wheels but these pieces are missing (has the wheel \
                 layout changed?): {}",
                join_paths(&missing, ", ")
            ));
        }
        fs::write(
            staging.join(MARKER),
            format!(
                "Installed by `cargo xtask setup` with\n  python3 -m pip install --no-deps \
                 --target DIR {}\nDelete this directory to reinstall.\n",
                REQUIREMENTS.join(" ")
            ),
        )
        .map_err(|e| format!("cannot write {}: {e}", staging.join(MARKER).display()))?;
        self.replace_with(&staging)?;
        println!("<== cuda: installed in {}", self.dir.display());
        Ok(())
    }

    /// Whether an existing incomplete `DIR` may be replaced: it is empty or this code
    /// installed it.
    fn replaceable(&self) -> Result<(), String> {
        let ours = self.dir.join(MARKER).exists()
            || fs::read_dir(&self.dir).is_ok_and(|mut entries| entries.next().is_none());
        if ours {
            Ok(())
        } else {
            Err(format!(
                "{} exists but is not a complete CUDA toolkit, and was not installed by \
                 xtask (no {MARKER}); remove it, or set {DIR_VAR} to another directory",
                self.dir.display()
            ))
        }
    }

    /// Moves the complete install in `staging` to `DIR`.
    fn replace_with(&self, staging: &Path) -> Result<(), String> {
        if self.dir.exists() {
            if let Err(error) = self.replaceable() {
                let _ = fs::remove_dir_all(staging);
                return Err(error);
            }
            fs::remove_dir_all(&self.dir)
                .map_err(|e| format!("cannot remove {}: {e}", self.dir.display()))?;
        }
        if let Err(error) = fs::rename(staging, &self.dir) {
            let _ = fs::remove_dir_all(staging);
            // Another process may have installed it meanwhile.
            if !self.is_complete() {
                return Err(format!(
                    "cannot move {} to {}: {error}",
                    staging.display(),
                    self.dir.display()
                ));
            }
        }
        Ok(())
    }

    /// Checks the installed toolkit: every piece is there, `ptxas --version` and
    /// `nvcc --version` run. Returns `ptxas`'s version line.
    ///
    /// # Errors
    /// What is missing or does not run.
    pub fn verify(&self) -> Result<String, String> {
        let missing = self.missing();
        if !missing.is_empty() {
            return Err(format!(
                "the CUDA toolkit in {} is incomplete, missing: {}; run `cargo xtask setup` \
                 (delete the directory first if it persists)",
                self.dir.display(),
                join_paths(&missing, ", ")
            ));
        }
        let version = self.tool_version(&self.ptxas())?;
        self.tool_version(&self.nvcc())?;
        Ok(version)
    }

    /// Runs `tool --version` with [`env`](Self::env); its release line.
    fn tool_version(&self, tool: &Path) -> Result<String, String> {
        let out = Command::new(tool)
            .arg("--version")
            .envs(self.env())
            .output()
            .map_err(|e| format!("cannot run `{} --version`: {e}", tool.display()))?;
        if !out.status.success() {
            return Err(format!(
                "`{} --version` failed ({}): {}",
                tool.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
        // "Cuda compilation tools, release 13.5, V13.5.37"
        Ok(lines
            .clone()
            .find(|line| line.contains("release"))
            .or_else(|| lines.next_back())
            .unwrap_or_default()
            .to_owned())
    }

    /// Compiles a trivial kernel to an sm_80 cubin with `nvcc` in `scratch` (a
    /// directory it may write to). `nvcc` needs the host `g++`.
    ///
    /// # Errors
    /// `nvcc`'s output when it fails.
    pub fn nvcc_cubin_check(&self, scratch: &Path) -> Result<(), String> {
        fs::create_dir_all(scratch)
            .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
        let source = scratch.join("probe.cu");
        let cubin = scratch.join("probe.cubin");
        fs::write(
            &source,
            "extern \"C\" __global__ void probe(unsigned *p) { p[threadIdx.x] = 1u; }\n",
        )
        .map_err(|e| format!("cannot write {}: {e}", source.display()))?;
        let out = Command::new(self.nvcc())
            .args(["-cubin", "-arch=sm_80", "-o"])
            .arg(&cubin)
            .arg(&source)
            .envs(self.env())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.nvcc().display()))?;
        if out.status.success() && cubin.exists() {
            Ok(())
        } else {
            Err(format!(
                "`nvcc -cubin -arch=sm_80` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The environment a child process needs to use the toolkit (built on this
    /// process's `PATH` and `LD_LIBRARY_PATH`):
    ///
    /// - `LD_LIBRARY_PATH`: the NVRTC directory, then the current value;
    /// - `PATH`: the `bin` directory, then the current value;
    /// - `GYRE_CUDA_TOOLKIT`: [`dir`](Self::dir);
    /// - `GYRE_PTXAS`, `GYRE_NVCC`, `GYRE_NVRTC_LIB`: full paths of `ptxas`, `nvcc`,
    ///   `libnvrtc.so.13`;
    /// - `GYRE_CUDA_INCLUDE`: [`include_dirs`](Self::include_dirs) joined with `:`.
    ///
    /// Paths that are not UTF-8 are converted lossily.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_over(env::var_os("PATH"), env::var_os("LD_LIBRARY_PATH"))
    }

    /// [`env`](Self::env) over the given current `PATH` and `LD_LIBRARY_PATH`. An unset
    /// or empty current value adds nothing (an empty entry would mean the working
    /// directory).
    pub fn env_over(
        &self,
        path: Option<OsString>,
        ld_library_path: Option<OsString>,
    ) -> Vec<(String, String)> {
        let prepend = |first: PathBuf, rest: Option<OsString>| {
            let first = first.display().to_string();
            match rest.filter(|rest| !rest.is_empty()) {
                Some(rest) => format!("{first}:{}", rest.to_string_lossy()),
                None => first,
            }
        };
        vec![
            (
                "LD_LIBRARY_PATH".to_owned(),
                prepend(self.lib_dir(), ld_library_path),
            ),
            ("PATH".to_owned(), prepend(self.bin_dir(), path)),
            (DIR_VAR.to_owned(), self.dir.display().to_string()),
            ("GYRE_PTXAS".to_owned(), self.ptxas().display().to_string()),
            ("GYRE_NVCC".to_owned(), self.nvcc().display().to_string()),
            (
                "GYRE_NVRTC_LIB".to_owned(),
                self.nvrtc_lib().display().to_string(),
            ),
            (
                "GYRE_CUDA_INCLUDE".to_owned(),
                join_paths(&self.include_dirs(), ":"),
            ),
        ]
    }
}

/// Whether `python3 -m pip` runs.
pub fn have_pip() -> bool {
    Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// `DIR.tmp-<pid>`: where pip installs before the rename to `DIR`.
pub fn staging_dir(dir: &Path, pid: u32) -> PathBuf {
    let mut name = dir.file_name().map(OsString::from).unwrap_or_default();
    name.push(format!(".tmp-{pid}"));
    dir.with_file_name(name)
}

fn join_paths(paths: &[PathBuf], separator: &str) -> String {
    paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(separator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), OsString::from(v)))
            .collect();
        move |key| map.get(key).cloned()
    }

    #[test]
    fn default_dir_prefers_the_override_then_xdg_then_home() {
        let all = [
            (DIR_VAR, "/opt/cuda-pieces"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HOME", "/home/me"),
        ];
        assert_eq!(
            default_dir_from(vars(&all)).unwrap(),
            PathBuf::from("/opt/cuda-pieces")
        );
        assert_eq!(
            default_dir_from(vars(&all[1..])).unwrap(),
            PathBuf::from("/xdg/gyre/cuda-13.5")
        );
        assert_eq!(
            default_dir_from(vars(&all[2..])).unwrap(),
            PathBuf::from("/home/me/.cache/gyre/cuda-13.5")
        );
    }

    #[test]
    fn default_dir_ignores_empty_and_relative_values() {
        let found = default_dir_from(vars(&[
            (DIR_VAR, ""),
            ("XDG_CACHE_HOME", "relative/cache"),
            ("HOME", "/home/me"),
        ]))
        .unwrap();
        assert_eq!(found, PathBuf::from("/home/me/.cache/gyre/cuda-13.5"));
        let error = default_dir_from(vars(&[("HOME", "")])).unwrap_err();
        assert!(error.contains(DIR_VAR), "{error}");
    }

    #[test]
    fn paths_follow_the_wheel_layout() {
        let toolkit = Toolkit::at("/t");
        assert_eq!(toolkit.ptxas(), PathBuf::from("/t/nvidia/cu13/bin/ptxas"));
        assert_eq!(toolkit.nvcc(), PathBuf::from("/t/nvidia/cu13/bin/nvcc"));
        assert_eq!(
            toolkit.nvrtc_lib(),
            PathBuf::from("/t/nvidia/cu13/lib/libnvrtc.so.13")
        );
        assert_eq!(
            toolkit.include_dirs(),
            [
                PathBuf::from("/t/nvidia/cu13/include"),
                PathBuf::from("/t/nvidia/cu13/include/cccl")
            ]
        );
    }

    #[test]
    fn env_prepends_to_the_current_paths() {
        let toolkit = Toolkit::at("/t");
        let env: HashMap<String, String> = toolkit
            .env_over(Some("/usr/bin:/bin".into()), Some("/usr/lib".into()))
            .into_iter()
            .collect();
        assert_eq!(env["PATH"], "/t/nvidia/cu13/bin:/usr/bin:/bin");
        assert_eq!(env["LD_LIBRARY_PATH"], "/t/nvidia/cu13/lib:/usr/lib");
        assert_eq!(env["GYRE_CUDA_TOOLKIT"], "/t");
        assert_eq!(env["GYRE_PTXAS"], "/t/nvidia/cu13/bin/ptxas");
        assert_eq!(env["GYRE_NVCC"], "/t/nvidia/cu13/bin/nvcc");
        assert_eq!(env["GYRE_NVRTC_LIB"], "/t/nvidia/cu13/lib/libnvrtc.so.13");
        assert_eq!(
            env["GYRE_CUDA_INCLUDE"],
            "/t/nvidia/cu13/include:/t/nvidia/cu13/include/cccl"
        );
        assert_eq!(env.len(), 7);
    }

    #[test]
    fn env_adds_no_empty_entry_when_nothing_was_set() {
        let toolkit = Toolkit::at("/t");
        let env: HashMap<String, String> = toolkit
            .env_over(None, Some(OsString::new()))
            .into_iter()
            .collect();
        assert_eq!(env["PATH"], "/t/nvidia/cu13/bin");
        assert_eq!(env["LD_LIBRARY_PATH"], "/t/nvidia/cu13/lib");
    }

    #[test]
    fn staging_dir_is_a_sibling() {
        assert_eq!(
            staging_dir(Path::new("/c/gyre/cuda-13.5"), 42),
            PathBuf::from("/c/gyre/cuda-13.5.tmp-42")
        );
    }

    #[test]
    fn completeness_follows_the_files() {
        let dir = env::temp_dir().join(format!("xtask-cuda-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let toolkit = Toolkit::at(&dir);
        assert!(!toolkit.is_complete());
        assert_eq!(toolkit.missing().len(), toolkit.required().len() + 1);
        for path in toolkit.required() {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, "").unwrap();
        }
        assert_eq!(
            toolkit.missing(),
            [dir.join("nvidia/cu13/lib/libnvrtc-builtins.so.*")]
        );
        fs::write(toolkit.lib_dir().join("libnvrtc-builtins.so.13.5"), "").unwrap();
        assert!(toolkit.is_complete());
        assert_eq!(
            toolkit.nvrtc_builtins(),
            Some(dir.join("nvidia/cu13/lib/libnvrtc-builtins.so.13.5"))
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
