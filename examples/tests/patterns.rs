//! The pattern examples with small inputs, their results recomputed on the host.

use std::collections::{HashMap, HashSet, VecDeque};

use gyre_examples::bsp::{self, Graph};
use gyre_examples::coordinator_worker::{self, RESULT};
use gyre_examples::fan_out::{self, Routing};
use gyre_examples::request_reply;
use gyre_examples::scatter_gather::{self, Job, PARTS, VALUES};

#[test]
fn fan_out_delivers_each_message_once_and_keeps_key_order() {
    let workers = 3u32;
    let input: Vec<(u32, u32)> = (0..3000u32)
        .map(|i| ((i * 7 + i / 13) % 11, i.wrapping_mul(2_654_435_761)))
        .collect();
    let outcome = fan_out::run(gyre::Backend::Cpu, &input, workers).expect("fan-out runs");
    println!("{outcome}");
    assert_eq!(outcome.messages, input.len());
    let routings: Vec<Routing> = outcome.runs.iter().map(|r| r.routing).collect();
    assert_eq!(routings, [Routing::RoundRobin, Routing::ByKey]);

    for run in &outcome.runs {
        assert_eq!(run.per_worker.len(), workers as usize);
        assert_eq!(run.undelivered, 0);
        let mut seen = vec![0u32; input.len()];
        let mut owners: HashMap<u32, HashSet<usize>> = HashMap::new();
        for (w, items) in run.per_worker.iter().enumerate() {
            let mut last_seq_of_key: HashMap<u32, u32> = HashMap::new();
            let mut last_seq = None;
            for item in items {
                let seq = item.seq as usize;
                let (key, value) = input[seq];
                assert_eq!(item.key, key, "seq {seq}");
                assert_eq!(
                    item.value,
                    value.wrapping_mul(2).wrapping_add(1),
                    "seq {seq}"
                );
                assert_eq!(item.worker as usize, w, "seq {seq} claims another worker");
                seen[seq] += 1;
                owners.entry(key).or_default().insert(w);
                if let Some(prev) = last_seq_of_key.insert(key, item.seq) {
                    assert!(prev < item.seq, "worker {w}: key {key} out of order");
                }
                if run.routing == Routing::RoundRobin {
                    assert_eq!(item.seq % workers, w as u32, "round-robin port");
                    // One producer, one ring: a worker sees its share in order.
                    assert!(last_seq < Some(item.seq), "worker {w} out of order");
                    last_seq = Some(item.seq);
                }
            }
        }
        assert!(
            seen.iter().all(|&n| n == 1),
            "{}: every message exactly once",
            run.routing
        );
        match run.routing {
            Routing::RoundRobin => {
                for items in &run.per_worker {
                    assert_eq!(items.len(), input.len() / workers as usize);
                }
            }
            Routing::ByKey => {
                for (key, ws) in &owners {
                    assert_eq!(ws.len(), 1, "key {key} went to several workers");
                    let w = *ws.iter().next().expect("one owner");
                    assert_eq!(w as u32, fan_out::key_hash(*key) % workers);
                }
                let busy = run.per_worker.iter().filter(|w| !w.is_empty()).count();
                assert!(busy >= 2, "11 keys spread over more than one worker");
            }
        }
    }
}

#[test]
fn scatter_gather_combines_every_job() {
    let workers = 3u32;
    let jobs: Vec<Job> = (0..400u32)
        .map(|j| Job {
            values: std::array::from_fn(|i| (j * 1009 + i as u32 * 7919) % 100_000),
        })
        .collect();
    let outcome =
        scatter_gather::run(gyre::Backend::Cpu, &jobs, workers).expect("scatter/gather runs");
    println!("{outcome}");
    assert_eq!(outcome.results.len(), jobs.len());
    assert_eq!(outcome.undelivered, 0);
    let mut seen = vec![false; jobs.len()];
    for (id, result) in &outcome.results {
        let job = &jobs[*id as usize];
        let mut sum = 0u64;
        let mut max = 0u32;
        for &v in &job.values {
            sum += u64::from(v) * u64::from(v);
            max = max.max(v);
        }
        assert_eq!(result.sum_squares, sum, "job {id}");
        assert_eq!(result.max, max, "job {id}");
        assert_eq!(result.parts as usize, PARTS, "job {id}");
        assert_eq!(
            result.workers.count_ones() as usize,
            PARTS.min(workers as usize),
            "job {id}: parts spread over the workers"
        );
        assert!(result.workers < 1 << workers);
        assert!(!seen[*id as usize], "job {id} twice");
        seen[*id as usize] = true;
    }
    assert!(seen.iter().all(|&s| s), "every job has a result");
    assert_eq!(VALUES % PARTS, 0);
}

#[test]
fn request_reply_answers_every_request() {
    let (concurrent, blocking) = (1000usize, 120usize);
    let outcome = request_reply::run(gyre::Backend::Cpu, concurrent, blocking, 3)
        .expect("request/reply runs");
    println!("{outcome}");
    let ids: Vec<u64> = outcome.async_pairs.iter().map(|(q, _)| q.id).collect();
    assert_eq!(ids, (0..concurrent as u64).collect::<Vec<_>>());
    let mut ids: Vec<u64> = outcome.blocking_pairs.iter().map(|(q, _)| q.id).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (concurrent as u64..(concurrent + blocking) as u64).collect::<Vec<_>>()
    );
    for (q, r) in outcome.async_pairs.iter().chain(&outcome.blocking_pairs) {
        assert_eq!(*q, request_reply::request_for(q.id));
        assert_eq!(r.id, q.id);
        assert_eq!(r.sum, u64::from(q.a) + u64::from(q.b), "request {}", q.id);
        assert_eq!(
            r.product,
            u64::from(q.a) * u64::from(q.b),
            "request {}",
            q.id
        );
    }
    assert_eq!(outcome.mismatches(), 0);
    assert!(
        outcome.peak_in_flight > 1,
        "async requests overlap (peak {})",
        outcome.peak_in_flight
    );
    let latency = outcome.latency.expect("latency recorded");
    assert_eq!(latency.count, (concurrent + blocking) as u64);
    assert!(latency.p50 <= latency.p90 && latency.p90 <= latency.p99);
    assert!(latency.p99 <= latency.p999 && latency.p999 <= latency.max);
    let blocking_latency = outcome.blocking_latency.expect("latency recorded");
    assert_eq!(blocking_latency.count, blocking as u64);
}

fn collatz(n: u64) -> u64 {
    let (mut n, mut steps) = (n, 0);
    while n != 1 && n != 0 {
        n = if n & 1 == 0 { n >> 1 } else { n * 3 + 1 };
        steps += 1;
    }
    steps
}

#[test]
fn coordinator_worker_completes_every_task_within_capacity() {
    let (workers, capacity) = (3u32, 2u32);
    let inputs: Vec<u64> = (0..600u64).map(|i| i * 7919 % 100_000 + 1).collect();
    let outcome =
        coordinator_worker::run(&inputs, workers, capacity).expect("coordinator/worker runs");
    println!("{outcome}");
    assert_eq!(outcome.results.len(), inputs.len());
    assert_eq!(outcome.undelivered, 0);
    let mut seen = vec![false; inputs.len()];
    let mut per_worker = vec![0usize; workers as usize];
    for r in &outcome.results {
        assert_eq!(r.kind, RESULT);
        let task = r.task as usize;
        assert_eq!(r.input, inputs[task], "task {task}");
        assert_eq!(r.output, collatz(inputs[task]), "task {task}");
        assert!(r.worker < workers, "task {task}");
        assert!(
            (1..=capacity).contains(&r.outstanding),
            "task {task}: {} outstanding",
            r.outstanding
        );
        per_worker[r.worker as usize] += 1;
        assert!(!seen[task], "task {task} twice");
        seen[task] = true;
    }
    assert!(seen.iter().all(|&s| s), "every task has a result");
    assert!(per_worker.iter().all(|&n| n > 0), "{per_worker:?}");
}

/// The smallest vertex id of each vertex's component, by breadth-first search.
fn components_by_bfs(graph: &Graph) -> Vec<u32> {
    let n = graph.vertices as usize;
    let mut adjacency = vec![Vec::new(); n];
    for &(u, v) in &graph.edges {
        adjacency[u as usize].push(v as usize);
        adjacency[v as usize].push(u as usize);
    }
    let mut label = vec![u32::MAX; n];
    for start in 0..n {
        if label[start] != u32::MAX {
            continue;
        }
        // Vertices are visited in increasing order, so `start` is the smallest.
        label[start] = start as u32;
        let mut queue = VecDeque::from([start]);
        while let Some(u) = queue.pop_front() {
            for &w in &adjacency[u] {
                if label[w] == u32::MAX {
                    label[w] = start as u32;
                    queue.push_back(w);
                }
            }
        }
    }
    label
}

fn check_bsp(graph: &Graph, partitions: u32) -> bsp::Outcome {
    let outcome = bsp::run(graph, partitions).expect("bsp runs");
    println!("{outcome}");
    assert_eq!(outcome.labels, components_by_bfs(graph));
    assert!(outcome.matches_union_find);
    assert_eq!(outcome.undelivered, 0);
    for (i, step) in outcome.steps.iter().enumerate() {
        assert_eq!(
            step.step as usize, i,
            "the barrier completes steps in order"
        );
        assert_eq!(step.partitions, partitions);
    }
    let last = outcome.steps.last().expect("at least one superstep");
    assert_eq!(last.changed, 0, "stops when nothing changed");
    assert_eq!(last.updates, 0);
    assert_eq!(outcome.steps[0].changed, graph.vertices);
    assert!(outcome.steps[..outcome.steps.len() - 1]
        .iter()
        .all(|s| s.changed > 0));
    outcome
}

#[test]
fn bsp_components_match_bfs() {
    check_bsp(&Graph::random(500, 520, 7), 3);
}

#[test]
fn bsp_with_two_partitions() {
    // Two partitions: each peer route is the other's only upstream, so it writes into
    // the single-producer lane while the host writes into the shared inbox.
    check_bsp(&Graph::random(300, 330, 11), 2);
}

#[test]
fn bsp_takes_one_superstep_per_hop_on_a_path() {
    // A path 0 - 1 - ... - 39 over 4 partitions: every edge crosses partitions, so label 0
    // moves one hop per superstep; vertices 40..50 are isolated.
    let graph = Graph {
        vertices: 50,
        edges: (0..39).map(|i| (i, i + 1)).collect(),
    };
    let outcome = check_bsp(&graph, 4);
    let changed: Vec<u32> = outcome.steps.iter().map(|s| s.changed).collect();
    let mut expected = vec![50];
    expected.extend((1..=40).map(|s| 40 - s));
    assert_eq!(changed, expected);
    assert_eq!(outcome.components(), 11);
}
