//! The bridge over kernels of every backend this build has, through the same calls: a
//! CPU source linked to an exported device kernel (a built-in echo, which runs on every
//! backend), whose output is linked back to a CPU sink. Features `cuda` (the CUDA
//! emulation) and `wgpu` (a software adapter: `GYRE_WGPU_ALLOW_SOFTWARE=1`) add their
//! backends; CI runs both. A backend named here that cannot start fails the test.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use gyre::builtins::Builtin;
use gyre::{Backend, KernelSpec, Runtime};
use gyre_zenoh::{ExportOptions, LinkOptions};

/// Each backend with what its kernels' `backend()` says.
fn backends() -> Vec<(Backend, &'static str)> {
    let mut all = vec![(Backend::Cpu, "cpu")];
    if cfg!(feature = "cuda") {
        all.push((Backend::CudaEmulated, "cuda-emulated"));
    }
    if cfg!(feature = "wgpu") {
        all.push((Backend::WgpuSoftware, "wgpu"));
    }
    all
}

#[test]
fn every_backend_exports_and_links_through_the_same_calls() {
    for (backend, name) in backends() {
        let (a, b, _) = common::pair();
        let key = common::key(&format!("backend-{name}"));
        let device_rt = Runtime::builder()
            .backend(backend)
            .build()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let echo = device_rt
            .launch(KernelSpec::<u64, u64>::new("echo").builtin(Builtin::Echo { bytes: 8 }))
            .unwrap();
        echo.activate().unwrap();
        assert_eq!(echo.backend(), name);
        let export = a
            .export::<u64>(
                &format!("{key}/in"),
                echo.sender(),
                ExportOptions::default(),
            )
            .unwrap();

        let host = Runtime::builder().build().unwrap();
        let sink = common::identity(&host, "sink");
        sink.activate().unwrap();
        let mut results = sink.receiver().unwrap();
        let sink_export = b
            .export::<u64>(
                &format!("{key}/back"),
                sink.sender(),
                ExportOptions::default(),
            )
            .unwrap();
        let back = a
            .link(
                &format!("{key}/back"),
                echo.receiver().unwrap(),
                LinkOptions::default(),
            )
            .unwrap();
        let src = common::identity(&host, "src");
        src.activate().unwrap();
        let link = b
            .link(
                &format!("{key}/in"),
                src.receiver().unwrap(),
                LinkOptions::default(),
            )
            .unwrap();
        const N: u64 = 2_000;
        let feeder = {
            let tx = src.sender();
            std::thread::spawn(move || (0..N).for_each(|i| tx.send(i).unwrap()))
        };
        let mut seen = HashSet::new();
        while seen.len() < N as usize {
            let v = results
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("{name}: {e} after {}", seen.len()));
            assert!(seen.insert(v), "{name}: {v} twice");
        }
        feeder.join().unwrap();
        src.drain(Duration::from_secs(10)).unwrap();
        let report = link.drain(Duration::from_secs(30));
        assert!(
            report.finished && report.undelivered.is_empty(),
            "{report:?}"
        );
        assert!(export.wait_finished(1, Duration::from_secs(10)));
        echo.drain(Duration::from_secs(10)).unwrap();
        let report = back.drain(Duration::from_secs(30));
        assert!(
            report.finished && report.undelivered.is_empty(),
            "{report:?}"
        );
        if name != "cpu" {
            // A device kernel's output is seen by a watcher thread, not by its emit:
            // its link's thread sends everything.
            assert_eq!(report.metrics.inline_frames, 0, "{name}");
        }
        assert!(sink_export.wait_finished(1, Duration::from_secs(10)));
        assert!(results.try_recv().unwrap().is_none());
        assert_eq!(export.metrics().consumed, N, "{name}");
        println!("{name}: {N} messages there and back");
    }
}
