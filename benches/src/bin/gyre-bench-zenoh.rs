//! Cross-process throughput and round trips over the Zenoh bridge (`gyre-zenoh`), against
//! raw Zenoh pub/sub and request/reply between the same two processes, in the same run.
//!
//! ```text
//! cargo run --release -p gyre-bench --features zenoh --bin gyre-bench-zenoh [ROUNDS] [--rt COUNT] [--tp COUNT]
//! ```
//!
//! The binary starts itself a second time (the child) and the two talk over one Zenoh
//! peer session each, connected over `tcp/127.0.0.1:PORT` (a free loopback port; multicast
//! scouting off). Both subjects move the 64-byte [`Msg`]:
//!
//! - **bridge**: host → parent kernel `source` (identity, CPU) → `Link` → child export →
//!   child kernel `echo` (identity) → child `Link` → parent export → parent kernel `sink`
//!   (identity) → host `Receiver`. Every message crosses the process boundary twice, with
//!   the bridge's sequence numbers, acknowledgements and credits. Each process runs its
//!   kernels on a pool of one worker: on this 2-core machine the other core is left to
//!   Zenoh's threads and the bridge's (two workers spin and yield beside them and made
//!   the round trip ~20 % slower, measured).
//! - **raw**, over the same two sessions: pub/sub, the parent `put`s to `…/raw/in`, a child
//!   thread takes each sample from its subscriber and `put`s it to `…/raw/back`, the
//!   parent's subscriber receives it. Every publisher uses `CongestionControl::Block`:
//!   with Zenoh's default `Drop`, a put that finds the transmit queue full is dropped and
//!   the count would never complete. Request/reply: `session.get(…/raw/rr)` with the
//!   message as payload, answered by a child queryable thread with the same bytes.
//!
//! Throughput keeps [`WINDOW`] messages in flight (`echo_throughput`); a round trip has
//! one message in flight, recorded in an HDR histogram. Each round measures the bridge,
//! then raw Zenoh, each after a raw cache-line ping-pong (the floor of any round trip on
//! this machine); ratios are taken within a round and the summary gives their medians
//! against the acceptance goals of issue 13: bridge throughput ≥ 0.8× raw pub/sub, bridge
//! round-trip p50 ≤ 1.5× raw request/reply. The child stops when the parent says so or
//! when its standard input closes (the parent is gone); the parent kills a child that
//! lingers.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver as LineRx;
use gyre::{Backend, Kernel, KernelSpec, Runtime};
use gyre_bench::plot::{Chart, Panel, Series};
use gyre_bench::{
    echo_throughput, median, ping_pong, progress, rate, report, round_trip, round_trip_histogram,
    say, Echo, Msg, CAPACITY, WINDOW,
};
use gyre_zenoh::{Bridge, BridgeConfig, ExportOptions, LinkMetrics, LinkOptions};
use zenoh::qos::CongestionControl;
use zenoh::query::ConsolidationMode;
use zenoh::Wait;

/// The hidden first argument that makes the binary the child.
const CHILD_ROLE: &str = "--zenoh-bench-child";
/// Round trips per subject per round (after `RT_WARM_UP` unrecorded ones), by default.
const RT_COUNT: u64 = 2_000;
const RT_WARM_UP: u64 = 200;
/// Echoes per subject per round (after `TP_WARM_UP` untimed ones), by default.
const TP_COUNT: u64 = 50_000;
const TP_WARM_UP: u64 = 5_000;
/// Ping-pong bounces before each subject.
const PP_COUNT: u64 = 20_000;
/// Default rounds.
const ROUNDS: usize = 5;
/// No round starts after this long.
const TIME_CAP: Duration = Duration::from_secs(90);
/// Acceptance (issue 13): bridge throughput at least this times raw pub/sub.
const MIN_TP_RATIO: f64 = 0.8;
/// Acceptance (issue 13): bridge round-trip p50 at most this times raw request/reply.
const MAX_RT_RATIO: f64 = 1.5;
/// How long set-up, drains and the child's exit may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Slots of the raw subscribers' FIFO channels (more than the window in flight).
const RAW_FIFO: usize = 4 * WINDOW as usize;
const USAGE: &str = "usage: gyre-bench-zenoh [ROUNDS] [--rt COUNT] [--tp COUNT]   \
                     (ROUNDS default 5, COUNT defaults 2000 round trips, 50000 echoes)";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(CHILD_ROLE) {
        child(&args[1..]);
    } else {
        parent(&args);
    }
}

fn endpoint(port: u16) -> String {
    format!("tcp/127.0.0.1:{port}")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// An identity kernel on the CPU, active, with inbox and host output of [`CAPACITY`].
fn identity(runtime: &Runtime, name: &str) -> Kernel<Msg, Msg> {
    let kernel = runtime
        .launch(
            KernelSpec::<Msg, Msg>::new(name)
                .capacity(CAPACITY)
                .host_output(CAPACITY)
                .cpu(|m, out| Ok(out.emit(*m)?)),
        )
        .expect("the identity kernel launches");
    kernel.activate().expect("the identity kernel activates");
    kernel
}

fn payload(msg: &Msg) -> Vec<u8> {
    bytemuck::bytes_of(msg).to_vec()
}

fn from_payload(bytes: &[u8]) -> Msg {
    bytemuck::pod_read_unaligned(bytes)
}

// ---------------------------------------------------------------------------------------
// The parent.

/// The child process, killed if it is still there when this is dropped.
struct ChildGuard {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: LineRx<String>,
}

impl ChildGuard {
    fn spawn(endpoint: &str, prefix: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("this binary's path"))
            .args([CHILD_ROLE, endpoint, prefix])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the child process");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The next line the child prints, or a panic naming `what` after [`STEP_TIMEOUT`].
    fn line(&self, what: &str) -> String {
        self.lines
            .recv_timeout(STEP_TIMEOUT)
            .unwrap_or_else(|_| panic!("the child did not say `{what}` in time"))
    }

    fn tell(&mut self, what: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open until the stop");
        writeln!(stdin, "{what}").expect("the child reads its stdin");
        stdin.flush().expect("flush the child's stdin");
    }

    /// Waits for the child to exit (closing its stdin), killing it after [`STEP_TIMEOUT`].
    fn wait(&mut self) -> ExitStatus {
        self.stdin = None;
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("the child did not exit within {STEP_TIMEOUT:?}; killed it");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The bridge subject seen from the host: into `source`, out of `sink`. A message that
/// does not come back within [`STEP_TIMEOUT`] stops the run with the links' metrics.
struct BridgeEcho<'a> {
    tx: &'a mut gyre::ExclusiveSender<Msg>,
    rx: &'a mut gyre::Receiver<Msg>,
    link: &'a gyre_zenoh::Link<Msg>,
    back: &'a gyre_zenoh::Export<Msg>,
}

impl BridgeEcho<'_> {
    fn stuck(&self, what: &str) -> ! {
        panic!(
            "the bridge made no progress for {STEP_TIMEOUT:?} ({what}); forward link {:?}, \
             health {:?}; return export {:?}, links {:?}",
            self.link.metrics(),
            self.link.health(),
            self.back.metrics(),
            self.back.links()
        )
    }
}

impl Echo for BridgeEcho<'_> {
    fn send(&mut self, msg: Msg) {
        if self.tx.send_timeout(msg, STEP_TIMEOUT).is_err() {
            self.stuck("send into the source");
        }
    }

    fn recv(&mut self) -> Msg {
        match self.rx.recv_timeout(STEP_TIMEOUT) {
            Ok(m) => m,
            Err(_) => self.stuck("receive from the sink"),
        }
    }

    fn shutdown(self) {}
}

type Sub = zenoh::pubsub::Subscriber<zenoh::handlers::FifoChannelHandler<zenoh::sample::Sample>>;

/// Raw Zenoh pub/sub seen from the host: `put` to `…/raw/in`, receive from `…/raw/back`.
struct RawEcho<'a> {
    publisher: &'a zenoh::pubsub::Publisher<'static>,
    subscriber: &'a Sub,
}

impl Echo for RawEcho<'_> {
    fn send(&mut self, msg: Msg) {
        self.publisher
            .put(payload(&msg))
            .wait()
            .expect("raw put (CongestionControl::Block)");
    }

    fn recv(&mut self) -> Msg {
        let sample = self
            .subscriber
            .recv_timeout(STEP_TIMEOUT)
            .expect("the raw subscriber lives")
            .unwrap_or_else(|| panic!("raw pub/sub made no progress for {STEP_TIMEOUT:?}"));
        from_payload(&sample.payload().to_bytes())
    }

    fn shutdown(self) {}
}

/// Raw request/reply round trips: `session.get(key)` with the message, one at a time.
fn raw_request_reply(
    session: &zenoh::Session,
    key: &str,
    first_seq: u64,
    count: u64,
    histogram: &mut hdrhistogram::Histogram<u64>,
) {
    for seq in first_seq..first_seq + count {
        let start = Instant::now();
        let back = raw_get(session, key, seq).expect("the child's queryable answers");
        histogram.saturating_record(start.elapsed().as_nanos() as u64);
        assert_eq!(back.seq, seq, "the reply is the request");
    }
}

fn raw_get(session: &zenoh::Session, key: &str, seq: u64) -> Option<Msg> {
    let replies = session
        .get(key)
        .payload(payload(&Msg::new(seq)))
        .consolidation(ConsolidationMode::None)
        .timeout(STEP_TIMEOUT)
        .wait()
        .expect("raw get");
    let reply = replies.recv().ok()?;
    let sample = reply.result().ok()?;
    Some(from_payload(&sample.payload().to_bytes()))
}

#[derive(Clone, Copy, Debug)]
struct Measured {
    ping_pong_ns: f64,
    p50_ns: f64,
    p99_ns: f64,
    msgs_per_s: f64,
    /// Raw only: round-trip p50 of pub/sub one message at a time (diagnostic).
    pubsub_p50_ns: f64,
}

struct Options {
    rounds: usize,
    rt: u64,
    tp: u64,
}

fn parse(args: &[String]) -> Options {
    let mut o = Options {
        rounds: ROUNDS,
        rt: RT_COUNT,
        tp: TP_COUNT,
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |flag: &str| -> u64 {
            iter.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} takes a count; {USAGE}"))
        };
        match arg.as_str() {
            "--rt" => o.rt = value("--rt").max(1),
            "--tp" => o.tp = value("--tp").max(1),
            n => {
                o.rounds = n
                    .parse::<usize>()
                    .unwrap_or_else(|_| panic!("unknown argument `{n}`; {USAGE}"))
                    .max(1);
            }
        }
    }
    o
}

#[allow(clippy::too_many_lines)] // one run, in the order it happens
fn parent(args: &[String]) {
    let options = parse(args);
    let port = free_port();
    let endpoint = endpoint(port);
    let prefix = format!("gyre-bench-zenoh/{}", std::process::id());
    let bridge = Bridge::open(BridgeConfig::peer().listen(&endpoint)).expect("open the bridge");
    let session = bridge.session().clone();

    let runtime = Runtime::builder()
        .backend(Backend::Cpu)
        .workers(1)
        .build()
        .expect("the CPU runtime starts");
    let source = identity(&runtime, "source");
    let sink = identity(&runtime, "sink");
    let back = bridge
        .export::<Msg>(
            &format!("{prefix}/back"),
            sink.sender(),
            ExportOptions::default(),
        )
        .expect("export the sink");
    let mut source_tx = source.exclusive_sender().expect("the source's lane");
    let mut sink_rx = sink.receiver().expect("the sink's output");

    let raw_in = session
        .declare_publisher(format!("{prefix}/raw/in"))
        .congestion_control(CongestionControl::Block)
        .wait()
        .expect("declare the raw publisher");
    let raw_back = session
        .declare_subscriber(format!("{prefix}/raw/back"))
        .with(zenoh::handlers::FifoChannel::new(RAW_FIFO))
        .wait()
        .expect("declare the raw subscriber");
    let rr_key = format!("{prefix}/raw/rr");

    let mut child = ChildGuard::spawn(&endpoint, &prefix);
    let ready = child.line("ready");
    assert_eq!(ready, "ready", "the child's first word");
    let link = bridge
        .link(
            &format!("{prefix}/fwd"),
            source.receiver().expect("the source's output"),
            LinkOptions {
                connect_timeout: STEP_TIMEOUT,
                ..LinkOptions::default()
            },
        )
        .expect("link the source to the child's echo");
    // The child's subscriber and queryable are known here once a put matches and a get
    // is answered.
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !raw_in.matching_status().wait().is_ok_and(|m| m.matching()) {
        assert!(Instant::now() < deadline, "the child's raw subscriber");
        std::thread::sleep(Duration::from_millis(10));
    }
    while raw_get(&session, &rr_key, 0).is_none() {
        assert!(Instant::now() < deadline, "the child's raw queryable");
        std::thread::sleep(Duration::from_millis(10));
    }

    say!(
        "gyre-bench-zenoh: two processes over {endpoint}, 64-byte messages; {} rounds of \
         {} round trips and {} windowed echoes (window {WINDOW}) per subject",
        options.rounds,
        options.rt,
        options.tp
    );
    say!(
        "{:>5}  {:<7} {:>9} {:>10} {:>10} {:>12}   {:>9} {:>9}",
        "round",
        "subject",
        "pp ns",
        "p50 µs",
        "p99 µs",
        "msg/s",
        "tp ratio",
        "p50 ratio"
    );
    let started = Instant::now();
    let mut rounds: Vec<(Measured, Measured)> = Vec::new();
    let mut seq = 0u64;
    let bar = progress::bar(options.rounds as u64, "gyre-bench-zenoh");
    for round in 0..options.rounds {
        if started.elapsed() > TIME_CAP {
            say!("(time cap of {TIME_CAP:?} reached: {round} rounds)");
            break;
        }
        // Bridge.
        let ping_pong_ns = ping_pong(PP_COUNT).as_nanos() as f64 / PP_COUNT as f64;
        let mut echo = BridgeEcho {
            tx: &mut source_tx,
            rx: &mut sink_rx,
            link: &link,
            back: &back,
        };
        round_trip(&mut echo, 0, RT_WARM_UP, &mut round_trip_histogram());
        let mut h = round_trip_histogram();
        round_trip(&mut echo, RT_WARM_UP, options.rt, &mut h);
        echo_throughput(&mut echo, TP_WARM_UP, WINDOW);
        let took = echo_throughput(&mut echo, options.tp, WINDOW);
        let bridge_m = Measured {
            ping_pong_ns,
            p50_ns: h.value_at_quantile(0.5) as f64,
            p99_ns: h.value_at_quantile(0.99) as f64,
            msgs_per_s: rate(options.tp, took),
            pubsub_p50_ns: f64::NAN,
        };
        // Raw Zenoh.
        let ping_pong_ns = ping_pong(PP_COUNT).as_nanos() as f64 / PP_COUNT as f64;
        raw_request_reply(
            &session,
            &rr_key,
            seq,
            RT_WARM_UP,
            &mut round_trip_histogram(),
        );
        let mut h = round_trip_histogram();
        raw_request_reply(&session, &rr_key, seq + RT_WARM_UP, options.rt, &mut h);
        seq += RT_WARM_UP + options.rt;
        let mut echo = RawEcho {
            publisher: &raw_in,
            subscriber: &raw_back,
        };
        // Diagnostic: pub/sub one message at a time (not an acceptance baseline).
        round_trip(&mut echo, 0, RT_WARM_UP, &mut round_trip_histogram());
        let mut ps = round_trip_histogram();
        round_trip(&mut echo, RT_WARM_UP, options.rt, &mut ps);
        echo_throughput(&mut echo, TP_WARM_UP, WINDOW);
        let took = echo_throughput(&mut echo, options.tp, WINDOW);
        let raw_m = Measured {
            ping_pong_ns,
            p50_ns: h.value_at_quantile(0.5) as f64,
            p99_ns: h.value_at_quantile(0.99) as f64,
            msgs_per_s: rate(options.tp, took),
            pubsub_p50_ns: ps.value_at_quantile(0.5) as f64,
        };
        for (name, m) in [("bridge", bridge_m), ("raw", raw_m)] {
            let ratios = if name == "bridge" {
                format!(
                    "{:>9.2}× {:>8.2}×",
                    bridge_m.msgs_per_s / raw_m.msgs_per_s,
                    bridge_m.p50_ns / raw_m.p50_ns
                )
            } else {
                format!(
                    "(pub/sub round trip p50 {:.1} µs)",
                    raw_m.pubsub_p50_ns / 1e3
                )
            };
            say!(
                "{:>5}  {:<7} {:>9.0} {:>10.1} {:>10.1} {:>12.0}   {ratios}",
                round + 1,
                name,
                m.ping_pong_ns,
                m.p50_ns / 1e3,
                m.p99_ns / 1e3,
                m.msgs_per_s
            );
        }
        rounds.push((bridge_m, raw_m));
        bar.inc(1);
    }
    progress::done(&bar);

    // The drain: upstream first.
    let report = source.drain(STEP_TIMEOUT).expect("drain the source");
    assert!(!report.timed_out, "the source drained");
    let link_report = link.drain(STEP_TIMEOUT);
    assert!(
        link_report.finished && link_report.undelivered.is_empty(),
        "the forward link drained: {link_report:?}"
    );
    let forward = link_report.metrics;
    child.tell("stop");
    assert!(
        back.wait_finished(1, STEP_TIMEOUT),
        "the child's return link finished"
    );
    let report = sink.drain(STEP_TIMEOUT).expect("drain the sink");
    assert!(!report.timed_out, "the sink drained");
    let mut child_said = Vec::new();
    loop {
        let line = child.line("done");
        if line == "done" {
            break;
        }
        child_said.push(line);
    }
    let status = child.wait();
    assert!(status.success(), "the child exited with {status}");

    summary(&rounds);
    say!("\nlink metrics at the drain (a link's round trip: frame sent → written into the remote inbox):");
    print_link("forward (parent source → child echo)", &forward);
    for line in child_said {
        say!("  {line}");
    }
    let m = back.close();
    say!(
        "  parent export `back`: received {}, delivered {}, consumed {}, duplicates {}, gaps {}",
        m.received,
        m.delivered,
        m.consumed,
        m.duplicates,
        m.gaps
    );
    let shutdown = runtime.shutdown(STEP_TIMEOUT);
    assert_eq!(
        shutdown.undelivered_count(),
        0,
        "nothing left in the runtime"
    );
    if let Err(e) = report::write("gyre-bench-zenoh", &chart(&rounds)) {
        eprintln!("gyre-bench-zenoh: {e}");
        std::process::exit(1);
    }
}

/// The plot of the run: both subjects per round, the acceptance ratios within each round,
/// and the placement (the median of the round's two ping-pongs).
fn chart(rounds: &[(Measured, Measured)]) -> Chart {
    let col = |f: &dyn Fn(&(Measured, Measured)) -> f64| rounds.iter().map(f).collect::<Vec<_>>();
    Chart {
        title: "gyre-bench-zenoh: the bridge against raw Zenoh, two processes, per round"
            .to_owned(),
        caption: format!("one run on {}; {} rounds", report::machine(), rounds.len()),
        rounds: rounds.len(),
        ping_pong_ns: col(&|(b, r)| median(vec![b.ping_pong_ns, r.ping_pong_ns])),
        panels: vec![
            Panel::new("round trip p50, one message in flight", "us")
                .with(Series::subject("bridge", col(&|(b, _)| b.p50_ns / 1e3)))
                .with(Series::baseline(
                    "raw get/queryable",
                    col(&|(_, r)| r.p50_ns / 1e3),
                ))
                .with(Series::baseline(
                    "raw pub/sub (diagnostic)",
                    col(&|(_, r)| r.pubsub_p50_ns / 1e3),
                )),
            Panel::new(format!("echo throughput, {WINDOW} in flight"), "k msg/s")
                .with(Series::subject("bridge", col(&|(b, _)| b.msgs_per_s / 1e3)))
                .with(Series::baseline(
                    "raw pub/sub",
                    col(&|(_, r)| r.msgs_per_s / 1e3),
                )),
            Panel::new("bridge / raw within each round", "ratio")
                .line(1.0, "parity")
                .line(MIN_TP_RATIO, format!("throughput goal >= {MIN_TP_RATIO}"))
                .line(MAX_RT_RATIO, format!("round-trip goal <= {MAX_RT_RATIO}"))
                .with(Series::subject(
                    "throughput / raw pub/sub",
                    col(&|(b, r)| b.msgs_per_s / r.msgs_per_s),
                ))
                .with(Series::subject(
                    "p50 / raw get",
                    col(&|(b, r)| b.p50_ns / r.p50_ns),
                )),
        ],
    }
}

fn link_line(name: &str, m: &LinkMetrics) -> String {
    format!(
        "{name}: sent {}, acknowledged {}, retransmitted {}, frames sent inline {}, credit \
         stalls {}, reconnects {}, round trip last {:?} avg {:?}",
        m.sent,
        m.acknowledged,
        m.retransmitted,
        m.inline_frames,
        m.credit_stalls,
        m.reconnects,
        m.round_trip.unwrap_or_default(),
        m.round_trip_avg.unwrap_or_default()
    )
}

fn print_link(name: &str, m: &LinkMetrics) {
    say!("  {}", link_line(name, m));
}

fn summary(rounds: &[(Measured, Measured)]) {
    let col = |f: &dyn Fn(&(Measured, Measured)) -> f64| median(rounds.iter().map(f).collect());
    let tp_ratio = col(&|(b, r)| b.msgs_per_s / r.msgs_per_s);
    let rt_ratio = col(&|(b, r)| b.p50_ns / r.p50_ns);
    say!("\nmedians over {} rounds:", rounds.len());
    say!(
        "  {:<34} {:>9} {:>10} {:>10} {:>12}",
        "",
        "pp ns",
        "p50 µs",
        "p99 µs",
        "msg/s"
    );
    for (name, pick) in [
        (
            "bridge (2 links, 3 kernels)",
            &(|x: &(Measured, Measured)| x.0) as &dyn Fn(&(Measured, Measured)) -> Measured,
        ),
        ("raw zenoh (pub/sub; get/queryable)", &|x: &(
            Measured,
            Measured,
        )| x.1),
    ] {
        say!(
            "  {:<34} {:>9.0} {:>10.1} {:>10.1} {:>12.0}",
            name,
            col(&|x| pick(x).ping_pong_ns),
            col(&|x| pick(x).p50_ns) / 1e3,
            col(&|x| pick(x).p99_ns) / 1e3,
            col(&|x| pick(x).msgs_per_s)
        );
    }
    say!(
        "  (diagnostic: raw pub/sub one at a time, round-trip p50 {:.1} µs)",
        col(&|x| x.1.pubsub_p50_ns) / 1e3
    );
    let verdict = |ok: bool| if ok { "MET" } else { "NOT MET" };
    say!(
        "\nacceptance (issue 13), medians of the per-round ratios:\n  \
         throughput bridge / raw pub/sub      {tp_ratio:.2}×  (goal ≥ {MIN_TP_RATIO}×)  {}\n  \
         round-trip p50 bridge / raw get      {rt_ratio:.2}×  (goal ≤ {MAX_RT_RATIO}×)  {}",
        verdict(tp_ratio >= MIN_TP_RATIO),
        verdict(rt_ratio <= MAX_RT_RATIO)
    );
}

// ---------------------------------------------------------------------------------------
// The child.

/// Echoes for the parent until it says `stop` or its stdin closes (the parent is gone),
/// then drains and says `done`.
#[allow(clippy::too_many_lines)] // one run, in the order it happens
fn child(args: &[String]) {
    let [endpoint, prefix] = args else {
        panic!("the child takes ENDPOINT PREFIX");
    };
    let bridge = Bridge::open(BridgeConfig::peer().connect(endpoint)).expect("open the bridge");
    let session = bridge.session().clone();
    let runtime = Runtime::builder()
        .backend(Backend::Cpu)
        .workers(1)
        .build()
        .expect("the CPU runtime starts");
    let echo = identity(&runtime, "echo");
    let export = bridge
        .export::<Msg>(
            &format!("{prefix}/fwd"),
            echo.sender(),
            ExportOptions::default(),
        )
        .expect("export the echo");
    let link = bridge
        .link(
            &format!("{prefix}/back"),
            echo.receiver().expect("the echo's output"),
            LinkOptions {
                connect_timeout: STEP_TIMEOUT,
                ..LinkOptions::default()
            },
        )
        .expect("link the echo back to the parent's sink");

    let stop = Arc::new(AtomicBool::new(false));
    let raw_back = session
        .declare_publisher(format!("{prefix}/raw/back"))
        .congestion_control(CongestionControl::Block)
        .wait()
        .expect("declare the raw publisher");
    let raw_in = session
        .declare_subscriber(format!("{prefix}/raw/in"))
        .with(zenoh::handlers::FifoChannel::new(RAW_FIFO))
        .wait()
        .expect("declare the raw subscriber");
    let rr = session
        .declare_queryable(format!("{prefix}/raw/rr"))
        .wait()
        .expect("declare the raw queryable");
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !raw_back
        .matching_status()
        .wait()
        .is_ok_and(|m| m.matching())
    {
        assert!(Instant::now() < deadline, "the parent's raw subscriber");
        std::thread::sleep(Duration::from_millis(10));
    }
    let relay = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Some(sample)) = raw_in.recv_timeout(Duration::from_millis(50)) {
                    raw_back
                        .put(sample.payload().clone())
                        .wait()
                        .expect("raw put back");
                }
            }
        })
    };
    let replier = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Some(query)) = rr.recv_timeout(Duration::from_millis(50)) {
                    let bytes = query.payload().map(|p| p.to_bytes().to_vec());
                    query
                        .reply(query.key_expr().clone(), bytes.unwrap_or_default())
                        .wait()
                        .expect("raw reply");
                }
            }
        })
    };
    println!("ready");
    // `stop`, or the end of stdin: the parent is done or gone.
    for line in std::io::stdin().lock().lines() {
        match line {
            Ok(l) if l.trim() == "stop" => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    relay.join().expect("the relay thread");
    replier.join().expect("the replier thread");
    if !export.wait_finished(1, STEP_TIMEOUT) {
        eprintln!("gyre-bench-zenoh child: the parent's link did not finish");
        std::process::exit(2);
    }
    let report = echo.drain(STEP_TIMEOUT).expect("drain the echo");
    assert!(!report.timed_out, "the echo drained");
    let back = link.drain(STEP_TIMEOUT);
    println!(
        "{}",
        link_line("back (child echo → parent sink)", &back.metrics)
    );
    let m = export.close();
    println!(
        "child export `fwd`: received {}, delivered {}, consumed {}, duplicates {}, gaps {}",
        m.received, m.delivered, m.consumed, m.duplicates, m.gaps
    );
    println!("done");
    if !(back.finished && back.undelivered.is_empty()) {
        eprintln!("gyre-bench-zenoh child: the return link did not drain: {back:?}");
        std::process::exit(3);
    }
}
