//! The examples on every backend this build and machine have: the same topology and
//! handler semantics give the same outputs as on the CPU (the `pipeline` example's window
//! summaries bit for bit, the pattern examples' messages per worker, results per job and
//! replies per request). Device backends are skipped loudly where their tool is missing,
//! except under `cargo xtask ci`, where that fails.

use gyre::Backend;
use gyre_examples::{fan_out, request_reply, scatter_gather, sensors};

#[path = "../../runtime/tests/support/skip.rs"]
mod support;

/// The device backends this build has, each only if a runtime builds on it here.
fn devices() -> Vec<(&'static str, Backend)> {
    let wanted: &[(&str, Backend)] = &[
        #[cfg(feature = "cuda")]
        ("cuda-emulated", Backend::CudaEmulated),
        #[cfg(feature = "wgpu")]
        ("wgpu-software", Backend::WgpuSoftware),
    ];
    wanted
        .iter()
        .copied()
        .filter(
            |&(name, backend)| match gyre_examples::backend::runtime(backend) {
                Ok(_) => true,
                Err(e) => {
                    support::skip(&format!("the examples on {name}"), &e);
                    false
                }
            },
        )
        .collect()
}

#[test]
fn the_pipeline_gives_the_same_window_summaries_on_every_backend() {
    // 3,000 frames per sensor, 31 of them outliers the filter drops: two full windows
    // per sensor.
    let frames = sensors::SENSORS * sensors::WINDOW * 3;
    let cpu = sensors::run(Backend::Cpu, frames).unwrap();
    assert_eq!(cpu.summaries.len(), 2 * sensors::SENSORS as usize);
    for (name, backend) in devices() {
        let device = sensors::run(backend, frames).unwrap();
        assert_eq!(device.undelivered, 0, "{name}");
        assert_eq!(
            bytemuck::cast_slice::<_, u8>(&device.summaries),
            bytemuck::cast_slice::<_, u8>(&cpu.summaries),
            "{name}: the window summaries differ from the CPU's"
        );
        let processed: Vec<u64> = device.metrics.iter().map(|m| m.processed).collect();
        let cpu_processed: Vec<u64> = cpu.metrics.iter().map(|m| m.processed).collect();
        assert_eq!(processed, cpu_processed, "{name}");
    }
}

#[test]
fn fan_out_sends_every_item_to_the_same_worker_on_every_backend() {
    let input = fan_out::sample_input(2_000, 16, 7);
    let cpu = fan_out::run(Backend::Cpu, &input, 3).unwrap();
    for (name, backend) in devices() {
        let device = fan_out::run(backend, &input, 3).unwrap();
        for (d, c) in device.runs.iter().zip(&cpu.runs) {
            assert_eq!(d.undelivered, 0, "{name}");
            assert_eq!(d.per_worker, c.per_worker, "{name}: {} differs", d.routing);
        }
    }
}

#[test]
fn scatter_gather_gives_the_same_result_per_job_on_every_backend() {
    let jobs = scatter_gather::sample_jobs(300, 11);
    let mut cpu = scatter_gather::run(Backend::Cpu, &jobs, 3).unwrap().results;
    // Results arrive in completion order, which depends on timing: compare per job, and
    // leave out `in_flight`, which counts jobs pending at that moment.
    let by_job = |results: &mut Vec<(u64, scatter_gather::JobResult)>| {
        results.sort_by_key(|(job, _)| *job);
        for (_, r) in results.iter_mut() {
            r.in_flight = 0;
        }
    };
    by_job(&mut cpu);
    for (name, backend) in devices() {
        let outcome = scatter_gather::run(backend, &jobs, 3).unwrap();
        assert_eq!(outcome.undelivered, 0, "{name}");
        let mut device = outcome.results;
        by_job(&mut device);
        assert_eq!(device, cpu, "{name}");
    }
}

#[test]
fn request_reply_answers_every_request_alike_on_every_backend() {
    let cpu = request_reply::run(Backend::Cpu, 300, 100, 2).unwrap();
    assert_eq!(cpu.mismatches(), 0);
    let sorted = |pairs: &[(request_reply::Request, request_reply::Reply)]| {
        let mut pairs = pairs.to_vec();
        pairs.sort_by_key(|(q, _)| q.id);
        pairs
    };
    for (name, backend) in devices() {
        let device = request_reply::run(backend, 300, 100, 2).unwrap();
        assert_eq!(device.mismatches(), 0, "{name}");
        assert_eq!(
            sorted(&device.async_pairs),
            sorted(&cpu.async_pairs),
            "{name}"
        );
        assert_eq!(
            sorted(&device.blocking_pairs),
            sorted(&cpu.blocking_pairs),
            "{name}"
        );
    }
}
