//! The optional `/metrics` HTTP endpoint (feature `http`): answers `GET /metrics` with
//! [`crate::Runtime::prometheus_text`].
//!
//! With feature `dashboard`, a server started by [`crate::Runtime::serve_dashboard`]
//! also serves the live dashboard: `GET /` (the page; also `/dashboard`), `GET
//! /api/snapshot` (every group and kernel of every backend now, as JSON),
//! `GET /api/history` (the bounded history of samples the server's sampler thread takes
//! about once a second; `?after=SEQ` returns only the samples numbered above `SEQ`), and
//! the page's script and uPlot (`/dashboard.js`, `/uplot/uPlot.iife.min.js`,
//! `/uplot/uPlot.min.css`, and uPlot's MIT licence at `/uplot/LICENSE`). The JSON is
//! described, with an example, on [`crate::Runtime::serve_dashboard`]. `/metrics` is the
//! same either way.
//!
//! It is served by hyper (HTTP/1.1) on a current-thread tokio runtime that the server owns,
//! on a thread of its own: it needs no runtime from the caller, and works the same when it
//! is started from inside one (of either flavour) without running anything on it.
//!
//! No client can hold the endpoint: connections are served concurrently, each one serves
//! one request (`Connection: close`) and is closed when its header has not arrived within
//! [`MetricsServer::HEADER_READ_TIMEOUT`] (a deadline, not an idle timer: a byte now and
//! then does not extend it) or its request has not been answered within
//! [`MetricsServer::REQUEST_TIMEOUT`]. A header larger than
//! [`MetricsServer::MAX_HEADER_BYTES`] is answered `431` and the connection closed without
//! reading the rest. At most [`MetricsServer::MAX_CONNECTIONS`] connections are open at
//! once; one past that is closed as soon as it is accepted.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::Error;

/// A running `/metrics` endpoint; stops when dropped.
///
/// Dropping it stops accepting connections at once, lets requests in progress finish for
/// up to [`MetricsServer::SHUTDOWN_GRACE`], closes whatever is left and returns: it blocks
/// the dropping thread for at most about that long.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    /// The dashboard's sampler thread, stopped and joined after the server thread.
    #[cfg(feature = "dashboard")]
    sampler: Option<crate::dashboard::Sampler>,
}

/// What a server answers besides `/metrics`.
#[derive(Clone, Debug)]
pub(crate) struct Pages {
    services: Arc<crate::runtime::Services>,
    #[cfg(feature = "dashboard")]
    dashboard: Option<Arc<crate::dashboard::Dashboard>>,
}

impl Pages {
    /// `/metrics` only.
    pub(crate) fn metrics(services: Arc<crate::runtime::Services>) -> Self {
        Self {
            services,
            #[cfg(feature = "dashboard")]
            dashboard: None,
        }
    }

    /// `/metrics` and the dashboard.
    #[cfg(feature = "dashboard")]
    pub(crate) fn dashboard(
        services: Arc<crate::runtime::Services>,
        dashboard: Arc<crate::dashboard::Dashboard>,
    ) -> Self {
        Self {
            services,
            dashboard: Some(dashboard),
        }
    }
}

impl MetricsServer {
    /// How long a client has, from the moment it connects, to send its whole request
    /// header. A client still sending one then is disconnected.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(3);

    /// How long one connection may last in all: reading the request, building the
    /// answer and writing it to the client. A client that reads the answer too slowly is
    /// disconnected.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

    /// The largest request header read, in bytes; a larger one is answered
    /// `431 Request Header Fields Too Large` and its connection closed.
    pub const MAX_HEADER_BYTES: usize = 16 * 1024;

    /// How many connections are served at once. A connection past this is closed as soon
    /// as it is accepted (the client sees the connection end with no answer).
    pub const MAX_CONNECTIONS: usize = 64;

    /// How long dropping the server waits for requests in progress before closing them.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

    pub(crate) fn start(backend: Pages, addr: SocketAddr) -> Result<Self, Error> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| {
            Error::Launch(format!(
                "could not listen on {addr} for /metrics: {e}; pick a free port (port 0 picks one)"
            ))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Launch(format!("/metrics listener has no address: {e}")))?;
        listener.set_nonblocking(true).map_err(|e| {
            Error::Launch(format!(
                "could not make the /metrics listener non-blocking: {e}"
            ))
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| {
                Error::Launch(format!(
                    "could not start the /metrics server's tokio runtime: {e}"
                ))
            })?;
        let runtime = OwnedRuntime(Some(runtime));
        let listener = {
            // Registers the socket with the server's own runtime. Entering it is allowed
            // inside another runtime; only blocking on one there is not.
            let _enter = runtime.handle().enter();
            TcpListener::from_std(listener).map_err(|e| {
                Error::Launch(format!(
                    "could not register the /metrics listener with its runtime: {e}"
                ))
            })?
        };
        #[cfg(feature = "dashboard")]
        let sampler = backend
            .dashboard
            .clone()
            .map(crate::dashboard::Sampler::start)
            .transpose()?;
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("gyre-metrics-http".into())
            .spawn(move || runtime.block_on(serve(listener, backend, stopped)))
            .map_err(|e| Error::Launch(format!("could not start the /metrics thread: {e}")))?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
            #[cfg(feature = "dashboard")]
            sampler,
        })
    }

    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        // `send_replace` stores the value even when every receiver is gone (the server
        // thread ended on its own).
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("the /metrics server thread panicked");
            }
        }
        // Stops and joins the sampler (it wakes at once).
        #[cfg(feature = "dashboard")]
        drop(self.sampler.take());
    }
}

/// The server's runtime. Dropped with `shutdown_background`, which never blocks: a plain
/// drop panics when it happens inside another runtime (as it would if the server thread
/// could not be spawned from an async caller).
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.0
            .as_ref()
            .expect("present until dropped")
            .block_on(future)
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// How long the accept loop waits after an accept error (for example, out of file
/// descriptors) before it tries again, so that it does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections until told to stop, serving each on its own task.
async fn serve(listener: TcpListener, backend: Pages, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MetricsServer::MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let stop_connections = stop.clone();
    loop {
        tokio::select! {
            // A stop request, or the handle gone without one: stop either way.
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Ok(slot) = slots.clone().try_acquire_owned() {
                        connections.spawn(serve_connection(
                            stream,
                            backend.clone(),
                            stop_connections.clone(),
                            slot,
                        ));
                    } else {
                        tracing::debug!(
                            %peer,
                            limit = MetricsServer::MAX_CONNECTIONS,
                            "/metrics: too many open connections, closing a new one"
                        );
                        drop(stream);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "/metrics accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            // Reaps finished connections so that the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // No new connections from here on.
    drop(listener);
    let finished = tokio::time::timeout(MetricsServer::SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::debug!(
            open = connections.len(),
            "/metrics: closing connections still open after the shutdown grace period"
        );
    }
    // Dropping the set aborts what is left; the runtime's shutdown closes their sockets.
}

/// Serves one request on `stream`, within the deadlines.
async fn serve_connection(
    stream: TcpStream,
    backend: Pages,
    mut stop: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let service = service_fn(move |request| {
        let response = respond(&request, &backend);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut connection = pin!(http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(MetricsServer::HEADER_READ_TIMEOUT)
        .max_buf_size(MetricsServer::MAX_HEADER_BYTES)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service));
    let mut deadline = pin!(tokio::time::sleep(MetricsServer::REQUEST_TIMEOUT));
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "/metrics connection ended with an error");
                }
                return;
            }
            () = deadline.as_mut() => {
                tracing::debug!(
                    timeout = ?MetricsServer::REQUEST_TIMEOUT,
                    "/metrics request not done in time: closing its connection"
                );
                return;
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                // Finishes a request in progress (the server's grace period bounds it).
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The answer to one request: the metrics for `GET` (and `HEAD`) `/metrics`, 405 for
/// another method there, 404 elsewhere.
fn respond(request: &Request<Incoming>, backend: &Pages) -> Response<String> {
    #[cfg(feature = "dashboard")]
    if let Some(dashboard) = &backend.dashboard {
        if let Some(response) = dashboard_page(request, dashboard) {
            return response;
        }
    }
    if request.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try GET /metrics\n".to_owned(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "method {} not allowed: /metrics answers GET (and HEAD)\n",
                request.method()
            ),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(backend.services.prometheus_text());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The dashboard's answer to `request`, or `None` for a path it does not serve.
#[cfg(feature = "dashboard")]
fn dashboard_page(
    request: &Request<Incoming>,
    dashboard: &crate::dashboard::Dashboard,
) -> Option<Response<String>> {
    use crate::dashboard::assets;
    let path = request.uri().path();
    let (body, content_type) = match path {
        "/" | "/dashboard" | "/index.html" => {
            (assets::INDEX_HTML.to_owned(), "text/html; charset=utf-8")
        }
        "/dashboard.js" => (
            assets::DASHBOARD_JS.to_owned(),
            "text/javascript; charset=utf-8",
        ),
        "/uplot/uPlot.iife.min.js" => (
            assets::UPLOT_JS.to_owned(),
            "text/javascript; charset=utf-8",
        ),
        "/uplot/uPlot.min.css" => (assets::UPLOT_CSS.to_owned(), "text/css; charset=utf-8"),
        "/uplot/LICENSE" => (
            assets::UPLOT_LICENSE.to_owned(),
            "text/plain; charset=utf-8",
        ),
        "/api/snapshot" => (dashboard.snapshot_json(), "application/json"),
        "/api/history" => {
            let after = request
                .uri()
                .query()
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|pair| pair.strip_prefix("after="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (dashboard.history_json(after), "application/json")
        }
        _ => return None,
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "method {} not allowed: {path} answers GET (and HEAD)\n",
                request.method()
            ),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(response);
    }
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    Some(response)
}

fn text(status: StatusCode, body: String) -> Response<String> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
