//! loom models of the control block protocol in `gyre_runtime::control`.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p gyre-runtime --release
//! --test loom_control --target-dir target-loom`.
//!
//! The host thread issues commands and reads the status line; a kernel thread polls and
//! publishes. Every word is a loom atomic, so loom explores which (possibly stale) value
//! each load may return under the orderings the protocol uses.
#![cfg(loom)]

use std::mem::offset_of;
use std::sync::Arc;

use gyre_runtime::abi::{fault, Command, ControlBlock, State};
use gyre_runtime::control::{ControlMemory, Counters, HostSide, KernelSide, LoomControl};
use loom::sync::atomic::Ordering;
use loom::thread;

type Mem = Arc<LoomControl>;

fn block() -> (HostSide<Mem>, KernelSide<Mem>) {
    let mem = Arc::new(LoomControl::new(7));
    (
        HostSide::new(Arc::clone(&mem)).expect("the block's first host side"),
        KernelSide::new(mem).expect("the block's first kernel side"),
    )
}

/// The state a kernel moves to on `command` (the part of the lifecycle these models use).
fn target(command: Command) -> State {
    match command {
        Command::Activate => State::Active,
        Command::Pause => State::Paused,
        Command::Drain => State::Draining,
        Command::Terminate => State::Terminated,
        Command::None => panic!("the kernel read the empty command"),
    }
}

/// Spins (yielding to the model) until the kernel sees a new command.
fn next_command(kernel: &mut KernelSide<Mem>) -> (Command, u32) {
    loop {
        if let Some((command, epoch)) = kernel.poll() {
            return (command.expect("the host writes only known commands"), epoch);
        }
        thread::yield_now();
    }
}

/// Spins (yielding to the model) until the kernel acknowledged `epoch`.
fn wait_ack(host: &HostSide<Mem>, epoch: u32) {
    while !host.acknowledged(epoch) {
        thread::yield_now();
    }
}

/// One command: when the host sees it acknowledged, it reads the state, heartbeat,
/// error code and counters the kernel wrote before acknowledging, never older ones.
#[test]
fn acknowledged_command_carries_its_state() {
    loom::model(|| {
        let (host, mut kernel) = block();
        assert!(
            host.acknowledged(0),
            "epoch 0 is the launch, acknowledged from the start"
        );
        let kernel = thread::spawn(move || {
            let (command, epoch) = next_command(&mut kernel);
            assert_eq!((command, epoch), (Command::Activate, 1));
            assert_eq!(kernel.poll(), None, "one command is seen once");
            kernel.count(Counters {
                received: 2,
                processed: 1,
                ..Counters::default()
            });
            kernel.beat();
            kernel.set_error(fault::NONE);
            kernel.set_state(target(command));
        });
        let epoch = host.issue(Command::Activate);
        assert_eq!(epoch, 1);
        assert_eq!(host.epoch(), 1);
        wait_ack(&host, epoch);
        let status = host.status();
        assert_eq!(
            status.state,
            Some(State::Active),
            "acknowledged with a stale state"
        );
        assert_eq!(status.ack_epoch, 1);
        assert_eq!(status.heartbeat, 1, "acknowledged with a stale heartbeat");
        assert_eq!(status.error_code, fault::NONE);
        let raw = host.raw_counters();
        assert_eq!(
            (raw.received, raw.processed),
            (2, 1),
            "acknowledged with stale counters"
        );
        kernel.join().expect("kernel thread");
    });
}

/// Two commands issued back to back, without waiting in between. The kernel reads each
/// epoch's command word no older than that epoch (it may already read the newer
/// command with the older epoch), sees epochs only grow, and never reads the empty
/// command; once the host sees the second epoch acknowledged, the state is the second
/// command's.
#[test]
fn back_to_back_commands_latest_wins() {
    loom::model(|| {
        let (host, mut kernel) = block();
        let kernel = thread::spawn(move || {
            let mut seen = Vec::new();
            loop {
                let (command, epoch) = next_command(&mut kernel);
                if let Some(&(_, last)) = seen.last() {
                    assert!(epoch > last, "epoch went from {last} back to {epoch}");
                }
                if epoch == 2 {
                    assert_eq!(
                        command,
                        Command::Pause,
                        "epoch 2 came with an older command"
                    );
                }
                kernel.set_state(target(command));
                seen.push((command, epoch));
                if epoch == 2 {
                    return seen;
                }
            }
        });
        let first = host.issue(Command::Activate);
        let second = host.issue(Command::Pause);
        assert_eq!((first, second), (1, 2));
        wait_ack(&host, second);
        assert!(
            host.acknowledged(first),
            "a later acknowledgement covers earlier epochs"
        );
        assert_eq!(host.status().state, Some(State::Paused));
        let seen = kernel.join().expect("kernel thread");
        assert!(matches!(
            seen[0],
            (Command::Activate | Command::Pause, 1 | 2)
        ));
    });
}

/// The kernel counts while the host reads. Counters start two before the u32 wrap (the
/// host takes its baseline first), so the kernel's increments cross it. Every widened
/// read is monotonic and bounded by what was counted; after the acknowledgement of the
/// command the kernel answered once done, the host reads exactly the totals.
#[test]
fn counters_widen_across_the_wrap() {
    loom::model(|| {
        let mem = Arc::new(LoomControl::new(7));
        for offset in [
            offset_of!(ControlBlock, received),
            offset_of!(ControlBlock, processed),
        ] {
            mem.word(offset).store(u32::MAX - 1, Ordering::Relaxed);
        }
        let host = HostSide::new(Arc::clone(&mem)).expect("the block's first host side");
        let mut kernel = KernelSide::new(mem).expect("the block's first kernel side");
        let base = host.counters();
        assert_eq!(base.received, u64::from(u32::MAX - 1));

        let epoch = host.issue(Command::Drain);
        let kernel = thread::spawn(move || {
            for _ in 0..3 {
                kernel.count(Counters {
                    received: 1,
                    processed: 1,
                    ..Counters::default()
                });
            }
            let (command, _) = next_command(&mut kernel);
            kernel.set_state(target(command));
        });

        let mut last = base;
        while !host.acknowledged(epoch) {
            let now = host.counters();
            assert!(now.received >= last.received && now.processed >= last.processed);
            assert!(now.received <= base.received + 3 && now.processed <= base.processed + 3);
            last = now;
            thread::yield_now();
        }
        let done = host.counters();
        assert_eq!(
            done.received,
            base.received + 3,
            "counts before the ack were lost"
        );
        assert_eq!(done.processed, base.processed + 3);
        assert_eq!(host.raw_counters().received, 1, "the raw word wrapped");
        assert_eq!(host.status().state, Some(State::Draining));
        kernel.join().expect("kernel thread");
    });
}
