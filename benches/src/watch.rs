//! A dashboard attached to a benchmark's runtime, to measure what watching costs.
//!
//! With `GYRE_BENCH_DASHBOARD=1` (and the `dashboard` feature), every gyre runtime the
//! workloads start serves the live dashboard ([`gyre::Runtime::serve_dashboard`], whose
//! sampler reads every kernel once a second) on `127.0.0.1`, and a thread plays an open
//! browser tab: it fetches `/api/snapshot` once a second. Run a benchmark with and
//! without it and compare its ratios.

/// What keeps the dashboard served and watched; stops both when dropped.
#[derive(Debug)]
pub struct Watched {
    #[cfg(feature = "dashboard")]
    _server: gyre::MetricsServer,
    #[cfg(feature = "dashboard")]
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    #[cfg(feature = "dashboard")]
    poller: Option<std::thread::JoinHandle<()>>,
}

/// The variable that attaches a dashboard.
pub const VAR: &str = "GYRE_BENCH_DASHBOARD";

/// Whether [`VAR`] asks for a dashboard.
pub fn wanted() -> bool {
    std::env::var(VAR).is_ok_and(|v| v == "1")
}

/// Serves and watches `runtime`'s dashboard when [`VAR`] asks for it.
///
/// # Panics
/// When asked for in a build without the `dashboard` feature (the message says how to
/// build it), or when the server cannot start.
pub fn attach(runtime: &gyre::Runtime) -> Option<Box<Watched>> {
    if !wanted() {
        return None;
    }
    #[cfg(not(feature = "dashboard"))]
    {
        let _ = runtime;
        panic!("{VAR}=1 needs the dashboard: build with `--features dashboard`");
    }
    #[cfg(feature = "dashboard")]
    {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        use std::time::Duration;

        let server = runtime
            .serve_dashboard(([127, 0, 0, 1], 0).into())
            .expect("the dashboard serves on 127.0.0.1");
        let addr = server.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                        let _ = s.write_all(
                            b"GET /api/snapshot HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n",
                        );
                        let mut body = Vec::new();
                        let _ = s.read_to_end(&mut body);
                    }
                    for _ in 0..10 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
        };
        Some(Box::new(Watched {
            _server: server,
            stop,
            poller: Some(poller),
        }))
    }
}

#[cfg(feature = "dashboard")]
impl Drop for Watched {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
    }
}
