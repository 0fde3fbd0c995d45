//! The CPU side of the backend seam (`backend::seam::cpu`), used from outside
//! `gyre-runtime` the way the public crate uses it: launching, routing, sending,
//! receiving through both receiving ends, the exclusive lane, lifecycle commands and a
//! terminate that hands messages back, with nothing but the facade and
//! `gyre_runtime::handler`.

use std::time::{Duration, Instant};

use gyre_runtime::abi::{Command, State};
use gyre_runtime::backend::seam::cpu::{
    Budget, CpuBackend, CpuKernel, CpuRoute, KernelConfig, RecvFailure, SendFailure,
};
use gyre_runtime::backend::Placement;
use gyre_runtime::handler::{Emitter, Handler, HandlerError, Message};
use gyre_runtime::health::FaultPolicy;
use gyre_runtime::ring::RingLayout;

fn config(name: &str, host_output: bool) -> KernelConfig {
    let layout = RingLayout::new(8, 64).expect("a valid layout");
    KernelConfig {
        name: name.to_owned(),
        inbox: layout,
        outbox: host_output.then_some(layout),
        ports: 1,
        placement: Placement::Pool,
        quantum: 8,
        command_timeout: Duration::from_secs(10),
        fault_policy: FaultPolicy::default(),
        watchdog: None,
        handler_factory: None,
    }
}

fn word(payload: &[u8]) -> u32 {
    u32::from_le_bytes(payload[..4].try_into().expect("four bytes"))
}

/// Emits its input plus one, with the input's correlation id.
fn add_one() -> Box<dyn Handler> {
    Box::new(
        |m: Message<'_>, out: &mut Emitter<'_>| -> Result<(), HandlerError> {
            out.emit(m.corr, &(word(m.payload) + 1).to_le_bytes())?;
            Ok(())
        },
    )
}

/// Waits (on the kernel's output signal) for `attempt` to take an output.
fn wait_output<T>(kernel: &CpuKernel, mut attempt: impl FnMut() -> Result<T, RecvFailure>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    kernel
        .outbox_items()
        .wait_until(Some(deadline), || match attempt() {
            Ok(value) => Some(value),
            Err(RecvFailure::Empty) => None,
            Err(other) => panic!("receiving from `{}` failed: {other:?}", kernel.name()),
        })
        .expect("an output within 10 s")
}

#[test]
fn a_route_carries_a_message_between_kernels_through_the_facade() {
    let backend = CpuBackend::with_budget(1, Budget::default());
    let front = backend.launch(config("front", false), add_one()).unwrap();
    let back = backend.launch(config("back", true), add_one()).unwrap();
    front
        .bind(0, CpuRoute::Kernel(back.clone()), 4, true)
        .unwrap();
    assert_eq!(front.routes(), [Some(back.kernel_id())]);
    assert_eq!(back.command(Command::Activate), Ok(State::Active));
    assert_eq!(front.command(Command::Activate), Ok(State::Active));

    front.try_send(&1u32.to_le_bytes(), [7, 9]).unwrap();
    let (value, corr) = wait_output(&back, || back.try_recv_with(|s| (word(s.payload), s.corr)));
    assert_eq!((value, corr), (3, [7, 9]));
    assert_eq!(front.counters().processed, 1);
    assert_eq!(back.counters().processed, 1);
    assert_eq!(backend.kernels().len(), 2);
    let order: Vec<String> = backend
        .kernels_in_drain_order()
        .iter()
        .map(|k| k.name().to_owned())
        .collect();
    assert_eq!(order, ["front", "back"]);
}

#[test]
fn exclusive_ends_are_handed_out_once_and_come_back() {
    let backend = CpuBackend::with_budget(1, Budget::default());
    let kernel = backend.launch(config("echo", true), add_one()).unwrap();
    kernel.command(Command::Activate).unwrap();

    let mut lane = kernel.take_lane().expect("the lane is free");
    assert!(kernel.take_lane().is_none(), "one lane at a time");
    let mut output = kernel.take_output().expect("the output is free");
    assert_eq!(
        kernel.try_recv_with(|_| ()).unwrap_err(),
        RecvFailure::Taken
    );

    lane.try_send(&10u32.to_le_bytes(), [1, 0]).unwrap();
    let got = wait_output(&kernel, || {
        kernel.try_recv_from(&mut output, |s| word(s.payload))
    });
    assert_eq!(got, 11);

    kernel.return_output(output);
    assert_eq!(
        kernel.try_recv_with(|_| ()).unwrap_err(),
        RecvFailure::Empty
    );
    drop(lane);
    assert!(kernel.take_lane().is_some(), "a dropped lane is free again");
}

#[test]
fn terminate_hands_back_what_was_queued_and_closes_the_inbox() {
    let backend = CpuBackend::with_budget(1, Budget::default());
    let kernel = backend.launch(config("idle", true), add_one()).unwrap();
    // Never activated: the messages stay queued.
    for x in 0..3u32 {
        kernel.try_send(&x.to_le_bytes(), [x, 0]).unwrap();
    }
    assert_eq!(kernel.inbox_len(), 3);
    assert_eq!(
        kernel.try_send(&[0; 100], [0, 0]),
        Err(SendFailure::TooLarge { len: 100, max: 48 })
    );

    let mut handed_back = Vec::new();
    let summary = kernel
        .terminate(&mut |s| handed_back.push(word(s.payload)), &mut |_| {})
        .unwrap();
    assert_eq!(handed_back, [0, 1, 2]);
    assert_eq!(summary.final_state, Some(State::Terminated));
    assert_eq!(kernel.state(), State::Terminated);
    assert_eq!(
        kernel.try_send(&5u32.to_le_bytes(), [0, 0]),
        Err(SendFailure::Closed(State::Terminated))
    );
}

#[test]
#[should_panic(expected = "takes activate or pause")]
fn command_refuses_a_stop_which_would_hand_messages_back() {
    let backend = CpuBackend::with_budget(1, Budget::default());
    let kernel = backend.launch(config("k", true), add_one()).unwrap();
    let _ = kernel.command(Command::Drain);
}
