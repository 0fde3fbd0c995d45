//! The workload baselines run end to end on small sizes and pass their own checks.

use gyre_bench::workloads::{
    check_output, check_results, drive_actors, drive_pipeline, expected_output, stage1, stage2,
    stage3, ActorSubject, ActorSystem, PipelineSubject, TokioActors, ACTOR_CAPACITY, STAGES,
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

#[test]
fn every_pipeline_baseline_passes_its_checks() {
    for subject in PipelineSubject::ALL {
        let took = subject.run(MESSAGES);
        assert!(took.as_nanos() > 0, "{} measured something", subject.name());
    }
}

#[test]
fn every_actor_baseline_passes_its_checks() {
    for subject in ActorSubject::ALL {
        let took = subject.run(MESSAGES, ACTORS, ACTOR_CAPACITY);
        assert!(took.as_nanos() > 0, "{} measured something", subject.name());
    }
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
