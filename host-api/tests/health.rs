//! Health: a stuck handler is reported by the watchdog, a full inbox and a high error
//! rate degrade, a fault is unhealthy, and an idle kernel is healthy.

use std::time::Duration;

use gyre::{HealthPolicy, HealthStatus, KernelSpec, Placement, Runtime, State};

fn policy() -> HealthPolicy {
    HealthPolicy {
        watchdog: Duration::from_millis(150),
        ..HealthPolicy::default()
    }
}

#[test]
fn a_stuck_handler_is_reported_by_the_watchdog_and_can_be_terminated() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release = std::sync::Mutex::new(release_rx);
    let stuck = rt
        .launch(
            KernelSpec::<u64, u64>::new("stuck")
                .placement(Placement::Dedicated)
                .cpu(move |x, out| {
                    if *x == 1 {
                        // Stuck until the test lets it go.
                        release.lock().unwrap().recv().ok();
                    }
                    Ok(out.emit(*x)?)
                }),
        )
        .unwrap();
    stuck.activate().unwrap();
    for i in 0..5 {
        stuck.send(i).unwrap();
    }
    assert_eq!(stuck.recv().unwrap(), 0);
    assert_eq!(stuck.health_with(&policy()).status, HealthStatus::Healthy);
    std::thread::sleep(Duration::from_millis(400));
    let health = stuck.health_with(&policy());
    assert_eq!(health.status, HealthStatus::Unhealthy, "{health:?}");
    assert!(
        health.reasons[0].contains("heartbeat has not moved"),
        "{health:?}"
    );
    let overall = rt.health(&policy());
    assert_eq!(overall.status, HealthStatus::Unhealthy);
    // Terminate: stops after the message in hand; the rest comes back.
    let terminator = {
        let stuck = stuck.clone();
        std::thread::spawn(move || stuck.terminate())
    };
    std::thread::sleep(Duration::from_millis(50));
    release_tx.send(()).unwrap();
    let report = terminator.join().unwrap().unwrap();
    assert_eq!(report.undelivered, vec![2, 3, 4]);
    assert_eq!(
        report.undelivered_outputs,
        vec![1],
        "the message in hand finished and its output came back"
    );
    assert_eq!(report.final_state, State::Terminated);
}

#[test]
fn pressure_degrades_and_faults_are_unhealthy() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let idle = rt
        .launch(KernelSpec::<u64, u64>::new("idle").cpu(|x, out| Ok(out.emit(*x)?)))
        .unwrap();
    idle.activate().unwrap();
    assert_eq!(idle.health_with(&policy()).status, HealthStatus::Healthy);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        idle.health_with(&policy()).status,
        HealthStatus::Healthy,
        "idle is not stuck"
    );

    let full = rt
        .launch(
            KernelSpec::<u64, u64>::new("full")
                .capacity(8)
                .cpu(|x, out| Ok(out.emit(*x)?)),
        )
        .unwrap();
    for i in 0..8 {
        full.send(i).unwrap();
    }
    let health = full.health_with(&policy());
    assert_eq!(health.status, HealthStatus::Degraded, "{health:?}");
    assert!(health.reasons[0].contains("inbox"), "{health:?}");

    let picky = rt
        .launch(
            KernelSpec::<u64, u64>::new("picky")
                .cpu(|x, _| Err(gyre::HandlerError(format!("no {x}")))),
        )
        .unwrap();
    picky.activate().unwrap();
    assert_eq!(picky.health_with(&policy()).status, HealthStatus::Healthy);
    for i in 0..10 {
        picky.send(i).unwrap();
    }
    while picky.metrics().errors < 10 {
        std::thread::yield_now();
    }
    let health = picky.health_with(&policy());
    assert_eq!(health.status, HealthStatus::Degraded, "{health:?}");
    assert!(
        health.reasons[0].contains("failed 10 of the 10"),
        "{health:?}"
    );

    let bad = rt
        .launch(KernelSpec::<u64, u64>::new("bad").cpu(|_, _| panic!("boom")))
        .unwrap();
    bad.activate().unwrap();
    bad.send(1).unwrap();
    while bad.state() != State::Faulted {
        std::thread::yield_now();
    }
    let health = bad.health_with(&policy());
    assert_eq!(health.status, HealthStatus::Unhealthy, "{health:?}");
    assert!(health.reasons[0].contains("faulted"), "{health:?}");
}
