//! The interleaved report for the pipeline and actor workloads
//! (`gyre_bench::workloads`).
//!
//! ```text
//! cargo run --release -p gyre-bench --bin gyre-bench-pipeline [ROUNDS] [--only pipeline|actors] [--actor-capacity N]
//! ```
//!
//! Runs `ROUNDS` (default [`DEFAULT_ROUNDS`]) rounds. Each round measures a cache-line
//! ping-pong, then every pipeline subject in turn (`PipelineSubject::ALL`), then every
//! actor subject (`ActorSubject::ALL`), each on fresh threads that are stopped cleanly
//! afterwards; every measurement checks every output. On a noisy machine only numbers
//! taken side by side compare, so every ratio is taken within one round
//! (subject / baseline of the same round) and the summary reports the median over rounds.
//! No round starts after [`TIME_CAP_S`] seconds, so a run on a loaded machine still ends.

use std::time::Instant;

use gyre_bench::plot::{Chart, Panel, Series as PlotSeries};
use gyre_bench::workloads::{
    ActorSubject, PipelineSubject, ACTORS, ACTOR_CAPACITY, ACTOR_MESSAGES, PIPELINE_CAPACITY,
    PIPELINE_MESSAGES, PIPELINE_WINDOW, WARM_UP_DIVISOR, WARM_UP_MIN,
};
use gyre_bench::{median, ping_pong, progress, rate, report, say};

/// Rounds when the command line names none.
const DEFAULT_ROUNDS: usize = 40;
/// Ping-pong bounces at the start of each round.
const PP_COUNT: u64 = 20_000;
/// No round starts after this many seconds.
const TIME_CAP_S: u64 = 60;
const USAGE: &str =
    "usage: gyre-bench-pipeline [ROUNDS] [--only pipeline|actors] [--actor-capacity N]   \
                     (ROUNDS default 40)";

/// One subject's throughput over the rounds.
struct Series {
    name: &'static str,
    baseline: bool,
    /// Messages per second, one per round.
    per_round: Vec<f64>,
}

/// One workload's subjects, each measured once per round.
struct Workload {
    title: String,
    series: Vec<Series>,
}

impl Workload {
    fn new(title: String, subjects: impl IntoIterator<Item = (&'static str, bool)>) -> Self {
        Self {
            title,
            series: subjects
                .into_iter()
                .map(|(name, baseline)| Series {
                    name,
                    baseline,
                    per_round: Vec::new(),
                })
                .collect(),
        }
    }

    fn baselines(&self) -> impl Iterator<Item = &Series> {
        self.series.iter().filter(|s| s.baseline)
    }

    /// This round's cells, `name M msg/s`.
    fn row(&self) -> String {
        let cells: Vec<String> = self
            .series
            .iter()
            .map(|s| {
                let last = s.per_round.last().copied().unwrap_or(f64::NAN);
                format!("{} {:.2}", s.name, last / 1e6)
            })
            .collect();
        cells.join("  ")
    }

    fn print_summary(&self) {
        let rounds = self.series.first().map_or(0, |s| s.per_round.len());
        say!("\n{} (M msg/s, medians over {rounds} rounds)", self.title);
        let ratio_heads: Vec<String> = self
            .baselines()
            .map(|b| format!(" {:>12}", format!("/{}", b.name)))
            .collect();
        say!(
            "  {:<16} {:>8} {:>8} {:>8}{}",
            "subject",
            "median",
            "min",
            "max",
            ratio_heads.concat()
        );
        for series in &self.series {
            let (lo, hi) = series
                .per_round
                .iter()
                .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                    (lo.min(*v), hi.max(*v))
                });
            let ratios: Vec<String> = self
                .baselines()
                .map(|b| format!(" {:>12.2}", paired_ratio(series, b)))
                .collect();
            say!(
                "  {:<16} {:>8.2} {:>8.2} {:>8.2}{}",
                series.name,
                median(series.per_round.clone()) / 1e6,
                lo / 1e6,
                hi / 1e6,
                ratios.concat()
            );
        }
        if self.series.iter().all(|s| s.baseline) {
            say!("  (baselines only: no gyre subject is listed in this workload's ALL yet)");
        }
    }
}

impl Workload {
    /// The plot panels: every subject's M msg/s per round, then every gyre subject over
    /// every baseline within each round, with parity and `target` (the goal over the
    /// first baseline, when there is one).
    fn panels(&self, short: &str, target: Option<f64>) -> Vec<Panel> {
        let mut values = Panel::new(format!("{short}: throughput per round"), "M msg/s");
        for series in &self.series {
            let per_round = series.per_round.iter().map(|v| v / 1e6).collect();
            values.series.push(if series.baseline {
                PlotSeries::baseline(series.name, per_round)
            } else {
                PlotSeries::subject(series.name, per_round)
            });
        }
        let mut ratios = Panel::new(
            format!("{short}: gyre / baseline within each round"),
            "ratio",
        )
        .line(1.0, "parity");
        if let (Some(target), Some(first)) = (target, self.baselines().next()) {
            ratios = ratios.line(target, format!("goal >= {target} x {}", first.name));
        }
        for subject in self.series.iter().filter(|s| !s.baseline) {
            for baseline in self.baselines() {
                ratios = ratios.with(PlotSeries::subject(
                    format!("{} / {}", subject.name, baseline.name),
                    per_round_ratios(subject, baseline),
                ));
            }
        }
        vec![values, ratios]
    }
}

/// `subject / baseline` within each round.
fn per_round_ratios(subject: &Series, baseline: &Series) -> Vec<f64> {
    subject
        .per_round
        .iter()
        .zip(&baseline.per_round)
        .map(|(s, b)| s / b)
        .collect()
}

/// Median over rounds of `subject / baseline` taken within each round.
fn paired_ratio(subject: &Series, baseline: &Series) -> f64 {
    median(per_round_ratios(subject, baseline))
}

fn usage_exit(why: &str) -> ! {
    eprintln!("{why}\n{USAGE}");
    std::process::exit(2);
}

/// What the command line asked for.
struct Options {
    rounds: usize,
    pipeline: bool,
    actors: bool,
    actor_capacity: usize,
}

fn parse_args() -> Options {
    let mut options = Options {
        rounds: DEFAULT_ROUNDS,
        pipeline: true,
        actors: true,
        actor_capacity: ACTOR_CAPACITY,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--only" => match args.next().as_deref() {
                Some("pipeline") => options.actors = false,
                Some("actors") => options.pipeline = false,
                _ => usage_exit("--only takes pipeline or actors"),
            },
            "--actor-capacity" => {
                options.actor_capacity = args
                    .next()
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| n.is_power_of_two())
                    .unwrap_or_else(|| usage_exit("--actor-capacity takes a power of two"));
            }
            "-h" | "--help" => usage_exit("gyre-bench-pipeline: interleaved workload benchmarks"),
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

fn main() {
    let options = parse_args();
    let started = Instant::now();

    // Subjects come from the `ALL` lists in `gyre_bench::workloads`: a gyre subject listed
    // there joins every round and gets its ratios over each baseline here, with no change
    // to this file.
    let mut pipeline = Workload::new(
        format!(
            "pipeline: 3 stages, {PIPELINE_MESSAGES} messages, {PIPELINE_WINDOW} in flight, \
             capacity {PIPELINE_CAPACITY}"
        ),
        PipelineSubject::ALL
            .iter()
            .filter(|_| options.pipeline)
            .map(|s| (s.name(), s.is_baseline())),
    );
    let mut actors = Workload::new(
        format!(
            "actors: {ACTORS} actors, {ACTOR_MESSAGES} messages round-robin, inbox capacity \
             {}",
            options.actor_capacity
        ),
        ActorSubject::ALL
            .iter()
            .filter(|_| options.actors)
            .map(|s| (s.name(), s.is_baseline())),
    );

    say!(
        "gyre-bench-pipeline: {} interleaved rounds; {} CPUs; each measurement after \
         untimed messages, 1/{WARM_UP_DIVISOR} as many at a time, for at least {} ms",
        options.rounds,
        std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
        WARM_UP_MIN.as_millis(),
    );
    if options.pipeline {
        say!("  {}", pipeline.title);
    }
    if options.actors {
        say!("  {}", actors.title);
    }
    say!("cells: ping-pong ns, then M msg/s per subject\n");

    let mut ping_pongs = Vec::new();
    let bar = progress::bar(options.rounds as u64, "gyre-bench-pipeline");
    for number in 1..=options.rounds {
        if started.elapsed().as_secs() >= TIME_CAP_S {
            say!(
                "(stopping after {} rounds: the run passed {TIME_CAP_S} s)",
                number - 1
            );
            break;
        }
        let pp_ns = ping_pong(PP_COUNT).as_nanos() as f64 / PP_COUNT as f64;
        ping_pongs.push(pp_ns);
        for (subject, series) in PipelineSubject::ALL.iter().zip(&mut pipeline.series) {
            let took = subject.run(PIPELINE_MESSAGES);
            series.per_round.push(rate(PIPELINE_MESSAGES, took));
        }
        for (subject, series) in ActorSubject::ALL.iter().zip(&mut actors.series) {
            let took = subject.run(ACTOR_MESSAGES, ACTORS, options.actor_capacity);
            series.per_round.push(rate(ACTOR_MESSAGES, took));
        }
        let mut cells = vec![format!("round {number:>2} pp {pp_ns:>4.0}")];
        if options.pipeline {
            cells.push(format!("pipeline: {}", pipeline.row()));
        }
        if options.actors {
            cells.push(format!("actors: {}", actors.row()));
        }
        say!("{}", cells.join(" | "));
        bar.inc(1);
    }
    progress::done(&bar);
    let chart_pp = ping_pongs.clone();

    say!(
        "\ncache-line ping-pong round trip: median {:.0} ns",
        median(ping_pongs)
    );
    say!("ratios: subject / baseline within each round, then the median over rounds");
    if options.pipeline {
        pipeline.print_summary();
    }
    if options.actors {
        actors.print_summary();
    }
    say!("\n(total {:.1} s)", started.elapsed().as_secs_f64());
    let chart = chart(&options, &pipeline, &actors, chart_pp);
    if let Err(e) = report::write("gyre-bench-pipeline", &chart) {
        eprintln!("gyre-bench-pipeline: {e}");
        std::process::exit(1);
    }
}

/// The plot of the run: each workload's rates and ratios per round, and the ping-pong of
/// each round.
fn chart(options: &Options, pipeline: &Workload, actors: &Workload, ping_pongs: Vec<f64>) -> Chart {
    // The goals of issue 12: pipeline at least rtrb's rate; actors 3x tokio at inbox 16,
    // 1.5x at 1,024.
    let actor_goal = match options.actor_capacity {
        16 => Some(3.0),
        1024 => Some(1.5),
        _ => None,
    };
    let mut panels = Vec::new();
    if options.pipeline {
        panels.extend(pipeline.panels("pipeline", Some(1.0)));
    }
    if options.actors {
        panels.extend(actors.panels(
            &format!("actors (inbox {})", options.actor_capacity),
            actor_goal,
        ));
    }
    let rounds = ping_pongs.len();
    Chart {
        title: "gyre-bench-pipeline: pipeline and actors, per round".to_owned(),
        caption: format!("one run on {}; {rounds} rounds", report::machine()),
        rounds,
        ping_pong_ns: ping_pongs,
        panels,
    }
}
