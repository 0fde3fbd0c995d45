//! Draining with a faulted member: the drain terminates the faulted kernel instead of
//! failing, hands back its undelivered messages (the message its handler panicked on
//! first), says that it faulted and why, and drains the other kernels normally.

use std::time::{Duration, Instant};

use gyre::{Error, FaultPolicy, KernelSpec, Placement, RestartPolicy, Runtime, State};

const WAIT: Duration = Duration::from_secs(10);
/// The id the fragile handler panics on.
const POISON: u64 = 3;

fn wait_until_faulted(state: impl Fn() -> State) {
    let deadline = Instant::now() + WAIT;
    while state() != State::Faulted {
        assert!(Instant::now() < deadline, "the kernel did not fault");
        std::thread::yield_now();
    }
}

fn fragile(name: &str, placement: Placement) -> KernelSpec<u64, u64> {
    KernelSpec::new(name).placement(placement).cpu(|x, out| {
        assert!(*x != POISON, "poisoned message {x}");
        Ok(out.emit(*x)?)
    })
}

#[test]
fn draining_a_faulted_kernel_hands_back_its_messages() {
    for placement in [Placement::Pool, Placement::Dedicated] {
        let runtime = Runtime::builder().workers(1).build().unwrap();
        let kernel = runtime.launch(fragile("fragile", placement)).unwrap();
        for i in 0..6 {
            kernel.send(i).unwrap();
        }
        // The kernel may fault before it acknowledges the activation.
        match kernel.activate() {
            Ok(()) | Err(Error::Faulted { .. }) => {}
            Err(e) => panic!("activate: {e}"),
        }
        wait_until_faulted(|| kernel.state());
        let report = kernel
            .drain(WAIT)
            .expect("a drain of a faulted kernel reports, it does not fail");
        assert_eq!(
            report.undelivered,
            [3, 4, 5],
            "{placement:?}: the poisoned message first"
        );
        assert!(
            report
                .fault
                .as_deref()
                .is_some_and(|f| f.contains("poisoned message 3")),
            "{placement:?}: {report:?}"
        );
        assert!(!report.timed_out);
        assert_eq!(report.final_state, State::Terminated);
        assert!(
            report.undelivered_outputs.is_empty(),
            "{placement:?}: {report:?}"
        );
        // What it emitted before the fault stays receivable.
        let got: Vec<u64> = std::iter::from_fn(|| kernel.try_recv().ok().flatten()).collect();
        assert_eq!(got, [0, 1, 2], "{placement:?}");
    }
}

#[test]
fn a_group_drain_drains_the_others_and_reports_the_faulted_member() {
    let runtime = Runtime::builder().workers(2).build().unwrap();
    let mut g = runtime.group("g");
    let front = g.add(
        KernelSpec::<u64, u64>::new("front")
            .no_host_output()
            .cpu(|x, out| Ok(out.emit(*x)?)),
    );
    let back = g.add(fragile("back", Placement::Pool));
    g.route(front, 0, back);
    let group = g.launch().unwrap();
    group.activate().unwrap();
    let input = group.kernel(front).unwrap();
    for i in 0..6 {
        input.send(i).unwrap();
    }
    wait_until_faulted(|| group.kernel(back).unwrap().state());
    let report = group.drain(WAIT);
    for entry in &report.kernels {
        assert!(entry.error.is_none(), "{entry:?}");
    }
    let faulted: Vec<(&str, &str)> = report.faulted().collect();
    assert_eq!(faulted.len(), 1, "{report:?}");
    assert_eq!(faulted[0].0, "back");
    assert!(faulted[0].1.contains("poisoned message 3"), "{faulted:?}");
    let back_entry = report.kernel("back").unwrap();
    let mut handed_back: Vec<u64> = back_entry
        .undelivered
        .iter()
        .map(gyre::RawMessage::read)
        .collect();
    assert_eq!(
        handed_back.first(),
        Some(&POISON),
        "the poisoned message first"
    );
    // What `front` emitted toward `back` after the fault went to the dead letters.
    for letter in runtime.take_dead_letters() {
        assert_eq!(letter.kernel, "front", "{letter:?}");
        handed_back.push(u64::from_ne_bytes(letter.payload[..8].try_into().unwrap()));
    }
    handed_back.sort_unstable();
    assert_eq!(handed_back, [3, 4, 5]);
    let front_entry = report.kernel("front").unwrap();
    assert!(!front_entry.timed_out && front_entry.undelivered.is_empty());
    assert_eq!(front_entry.final_state, State::Terminated);
}

#[test]
fn a_drained_faulted_kernel_stays_stopped_whatever_its_fault_policy() {
    let backoff = Duration::from_secs(1);
    let runtime = Runtime::builder().workers(1).build().unwrap();
    let kernel = runtime
        .launch(
            fragile("restartable", Placement::Pool).on_fault(FaultPolicy::Restart(RestartPolicy {
                max_restarts: 5,
                initial_backoff: backoff,
                max_backoff: backoff,
                reset_after: Duration::from_secs(60),
            })),
        )
        .unwrap();
    for i in 0..6 {
        kernel.send(i).unwrap();
    }
    match kernel.activate() {
        Ok(()) | Err(Error::Faulted { .. }) => {}
        Err(e) => panic!("activate: {e}"),
    }
    wait_until_faulted(|| kernel.state());
    // Well before the restart falls due.
    let report = kernel.drain(WAIT).unwrap();
    assert_eq!(report.undelivered, [3, 4, 5]);
    // The restart would have fallen due by now: a host's drain is final.
    std::thread::sleep(backoff * 2);
    assert_eq!(kernel.restarts(), 0);
    assert_eq!(kernel.state(), State::Terminated);
}

#[test]
fn a_group_drain_does_not_wait_on_a_full_faulted_downstream() {
    // `back` faults with its two-slot inbox full and `front` still holding messages for
    // it: `front` (drained first, upstream) must not wait for room that a faulted kernel
    // never frees. Every id ends in exactly one place.
    const SENT: u64 = 40;
    let runtime = Runtime::builder().workers(2).build().unwrap();
    let mut g = runtime.group("g");
    let front = g.add(
        KernelSpec::<u64, u64>::new("front")
            .no_host_output()
            .cpu(|x, out| Ok(out.emit(*x)?)),
    );
    let back = g.add(fragile("back", Placement::Pool).capacity(2));
    g.route(front, 0, back);
    let group = g.launch().unwrap();
    let (input, output) = (group.kernel(front).unwrap(), group.kernel(back).unwrap());
    for i in 0..SENT {
        input.send(i).unwrap();
    }
    group.activate().unwrap();
    wait_until_faulted(|| output.state());
    // `front` fills `back`'s inbox and stalls on it.
    let deadline = Instant::now() + WAIT;
    while input.metrics().stalls == 0 {
        assert!(Instant::now() < deadline, "front never stalled on back");
        std::thread::yield_now();
    }
    let started = Instant::now();
    let report = group.drain(Duration::from_secs(3));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the drain waited on the faulted member: {:?}",
        started.elapsed()
    );
    for entry in &report.kernels {
        assert!(!entry.timed_out && entry.error.is_none(), "{entry:?}");
    }
    let mut seen: Vec<u64> = std::iter::from_fn(|| output.try_recv().ok().flatten()).collect();
    assert_eq!(seen, [0, 1, 2], "what back emitted before its fault");
    for entry in &report.kernels {
        seen.extend(entry.undelivered.iter().map(gyre::RawMessage::read::<u64>));
    }
    for letter in runtime.take_dead_letters() {
        seen.push(u64::from_ne_bytes(letter.payload[..8].try_into().unwrap()));
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..SENT).collect::<Vec<_>>(), "each id exactly once");
}
