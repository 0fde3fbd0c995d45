//! The dashboard in a real browser (feature `dashboard`): headless Chromium loads the page
//! from a runtime whose pipeline streams under load beside a kernel faulted on purpose,
//! and the test reads what the page saw from its own JSON (`<pre id="gyre-test-state">`):
//! every kernel appears, counters moved between two samples, the faulted kernel shows
//! `Faulted` with its reason, and the page recorded no error (`window.onerror`,
//! unhandled rejections, `console.error`). A screenshot is saved to
//! `target/dashboard/dashboard.png`.
//!
//! Chromium is Debian's `chromium` (`cargo xtask setup` installs it), or the binary
//! `GYRE_CHROMIUM` names. Without it the test is skipped with the reason printed, and fails
//! under `cargo xtask ci` (`GYRE_CI=1`). Every Chromium run is killed after
//! [`CHROMIUM_TIMEOUT`].
#![cfg(feature = "dashboard")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre::{Error, KernelSpec, Runtime};
use serde_json::Value as Json;

#[path = "support/dashboard.rs"]
mod dash;
use dash::{faulted_kernel, get_json, FAULT_REASON};

#[path = "../../runtime/tests/support/skip.rs"]
mod skip;

/// The longest one Chromium run may take before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// The Chromium binary: `GYRE_CHROMIUM`, else `chromium` on the `PATH`.
fn chromium() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("GYRE_CHROMIUM") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            "no `chromium` on the PATH (install it with `cargo xtask setup`, or \
             `apt-get install chromium`; or name a binary in GYRE_CHROMIUM)"
                .to_owned()
        })
}

/// Runs headless Chromium with `args` on `url`, killing it after [`CHROMIUM_TIMEOUT`];
/// returns its standard output.
fn run_chromium(binary: &Path, profile: &Path, args: &[String], url: &str) -> String {
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            "--mute-audio",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {}: {e}", binary.display()));
    // Read both pipes on threads, so that a chatty Chromium never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            child.wait().ok();
            let stderr = err.join().unwrap_or_default();
            panic!("chromium did not finish within {CHROMIUM_TIMEOUT:?} and was killed; its stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    assert!(
        status.success(),
        "chromium failed ({status}); its stderr:\n{stderr}"
    );
    stdout
}

/// The page's test state out of a dumped DOM.
fn test_state(dom: &str) -> Json {
    let start = dom
        .find("id=\"gyre-test-state\"")
        .and_then(|at| dom[at..].find('>').map(|end| at + end + 1))
        .unwrap_or_else(|| panic!("no test state in the page:\n{dom}"));
    let end = start + dom[start..].find("</pre>").expect("the test state ends");
    let text = dom[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the test state is not JSON ({e}): {text}"))
}

/// Where build artifacts of this test go: `target/dashboard/`.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A three-stage pipeline streaming under load: a source sending with blocking
/// backpressure and a sink taking everything out, until [`Load::stop`].
struct Load {
    pipeline: Arc<gyre::Pipeline<u64, u64>>,
    stop: Arc<AtomicBool>,
    source: std::thread::JoinHandle<()>,
    sink: std::thread::JoinHandle<()>,
}

impl Load {
    fn start(rt: &Runtime) -> Self {
        let pipeline = rt
            .pipeline::<u64>("sensors")
            .stage(
                KernelSpec::<u64, u64>::new("calibrate")
                    .capacity(1024)
                    .cpu(|x, out| Ok(out.emit(x * 3)?)),
            )
            .stage(
                KernelSpec::<u64, u64>::new("filter")
                    .capacity(1024)
                    .cpu(|x, out| {
                        if x % 2 == 0 {
                            out.emit(*x)?;
                        }
                        Ok(())
                    }),
            )
            .stage(
                KernelSpec::<u64, u64>::new("aggregate")
                    .capacity(1024)
                    .cpu(|x, out| Ok(out.emit(x / 2)?)),
            )
            .launch()
            .unwrap();
        pipeline.activate().unwrap();
        let pipeline = Arc::new(pipeline);
        let stop = Arc::new(AtomicBool::new(false));
        let source = {
            let (stop, sender) = (stop.clone(), pipeline.sender());
            std::thread::spawn(move || {
                let mut x = 0u64;
                // Relaxed: a flag; the join orders what follows.
                while !stop.load(Ordering::Relaxed) {
                    sender.send(x).expect("the pipeline takes messages");
                    x += 1;
                }
            })
        };
        let sink = {
            let pipeline = pipeline.clone();
            std::thread::spawn(move || loop {
                match pipeline.recv() {
                    Ok(_) => {}
                    Err(Error::Terminated { .. }) => return,
                    Err(e) => panic!("recv: {e}"),
                }
            })
        };
        Load {
            pipeline,
            stop,
            source,
            sink,
        }
    }

    /// Stops the source, drains the pipeline (nothing may be left) and joins both threads.
    fn stop(self) {
        // Relaxed: see the source.
        self.stop.store(true, Ordering::Relaxed);
        self.source.join().unwrap();
        let report = self.pipeline.drain(Duration::from_secs(30));
        self.sink.join().unwrap();
        assert_eq!(report.undelivered_count(), 0);
    }
}

#[test]
fn headless_chromium_shows_every_kernel_live_and_the_fault() {
    let binary = match chromium() {
        Ok(binary) => binary,
        Err(why) => return skip::skip("the dashboard's browser test", &why),
    };
    let rt = Runtime::builder().workers(2).build().unwrap();
    // Under load while the browser looks.
    let load = Load::start(&rt);
    let broken = faulted_kernel(&rt, "broken");
    let server = rt.serve_dashboard("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr();
    // Two samples in the history before the page loads: its first point is then at least
    // a sampling interval older than its last poll.
    let deadline = Instant::now() + Duration::from_secs(15);
    while get_json(addr, "/api/history")["samples"]
        .as_array()
        .unwrap()
        .len()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the history has two samples within 15 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://{addr}/");
    let out = artifacts();
    let dom = run_chromium(
        &binary,
        &out.join("profile-dom"),
        &[
            "--dump-dom".to_owned(),
            "--virtual-time-budget=5000".to_owned(),
        ],
        &url,
    );
    let screenshot = out.join("dashboard.png");
    std::fs::remove_file(&screenshot).ok();
    run_chromium(
        &binary,
        &out.join("profile-shot"),
        &[
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1400,1000".to_owned(),
            "--virtual-time-budget=4000".to_owned(),
        ],
        &url,
    );
    let snapshot = get_json(addr, "/api/snapshot");

    // Stop the load, then everything, before judging.
    load.stop();
    drop(broken);
    drop(server);
    assert_page(&test_state(&dom), &snapshot, &dom);
    let png = std::fs::read(&screenshot).expect("chromium saved the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    eprintln!("dashboard screenshot: {}", screenshot.display());
}

/// What the page saw (`state`, its dumped `dom`) against the runtime's `snapshot`.
fn assert_page(state: &Json, snapshot: &Json, dom: &str) {
    assert_eq!(
        state["errors"],
        Json::Array(Vec::new()),
        "the page recorded errors: {state}"
    );
    assert!(
        state["polls"].as_u64() >= Some(2),
        "the page polled twice or more: {state}"
    );
    let seen: Vec<&str> = state["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Json::as_str)
        .collect();
    let mut faulted = 0;
    for g in snapshot["groups"].as_array().unwrap() {
        for k in g["kernels"].as_array().unwrap() {
            let key = format!(
                "{}/{}#{}",
                g["name"].as_str().unwrap(),
                k["name"].as_str().unwrap(),
                k["id"]
            );
            assert!(
                seen.contains(&key.as_str()),
                "the page shows {key}: {state}"
            );
            if g["name"] == "sensors" {
                let first = state["first"][&key]["processed"].as_u64().unwrap();
                let last = state["last"][&key]["processed"].as_u64().unwrap();
                assert!(
                    last > first,
                    "{key}: processed moved between two samples ({first} → {last})"
                );
                assert_eq!(state["states"][&key], "Active", "{key}");
            }
            if k["name"] == "broken" {
                faulted += 1;
                assert_eq!(state["states"][&key], "Faulted", "{key}: {state}");
                let reason = state["faults"][&key].as_str().unwrap_or_default();
                assert!(
                    reason.contains(FAULT_REASON),
                    "{key} shows its reason: {reason:?}"
                );
            }
        }
    }
    assert_eq!(faulted, 1, "the faulted kernel is in the snapshot");
    assert_eq!(
        state["groups"]["sensors"], "cpu",
        "the group's backend is labelled"
    );
    // Drawn: the group's DAG and uPlot's charts.
    assert!(dom.contains("class=\"dag\""), "the DAG is drawn");
    assert!(dom.contains("class=\"uplot"), "uPlot drew the charts");
    assert!(
        dom.contains(FAULT_REASON),
        "the fault's reason is on the page"
    );
}
