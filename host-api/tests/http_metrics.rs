//! The `/metrics` endpoint (feature `http`) serves the Prometheus text.
#![cfg(feature = "http")]

use std::io::{Read, Write};

use gyre::{KernelSpec, Runtime};

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn serves_prometheus_text_at_metrics() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let k = rt
        .launch(KernelSpec::<u32, u32>::new("echo").cpu(|x, out| Ok(out.emit(*x)?)))
        .unwrap();
    k.activate().unwrap();
    k.send(1).unwrap();
    k.recv().unwrap();
    let server = rt.serve_metrics("127.0.0.1:0".parse().unwrap()).unwrap();
    let response = get(server.local_addr(), "/metrics");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
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
    assert!(get(server.local_addr(), "/other").starts_with("HTTP/1.1 404"));
    drop(server);
}
