//! The `distributed_pipeline` example's logic on the CPU with a small count: two real OS
//! processes (this test binary starts itself again as the second one, running only
//! [`second_process`]) joined by the Zenoh bridge over loopback TCP; on the device
//! backends this build has, the same with fewer records (skipped loudly where the
//! backend is missing, except under `cargo xtask ci`).

use std::process::Command;

use gyre::Backend;
use gyre_examples::distributed;

#[path = "../../runtime/tests/support/skip.rs"]
mod support;

/// This test binary, to run only [`second_process`].
fn second_process_command() -> Command {
    let mut child = Command::new(std::env::current_exe().expect("this test binary"));
    child.args([
        "--exact",
        "second_process",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    child
}

/// Runs `messages` records on `backend` and checks each arrived once.
fn check_once(backend: Backend, messages: u32) {
    let outcome = distributed::run(backend, messages, second_process_command())
        .expect("the two processes run");
    println!("{outcome:?}");
    assert!(outcome.child_status.success(), "{outcome:?}");
    assert_eq!(outcome.received_once, messages, "{outcome:?}");
    assert_eq!(
        (outcome.missing, outcome.duplicates, outcome.wrong),
        (0, 0, 0),
        "{outcome:?}"
    );
    assert_eq!(outcome.forward_undelivered, 0);
    assert_eq!(outcome.forward.sent, u64::from(messages));
    assert_eq!(outcome.forward.acknowledged, u64::from(messages));
    let e = &outcome.results_export;
    assert_eq!(
        (e.delivered, e.consumed, e.duplicates),
        (u64::from(messages), u64::from(messages), 0)
    );
    assert!(
        outcome
            .child_report
            .iter()
            .any(|l| l.contains(&format!("sent {messages}, acknowledged {messages}"))),
        "the child's return link metrics: {:?}",
        outcome.child_report
    );
    assert!(outcome.all_once());
}

/// The second process's entry: runs only when the parent started this binary with the
/// child's environment (`distributed::is_child`); otherwise it has nothing to do.
#[test]
#[ignore = "the second process of `every_record_crosses_two_processes_once`, started by it"]
fn second_process() {
    if distributed::is_child() {
        distributed::child_from_env().expect("stages 2-3 run and drain");
    }
}

#[test]
fn every_record_crosses_two_processes_once() {
    check_once(Backend::Cpu, 5_000);
}

#[test]
fn every_record_crosses_two_processes_once_on_every_device_backend() {
    let wanted: &[(&str, Backend)] = &[
        #[cfg(feature = "cuda")]
        ("cuda-emulated", Backend::CudaEmulated),
        #[cfg(feature = "wgpu")]
        ("wgpu-software", Backend::WgpuSoftware),
    ];
    for &(name, backend) in wanted {
        match gyre_examples::backend::runtime(backend) {
            Ok(runtime) => drop(runtime.shutdown(std::time::Duration::from_secs(5))),
            Err(e) => {
                support::skip(&format!("the distributed example on {name}"), &e);
                continue;
            }
        }
        check_once(backend, 1_000);
    }
}
