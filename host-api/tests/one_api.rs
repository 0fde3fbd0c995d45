//! One API for every backend: the same calls on the CPU, the CUDA emulation and wgpu
//! (lavapipe in CI) give the same results: pipelines of built-ins, request/reply with
//! correlation ids, async receives on a current-thread executor, blocking backpressure,
//! and the runtime-wide services (shutdown, Prometheus, dead letters) covering device
//! groups. Each device backend is skipped (loudly) where its tool is missing, except
//! under `cargo xtask ci`, where that fails.

use std::time::Duration;

use gyre::builtins::{Aggregate, Builtin, Record};
use gyre::{Backend, Backpressure, Error, KernelSpec};

#[path = "support/backends.rs"]
mod backends;
use backends::runtimes;

const TIMEOUT: Duration = Duration::from_secs(30);

fn records(n: u32) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            key: i % 5,
            seq: i,
            value: (i % 97) as f32 * 1.25 - 30.0,
            aux: i ^ 0x33,
        })
        .collect()
}

#[test]
fn a_pipeline_of_builtins_gives_the_same_outputs_on_every_backend() {
    let inputs = records(2_000);
    let mut outputs: Vec<(&str, Vec<Aggregate>)> = Vec::new();
    for (name, runtime) in runtimes() {
        let pipeline = runtime
            .pipeline::<Record>("stats")
            .stage(
                KernelSpec::<Record, Record>::new("scale")
                    .capacity(256)
                    .builtin(Builtin::Affine { a: 0.5, b: 1.0 }),
            )
            .stage(
                KernelSpec::<Record, Record>::new("keep")
                    .capacity(256)
                    .builtin(Builtin::Filter { lo: -5.0, hi: 20.0 }),
            )
            .stage(
                KernelSpec::<Record, Aggregate>::new("window")
                    .capacity(256)
                    .builtin(Builtin::Window { size: 10 }),
            )
            .launch()
            .unwrap();
        assert_eq!(
            pipeline.group().backend(),
            name.trim_end_matches("-software")
        );
        pipeline.activate().unwrap();
        let sender = pipeline.sender();
        let feed = {
            let inputs = inputs.clone();
            std::thread::spawn(move || {
                for r in inputs {
                    sender.send(r).unwrap();
                }
            })
        };
        let mut got = Vec::new();
        let expected = reference_count(&inputs);
        while got.len() < expected {
            got.push(pipeline.recv_timeout(TIMEOUT).unwrap_or_else(|e| {
                panic!("{name}: after {} of {expected} windows: {e}", got.len())
            }));
        }
        feed.join().unwrap();
        let report = pipeline.drain(TIMEOUT);
        assert_eq!(report.undelivered_count(), 0, "{name}: {report:?}");
        outputs.push((name, got));
    }
    let (first, reference) = &outputs[0];
    for (name, got) in &outputs[1..] {
        assert_eq!(got.len(), reference.len(), "{name} vs {first}");
        for (i, (a, b)) in got.iter().zip(reference).enumerate() {
            assert_eq!(
                bytemuck::bytes_of(a),
                bytemuck::bytes_of(b),
                "{name} vs {first}: window {i} differs: {a:?} vs {b:?}"
            );
        }
    }
}

/// How many windows the pipeline emits for `inputs`, by the built-ins' references.
fn reference_count(inputs: &[Record]) -> usize {
    let kept = inputs
        .iter()
        .filter(|r| {
            let v = 0.5 * r.value + 1.0;
            (-5.0..20.0).contains(&v)
        })
        .count();
    kept / 10
}

#[test]
fn concurrent_async_requests_each_get_their_own_reply_on_every_backend() {
    for (name, runtime) in runtimes() {
        let kernel = runtime
            .launch(
                KernelSpec::<Record, Record>::new("twice")
                    .capacity(1024)
                    .builtin(Builtin::Affine { a: 2.0, b: 0.0 }),
            )
            .unwrap();
        kernel.activate().unwrap();
        let requester = kernel.requester().unwrap();
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let replies = tokio.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..1_000u32 {
                let requester = requester.clone();
                tasks.spawn(async move {
                    let request = Record {
                        key: i,
                        seq: i,
                        value: i as f32,
                        aux: 0,
                    };
                    let reply = requester.request_async(request).await.unwrap();
                    (i, reply)
                });
            }
            let mut replies = Vec::new();
            while let Some(done) = tasks.join_next().await {
                replies.push(done.unwrap());
            }
            replies
        });
        assert_eq!(replies.len(), 1_000, "{name}");
        for (i, reply) in replies {
            assert_eq!((reply.key, reply.value), (i, 2.0 * i as f32), "{name}");
        }
        assert!(requester.take_unmatched().is_empty(), "{name}");
        drop(requester);
        kernel.drain(TIMEOUT).unwrap();
    }
}

#[test]
fn recv_async_on_a_current_thread_runtime_does_not_block_the_executor() {
    for (name, runtime) in runtimes() {
        let kernel = runtime
            .launch(KernelSpec::<Record, Record>::new("pass").builtin(Builtin::Gather))
            .unwrap();
        kernel.activate().unwrap();
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The receive waits first; a task on the same thread sends later. Were the
        // receive blocking the thread, the send would never run.
        let got = tokio.block_on(async {
            let receiver = kernel.clone();
            let waiting = tokio::spawn(async move { receiver.recv_async().await });
            tokio::time::sleep(Duration::from_millis(50)).await;
            kernel
                .send_async(Record {
                    key: 1,
                    seq: 2,
                    value: 3.0,
                    aux: 4,
                })
                .await
                .unwrap();
            tokio::time::timeout(TIMEOUT, waiting).await
        });
        let got = got.expect("recv_async finished").unwrap().unwrap();
        assert_eq!((got.key, got.value), (1, 3.0), "{name}");
        kernel.drain(TIMEOUT).unwrap();
    }
}

#[test]
fn blocking_backpressure_waits_for_room_and_loses_nothing_on_every_backend() {
    for (name, runtime) in runtimes() {
        let kernel = runtime
            .launch(
                KernelSpec::<Record, Record>::new("small")
                    .capacity(16)
                    .host_output(1024)
                    .builtin(Builtin::Gather),
            )
            .unwrap();
        // Not active: the inbox fills and the sender must wait.
        let sender = kernel.sender().backpressure(Backpressure::Block);
        let feed = std::thread::spawn(move || {
            for r in records(300) {
                sender.send(r).unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!feed.is_finished(), "{name}: the sender did not block");
        let full = kernel
            .sender()
            .backpressure(Backpressure::Fail)
            .send(records(1)[0])
            .unwrap_err();
        assert!(
            matches!(full.error, Error::Full { .. }),
            "{name}: {}",
            full.error
        );
        kernel.activate().unwrap();
        let mut got = Vec::new();
        while got.len() < 300 {
            got.push(kernel.recv_timeout(TIMEOUT).unwrap().seq);
        }
        feed.join().unwrap();
        assert_eq!(got, (0..300).collect::<Vec<_>>(), "{name}");
        kernel.drain(TIMEOUT).unwrap();
    }
}

#[test]
fn shutdown_metrics_and_dead_letters_cover_every_backend() {
    for (name, runtime) in runtimes() {
        let mut g = runtime.group("split");
        let split = g.add(
            KernelSpec::<Record, Record>::new("split")
                .no_host_output()
                .builtin(Builtin::Scatter { ports: 2 }),
        );
        let keep = g.add(KernelSpec::<Record, Record>::new("keep").builtin(Builtin::Gather));
        g.route(split, 0, keep).to_dead_letters(split, 1);
        let group = g.launch().unwrap();
        group.activate().unwrap();
        let input = group.kernel(split).unwrap();
        for r in records(10) {
            input.send(r).unwrap();
        }
        let keep = group.kernel(keep).unwrap();
        // Keys 0..5 repeat: keys 0, 2 and 4 go to port 0 (6 of 10), 1 and 3 to the dead
        // letters (4 of 10).
        let mut kept = 0;
        while kept < 6 {
            keep.recv_timeout(TIMEOUT).unwrap();
            kept += 1;
        }
        // The exposition parses, and the device kernels are in it with their backend
        // label and their real counts (10 messages taken by `split`, 6 by `keep`). A
        // device's counters reach the host with its control block, which may come a
        // moment after the outputs: scrape until they say so.
        let backend = group.backend();
        let processed = |text: &str, kernel: &str| {
            let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
                .unwrap_or_else(|e| panic!("{name}: the exposition does not parse: {e}\n{text}"));
            scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == "gyre_kernel_processed_total"
                        && s.labels.get("kernel") == Some(kernel)
                        && s.labels.get("backend") == Some(backend)
                })
                .map_or_else(
                    || panic!("{name}: no {kernel} series on {backend}:\n{text}"),
                    |s| s.value.clone(),
                )
        };
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let text = runtime.prometheus_text();
            let counts = (processed(&text, "split"), processed(&text, "keep"));
            let want = (
                prometheus_parse::Value::Counter(10.0),
                prometheus_parse::Value::Counter(6.0),
            );
            if counts == want {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: {counts:?}\n{text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut letters = Vec::new();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while letters.len() < 4 && std::time::Instant::now() < deadline {
            letters.extend(runtime.take_dead_letters());
            std::thread::yield_now();
        }
        assert_eq!(letters.len(), 4, "{name}: {letters:?}");
        assert!(letters.iter().all(|l| l.kernel == "split"), "{name}");
        // Counted once each, taken or not, in the total and the metric (device groups'
        // letters were not counted before).
        assert_eq!(runtime.dead_letter_total(), 4, "{name}");
        let text = runtime.prometheus_text();
        assert!(
            text.lines()
                .any(|l| l == "gyre_runtime_dead_letters_total 4"),
            "{name}: {text}"
        );
        drop((input, keep, group));
        let report = runtime.shutdown(TIMEOUT);
        let names = report.kernel_names();
        assert!(
            names.contains(&"split") && names.contains(&"keep"),
            "{name}: {names:?}"
        );
        assert_eq!(report.undelivered_count(), 0, "{name}: {report:?}");
    }
}

/// The crate docs' example: one spec with a CPU, a CUDA C and a WGSL implementation, and
/// a built-in, give the same answer on every backend.
#[test]
fn the_documented_spec_with_three_implementations_agrees_everywhere() {
    fn clamp() -> KernelSpec<Record, Record> {
        KernelSpec::<Record, Record>::new("clamp")
            .cpu(|r, out| Ok(out.emit(Record { value: r.value.min(10.0), ..*r })?))
            .cuda("clamp", r"__device__ int clamp(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
                gyre_rec r = *(const gyre_rec *)msg; r.value = fminf(r.value, 10.0f);
                return gyre_emit(ctx, 0u, &r, sizeof r); }")
            .wgsl("clamp", r"fn clamp(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
                (*msg).w[2] = bitcast<u32>(min(bitcast<f32>((*msg).w[2]), 10.0));
                return gyre_emit(ctx, 0u, msg, 16u); }")
    }
    for (name, runtime) in runtimes() {
        let pipeline = runtime
            .pipeline::<Record>("p")
            .stage(KernelSpec::new("scale").builtin(Builtin::Affine { a: 2.0, b: 1.0 }))
            .stage(clamp())
            .launch()
            .unwrap();
        pipeline.activate().unwrap();
        for value in [3.0, 8.0] {
            pipeline
                .send_with_corr(
                    Record {
                        key: 1,
                        seq: 0,
                        value,
                        aux: 0,
                    },
                    41 + value as u64,
                )
                .unwrap();
        }
        let (first, corr) = pipeline.recv_with_corr().unwrap();
        assert_eq!((first.value, corr), (7.0, 44), "{name}");
        assert_eq!(
            pipeline.recv_timeout(TIMEOUT).unwrap().value.to_bits(),
            10.0f32.to_bits(),
            "{name}"
        );
        assert_eq!(pipeline.drain(TIMEOUT).undelivered_count(), 0, "{name}");
    }
}

/// A spec without an implementation for its group's backend fails the launch, naming the
/// kernel, the backend and what to add; the advice works.
#[test]
fn a_missing_implementation_is_a_launch_error_that_says_what_to_add() {
    for (name, runtime) in runtimes().into_iter().filter(|(n, _)| *n != "cpu") {
        let only_cpu = || KernelSpec::<u32, u32>::new("cpu-only").cpu(|x, out| Ok(out.emit(*x)?));
        let err = runtime.launch(only_cpu()).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, Error::NoImplementation { .. })
                && text.contains("cpu-only")
                && text.contains("Backend::Cpu"),
            "{name}: {text}"
        );
        // The advice: run the group on the CPU.
        let mut g = runtime.group("on-cpu");
        g.backend(Backend::Cpu);
        let k = g.add(only_cpu());
        let group = g.launch().unwrap();
        assert_eq!(group.backend(), "cpu");
        group.activate().unwrap();
        group.kernel(k).unwrap().send(5).unwrap();
        assert_eq!(group.kernel(k).unwrap().recv().unwrap(), 5);
    }
}

/// A route from a CPU kernel into a device group and back is relayed through the host:
/// every message arrives once, in order, the relays are counted in Prometheus, and a
/// shutdown with messages in flight loses none (received or handed back).
#[test]
fn routes_between_the_cpu_and_a_device_are_relayed_through_the_host() {
    for (name, runtime) in runtimes().into_iter().filter(|(n, _)| *n != "cpu") {
        let mut cpu = runtime.group("front");
        cpu.backend(Backend::Cpu);
        let front = cpu.add(
            KernelSpec::<Record, Record>::new("front")
                .capacity(64)
                .host_output(64)
                .cpu(|r, out| Ok(out.emit(*r)?)),
        );
        let front_group = cpu.launch().unwrap();
        let device = runtime
            .launch(
                KernelSpec::<Record, Record>::new("double")
                    .capacity(64)
                    .host_output(64)
                    .builtin(Builtin::Affine { a: 2.0, b: 0.0 }),
            )
            .unwrap();
        let mut back = runtime.group("back");
        back.backend(Backend::Cpu);
        let back_stage = back.add(
            KernelSpec::<Record, Record>::new("back")
                .capacity(64)
                .host_output(4096)
                .cpu(|r, out| Ok(out.emit(*r)?)),
        );
        let back_group = back.launch().unwrap();
        let front = front_group.kernel(front).unwrap();
        let back = back_group.kernel(back_stage).unwrap();
        runtime.connect(&front, 0, &device).unwrap();
        runtime.connect(&device, 0, &back).unwrap();
        assert!(
            matches!(front.try_recv(), Err(Error::ReceiverTaken { .. })),
            "{name}"
        );
        front_group.activate().unwrap();
        device.activate().unwrap();
        back_group.activate().unwrap();
        for r in records(500) {
            front.send(r).unwrap();
        }
        for i in 0..300 {
            let got = back.recv_timeout(TIMEOUT).unwrap();
            assert_eq!(
                (got.seq, got.value),
                (i, 2.0 * records(i + 1)[i as usize].value),
                "{name}"
            );
        }
        let text = runtime.prometheus_text();
        assert!(
            text.lines()
                .any(|l| l.starts_with("gyre_relay_forwarded_total")
                    && l.contains(r#"from="front""#)
                    && l.contains(r#"to="double""#)),
            "{name}: relay not in metrics:\n{text}"
        );
        // Shut down with 200 messages somewhere between the kernels: each comes out once,
        // received or handed back.
        let report = runtime.shutdown(TIMEOUT);
        let mut seen: Vec<u32> = (0..300).collect();
        while let Ok(Some(r)) = back.try_recv() {
            seen.push(r.seq);
        }
        for k in &report.kernels {
            seen.extend(k.undelivered.iter().map(|m| m.read::<Record>().seq));
            seen.extend(k.undelivered_outputs.iter().map(|m| m.read::<Record>().seq));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..500).collect::<Vec<_>>(), "{name}: {report:?}");
    }
}

/// A terminate leaves the host output to a `Receiver` that holds it, on every backend:
/// the report hands back no output, and the receiver still gets every one.
#[test]
fn a_terminate_leaves_the_output_to_its_receiver_on_every_backend() {
    for (name, runtime) in runtimes() {
        let kernel = runtime
            .launch(KernelSpec::<Record, Record>::new("pass").builtin(Builtin::Gather))
            .unwrap();
        kernel.activate().unwrap();
        let mut rx = kernel.receiver().unwrap();
        for r in records(5) {
            kernel.send(r).unwrap();
        }
        let deadline = std::time::Instant::now() + TIMEOUT;
        while kernel.metrics().processed < 5 {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: not processed"
            );
            std::thread::yield_now();
        }
        let report = kernel.terminate().unwrap();
        assert!(report.undelivered_outputs.is_empty(), "{name}: {report:?}");
        let got: Vec<u32> = (0..5)
            .map(|_| rx.recv_timeout(TIMEOUT).unwrap().seq)
            .collect();
        assert_eq!(got, [0, 1, 2, 3, 4], "{name}");
        assert!(
            matches!(rx.recv_timeout(TIMEOUT), Err(Error::Terminated { .. })),
            "{name}"
        );
    }
}

/// The same small-ring pipeline of built-ins launches and runs on every backend: a
/// built-in emits at most one message per message, so a device reserves room for one (the
/// default of four made wgpu refuse a downstream inbox of two slots that the CPU and the
/// CUDA emulation took).
#[test]
fn a_pipeline_of_builtins_with_tiny_rings_runs_on_every_backend() {
    for (name, runtime) in runtimes() {
        let pipeline = runtime
            .pipeline::<Record>("tiny")
            .stage(
                KernelSpec::<Record, Record>::new("x1")
                    .capacity(2)
                    .builtin(Builtin::Echo { bytes: 16 }),
            )
            .stage(
                KernelSpec::<Record, Record>::new("x2")
                    .capacity(2)
                    .builtin(Builtin::Echo { bytes: 16 }),
            )
            .launch()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        pipeline.activate().unwrap();
        let inputs = records(50);
        let mut got = Vec::new();
        for r in &inputs {
            pipeline.send(*r).unwrap();
            got.push(
                pipeline
                    .recv_timeout(TIMEOUT)
                    .unwrap_or_else(|e| panic!("{name}: {e}")),
            );
        }
        assert_eq!(got, inputs, "{name}");
        pipeline.drain(TIMEOUT);
    }
}

/// A second stop is refused the same way on every backend while the runtime lives: a
/// kernel's second `drain` or `terminate` is a lifecycle error (device kernels answered
/// a report of nothing), and a group's second stop leaves its terminated kernels out (a
/// device group listed them again).
#[test]
fn a_second_stop_is_refused_the_same_way_on_every_backend() {
    for (name, runtime) in runtimes() {
        let kernel = runtime
            .launch(KernelSpec::<Record, Record>::new("once").builtin(Builtin::Gather))
            .unwrap();
        kernel.activate().unwrap();
        for r in records(3) {
            kernel.send(r).unwrap();
        }
        let report = kernel.drain(TIMEOUT).unwrap();
        assert_eq!(report.final_state, gyre::State::Terminated, "{name}");
        for (what, again) in [
            ("drain", kernel.drain(TIMEOUT)),
            ("terminate", kernel.terminate()),
        ] {
            let error = again.expect_err(&format!("{name}: a second stop ({what}) is refused"));
            assert!(
                matches!(error, Error::Lifecycle { .. }),
                "{name}: {what}: {error}"
            );
            assert!(
                error.to_string().contains("Terminated"),
                "{name}: {what}: {error}"
            );
        }
        let pipeline = runtime
            .pipeline::<Record>("twice")
            .stage(KernelSpec::<Record, Record>::new("a").builtin(Builtin::Gather))
            .stage(KernelSpec::<Record, Record>::new("b").builtin(Builtin::Gather))
            .launch()
            .unwrap();
        pipeline.activate().unwrap();
        assert_eq!(pipeline.group().drain(TIMEOUT).kernels.len(), 2, "{name}");
        assert!(pipeline.group().drain(TIMEOUT).kernels.is_empty(), "{name}");
        assert!(pipeline.group().terminate().kernels.is_empty(), "{name}");
        let shutdown = runtime.shutdown(TIMEOUT);
        assert!(
            shutdown
                .kernels
                .iter()
                .all(|k| k.kernel != "a" && k.kernel != "b" && k.kernel != "once"),
            "{name}: kernels stopped before are left out of the shutdown report: {shutdown:?}"
        );
    }
}

/// Dropping the runtime while a kernel's host output is full and only a `Receiver` is
/// left to read it: the receiver still gets every message the kernel accepted, in order,
/// and the drop does not wait for anyone to receive. (On the CPU the drain waited the
/// whole command timeout for room and kept the inputs for handles, which a `Receiver`
/// cannot take them back through: they were lost; device groups already pumped their
/// host outputs.)
#[test]
fn dropping_the_runtime_with_a_full_output_loses_nothing_for_its_receiver() {
    for (name, runtime) in runtimes() {
        let kernel = runtime
            .launch(
                KernelSpec::<Record, Record>::new("full")
                    .capacity(64)
                    .host_output(16)
                    .builtin(Builtin::Gather),
            )
            .unwrap();
        kernel.activate().unwrap();
        let mut accepted = 0u32;
        for r in records(400) {
            match kernel.send_timeout(r, Duration::from_millis(200)) {
                Ok(()) => accepted += 1,
                Err(e) => {
                    assert!(
                        matches!(e.error, Error::Full { .. } | Error::Timeout { .. }),
                        "{name}: {e}"
                    );
                    break;
                }
            }
        }
        assert!(
            accepted > 16 && accepted < 400,
            "{name}: {accepted} accepted"
        );
        let mut rx = kernel.receiver().unwrap();
        drop(kernel);
        let started = std::time::Instant::now();
        drop(runtime);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "{name}: the drop took {took:?}"
        );
        let mut got = Vec::new();
        let end = loop {
            match rx.recv_timeout(TIMEOUT) {
                Ok(r) => got.push(r.seq),
                Err(e) => break e,
            }
        };
        assert!(matches!(end, Error::RuntimeGone { .. }), "{name}: {end}");
        assert_eq!(got, (0..accepted).collect::<Vec<u32>>(), "{name}");
    }
}

/// A receive that waits while the runtime shuts down ends the same way on every backend,
/// with `RuntimeGone`, through the kernel handle and through a `Receiver` (the CPU said
/// `Terminated`, device backends `RuntimeGone`).
#[test]
fn a_receive_waiting_across_a_shutdown_ends_with_runtime_gone_on_every_backend() {
    for (name, runtime) in runtimes() {
        let spec = |n: &str| KernelSpec::<Record, Record>::new(n).builtin(Builtin::Gather);
        let kernel = runtime.launch(spec("k")).unwrap();
        let other = runtime.launch(spec("r")).unwrap();
        kernel.activate().unwrap();
        other.activate().unwrap();
        let mut rx = other.receiver().unwrap();
        let waiting = kernel.clone();
        let through_kernel = std::thread::spawn(move || waiting.recv_timeout(TIMEOUT));
        let through_receiver = std::thread::spawn(move || rx.recv_timeout(TIMEOUT));
        std::thread::sleep(Duration::from_millis(100));
        runtime.shutdown(TIMEOUT);
        for (what, ended) in [
            ("Kernel::recv", through_kernel.join().unwrap()),
            ("Receiver::recv", through_receiver.join().unwrap()),
        ] {
            let error = ended.expect_err(&format!("{name}: {what}: nothing was sent"));
            assert!(
                matches!(error, Error::RuntimeGone { .. }),
                "{name}: {what}: {error}"
            );
        }
    }
}

/// A spec whose rings cannot be laid out is refused with the same error on every backend
/// (device backends answered `Launch` with their own words, and took slot sizes too
/// small for the message type by using the size they needed), and the advice works.
#[test]
fn layout_errors_are_the_same_on_every_backend() {
    for (name, runtime) in runtimes() {
        let spec = |n: &str| KernelSpec::<Record, Record>::new(n).builtin(Builtin::Gather);
        for (what, bad) in [
            ("capacity 3", spec("c").capacity(3)),
            ("host output 0", spec("h").host_output(0)),
            ("slot of 48 bytes", spec("s").slot_bytes(48)),
        ] {
            let error = runtime.launch(bad).map(drop).unwrap_err();
            assert!(
                matches!(error, Error::Layout { .. }),
                "{name}: {what}: {error:?}"
            );
        }
        let error = runtime
            .launch(spec("small").slot_bytes(16))
            .map(drop)
            .unwrap_err();
        let Error::MessageTooLarge { suggested, .. } = error else {
            panic!("{name}: a 16-byte slot for a 16-byte record: {error:?}");
        };
        assert!(
            error
                .to_string()
                .contains(&format!(".slot_bytes({suggested})")),
            "{name}: {error}"
        );
        let kernel = runtime.launch(spec("fits").slot_bytes(suggested)).unwrap();
        kernel.activate().unwrap();
        kernel.send(records(1)[0]).unwrap();
        assert_eq!(kernel.recv_timeout(TIMEOUT).unwrap().seq, 0, "{name}");
    }
}

/// A reply that comes after its request timed out and its requester was dropped never
/// answers a later requester's request on the same output, on any backend: correlation
/// ids are unique across requesters (each counted from 1, and a new requester got the
/// old one's late reply).
#[test]
// 2 · 10 + 1 and 2 · 20 + 1 are exact in f32.
#[allow(clippy::float_cmp)]
fn a_late_reply_never_answers_another_requesters_request() {
    for (name, runtime) in runtimes() {
        let kernel = runtime
            .launch(
                KernelSpec::<Record, Record>::new("affine")
                    .builtin(Builtin::Affine { a: 2.0, b: 1.0 }),
            )
            .unwrap();
        let record = |value: f32| Record {
            key: 0,
            seq: 0,
            value,
            aux: 0,
        };
        // Launched, not active: the first request cannot be answered in time.
        let first = kernel.requester().unwrap();
        let late = first.request_timeout(record(10.0), Duration::from_millis(100));
        assert!(
            matches!(late, Err(Error::Timeout { .. })),
            "{name}: {late:?}"
        );
        drop(first);
        let second = kernel.requester().unwrap();
        kernel.activate().unwrap();
        let reply = second.request_timeout(record(20.0), TIMEOUT).unwrap();
        assert_eq!(reply.value, 41.0, "{name}: {reply:?}");
        let unmatched: Vec<f32> = second
            .take_unmatched()
            .iter()
            .map(|(_, r)| r.value)
            .collect();
        assert_eq!(unmatched, [21.0], "{name}: the late reply is unmatched");
    }
}

/// Group topologies are judged the same on every backend: two kernels of one name are
/// refused (the CPU launched them), a port routed to the host of a kernel without a host
/// output is refused with what to change (device groups launched it and lost what the
/// port emitted), and an acyclic group that allows cycles launches (devices refused it
/// for the permission alone).
#[test]
fn group_topologies_are_judged_the_same_on_every_backend() {
    for (name, runtime) in runtimes() {
        let gather = |n: &str| KernelSpec::<Record, Record>::new(n).builtin(Builtin::Gather);

        let mut g = runtime.group("twins");
        let a = g.add(gather("same"));
        let b = g.add(gather("same"));
        g.route(a, 0, b);
        let error = g.launch().map(drop).unwrap_err();
        assert!(
            error.to_string().contains("two kernels are named `same`"),
            "{name}: {error}"
        );

        let mut g = runtime.group("mute");
        let a = g.add(gather("a").no_host_output());
        g.to_host(a, 0);
        let error = g.launch().map(drop).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("no host output") && text.contains(".host_output("),
            "{name}: {text}"
        );
        // The advice works.
        let mut g = runtime.group("heard");
        let a = g.add(gather("a").host_output(16));
        g.to_host(a, 0);
        let group = g.launch().unwrap();
        group.activate().unwrap();
        let kernel = group.kernel(a).unwrap();
        kernel.send(records(1)[0]).unwrap();
        assert_eq!(kernel.recv_timeout(TIMEOUT).unwrap().seq, 0, "{name}");

        let mut g = runtime.group("acyclic");
        let a = g.add(gather("a").no_host_output());
        let b = g.add(gather("b"));
        g.route(a, 0, b).allow_cycles();
        let group = g.launch().unwrap_or_else(|e| panic!("{name}: {e}"));
        group.activate().unwrap();
        group.kernel(a).unwrap().send(records(1)[0]).unwrap();
        assert_eq!(
            group.kernel(b).unwrap().recv_timeout(TIMEOUT).unwrap().seq,
            0,
            "{name}"
        );
    }
}

/// A port bound to the dead letters is the kernel's own routing, not a failure: a
/// request whose handler sends a copy there and answers on its host output gets its
/// answer on every backend (it used to end with `DeadLettered` when the copy came in
/// first, at random on the CPU and the CUDA emulation), and one whose only emit goes
/// there gets no answer (a timeout), as a handler that emits nothing.
#[test]
fn a_copy_routed_to_the_dead_letters_neither_answers_nor_fails_a_request() {
    for (name, runtime) in runtimes() {
        let mut g = runtime.group("audited");
        let audit = g.add(
            KernelSpec::<u32, u32>::new("audit")
                .ports(2)
                .cpu(|x, out| {
                    out.emit_to(1, *x)?;
                    Ok(out.emit(x + 100)?)
                })
                .cuda(
                    "audit_f",
                    r"__device__ int audit_f(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    gyre_u32 x = *(const gyre_u32 *)msg;
    int r = gyre_emit(ctx, 1u, &x, sizeof x);
    if (r != 0) return r;
    x += 100u;
    return gyre_emit(ctx, 0u, &x, sizeof x);
}",
                )
                .wgsl(
                    "audit_f",
                    "fn audit_f(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    let r = gyre_emit(ctx, 1u, msg, 4u);
    if (r != 0u) { return r; }
    (*msg).w[0] = (*msg).w[0] + 100u;
    return gyre_emit(ctx, 0u, msg, 4u);
}",
                ),
        );
        g.to_dead_letters(audit, 1);
        let split = g
            .add(KernelSpec::<Record, Record>::new("split").builtin(Builtin::Scatter { ports: 2 }));
        g.to_dead_letters(split, 1);
        let group = g.launch().unwrap();
        group.activate().unwrap();
        let requester = group.kernel(audit).unwrap().requester().unwrap();
        for i in 0..20 {
            let reply = requester.request_timeout(i, TIMEOUT);
            assert_eq!(reply.ok(), Some(i + 100), "{name}: request {i}");
        }
        assert!(requester.take_unmatched().is_empty(), "{name}");
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let reply = tokio
            .block_on(async { tokio::time::timeout(TIMEOUT, requester.request_async(7)).await })
            .expect("the async request ends");
        assert_eq!(reply.ok(), Some(107), "{name}");
        let routed_only = group.kernel(split).unwrap().requester().unwrap();
        let record = Record {
            key: 1,
            seq: 0,
            value: 1.0,
            aux: 0,
        };
        let error = routed_only
            .request_timeout(record, Duration::from_millis(300))
            .unwrap_err();
        assert!(matches!(error, Error::Timeout { .. }), "{name}: {error}");
        let mut letters = Vec::new();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while letters.len() < 22 && std::time::Instant::now() < deadline {
            letters.extend(runtime.take_dead_letters());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            letters.len(),
            22,
            "{name}: every routed copy is a dead letter"
        );
        assert!(letters.iter().all(|l| l.routed && !l.is_input), "{name}");
    }
}

/// A stage that adds `add`, with device functions named `f` whatever `add` is (one spec
/// factory used twice in a group, different code baked in).
fn adder(name: &str, add: u32) -> KernelSpec<u32, u32> {
    KernelSpec::<u32, u32>::new(name)
        .cpu(move |x, out| Ok(out.emit(x + add)?))
        .cuda(
            "f",
            format!(
                "__device__ int f(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {{\n\
                 gyre_u32 x = *(const gyre_u32 *)msg + {add}u;\n\
                 return gyre_emit(ctx, 0u, &x, sizeof x);\n}}"
            ),
        )
        .wgsl(
            "f",
            format!(
                "fn f(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {{\n\
                 (*msg).w[0] = (*msg).w[0] + {add}u;\n\
                 return gyre_emit(ctx, 0u, msg, 4u);\n}}"
            ),
        )
}

/// Two kernels of one group whose device functions share a name each run their own code
/// on every backend (wgpu ran the first one's for both: a group is one WGSL module).
#[test]
fn kernels_whose_device_functions_share_a_name_each_run_their_own() {
    for (name, runtime) in runtimes() {
        let pipeline = runtime
            .pipeline::<u32>("adders")
            .stage(adder("thousand", 1000))
            .stage(adder("one", 1))
            .launch()
            .unwrap();
        pipeline.activate().unwrap();
        pipeline.send(5).unwrap();
        assert_eq!(pipeline.recv_timeout(TIMEOUT).unwrap(), 1006, "{name}");
    }
}

/// A stage that passes `u32`s through and faults on `fault_on` (a panic on the CPU,
/// `GYRE_FAULT_KERNEL` on devices).
fn faulting_pass(name: &str, fault_on: u32) -> KernelSpec<u32, u32> {
    KernelSpec::<u32, u32>::new(name)
        .cpu(move |x, out| {
            assert!(*x != fault_on, "fault on {x}");
            Ok(out.emit(*x)?)
        })
        .cuda(
            "pass_or_fault",
            format!(
                "__device__ int pass_or_fault(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {{\n\
                 gyre_u32 x = *(const gyre_u32 *)msg;\n\
                 if (x == {fault_on}u) {{ return GYRE_FAULT_KERNEL; }}\n\
                 return gyre_emit(ctx, 0u, &x, sizeof x);\n}}"
            ),
        )
        .wgsl(
            "pass_or_fault",
            format!(
                "fn pass_or_fault(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {{\n\
                 if ((*msg).w[0] == {fault_on}u) {{ return GYRE_FAULT_KERNEL; }}\n\
                 return gyre_emit(ctx, 0u, msg, 4u);\n}}"
            ),
        )
}

/// A receive waiting while the kernel faults and its fault policy restarts it keeps
/// waiting and gets what the restarted kernel emits, on every backend (devices ended it
/// with `Faulted` at once, while the CPU waited); once the restarts are used up, it ends
/// with `Faulted` right away.
#[test]
fn a_receive_waiting_across_a_supervised_restart_keeps_waiting_on_every_backend() {
    use gyre::{FaultPolicy, RestartPolicy};
    for (name, runtime) in runtimes() {
        let kernel = runtime
            .launch(
                faulting_pass("restarted", 5).on_fault(FaultPolicy::Restart(RestartPolicy {
                    max_restarts: 1,
                    initial_backoff: Duration::from_millis(200),
                    ..RestartPolicy::default()
                })),
            )
            .unwrap();
        kernel.activate().unwrap();
        let waiting = {
            let kernel = kernel.clone();
            std::thread::spawn(move || kernel.recv_timeout(TIMEOUT))
        };
        std::thread::sleep(Duration::from_millis(50));
        kernel.send(5).unwrap();
        kernel.send_timeout(6, TIMEOUT).unwrap();
        let got = waiting.join().unwrap();
        assert_eq!(got.ok(), Some(6), "{name}");
        assert_eq!(kernel.restarts(), 1, "{name}");
        // The second fault finds no restart left: a waiting receive ends.
        let waiting = {
            let kernel = kernel.clone();
            std::thread::spawn(move || kernel.recv_timeout(TIMEOUT))
        };
        let sent = std::time::Instant::now();
        kernel.send(5).unwrap();
        let error = waiting.join().unwrap().unwrap_err();
        assert!(matches!(error, Error::Faulted { .. }), "{name}: {error}");
        // Told when the circuit opened, not at the end of its timeout (the CPU's
        // receiver was not woken then).
        assert!(sent.elapsed() < TIMEOUT / 2, "{name}: {:?}", sent.elapsed());
    }
}

/// `restarts()` counts a restart by hand as one by the fault policy, on every backend
/// (the CPU counted only the policy's).
#[test]
fn a_restart_by_hand_counts_on_every_backend() {
    for (name, runtime) in runtimes() {
        let kernel = runtime.launch(faulting_pass("by-hand", 5)).unwrap();
        kernel.activate().unwrap();
        kernel.send(5).unwrap();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while kernel.state() != gyre::State::Faulted {
            assert!(std::time::Instant::now() < deadline, "{name}: no fault");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(kernel.restarts(), 0, "{name}");
        runtime.restart(&kernel).unwrap();
        assert_eq!(kernel.restarts(), 1, "{name}");
        // Back `Launched` on the CPU, active on devices: activating works on both.
        kernel.activate().unwrap();
        kernel.send(6).unwrap();
        assert_eq!(kernel.recv_timeout(TIMEOUT).unwrap(), 6, "{name}");
    }
}

/// A group of a runtime that was shut down or dropped does not restart, on any backend
/// (devices launched a fresh group that belonged to no runtime, and what it then took
/// was lost with the last handle).
#[test]
fn a_group_of_a_gone_runtime_does_not_restart_on_any_backend() {
    for shut_down in [true, false] {
        for (name, runtime) in runtimes() {
            let pipeline = runtime
                .pipeline::<Record>("after")
                .stage(KernelSpec::<Record, Record>::new("a").builtin(Builtin::Gather))
                .launch()
                .unwrap();
            pipeline.activate().unwrap();
            if shut_down {
                runtime.shutdown(TIMEOUT);
            } else {
                drop(runtime);
            }
            let restart = pipeline.group().restart();
            assert!(
                matches!(restart, Err(Error::RuntimeGone { .. })),
                "{name}, shut down {shut_down}: {restart:?}"
            );
            let send = pipeline.send(records(1)[0]).map_err(|e| e.error);
            assert!(
                matches!(send, Err(Error::RuntimeGone { .. })),
                "{name}, shut down {shut_down}: {send:?}"
            );
        }
    }
}
