//! The interleaved benchmark report.
//!
//! ```text
//! cargo run --release -p gyre-bench --bin gyre-bench [ROUNDS] [--only NAME,...] [--phase rt|tp|batch|both]
//! ```
//!
//! Runs `ROUNDS` (default 20) short rounds. In each round every subject and baseline runs
//! in turn (gyre-dedicated, rtrb, gyre-pool, crossbeam, then the diagnostics), each on a
//! fresh server that is stopped cleanly afterwards: round trips (p50, p99), then windowed
//! echo throughput. Then the batch workload, "echo, batches of 64": gyre-batch (a
//! dedicated echo kernel, `send_batch` / `recv_batch` 64 at a time) and rtrb-chunk (two
//! rtrb rings and an echo thread, rtrb's chunk API 64 at a time on both sides), each on a
//! fresh server. A raw cache-line ping-pong is measured right before each of them.
//!
//! On a machine whose core-to-core latency and throughput swing from run to run (and
//! within a run), only numbers taken side by side compare, so every ratio is taken
//! within one round (subject / baseline of the same round) and the median over rounds
//! is reported. A round is left out of the summary when other processes took CPU time
//! during it ("disturbed") or when the ping-pong moved by more than `MAX_PP_SPREAD`
//! within it ("moved": the two cores changed distance), as long as `MIN_CLEAN_ROUNDS`
//! clean rounds remain. `--only` and `--phase` narrow the run, for profiling.

use std::time::{Duration, Instant};

use gyre_bench::plot::{Chart, Panel, Series};
use gyre_bench::workloads::WARM_UP_MIN;
use gyre_bench::{
    batch_throughput, echo_throughput, median, ping_pong, progress, rate, report, round_trip,
    round_trip_histogram, say, BatchEcho, BatchSubject, Echo, Subject, BATCH, CAPACITY, WINDOW,
};

/// Round trips per subject per round, after unrecorded ones (`RT_WARM_UP` at a time for at
/// least `WARM_UP_MIN`).
const RT_COUNT: u64 = 20_000;
const RT_WARM_UP: u64 = 2_000;
/// Echoes per subject per round for throughput, after `TP_WARM_UP` untimed ones.
const TP_COUNT: u64 = 200_000;
const TP_WARM_UP: u64 = 20_000;
/// Echoes per batch subject per round, after untimed ones (`BATCH_WARM_UP` at a time, whole
/// batches of `BATCH`, for at least `WARM_UP_MIN`).
const BATCH_COUNT: u64 = 1_000_000;
const BATCH_WARM_UP: u64 = 100_000;
/// Acceptance (issue 12): gyre batch echo throughput at least this times rtrb's chunks.
const MIN_BATCH_RATIO: f64 = 0.8;
/// Ping-pong bounces before each subject.
const PP_COUNT: u64 = 20_000;
/// Acceptance (issue 12): dedicated round-trip p50 at most this times the rtrb p50.
const MAX_RT_RATIO: f64 = 1.2;
/// Acceptance (issue 12): dedicated echo throughput at least this times the rtrb
/// throughput.
const MIN_TP_RATIO: f64 = 0.8;
/// A round during which other processes (or the hypervisor) took this many CPUs is
/// disturbed.
const DISTURBED_OTHERS_CPUS: f64 = 0.10;
/// A round whose largest ping-pong is more than this times its smallest moved.
const MAX_PP_SPREAD: f64 = 1.5;
/// Before a round, wait until other processes take less than this ...
const QUIET_OTHERS_CPUS: f64 = 0.05;
/// ... for at most this long over the whole run.
const QUIET_WAIT_BUDGET: Duration = Duration::from_secs(30);
/// No round starts after this long, so a run on a loaded machine still ends.
const TIME_CAP: Duration = Duration::from_secs(100);
/// The summary uses only clean rounds when at least this many exist.
const MIN_CLEAN_ROUNDS: usize = 3;
const USAGE: &str =
    "usage: gyre-bench [ROUNDS] [--only NAME,NAME,...] [--phase rt|tp|batch|both]   \
     (ROUNDS default 20)";

/// One subject in one round.
#[derive(Clone, Copy, Debug)]
struct Measured {
    /// Cache-line ping-pong round trip measured right before, ns.
    ping_pong_ns: f64,
    p50_ns: f64,
    p99_ns: f64,
    msgs_per_s: f64,
}

/// Which measurements to run (all by default; one alone for profiling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Both,
    RoundTrip,
    Throughput,
    /// Only the batch workload.
    Batch,
}

/// One batch subject in one round.
#[derive(Clone, Copy, Debug)]
struct BatchMeasured {
    /// Cache-line ping-pong round trip measured right before, ns.
    ping_pong_ns: f64,
    msgs_per_s: f64,
}

/// One batch subject, one round: ping-pong, then a fresh server: batch throughput, then
/// a clean stop.
fn measure_batch(subject: BatchSubject) -> BatchMeasured {
    let ping_pong_ns = ping_pong(PP_COUNT).as_nanos() as f64 / PP_COUNT as f64;
    let mut server = subject.start();
    let warm_up = Instant::now();
    while warm_up.elapsed() < WARM_UP_MIN {
        batch_throughput(&mut server, BATCH_WARM_UP, WINDOW);
    }
    let took = batch_throughput(&mut server, BATCH_COUNT, WINDOW);
    server.shutdown();
    BatchMeasured {
        ping_pong_ns,
        msgs_per_s: rate(BATCH_COUNT.div_ceil(BATCH as u64) * BATCH as u64, took),
    }
}

/// One subject, one round: ping-pong, then a fresh server: round trips, then
/// throughput, then a clean stop. A phase left out reads NaN.
fn measure(subject: Subject, phase: Phase) -> Measured {
    let ping_pong_ns = ping_pong(PP_COUNT).as_nanos() as f64 / PP_COUNT as f64;
    let mut server = subject.start();
    let mut measured = Measured {
        ping_pong_ns,
        p50_ns: f64::NAN,
        p99_ns: f64::NAN,
        msgs_per_s: f64::NAN,
    };
    // Untimed traffic for at least WARM_UP_MIN first: the server's threads are new, and
    // Linux may run one of them on the host thread's core for a few milliseconds.
    let warm_up = Instant::now();
    let mut next = 0;
    while warm_up.elapsed() < WARM_UP_MIN {
        round_trip(&mut server, next, RT_WARM_UP, &mut round_trip_histogram());
        next += RT_WARM_UP;
    }
    if phase != Phase::Throughput {
        let mut histogram = round_trip_histogram();
        round_trip(&mut server, next, RT_COUNT, &mut histogram);
        measured.p50_ns = histogram.value_at_quantile(0.50) as f64;
        measured.p99_ns = histogram.value_at_quantile(0.99) as f64;
    }
    if phase != Phase::RoundTrip {
        echo_throughput(&mut server, TP_WARM_UP, WINDOW);
        let took = echo_throughput(&mut server, TP_COUNT, WINDOW);
        measured.msgs_per_s = rate(TP_COUNT, took);
    }
    server.shutdown();
    measured
}

/// Why a round is or is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quality {
    Clean,
    /// Other load took CPU time during the round.
    Disturbed,
    /// The ping-pong changed within the round.
    Moved,
}

struct Round {
    results: Vec<Measured>,
    batch: Vec<BatchMeasured>,
    quality: Quality,
}

impl Round {
    /// The round's placement: median of the ping-pongs taken in it.
    fn ping_pong_ns(&self) -> f64 {
        median(
            self.results
                .iter()
                .map(|m| m.ping_pong_ns)
                .chain(self.batch.iter().map(|m| m.ping_pong_ns))
                .collect(),
        )
    }
}

struct Table {
    subjects: Vec<Subject>,
    batch_subjects: Vec<BatchSubject>,
    rounds: Vec<Round>,
}

impl Table {
    fn index(&self, subject: Subject) -> Option<usize> {
        self.subjects.iter().position(|s| *s == subject)
    }

    /// Whether the summary uses only the clean rounds (enough of them exist).
    fn clean_only(&self) -> bool {
        self.rounds
            .iter()
            .filter(|r| r.quality == Quality::Clean)
            .count()
            >= MIN_CLEAN_ROUNDS
    }

    /// The rounds the summary uses.
    fn used(&self) -> Vec<&Round> {
        let clean_only = self.clean_only();
        self.rounds
            .iter()
            .filter(|r| !clean_only || r.quality == Quality::Clean)
            .collect()
    }

    /// Median over `rounds` of batch subject `subject`'s `f`, and of its ratio to
    /// `baseline`'s taken within each round (NaN when either was not measured).
    fn batch_median(
        &self,
        rounds: &[&Round],
        subject: BatchSubject,
        baseline: BatchSubject,
        f: fn(&BatchMeasured) -> f64,
    ) -> (f64, f64) {
        let index = |s: BatchSubject| self.batch_subjects.iter().position(|b| *b == s);
        let Some(s) = index(subject) else {
            return (f64::NAN, f64::NAN);
        };
        let value = median(rounds.iter().map(|r| f(&r.batch[s])).collect());
        let ratio = index(baseline).map_or(f64::NAN, |b| {
            median(
                rounds
                    .iter()
                    .map(|r| f(&r.batch[s]) / f(&r.batch[b]))
                    .collect(),
            )
        });
        (value, ratio)
    }

    fn median_of(&self, rounds: &[&Round], subject: Subject, f: fn(&Measured) -> f64) -> f64 {
        let Some(i) = self.index(subject) else {
            return f64::NAN;
        };
        median(rounds.iter().map(|r| f(&r.results[i])).collect())
    }

    /// Median over `rounds` of `f(subject) / f(baseline)` taken within each round; NaN
    /// when either was not measured.
    fn paired_ratio(
        &self,
        rounds: &[&Round],
        subject: Subject,
        baseline: Subject,
        f: fn(&Measured) -> f64,
    ) -> f64 {
        let (Some(s), Some(b)) = (self.index(subject), self.index(baseline)) else {
            return f64::NAN;
        };
        median(
            rounds
                .iter()
                .map(|r| f(&r.results[s]) / f(&r.results[b]))
                .collect(),
        )
    }
}

fn p50(m: &Measured) -> f64 {
    m.p50_ns
}

fn p99(m: &Measured) -> f64 {
    m.p99_ns
}

fn tput(m: &Measured) -> f64 {
    m.msgs_per_s
}

fn ping(m: &Measured) -> f64 {
    m.ping_pong_ns
}

fn batch_tput(m: &BatchMeasured) -> f64 {
    m.msgs_per_s
}

fn batch_ping(m: &BatchMeasured) -> f64 {
    m.ping_pong_ns
}

fn all_subjects() -> Vec<Subject> {
    Subject::MAIN
        .into_iter()
        .chain(Subject::DIAGNOSTIC)
        .collect()
}

fn names(subjects: &[Subject]) -> String {
    subjects
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn usage_exit(why: &str) -> ! {
    eprintln!(
        "{why}\n{USAGE}\nsubjects: {}, {}",
        names(&all_subjects()),
        batch_names(&BatchSubject::ALL)
    );
    std::process::exit(2);
}

fn batch_names(subjects: &[BatchSubject]) -> String {
    subjects
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the command line asked for.
struct Options {
    rounds: usize,
    subjects: Vec<Subject>,
    batch_subjects: Vec<BatchSubject>,
    phase: Phase,
}

fn parse_args() -> Options {
    let mut options = Options {
        rounds: 20,
        subjects: all_subjects(),
        batch_subjects: BatchSubject::ALL.to_vec(),
        phase: Phase::Both,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--only" => {
                let names = args
                    .next()
                    .unwrap_or_else(|| usage_exit("--only needs names"));
                options.subjects.clear();
                options.batch_subjects.clear();
                for name in names.split(',') {
                    if let Some(s) = all_subjects().into_iter().find(|s| s.name() == name) {
                        options.subjects.push(s);
                    } else if let Some(s) = BatchSubject::ALL.into_iter().find(|s| s.name() == name)
                    {
                        options.batch_subjects.push(s);
                    } else {
                        usage_exit(&format!("unknown subject `{name}`"));
                    }
                }
            }
            "--phase" => {
                options.phase = match args.next().as_deref() {
                    Some("rt") => Phase::RoundTrip,
                    Some("tp") => Phase::Throughput,
                    Some("batch") => Phase::Batch,
                    Some("both") => Phase::Both,
                    _ => usage_exit("--phase takes rt, tp, batch or both"),
                };
            }
            "-h" | "--help" => usage_exit("gyre-bench: interleaved echo benchmarks"),
            _ => {
                options.rounds = arg
                    .parse::<usize>()
                    .unwrap_or_else(|_| usage_exit(&format!("`{arg}` is not a number of rounds")))
                    .max(1);
            }
        }
    }
    options
}

/// Waits (sleeping, up to `budget`) until other processes use less than
/// `QUIET_OTHERS_CPUS` over a short sample; returns how long it waited.
fn wait_for_quiet(budget: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let Some(before) = CpuTicks::read() else {
            return Duration::ZERO;
        };
        let sample = Instant::now();
        std::thread::sleep(Duration::from_millis(200));
        let Some(after) = CpuTicks::read() else {
            return Duration::ZERO;
        };
        let (_, others, steal) = before.usage(&after, sample.elapsed().as_secs_f64());
        if others + steal < QUIET_OTHERS_CPUS || started.elapsed() >= budget {
            return started.elapsed();
        }
    }
}

fn run_round(subjects: &[Subject], batch_subjects: &[BatchSubject], phase: Phase) -> (Round, f64) {
    let start = Instant::now();
    let ticks = CpuTicks::read();
    let results: Vec<Measured> = subjects.iter().map(|s| measure(*s, phase)).collect();
    let batch: Vec<BatchMeasured> = batch_subjects.iter().map(|s| measure_batch(*s)).collect();
    let others = match (ticks, CpuTicks::read()) {
        (Some(before), Some(after)) => {
            let (_, others, steal) = before.usage(&after, start.elapsed().as_secs_f64());
            others + steal
        }
        _ => 0.0,
    };
    let (lo, hi) = results
        .iter()
        .map(|m| m.ping_pong_ns)
        .chain(batch.iter().map(|m| m.ping_pong_ns))
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), pp| {
            (lo.min(pp), hi.max(pp))
        });
    let quality = if others >= DISTURBED_OTHERS_CPUS {
        Quality::Disturbed
    } else if hi > MAX_PP_SPREAD * lo {
        Quality::Moved
    } else {
        Quality::Clean
    };
    (
        Round {
            results,
            batch,
            quality,
        },
        others,
    )
}

fn main() {
    let Options {
        rounds,
        mut subjects,
        mut batch_subjects,
        phase,
    } = parse_args();
    match phase {
        Phase::Batch => subjects.clear(),
        Phase::RoundTrip => batch_subjects.clear(),
        Phase::Both | Phase::Throughput => {}
    }
    let started = Instant::now();
    say!(
        "gyre-bench: {rounds} interleaved rounds of [{}] and batches [{}]",
        names(&subjects),
        batch_names(&batch_subjects)
    );
    say!(
        "per round and subject: ping-pong ({PP_COUNT} bounces), untimed round trips for at \
         least {} ms, {RT_COUNT} round trips, {TP_COUNT} echoes with {WINDOW} in flight (after \
         {TP_WARM_UP}); 64-byte messages, capacity {CAPACITY} each way; {} CPUs",
        WARM_UP_MIN.as_millis(),
        std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
    );
    say!(
        "batches: {BATCH_COUNT} echoes per subject, {BATCH} per send_batch / recv_batch (or \
         rtrb chunk), up to {WINDOW} in flight (after untimed ones, {BATCH_WARM_UP} at a time, \
         for at least {} ms)",
        WARM_UP_MIN.as_millis()
    );
    say!("cells: ping-pong ns, round trip p50/p99 ns, echo throughput M msg/s");
    say!();
    let mut table = Table {
        subjects: subjects.clone(),
        batch_subjects: batch_subjects.clone(),
        rounds: Vec::new(),
    };
    let mut quiet_budget = QUIET_WAIT_BUDGET;
    let bar = progress::bar(rounds as u64, "gyre-bench");
    for number in 1..=rounds {
        if started.elapsed() > TIME_CAP {
            say!(
                "(stopping after {} rounds: the run passed {} s)",
                number - 1,
                TIME_CAP.as_secs()
            );
            break;
        }
        quiet_budget = quiet_budget.saturating_sub(wait_for_quiet(quiet_budget));
        let (round, others) = run_round(&subjects, &batch_subjects, phase);
        let cells: Vec<String> = subjects
            .iter()
            .zip(&round.results)
            .map(|(s, m)| {
                format!(
                    "{} pp {:.0} {:.0}/{:.0} {:.2}",
                    s.name(),
                    m.ping_pong_ns,
                    m.p50_ns,
                    m.p99_ns,
                    m.msgs_per_s / 1e6
                )
            })
            .chain(batch_subjects.iter().zip(&round.batch).map(|(s, m)| {
                format!(
                    "{} pp {:.0} {:.2}",
                    s.name(),
                    m.ping_pong_ns,
                    m.msgs_per_s / 1e6
                )
            }))
            .collect();
        let quality = match round.quality {
            Quality::Clean => "clean",
            Quality::Disturbed => "DISTURBED",
            Quality::Moved => "MOVED",
        };
        say!(
            "round {number:>2} {quality:<9} others {others:.2} CPUs | {}",
            cells.join(" | ")
        );
        table.rounds.push(round);
        bar.inc(1);
    }
    progress::done(&bar);
    print_summary(&table);
    let elapsed = started.elapsed();
    say!("\n(total {:.1} s)", elapsed.as_secs_f64());
    if let Err(e) = report::write("gyre-bench", &chart(&table)) {
        eprintln!("gyre-bench: {e}");
        std::process::exit(1);
    }
}

/// The plot of the run: every round (clean or not) of every subject, the acceptance
/// ratios within each round against their lines, and each round's ping-pong.
#[allow(clippy::too_many_lines)] // one plot, panel by panel
fn chart(table: &Table) -> Chart {
    let per_round = |subject: Subject, f: fn(&Measured) -> f64| {
        table.index(subject).map(|i| {
            table
                .rounds
                .iter()
                .map(|r| f(&r.results[i]))
                .collect::<Vec<f64>>()
        })
    };
    let batch_per_round = |subject: BatchSubject| {
        table
            .batch_subjects
            .iter()
            .position(|s| *s == subject)
            .map(|i| {
                table
                    .rounds
                    .iter()
                    .map(|r| r.batch[i].msgs_per_s / 1e6)
                    .collect::<Vec<f64>>()
            })
    };
    let series = |name: &str, baseline: bool, values: Vec<f64>| {
        if baseline {
            Series::baseline(name, values)
        } else {
            Series::subject(name, values)
        }
    };
    let is_baseline = |s: Subject| matches!(s, Subject::Rtrb | Subject::Crossbeam);
    let mut rt = Panel::new("round trip p50, one message in flight", "ns").log();
    let mut tp = Panel::new(
        format!("echo throughput, {WINDOW} in flight (batches: {BATCH} per call)"),
        "M msg/s",
    )
    .log();
    for subject in &table.subjects {
        if let Some(values) = per_round(*subject, p50) {
            rt.series
                .push(series(subject.name(), is_baseline(*subject), values));
        }
        if let Some(values) = per_round(*subject, tput) {
            let values = values.into_iter().map(|v| v / 1e6).collect();
            tp.series
                .push(series(subject.name(), is_baseline(*subject), values));
        }
    }
    for subject in &table.batch_subjects {
        if let Some(values) = batch_per_round(*subject) {
            tp.series.push(series(
                subject.name(),
                *subject == BatchSubject::RtrbChunk,
                values,
            ));
        }
    }
    let ratio = |a: Option<Vec<f64>>, b: Option<Vec<f64>>| match (a, b) {
        (Some(a), Some(b)) => a.iter().zip(&b).map(|(a, b)| a / b).collect(),
        _ => Vec::new(),
    };
    let ratios = Panel::new(
        "acceptance ratios, subject / baseline within each round",
        "ratio",
    )
    .log()
    .line(1.0, "parity")
    .line(MAX_RT_RATIO, format!("p50 target <= {MAX_RT_RATIO}"))
    .line(
        MIN_TP_RATIO,
        format!("throughput targets >= {MIN_TP_RATIO}"),
    )
    .with(Series::subject(
        "dedicated p50 / rtrb",
        ratio(
            per_round(Subject::GyreDedicated, p50),
            per_round(Subject::Rtrb, p50),
        ),
    ))
    .with(Series::subject(
        "dedicated tput / rtrb",
        ratio(
            per_round(Subject::GyreDedicated, tput),
            per_round(Subject::Rtrb, tput),
        ),
    ))
    .with(Series::subject(
        "batch tput / rtrb-chunk",
        ratio(
            batch_per_round(BatchSubject::GyreBatch),
            batch_per_round(BatchSubject::RtrbChunk),
        ),
    ));
    let rounds_of = |quality: Quality| {
        let numbers: Vec<String> = table
            .rounds
            .iter()
            .enumerate()
            .filter(|(_, r)| r.quality == quality)
            .map(|(i, _)| (i + 1).to_string())
            .collect();
        if numbers.is_empty() {
            "none".to_owned()
        } else {
            numbers.join(", ")
        }
    };
    let left_out = format!(
        "; rounds disturbed by other load: {}; moved: {} ({})",
        rounds_of(Quality::Disturbed),
        rounds_of(Quality::Moved),
        if table.clean_only() {
            "left out of the summary"
        } else {
            "too few clean rounds: the summary uses all"
        }
    );
    Chart {
        title: "gyre-bench: echo round trips and throughput, per round".to_owned(),
        caption: format!(
            "one run on {}; {} rounds{left_out}",
            report::machine(),
            table.rounds.len()
        ),
        rounds: table.rounds.len(),
        ping_pong_ns: table.rounds.iter().map(Round::ping_pong_ns).collect(),
        panels: vec![rt, tp, ratios],
    }
}

fn print_summary(table: &Table) {
    let used = table.used();
    let count = |q: Quality| table.rounds.iter().filter(|r| r.quality == q).count();
    say!();
    if table.clean_only() {
        say!(
            "summary over the {} clean rounds ({} disturbed, {} moved left out)",
            used.len(),
            count(Quality::Disturbed),
            count(Quality::Moved)
        );
    } else {
        say!(
            "WARNING: fewer than {MIN_CLEAN_ROUNDS} clean rounds; summary over all {} rounds \
             ({} disturbed by other load, {} moved)",
            used.len(),
            count(Quality::Disturbed),
            count(Quality::Moved)
        );
    }
    let pp: Vec<f64> = used.iter().map(|r| r.ping_pong_ns()).collect();
    let (lo, hi) = pp.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(*v), hi.max(*v))
    });
    say!(
        "cache-line ping-pong round trip: median {:.0} ns (rounds from {lo:.0} to {hi:.0} ns)",
        median(pp.clone())
    );
    say!("medians over rounds; ratios are subject / baseline within each round, then the median");
    print_table(table, &used);
    say!();
    print_verdicts(table, &used, "");
    // When the cores sat near in some rounds and far in others, judge each group too.
    if hi > 2.0 * lo {
        let split = (lo * hi).sqrt();
        let near: Vec<&Round> = used
            .iter()
            .copied()
            .filter(|r| r.ping_pong_ns() < split)
            .collect();
        let far: Vec<&Round> = used
            .iter()
            .copied()
            .filter(|r| r.ping_pong_ns() >= split)
            .collect();
        for (label, rounds) in [("near", near), ("far", far)] {
            let pp = median(rounds.iter().map(|r| r.ping_pong_ns()).collect());
            say!(
                "\n{label} rounds ({} rounds, ping-pong median {pp:.0} ns):",
                rounds.len()
            );
            print_table(table, &rounds);
            print_verdicts(table, &rounds, &format!("[{label}] "));
        }
    }
}

fn print_table(table: &Table, rounds: &[&Round]) {
    print_main_table(table, rounds);
    if !table.batch_subjects.is_empty() {
        say!("echo, batches of {BATCH} ({WINDOW} in flight):");
        say!(
            "{:<21} {:>7} {:>8} {:>15}",
            "subject",
            "pp ns",
            "M msg/s",
            "tput/rtrb-chunk"
        );
        for subject in &table.batch_subjects {
            let (pp, _) = table.batch_median(rounds, *subject, BatchSubject::RtrbChunk, batch_ping);
            let (tput, ratio) =
                table.batch_median(rounds, *subject, BatchSubject::RtrbChunk, batch_tput);
            say!(
                "{:<21} {:>7.0} {:>8.2} {:>15.2}",
                subject.name(),
                pp,
                tput / 1e6,
                ratio
            );
        }
    }
}

fn print_main_table(table: &Table, rounds: &[&Round]) {
    if table.subjects.is_empty() {
        return;
    }
    say!(
        "{:<21} {:>7} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>10}",
        "subject",
        "pp ns",
        "rt p50 ns",
        "rt p99 ns",
        "M msg/s",
        "p50/rtrb",
        "tput/rtrb",
        "p50/xbeam",
        "tput/xbeam"
    );
    let mut diagnostics_heading = false;
    for subject in &table.subjects {
        if Subject::DIAGNOSTIC.contains(subject) && !diagnostics_heading {
            diagnostics_heading = true;
            say!("diagnostics (not part of the acceptance):");
        }
        say!(
            "{:<21} {:>7.0} {:>10.0} {:>10.0} {:>8.2} {:>9.2} {:>9.2} {:>9.2} {:>10.2}",
            subject.name(),
            table.median_of(rounds, *subject, ping),
            table.median_of(rounds, *subject, p50),
            table.median_of(rounds, *subject, p99),
            table.median_of(rounds, *subject, tput) / 1e6,
            table.paired_ratio(rounds, *subject, Subject::Rtrb, p50),
            table.paired_ratio(rounds, *subject, Subject::Rtrb, tput),
            table.paired_ratio(rounds, *subject, Subject::Crossbeam, p50),
            table.paired_ratio(rounds, *subject, Subject::Crossbeam, tput),
        );
    }
}

fn print_verdicts(table: &Table, rounds: &[&Round], label: &str) {
    let verdict = |pass: bool| if pass { "PASS " } else { "SHORT" };
    let (_, batch) = table.batch_median(
        rounds,
        BatchSubject::GyreBatch,
        BatchSubject::RtrbChunk,
        batch_tput,
    );
    if !batch.is_nan() {
        say!(
            "{} {label}gyre batch echo throughput / rtrb chunks = {batch:.2} (need >= \
             {MIN_BATCH_RATIO})",
            verdict(batch >= MIN_BATCH_RATIO)
        );
    }
    let rt = table.paired_ratio(rounds, Subject::GyreDedicated, Subject::Rtrb, p50);
    let tp = table.paired_ratio(rounds, Subject::GyreDedicated, Subject::Rtrb, tput);
    if rt.is_nan() && tp.is_nan() {
        say!("{label}(the acceptance ratios need gyre-dedicated and rtrb in the run)");
        return;
    }
    say!(
        "{} {label}dedicated round-trip p50 / rtrb p50 = {rt:.2} (need <= {MAX_RT_RATIO})",
        verdict(rt <= MAX_RT_RATIO)
    );
    say!(
        "{} {label}dedicated echo throughput / rtrb = {tp:.2} (need >= {MIN_TP_RATIO})",
        verdict(tp >= MIN_TP_RATIO)
    );
}

/// CPU time from `/proc` (Linux), to tell whether other processes competed for the
/// cores: every subject needs two cores to itself.
#[derive(Clone, Copy, Debug)]
struct CpuTicks {
    /// Busy ticks of all CPUs (everything but idle, iowait and steal).
    busy: u64,
    /// Ticks the hypervisor gave to other guests.
    steal: u64,
    /// Ticks this process (all its threads) ran.
    own: u64,
}

impl CpuTicks {
    /// Clock ticks per second of `/proc/stat` (USER_HZ, 100 on Linux).
    const HZ: f64 = 100.0;

    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let (idle, iowait, steal) = (*cpu.get(3)?, *cpu.get(4)?, *cpu.get(7)?);
        let busy = cpu.iter().take(8).sum::<u64>() - idle - iowait - steal;
        let own_stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14, 15.
        let rest = own_stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let own = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Self { busy, steal, own })
    }

    /// `(own, others, steal)` in CPUs between `self` and `after`, `seconds` apart.
    fn usage(&self, after: &Self, seconds: f64) -> (f64, f64, f64) {
        let cpus = |ticks: u64| ticks as f64 / Self::HZ / seconds;
        let own = after.own.saturating_sub(self.own);
        let others = after.busy.saturating_sub(self.busy).saturating_sub(own);
        (
            cpus(own),
            cpus(others),
            cpus(after.steal.saturating_sub(self.steal)),
        )
    }
}
