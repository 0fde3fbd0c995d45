//! Shared by the bridge's tests: loopback endpoints and bridge pairs.

#![allow(dead_code)]

use gyre_zenoh::{Bridge, BridgeConfig};

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
    let port = free_port();
    let a = Bridge::open(BridgeConfig::peer().listen(endpoint(port)))
        .expect("open the listening bridge");
    let b = Bridge::open(BridgeConfig::peer().connect(endpoint(port)))
        .expect("open the connecting bridge");
    (a, b, port)
}

/// A key no other test uses.
pub fn key(test: &str) -> String {
    format!("gyre-test/{}/{test}", std::process::id())
}
