//! A three-stage pipeline over two OS processes on this machine, joined by the Zenoh
//! bridge (see `src/distributed.rs`): stage 1 here, stages 2 and 3 in a second process
//! that this program starts itself; the results come back over a second link and every
//! record is checked to arrive exactly once.
//!
//! Run with `cargo run --release --example distributed_pipeline` (add `--messages N` to
//! change the default of 100,000 records (20,000 on `cuda-emulated`), and `--backend cuda-emulated`, `wgpu-software`,
//! `cuda` or `wgpu` to run every stage on a device, with the examples crate built with
//! `--features gyre/cuda` or `gyre/wgpu`). Exits non-zero on any loss or duplicate.

use std::process::{Command, ExitCode};

use gyre_examples::distributed;

/// The hidden argument that makes this program the second process.
const CHILD_ROLE: &str = "--distributed-child";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == CHILD_ROLE) {
        return match distributed::child_from_env() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("distributed_pipeline (stages 2-3): {e}");
                ExitCode::FAILURE
            }
        };
    }
    let backend = match gyre_examples::backend::from_args(&args) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rest = gyre_examples::backend::other_args(&args);
    let messages = match rest.iter().position(|a| a == "--messages") {
        Some(i) => {
            let Some(n) = rest.get(i + 1).and_then(|n| n.parse::<u32>().ok()) else {
                eprintln!("--messages takes a count of records");
                return ExitCode::from(2);
            };
            n
        }
        // The CUDA emulation runs device code on the CPU, slowly: fewer by default.
        None if backend == gyre::Backend::CudaEmulated => 20_000,
        None => 100_000,
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("cannot find this program to start its second process: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut child = Command::new(exe);
    child.arg(CHILD_ROLE);
    println!(
        "distributed_pipeline: {messages} records, backend {backend:?}; stage 1 in process {}, \
         stages 2-3 in a second process, over Zenoh on loopback TCP",
        std::process::id()
    );
    let progress = gyre_examples::progress::bar(u64::from(messages), "distributed_pipeline");
    let outcome = match distributed::run_with_progress(backend, messages, child, &progress) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("distributed_pipeline: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{} records through 3 stages in 2 processes in {:.2?} ({:.0} records/s)",
        outcome.sent,
        outcome.elapsed,
        f64::from(outcome.sent) / outcome.elapsed.as_secs_f64()
    );
    let f = &outcome.forward;
    println!(
        "link stage1 → stage2 (parent): sent {}, acknowledged {}, retransmitted {}, credit \
         stalls {}, reconnects {}, round trip avg {:?}",
        f.sent,
        f.acknowledged,
        f.retransmitted,
        f.credit_stalls,
        f.reconnects,
        f.round_trip_avg.unwrap_or_default()
    );
    for line in &outcome.child_report {
        println!("{line}");
    }
    let e = &outcome.results_export;
    println!(
        "export results (parent): received {}, delivered {}, consumed {}, duplicates {}, gaps {}",
        e.received, e.delivered, e.consumed, e.duplicates, e.gaps
    );
    println!(
        "check: {} of {} records arrived exactly once; {} missing, {} duplicates, {} wrong; \
         second process {}",
        outcome.received_once,
        outcome.sent,
        outcome.missing,
        outcome.duplicates,
        outcome.wrong,
        outcome.child_status
    );
    if outcome.all_once() {
        println!("OK: every record arrived exactly once");
        ExitCode::SUCCESS
    } else {
        eprintln!("FAILED: records were lost, duplicated or changed");
        ExitCode::FAILURE
    }
}
