//! Criterion benches: host→kernel→host round trip and windowed echo throughput, for
//! both gyre placements beside the rtrb and crossbeam baselines of the same shape, with
//! the raw cache-line ping-pong as the floor.
//!
//! ```text
//! cargo bench -p gyre-bench --bench core
//! ```
//!
//! Criterion runs one function after another, so on a machine whose core-to-core
//! latency changes between runs compare functions of one run only; the interleaved
//! report (`cargo run --release -p gyre-bench --bin gyre-bench`) pairs them round by
//! round and prints the acceptance ratios.

use std::time::Duration;

use criterion::{criterion_main, BenchmarkGroup, Criterion, Throughput};
use gyre_bench::{
    echo_throughput, ping_pong, round_trip, round_trip_histogram, Echo, Subject, WINDOW,
};

fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
}

fn subjects() -> impl Iterator<Item = Subject> {
    Subject::MAIN.into_iter().chain(Subject::DIAGNOSTIC)
}

/// One message in flight: send, wait for its echo. Time per round trip.
fn bench_round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip");
    configure(&mut group);
    group.bench_function("cacheline_pingpong", |b| b.iter_custom(ping_pong));
    for subject in subjects() {
        group.bench_function(subject.name(), |b| {
            let mut server = subject.start();
            let mut seq = 0;
            b.iter_custom(|iters| {
                let took = round_trip(&mut server, seq, iters, &mut round_trip_histogram());
                seq += iters;
                took
            });
            server.shutdown();
        });
    }
    group.finish();
}

/// Up to `WINDOW` messages in flight. Time (and throughput) per echoed message.
fn bench_echo_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("echo_throughput");
    configure(&mut group);
    group.throughput(Throughput::Elements(1));
    for subject in subjects() {
        group.bench_function(subject.name(), |b| {
            let mut server = subject.start();
            b.iter_custom(|iters| echo_throughput(&mut server, iters, WINDOW));
            server.shutdown();
        });
    }
    group.finish();
}

// The macro generates an undocumented `pub fn benches`.
#[allow(missing_docs)]
mod group {
    use super::{bench_echo_throughput, bench_round_trip};
    criterion::criterion_group!(benches, bench_round_trip, bench_echo_throughput);
}
use group::benches;
criterion_main!(benches);
