//! Restart and watchdog on device backends (the CUDA emulation, wgpu on lavapipe): a
//! faulted group restarts (by hand and by `FaultPolicy::Restart`) keeping its queued
//! messages, which are processed exactly once afterwards, in order, through the handles
//! taken before the fault; the watchdog trips on a stuck device handler and the runtime
//! still stops in bounded time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gyre::builtins::{Builtin, Record};
use gyre::{Error, FaultPolicy, Group, Kernel, KernelSpec, RestartPolicy, Runtime, State};

#[path = "support/backends.rs"]
mod backends;

const WAIT: Duration = Duration::from_secs(30);

/// The device runtimes this build and machine have.
fn devices() -> Vec<(&'static str, Runtime)> {
    backends::runtimes()
        .into_iter()
        .filter(|(name, _)| *name != "cpu")
        .collect()
}

fn record(id: u32) -> Record {
    Record {
        key: id,
        seq: id,
        value: 1.0,
        aux: 0,
    }
}

fn pass(name: &str) -> KernelSpec<Record, Record> {
    KernelSpec::<Record, Record>::new(name)
        .capacity(64)
        .max_emits(1)
        .builtin(Builtin::Affine { a: 1.0, b: 0.0 })
}

/// Waits (bounded) until `done` holds, looking again every millisecond.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A two-stage group `a → b → host`; with messages queued both in `a`'s inbox and in
/// the route to `b` (ids `0..ROUTED` went through `a`, `ROUTED..ROUTED+QUEUED` wait in
/// `a`'s inbox).
const ROUTED: u32 = 12;
const QUEUED: u32 = 20;

fn queued_group(
    name: &str,
    runtime: &Runtime,
    policy: FaultPolicy,
) -> (Group, Kernel<Record, Record>, Kernel<Record, Record>) {
    let mut g = runtime.group("restart");
    let a = g.add(pass("a").no_host_output().on_fault(policy));
    let b = g.add(pass("b").host_output(256).on_fault(policy));
    g.route(a, 0, b);
    let group = g.launch().unwrap_or_else(|e| panic!("{name}: {e}"));
    let ka = group.kernel(a).unwrap();
    let kb = group.kernel(b).unwrap();
    // `a` runs and `b` does not: what `a` passes on waits in the route.
    ka.activate().unwrap();
    for id in 0..ROUTED {
        ka.send_with_corr(record(id), u64::from(id) + 1000).unwrap();
    }
    wait_for("a to pass everything on", || {
        ka.metrics().processed == u64::from(ROUTED)
    });
    ka.deactivate().unwrap();
    for id in ROUTED..ROUTED + QUEUED {
        ka.send_with_corr(record(id), u64::from(id) + 1000).unwrap();
    }
    (group, ka, kb)
}

/// Receives `count` outputs and checks each id came once, with its correlation id, and
/// that ids from each source (`0..ROUTED` and the rest) come in order.
fn receive_all(name: &str, mut recv: impl FnMut() -> Result<(Record, u64), Error>, count: u32) {
    let mut seen = HashMap::new();
    let (mut last_routed, mut last_queued) = (None, None);
    for _ in 0..count {
        let (r, corr) = recv().unwrap_or_else(|e| panic!("{name}: {e} (seen {})", seen.len()));
        assert_eq!(corr, u64::from(r.seq) + 1000, "{name}: correlation id kept");
        *seen.entry(r.seq).or_insert(0u32) += 1;
        let last = if r.seq < ROUTED {
            &mut last_routed
        } else {
            &mut last_queued
        };
        assert!(
            last.is_none_or(|l| l < r.seq),
            "{name}: {} after {last:?}: order kept",
            r.seq
        );
        *last = Some(r.seq);
    }
    for id in 0..count {
        assert_eq!(seen.get(&id), Some(&1), "{name}: id {id} exactly once");
    }
}

#[test]
fn a_faulted_group_restarts_by_hand_with_its_queued_messages() {
    for (name, runtime) in devices() {
        let (group, ka, kb) = queued_group(name, &runtime, FaultPolicy::Report);
        // Handles taken before the fault.
        let sender = ka.sender();
        let mut receiver = kb.receiver().unwrap();
        assert!(
            group.restart().is_err(),
            "{name}: a running group does not restart"
        );
        group.fault_with("test: faulted by the host").unwrap();
        assert_eq!(ka.state(), State::Faulted, "{name}");
        assert!(
            ka.fault().unwrap().contains("faulted by the host"),
            "{name}"
        );
        assert!(
            ka.send(record(999)).is_err(),
            "{name}: a faulted group takes nothing"
        );
        group.restart().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ka.restarts(), 1, "{name}");
        assert_eq!(kb.restarts(), 1, "{name}");
        assert_eq!(ka.state(), State::Active, "{name}: restarted active");
        receive_all(
            name,
            || receiver.recv_with_corr_timeout(WAIT),
            ROUTED + QUEUED,
        );
        // The handles taken before the fault still work.
        let id = ROUTED + QUEUED;
        sender
            .send_with_corr(record(id), u64::from(id) + 1000)
            .unwrap();
        let (r, corr) = receiver.recv_with_corr_timeout(WAIT).unwrap();
        assert_eq!((r.seq, corr), (id, u64::from(id) + 1000), "{name}");
        drop(receiver);
        assert!(
            runtime.take_dead_letters().is_empty(),
            "{name}: nothing dead-lettered"
        );
        let report = group.drain(WAIT);
        assert_eq!(report.undelivered_count(), 0, "{name}");
        let _ = runtime.shutdown(WAIT);
    }
}

#[test]
fn fault_policy_restart_restarts_a_device_group_with_its_queued_messages() {
    for (name, runtime) in devices() {
        let policy = FaultPolicy::Restart(RestartPolicy {
            initial_backoff: Duration::from_millis(1),
            ..RestartPolicy::default()
        });
        let (group, ka, kb) = queued_group(name, &runtime, policy);
        group.fault_with("test: faulted by the host").unwrap();
        wait_for("the supervisor's restart", || kb.restarts() == 1);
        receive_all(name, || kb.recv_with_corr_timeout(WAIT), ROUTED + QUEUED);
        assert_eq!(ka.state(), State::Active, "{name}");
        let report = runtime.shutdown(WAIT);
        assert_eq!(report.undelivered_count(), 0, "{name}");
    }
}

#[test]
fn device_groups_say_they_restart() {
    for (name, runtime) in devices() {
        let k = runtime.launch(pass("one").host_output(16)).unwrap();
        k.activate().unwrap();
        k.send(record(1)).unwrap();
        assert_eq!(k.recv_timeout(WAIT).unwrap().seq, 1, "{name}");
        // A kernel launched alone restarts through the runtime too.
        assert!(runtime.restart(&k).is_err(), "{name}: running");
        let _ = k.terminate().unwrap();
        runtime
            .restart(&k)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        k.send(record(2)).unwrap();
        assert_eq!(k.recv_timeout(WAIT).unwrap().seq, 2, "{name}");
        assert_eq!(k.restarts(), 1, "{name}");
    }
}

/// A CUDA handler that sleeps about two seconds on the message with seq 7 (stuck, as far
/// as a 100 ms watchdog can tell), then passes it on.
#[cfg(feature = "cuda")]
const STUCK_CUDA: &str = r"
__device__ int stuck_on_seven(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    const gyre_rec *r = (const gyre_rec *)msg;
    if (r->seq == 7u) {
        for (int i = 0; i < 2000; ++i) {
            __nanosleep(1000000u);
        }
    }
    return gyre_emit(ctx, 0u, msg, 16u);
}";

#[cfg(feature = "cuda")]
fn stuck_runtime(policy: FaultPolicy) -> Option<(Runtime, Kernel<Record, Record>)> {
    use gyre::Backend;
    let runtime = match Runtime::builder()
        .backend(Backend::CudaEmulated)
        .command_timeout(Duration::from_millis(300))
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            backends::skip::skip("the cuda-emulated backend", &e);
            return None;
        }
    };
    let k = runtime
        .launch(
            KernelSpec::<Record, Record>::new("stuck")
                .capacity(64)
                .host_output(64)
                .max_emits(1)
                .sequential()
                .cuda("stuck_on_seven", STUCK_CUDA)
                .watchdog(Duration::from_millis(100))
                .on_fault(policy),
        )
        .unwrap();
    k.activate().unwrap();
    for id in 0..16 {
        k.send(record(id)).unwrap();
    }
    if policy == FaultPolicy::Report {
        wait_for("the watchdog to trip", || k.state() == State::Faulted);
        let fault = k.fault().unwrap();
        assert!(fault.starts_with("watchdog:"), "{fault}");
    }
    Some((runtime, k))
}

#[cfg(feature = "cuda")]
#[test]
fn the_watchdog_trips_on_a_stuck_device_handler_and_shutdown_is_bounded() {
    let Some((runtime, k)) = stuck_runtime(FaultPolicy::Report) else {
        return;
    };
    assert!(!k.health().reasons.is_empty());
    let start = Instant::now();
    let report = runtime.shutdown(Duration::from_millis(300));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        start.elapsed()
    );
    let entry = report.kernel("stuck").unwrap();
    assert_eq!(entry.final_state, State::Faulted);
    assert!(entry.fault.as_deref().unwrap().starts_with("watchdog:"));
    assert!(entry.abandoned, "the stuck kernel is reported abandoned");
}

#[cfg(feature = "cuda")]
#[test]
fn dropping_the_runtime_while_the_supervisor_runs_does_not_hang() {
    let Some((runtime, k)) = stuck_runtime(FaultPolicy::Report) else {
        return;
    };
    let start = Instant::now();
    drop(runtime);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "drop took {:?}",
        start.elapsed()
    );
    drop(k);
}

/// A handler that counts what it handles in its state word and faults its kernel on the
/// fifth message since launch: a restarted group (state words from zero) handles four
/// more, then faults again.
const FAULT_ON_FIFTH_CUDA: &str = r"
__device__ int fault_on_fifth(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    gyre_u32 *seen = (gyre_u32 *)ctx->state;
    seen[0] += 1u;
    if (seen[0] == 5u) {
        return GYRE_FAULT_KERNEL;
    }
    return gyre_emit(ctx, 0u, msg, 16u);
}";

const FAULT_ON_FIFTH_WGSL: &str = r"
fn fault_on_fifth(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    let seen = gyre_state_load(ctx, 0u) + 1u;
    gyre_state_store(ctx, 0u, seen);
    if (seen == 5u) {
        return GYRE_FAULT_KERNEL;
    }
    return gyre_emit(ctx, 0u, msg, 16u);
}";

/// A kernel whose handler faults it on the fifth message since launch.
fn faulty() -> KernelSpec<Record, Record> {
    KernelSpec::new("faulty")
        .capacity(64)
        .host_output(64)
        .max_emits(1)
        .sequential()
        .state_bytes(4)
        .cuda("fault_on_fifth", FAULT_ON_FIFTH_CUDA)
        .wgsl("fault_on_fifth", FAULT_ON_FIFTH_WGSL)
}

/// Activates `k`, whose handler may fault it before the activation's answer is read
/// (the answer then says it faulted).
fn activate(name: &str, k: &Kernel<Record, Record>) {
    if let Err(e) = k.activate() {
        assert!(matches!(e, Error::Faulted { .. }), "{name}: {e}");
    }
}

#[test]
fn a_handler_faults_its_kernel_and_the_fault_policy_restarts_it_until_all_is_processed() {
    for (name, runtime) in devices() {
        let policy = FaultPolicy::Restart(RestartPolicy {
            initial_backoff: Duration::from_millis(1),
            ..RestartPolicy::default()
        });
        let k = runtime
            .launch(faulty().on_fault(policy))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Everything queued first: sends to a faulted kernel fail until it restarts.
        for id in 0..20 {
            k.send_with_corr(record(id), u64::from(id) + 1000).unwrap();
        }
        activate(name, &k);
        // Per generation four handled, the fifth faults (to the dead letters): ids 0-3,
        // (4) 5-8, (9) 10-13, (14) 15-18, (19).
        let faulting = [4, 9, 14, 19];
        let expected: Vec<u32> = (0..20).filter(|id| !faulting.contains(id)).collect();
        // While the group is faulted (until its restart) a receive says so: look again.
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while got.len() < expected.len() {
            assert!(Instant::now() < deadline, "{name}: timed out after {got:?}");
            match k.recv_with_corr_timeout(WAIT) {
                Ok((r, corr)) => {
                    assert_eq!(corr, u64::from(r.seq) + 1000, "{name}");
                    got.push(r.seq);
                }
                Err(Error::Faulted { .. }) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("{name}: after {got:?}: {e}"),
            }
        }
        assert_eq!(got, expected, "{name}: each once, in order");
        wait_for("the fourth restart", || {
            k.restarts() == 4 && k.state() == State::Active
        });
        let letters = runtime.take_dead_letters();
        let lettered: Vec<(u32, u64)> = letters
            .iter()
            .map(|l| {
                let r: Record = bytemuck::pod_read_unaligned(&l.payload[..16]);
                (r.seq, u64::from(l.corr[0]) | (u64::from(l.corr[1]) << 32))
            })
            .collect();
        assert_eq!(
            lettered,
            faulting
                .iter()
                .map(|&id| (id, u64::from(id) + 1000))
                .collect::<Vec<_>>(),
            "{name}: each faulting message once, as a dead letter"
        );
        let report = runtime.shutdown(WAIT);
        assert_eq!(report.undelivered_count(), 0, "{name}");
    }
}

#[test]
fn a_kernel_a_handler_faulted_says_so_dead_letters_its_message_and_hands_back_the_rest() {
    for (name, runtime) in devices() {
        let k = runtime
            .launch(faulty())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for id in 0..10 {
            k.send(record(id)).unwrap();
        }
        activate(name, &k);
        for id in 0..4 {
            assert_eq!(k.recv_timeout(WAIT).unwrap().seq, id, "{name}");
        }
        wait_for("the fault", || k.state() == State::Faulted);
        assert!(
            k.fault().unwrap().contains("GYRE_FAULT_KERNEL"),
            "{name}: {:?}",
            k.fault()
        );
        let report = k.terminate().unwrap();
        let left: Vec<u32> = report.undelivered.iter().map(|r| r.seq).collect();
        assert_eq!(
            left,
            (5..10).collect::<Vec<_>>(),
            "{name}: what came after it"
        );
        let letters = runtime.take_dead_letters();
        assert_eq!(letters.len(), 1, "{name}: {letters:?}");
        let r: Record = bytemuck::pod_read_unaligned(&letters[0].payload[..16]);
        assert_eq!(r.seq, 4, "{name}: the faulting message is a dead letter");
    }
}

/// With `FaultPolicy::Restart`, the watchdog's fault restarts the group whose handler is
/// stuck: the handles work on the restarted group, and the runtime still stops in
/// bounded time while the old handler is still inside its sleep.
#[cfg(feature = "cuda")]
#[test]
fn the_watchdog_and_the_fault_policy_restart_a_group_whose_handler_is_stuck() {
    let policy = FaultPolicy::Restart(RestartPolicy {
        initial_backoff: Duration::from_millis(1),
        ..RestartPolicy::default()
    });
    let Some((runtime, k)) = stuck_runtime(policy) else {
        return;
    };
    wait_for("the restart", || k.restarts() == 1);
    k.send_with_corr(record(100), 100).unwrap();
    let mut seen = HashMap::new();
    while !seen.contains_key(&100) {
        let (r, _) = k.recv_with_corr_timeout(WAIT).unwrap();
        *seen.entry(r.seq).or_insert(0u32) += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    let start = Instant::now();
    let _ = runtime.shutdown(Duration::from_millis(300));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        start.elapsed()
    );
}
