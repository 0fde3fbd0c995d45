//! What the dashboard tests share: a bounded HTTP GET and the faulting kernel. Included
//! by path from the test crates that need it.
#![allow(dead_code)] // each test crate uses part of it

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gyre::{Kernel, KernelSpec, Runtime};

/// How long one read or write of a test client may wait.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The fault reason the faulting kernel's handler panics with.
pub const FAULT_REASON: &str = "sensor 7 sent a negative reading";

/// An answer: status code, `Content-Type`, body.
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// `GET path` on a fresh connection, read until the server closes it (bounded by
/// socket timeouts).
pub fn get(addr: SocketAddr, path: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect to the dashboard");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read the answer");
    let response = String::from_utf8(response).expect("a UTF-8 answer");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a header and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: body.to_owned(),
    }
}

/// `GET path` answered 200 with JSON, parsed.
pub fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let answer = get(addr, path);
    assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    assert_eq!(answer.content_type, "application/json", "{path}");
    serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {}", answer.body))
}

/// A kernel whose handler panics on its first message, faulting it (the default fault
/// policy leaves it faulted), with [`FAULT_REASON`] in its fault. Returns once it is
/// `Faulted`.
pub fn faulted_kernel(runtime: &Runtime, name: &str) -> Kernel<u64, u64> {
    let k = runtime
        .launch(KernelSpec::<u64, u64>::new(name).cpu(|_, _| panic!("{FAULT_REASON}")))
        .unwrap();
    k.send(1).unwrap();
    match k.activate() {
        Ok(()) | Err(gyre::Error::Faulted { .. }) => {}
        Err(e) => panic!("activate: {e}"),
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while k.state() != gyre::State::Faulted {
        assert!(
            std::time::Instant::now() < deadline,
            "the kernel did not fault"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    k
}

/// The kernel named `name` of group `group` in a snapshot.
pub fn kernel<'a>(
    snapshot: &'a serde_json::Value,
    group: &str,
    name: &str,
) -> &'a serde_json::Value {
    group_of(snapshot, group)["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .unwrap_or_else(|| panic!("no kernel {name} in group {group}: {snapshot}"))
}

/// The group named `name` in a snapshot.
pub fn group_of<'a>(snapshot: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    snapshot["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no group {name}: {snapshot}"))
}
