//! The optional `/metrics` HTTP endpoint (feature `http`): a small blocking server on
//! its own thread that answers `GET /metrics` with [`crate::Runtime::prometheus_text`].
//! Std networking only; for anything beyond a scrape target, serve
//! `prometheus_text()` from your own HTTP stack.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use gyre_runtime::backend::cpu::CpuBackend;

use crate::Error;

/// A running `/metrics` endpoint; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub(crate) fn start(backend: Arc<CpuBackend>, addr: SocketAddr) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            Error::Launch(format!(
                "could not listen on {addr} for /metrics: {e}; pick a free port (port 0 picks one)"
            ))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Launch(format!("/metrics listener has no address: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::Launch(format!("/metrics listener: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("gyre-metrics-http".into())
            .spawn(move || serve(&listener, &backend, &stopping))
            .map_err(|e| Error::Launch(format!("could not start the /metrics thread: {e}")))?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How often the idle accept loop looks for a stop request.
const POLL: Duration = Duration::from_millis(50);

fn serve(listener: &TcpListener, backend: &CpuBackend, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, backend) {
                    tracing::debug!(error = %e, "/metrics request failed");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                tracing::warn!(error = %e, "/metrics accept failed");
                std::thread::sleep(POLL);
            }
        }
    }
}

fn answer(stream: TcpStream, backend: &CpuBackend) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) =
        if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                backend.prometheus_text(),
            )
        } else {
            (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "try GET /metrics\n".to_owned(),
            )
        };
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
