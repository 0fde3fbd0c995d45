//! The workload baselines run end to end on small sizes and pass their own checks.

use std::cell::Cell;
use std::rc::Rc;

use gyre_bench::workloads::{
    check_output, check_results, drive_actors, drive_pipeline, expected_output, measure_actors,
    measure_pipeline, stage1, stage2, stage3, ActorResult, ActorSubject, ActorSystem,
    CrossbeamPipeline, GyreActors, GyrePipeline, Pipeline, PipelineSubject, RtrbPipeline,
    TokioActors, ACTOR_CAPACITY, STAGES, WARM_UP_DIVISOR,
};
use gyre_bench::Msg;

const MESSAGES: u64 = 5_000;
const ACTORS: usize = 100;

#[test]
fn the_stages_compose_to_the_expected_output() {
    for seq in [0, 1, 7, 1 << 40, u64::MAX - 1] {
        let through = STAGES.iter().fold(Msg::new(seq), |m, stage| stage(m));
        assert_eq!(through, stage3(stage2(stage1(Msg::new(seq)))));
        check_output(seq, &through);
    }
}

#[test]
#[should_panic(expected = "wrong or out of order")]
fn a_wrong_output_fails_the_check() {
    check_output(3, &expected_output(4));
}

/// What went through a measured system: messages sent, outputs received, and whether
/// it was shut down.
#[derive(Default)]
struct Tally {
    sent: Cell<u64>,
    received: Cell<u64>,
    shut_down: Cell<bool>,
}

/// A pipeline or actor system that counts what goes through it.
struct Counted<S> {
    inner: S,
    tally: Rc<Tally>,
}

impl<S> Counted<S> {
    fn new(inner: S) -> (Self, Rc<Tally>) {
        let tally = Rc::new(Tally::default());
        let counted = Self {
            inner,
            tally: Rc::clone(&tally),
        };
        (counted, tally)
    }
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get() + 1);
}

impl<P: Pipeline> Pipeline for Counted<P> {
    fn send(&mut self, msg: Msg) {
        bump(&self.tally.sent);
        self.inner.send(msg);
    }
    fn recv(&mut self) -> Msg {
        bump(&self.tally.received);
        self.inner.recv()
    }
    fn shutdown(self) {
        self.inner.shutdown();
        self.tally.shut_down.set(true);
    }
}

impl<A: ActorSystem> ActorSystem for Counted<A> {
    fn actors(&self) -> usize {
        self.inner.actors()
    }
    fn send(&mut self, actor: usize, msg: Msg) {
        bump(&self.tally.sent);
        self.inner.send(actor, msg);
    }
    fn recv_result(&mut self) -> ActorResult {
        bump(&self.tally.received);
        self.inner.recv_result()
    }
    fn shutdown(self) {
        self.inner.shutdown();
        self.tally.shut_down.set(true);
    }
}

/// Measures `pipeline` and checks that every message of the warm-up and of the timed
/// part went through it and came out (each output is checked by `drive_pipeline`).
fn measure_counted_pipeline(name: &str, pipeline: impl Pipeline) {
    let (pipeline, tally) = Counted::new(pipeline);
    measure_pipeline(pipeline, MESSAGES);
    // The warm-up runs whole chunks of MESSAGES / WARM_UP_DIVISOR until WARM_UP_MIN has
    // passed: at least one.
    let chunk = MESSAGES / WARM_UP_DIVISOR;
    let warm_up = tally.sent.get().saturating_sub(MESSAGES);
    assert!(
        warm_up >= chunk && warm_up % chunk == 0,
        "{name}: {} messages sent, not {MESSAGES} and whole warm-up chunks of {chunk}",
        tally.sent.get()
    );
    assert_eq!(
        tally.received.get(),
        tally.sent.get(),
        "{name}: outputs received"
    );
    assert!(tally.shut_down.get(), "{name}: shut down cleanly");
}

#[test]
fn every_pipeline_subject_runs_every_message_through_its_checks() {
    // One of each subject the report measures (`PipelineSubject::run` builds the same).
    assert_eq!(PipelineSubject::ALL.len(), 4);
    measure_counted_pipeline("rtrb", RtrbPipeline::start());
    measure_counted_pipeline("crossbeam", CrossbeamPipeline::start());
    measure_counted_pipeline("gyre pool 1", GyrePipeline::start(1));
    measure_counted_pipeline("gyre pool 2", GyrePipeline::start(2));
}

/// Measures `system` and checks that every message and flush of both rounds went in and
/// one result per actor per round came out (the results are checked by `drive_actors`).
fn measure_counted_actors(name: &str, system: impl ActorSystem) {
    let (system, tally) = Counted::new(system);
    measure_actors(system, MESSAGES);
    // Warm-up chunks of MESSAGES / WARM_UP_DIVISOR (at least one) and the timed part, each
    // ending with a flush that every actor answers.
    let received = tally.received.get();
    assert!(
        received % ACTORS as u64 == 0 && received >= 2 * ACTORS as u64,
        "{name}: {received} results, not one per actor for each of at least two flushes"
    );
    let warm_up_chunks = received / ACTORS as u64 - 1;
    let expected_sent = MESSAGES
        + warm_up_chunks * (MESSAGES / WARM_UP_DIVISOR)
        + (warm_up_chunks + 1) * ACTORS as u64;
    assert_eq!(tally.sent.get(), expected_sent, "{name}: messages sent");
    assert!(tally.shut_down.get(), "{name}: shut down cleanly");
}

#[test]
fn every_actor_subject_runs_every_message_through_its_checks() {
    assert_eq!(ActorSubject::ALL.len(), 2);
    measure_counted_actors("tokio", TokioActors::start(ACTORS, ACTOR_CAPACITY));
    measure_counted_actors("gyre", GyreActors::start(ACTORS, ACTOR_CAPACITY));
}

#[test]
fn actors_can_be_driven_repeatedly_with_a_count_not_a_multiple_of_the_actors() {
    let mut system = TokioActors::start(ACTORS, ACTOR_CAPACITY);
    drive_actors(&mut system, 0, 0);
    drive_actors(&mut system, 0, 1_234);
    drive_actors(&mut system, 1_234, 777);
    system.shutdown();
}

#[test]
#[should_panic(expected = "wrong count or sum")]
fn a_wrong_sum_fails_the_check() {
    let mut results = gyre_bench::workloads::expected_results(0, 500, 10);
    results[3].sum += 1;
    check_results(&results, 0, 500, 10);
}

#[test]
fn the_pipeline_driver_keeps_order_with_a_window_of_one() {
    let mut pipeline = gyre_bench::workloads::CrossbeamPipeline::start();
    drive_pipeline(&mut pipeline, 10, 100, 1);
    gyre_bench::workloads::Pipeline::shutdown(pipeline);
}
