//! The `/metrics` endpoint (feature `http`) serves the Prometheus text, and keeps answering
//! a scrape while slow, idle and oversized clients are connected.
//!
//! Every client here talks to 127.0.0.1 on a port the OS picked, and every wait is bounded
//! by a socket timeout or a deadline, so a server that misbehaves fails a test rather than
//! hanging it.
#![cfg(feature = "http")]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gyre::{KernelSpec, MetricsServer, Runtime};

/// How long any one client read or write in these tests may wait before it counts as a
/// failure.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// The acceptance bound: a scrape answered while bad clients are connected.
const SCRAPE_BOUND: Duration = Duration::from_millis(100);

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Sends `request` on a fresh connection and reads until the server closes it.
fn exchange(addr: SocketAddr, request: &str) -> std::io::Result<String> {
    let mut stream = connect(addr);
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

fn get(addr: SocketAddr, path: &str) -> String {
    exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")).unwrap()
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn echo_runtime() -> Runtime {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let k = rt
        .launch(KernelSpec::<u32, u32>::new("echo").cpu(|x, out| Ok(out.emit(*x)?)))
        .unwrap();
    k.activate().unwrap();
    k.send(1).unwrap();
    k.recv().unwrap();
    rt
}

fn serve(rt: &Runtime) -> MetricsServer {
    rt.serve_metrics("127.0.0.1:0".parse().unwrap()).unwrap()
}

#[test]
fn serves_prometheus_text_at_metrics() {
    let rt = echo_runtime();
    let server = serve(&rt);
    let response = get(server.local_addr(), "/metrics");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert_eq!(
        header(&response, "content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "{response}"
    );
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let processed = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "gyre_kernel_processed_total" && s.labels.get("kernel") == Some("echo")
        })
        .expect("a processed counter for `echo`");
    assert_eq!(processed.value, prometheus_parse::Value::Counter(1.0));
    // A query string is still the metrics path.
    assert!(get(server.local_addr(), "/metrics?x=1").starts_with("HTTP/1.1 200"));
    drop(server);
}

#[test]
fn other_paths_are_404_and_other_methods_405() {
    let rt = echo_runtime();
    let server = serve(&rt);
    let addr = server.local_addr();
    let other = get(addr, "/other");
    assert!(status_line(&other).starts_with("HTTP/1.1 404"), "{other}");
    let post = exchange(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    assert!(status_line(&post).starts_with("HTTP/1.1 405"), "{post}");
    assert_eq!(header(&post, "allow"), Some("GET, HEAD"), "{post}");
    let head = exchange(addr, "HEAD /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    assert!(status_line(&head).starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(head.split("\r\n\r\n").nth(1), Some(""), "HEAD has no body");
    let garbage = exchange(addr, "this is not http\r\n\r\n").unwrap_or_default();
    assert!(
        garbage.is_empty() || status_line(&garbage).starts_with("HTTP/1.1 400"),
        "{garbage}"
    );
}

/// A client that sends a never-ending header one byte every `every`, until the server
/// closes the connection or `stop` is set. Returns how long the connection lived.
fn trickle(addr: SocketAddr, every: Duration, stop: Arc<AtomicBool>) -> JoinHandle<Duration> {
    let mut stream = connect(addr);
    stream.set_read_timeout(Some(every)).unwrap();
    let start = Instant::now();
    std::thread::spawn(move || {
        let request = b"GET /metrics HTTP/1.1\r\nX-Slow: ";
        let bytes = request.iter().copied().chain(std::iter::repeat(b'a'));
        let mut scratch = [0_u8; 1024];
        for byte in bytes {
            if stop.load(Ordering::Relaxed) || stream.write_all(&[byte]).is_err() {
                break;
            }
            // Waits `every`, and notices the server closing the connection (or answering
            // it with an error) meanwhile.
            match stream.read(&mut scratch) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                _ => break,
            }
        }
        start.elapsed()
    })
}

/// What an oversized-header client saw.
struct Oversized {
    sent: usize,
    total: usize,
    response: String,
    error: Option<std::io::Error>,
}

/// A client that sends a request whose header is `total` bytes long, as fast as the server
/// takes it, then reads the answer.
fn oversized(addr: SocketAddr, total: usize) -> JoinHandle<Oversized> {
    let mut stream = connect(addr);
    std::thread::spawn(move || {
        let mut sent = 0;
        let mut error = None;
        let start = b"GET /metrics HTTP/1.1\r\nX-Big: ";
        stream.write_all(start).unwrap();
        sent += start.len();
        let chunk = vec![b'a'; 64 * 1024];
        while sent < total {
            let n = chunk.len().min(total - sent);
            match stream.write(&chunk[..n]) {
                Ok(written) => sent += written,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let mut response = Vec::new();
        if let Err(e) = stream.read_to_end(&mut response) {
            error.get_or_insert(e);
        }
        Oversized {
            sent,
            total,
            response: String::from_utf8_lossy(&response).into_owned(),
            error,
        }
    })
}

/// Connects (a) a client that sent half a request line and nothing more, (b) one that sends
/// a header one byte every 300 ms, (c) four idle connections and (d) one that sends a
/// 16 MiB header, then scrapes `/metrics` ten times: every scrape must answer 200 within
/// 100 ms. The oversized client must be refused (431, or the connection closed) before
/// the server took its whole header.
#[test]
fn slow_idle_and_oversized_clients_do_not_delay_a_scrape() {
    let rt = echo_runtime();
    let server = serve(&rt);
    let addr = server.local_addr();

    let mut partial = connect(addr);
    partial.write_all(b"GET /metr").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let slow = trickle(addr, Duration::from_millis(300), stop.clone());
    let idle: Vec<TcpStream> = (0..4).map(|_| connect(addr)).collect();
    let big = oversized(addr, 16 << 20);

    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let response = exchange(addr, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
        latencies.push(start.elapsed());
        match response {
            Ok(r)
                if r.starts_with("HTTP/1.1 200 OK")
                    && r.contains("gyre_kernel_processed_total") => {}
            other => failures.push(other),
        }
    }
    // Stop the trickling client before asserting, so that a failure does not leave it
    // holding the server (and the server's drop) forever.
    stop.store(true, Ordering::Relaxed);
    slow.join().unwrap();
    assert!(failures.is_empty(), "scrapes failed: {failures:?}");
    latencies.sort();
    println!(
        "scrape latency with bad clients connected: median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert!(
        latencies.iter().all(|l| *l < SCRAPE_BOUND),
        "every scrape must answer within {SCRAPE_BOUND:?}: {latencies:?}"
    );

    let big = big.join().unwrap();
    assert!(
        big.sent < big.total,
        "the server took the whole {}-byte header instead of refusing it",
        big.total
    );
    assert!(
        big.response.is_empty() || big.response.starts_with("HTTP/1.1 431"),
        "an oversized header is answered 431 or the connection closed: {}",
        big.response
    );
    println!(
        "oversized header: refused after the client sent {} of {} bytes ({:?}, {:?})",
        big.sent,
        big.total,
        status_line(&big.response),
        big.error
    );
    drop((partial, idle));
}

/// A client that trickles a header one byte every 300 ms is cut off by the header read
/// deadline (each byte does not restart it).
#[test]
fn a_slow_client_is_disconnected() {
    let rt = echo_runtime();
    let server = serve(&rt);
    let stop = Arc::new(AtomicBool::new(false));
    // Fails the test rather than hanging it if the server never cuts the client off.
    let limit = MetricsServer::HEADER_READ_TIMEOUT + Duration::from_secs(3);
    let watchdog = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::park_timeout(limit);
            stop.store(true, Ordering::Relaxed);
        })
    };
    let lived = trickle(server.local_addr(), Duration::from_millis(300), stop)
        .join()
        .unwrap();
    watchdog.thread().unpark();
    watchdog.join().unwrap();
    assert!(
        lived < limit,
        "the slow client was still connected after {lived:?}"
    );
    assert!(
        lived >= MetricsServer::HEADER_READ_TIMEOUT,
        "cut off after {lived:?}, before the header deadline"
    );
}

/// Connections past [`MetricsServer::MAX_CONNECTIONS`] are closed at once, and the server
/// serves again when the excess ones go.
#[test]
fn excess_connections_are_closed_promptly() {
    let rt = echo_runtime();
    let server = serve(&rt);
    let addr = server.local_addr();
    let held: Vec<TcpStream> = (0..MetricsServer::MAX_CONNECTIONS)
        .map(|_| connect(addr))
        .collect();
    // The server accepts in order, so by the time the extra one is closed all the held
    // ones have their slot.
    let mut extra = connect(addr);
    let start = Instant::now();
    let mut byte = [0_u8; 1];
    match extra.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("an excess connection must be closed, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    drop(held);
    // The held connections' slots come back once the server sees them close.
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match exchange(addr, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n") {
            Ok(response) if response.starts_with("HTTP/1.1 200") => break,
            other => assert!(Instant::now() < deadline, "no scrape answered: {other:?}"),
        }
    }
}

/// `serve_metrics` works from inside a current-thread tokio runtime, whose only thread is
/// blocked here: the server runs on its own thread and runtime. Dropping it there does not
/// panic.
#[tokio::test(flavor = "current_thread")]
async fn serves_from_inside_a_current_thread_runtime() {
    let rt = echo_runtime();
    let server = serve(&rt);
    let response = get(server.local_addr(), "/metrics");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let start = Instant::now();
    drop(server);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

/// Dropping the server with a client mid-request stops it within a bounded time, and
/// the port no longer answers.
#[test]
fn drop_stops_the_server_promptly() {
    let rt = echo_runtime();
    let server = serve(&rt);
    let addr = server.local_addr();
    let mut partial = connect(addr);
    partial.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    assert!(get(addr, "/metrics").starts_with("HTTP/1.1 200"));
    let start = Instant::now();
    drop(server);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let mut rest = Vec::new();
    match partial.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::ConnectionReset,
            "not closed on drop: {e}"
        ),
    }
    assert!(
        TcpStream::connect(addr).is_err(),
        "nothing listens any more"
    );
}
