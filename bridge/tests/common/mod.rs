//! Shared by the bridge's tests: loopback endpoints and bridge pairs.

#![allow(dead_code)]

use gyre::{Kernel, KernelSpec, Runtime};
use gyre_zenoh::{Bridge, BridgeConfig};

/// A CPU kernel of `runtime` that emits each `u64` unchanged, launched, not activated.
pub fn identity(runtime: &Runtime, name: &str) -> Kernel<u64, u64> {
    runtime
        .launch(KernelSpec::<u64, u64>::new(name).cpu(|x, out| Ok(out.emit(*x)?)))
        .expect("launch an identity kernel")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

/// `tcp/127.0.0.1:PORT`.
pub fn endpoint(port: u16) -> String {
    format!("tcp/127.0.0.1:{port}")
}

/// Two bridges in this process, the first listening on a fresh loopback port and the
/// second connected to it (multicast scouting off).
pub fn pair() -> (Bridge, Bridge, u16) {
    let (a, port) = listening();
    let b = Bridge::open(BridgeConfig::peer().connect(endpoint(port)))
        .expect("open the connecting bridge");
    (a, b, port)
}

/// A bridge listening on a fresh loopback port, and the port. A port found free can be
/// taken by another test before Zenoh binds it: then it tries another.
pub fn listening() -> (Bridge, u16) {
    let mut last = None;
    for _ in 0..5 {
        let port = free_port();
        match Bridge::open(BridgeConfig::peer().listen(endpoint(port))) {
            Ok(bridge) => return (bridge, port),
            Err(e) => last = Some(e),
        }
    }
    panic!("could not listen on a loopback port: {}", last.unwrap());
}

/// A key no other test uses.
pub fn key(test: &str) -> String {
    format!("gyre-test/{}/{test}", std::process::id())
}
