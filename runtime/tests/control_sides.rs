//! The control block's one-of-each rules, with real threads: one host side and one
//! kernel side per block (a second is refused until the first is dropped), and commands
//! issued from several host threads at once each get their own epoch.
#![cfg(not(loom))]

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;

use gyre_runtime::abi::Command;
use gyre_runtime::control::{HostControl, HostSide, KernelSide, SideTaken};

#[test]
fn one_host_side_and_one_kernel_side_per_block() {
    let block = Arc::new(HostControl::new(7));
    let host = HostSide::new(Arc::clone(&block)).expect("the block's first host side");
    let kernel = KernelSide::new(Arc::clone(&block)).expect("the block's first kernel side");
    assert!(matches!(
        KernelSide::new(Arc::clone(&block)),
        Err(SideTaken::Kernel)
    ));
    assert!(matches!(
        HostSide::new(Arc::clone(&block)),
        Err(SideTaken::Host)
    ));
    assert!(SideTaken::Kernel.to_string().contains("drop it"));

    let epoch = host.issue(Command::Activate);
    drop(kernel);
    let mut kernel = KernelSide::new(Arc::clone(&block)).expect("the first was dropped");
    assert_eq!(kernel.poll(), Some((Some(Command::Activate), epoch)));
    drop(host);
    let host = HostSide::new(Arc::clone(&block)).expect("the first was dropped");
    assert_eq!(host.kernel_id(), 7);

    let (host, mut kernel) = HostControl::new(8).split();
    let epoch = host.issue(Command::Terminate);
    assert_eq!(kernel.poll(), Some((Some(Command::Terminate), epoch)));
}

/// Several threads issue through one host side at once: every command gets an epoch of
/// its own and the last epoch counts them all.
#[test]
fn concurrent_issuers_get_distinct_epochs() {
    const THREADS: u32 = 4;
    const EACH: u32 = 50_000;
    let (host, _kernel) = HostControl::new(1).split();
    let host = Arc::new(host);
    let issuers: Vec<_> = (0..THREADS)
        .map(|_| {
            let host = Arc::clone(&host);
            thread::spawn(move || {
                (0..EACH)
                    .map(|_| host.issue(Command::Activate))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut epochs = HashSet::new();
    for issuer in issuers {
        for epoch in issuer.join().expect("issuer thread") {
            assert!(epochs.insert(epoch), "epoch {epoch} was issued twice");
        }
    }
    assert_eq!(host.epoch(), THREADS * EACH);
}
